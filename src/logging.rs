//! Tracing setup: text or JSON on stderr, level from `RUST_LOG` (default `info`, with the
//! libraries' own events kept out: see [`DEFAULT_FILTER`]).

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Our events at info; kube-rs and the HTTP stack below it say nothing of their own: the DRA
/// publisher logs each failed call once, with the error, as a WARN (kube_client would add an
/// ERROR line per retry). `RUST_LOG=kube_client=debug` brings them back.
pub const DEFAULT_FILTER: &str = "info,kube_client=off,kube_runtime=off,hyper_util=off";

/// Install the global subscriber.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: container logs (kubectl logs, log shippers) get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
