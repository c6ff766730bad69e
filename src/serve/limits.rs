//! The bounds every HTTP connection lives under, with the production defaults of each server and
//! the test-only environment overrides that let integration tests use short timeouts.

use std::time::Duration;

/// Time and size bounds of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A client must send a complete request head within this long: from accept (TLS handshake
    /// included) and again from the end of each response, so it is also the idle keep-alive
    /// timeout (hyper starts its header-read timer when it waits for the next request).
    pub header_timeout: Duration,
    /// A request body must arrive within this long (the webhook; /metrics reads no bodies).
    pub body_timeout: Duration,
    /// A write that makes no progress for this long ends the connection (a client that asks
    /// and never reads the answer).
    pub write_timeout: Duration,
    /// Connections open at once. At the cap the least recently active connection without a
    /// request in progress is closed to make room; when every one has a request in progress the
    /// newcomer waits, unread, until one ends.
    pub max_connections: usize,
    /// Largest request head (request line and headers); a larger one is answered 431. Also the
    /// most hyper buffers per connection. At least 8 KiB (hyper's minimum).
    pub max_head_bytes: usize,
}

/// Test-only overrides, read once at start (documented in docs/metrics.md and docs/strategy.md as
/// test-only): timeouts in milliseconds, the connection cap as a count.
pub const ENV_HEADER_TIMEOUT_MS: &str = "GPU_AGENT_TEST_HTTP_HEADER_TIMEOUT_MS";
pub const ENV_BODY_TIMEOUT_MS: &str = "GPU_AGENT_TEST_HTTP_BODY_TIMEOUT_MS";
pub const ENV_WRITE_TIMEOUT_MS: &str = "GPU_AGENT_TEST_HTTP_WRITE_TIMEOUT_MS";
pub const ENV_MAX_CONNECTIONS: &str = "GPU_AGENT_TEST_HTTP_MAX_CONNECTIONS";

/// hyper refuses a smaller buffer.
const MIN_HEAD_BYTES: usize = 8 << 10;

impl Limits {
    /// `/metrics`: scrapes are small GETs answered from caches; 256 connections cover every
    /// Prometheus replica and probe many times over.
    pub const METRICS: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
        max_connections: 256,
        max_head_bytes: 16 << 10,
    };

    /// The webhook: one review per HTTP/1 connection at a time, so the cap is also the number of
    /// reviews in progress. The API server gives a webhook 10 s at most.
    pub const WEBHOOK: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
        max_connections: 32,
        max_head_bytes: 16 << 10,
    };

    /// `self` with the test-only environment overrides applied. A value that does not parse is
    /// ignored with a warning: these are for tests, never a reason not to start.
    pub fn with_test_overrides(self) -> Self {
        self.with_overrides(|name| std::env::var(name).ok())
    }

    fn with_overrides(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        let number = |name: &str| -> Option<u64> {
            let text = var(name)?;
            match text.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    tracing::warn!(
                        variable = name,
                        value = %text,
                        "ignoring a test-only override that is not a positive integer"
                    );
                    None
                }
            }
        };
        let millis = |name: &str| number(name).map(Duration::from_millis);
        if let Some(d) = millis(ENV_HEADER_TIMEOUT_MS) {
            self.header_timeout = d;
        }
        if let Some(d) = millis(ENV_BODY_TIMEOUT_MS) {
            self.body_timeout = d;
        }
        if let Some(d) = millis(ENV_WRITE_TIMEOUT_MS) {
            self.write_timeout = d;
        }
        if let Some(n) = number(ENV_MAX_CONNECTIONS) {
            self.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        self.max_head_bytes = self.max_head_bytes.max(MIN_HEAD_BYTES);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_bad_values_keep_the_default() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let limits = Limits::METRICS.with_overrides(env(&[
            (ENV_HEADER_TIMEOUT_MS, "200"),
            (ENV_BODY_TIMEOUT_MS, " 300 "),
            (ENV_MAX_CONNECTIONS, "4"),
        ]));
        assert_eq!(limits.header_timeout, Duration::from_millis(200));
        assert_eq!(limits.body_timeout, Duration::from_millis(300));
        assert_eq!(limits.write_timeout, Limits::METRICS.write_timeout);
        assert_eq!(limits.max_connections, 4);

        let limits = Limits::WEBHOOK.with_overrides(env(&[
            (ENV_HEADER_TIMEOUT_MS, "soon"),
            (ENV_WRITE_TIMEOUT_MS, "0"),
            (ENV_MAX_CONNECTIONS, "-1"),
        ]));
        assert_eq!(limits, Limits::WEBHOOK);
    }
}
