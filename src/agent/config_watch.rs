//! Watches the config file: a changed file (edited in place, or swapped by the kubelet's
//! ConfigMap symlink dance) or a SIGHUP yields a new candidate config. Invalid candidates are
//! logged and counted here; valid ones still have to build on this node (see `assemble`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::AgentStats;
use crate::config::{self, Config, Overrides};
use crate::yaml_limits::{self, DocumentError};

/// How often the file is re-read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Run until `shutdown`. `candidates` receives every valid config that differs from the last one.
pub async fn run(
    path: PathBuf,
    overrides: Overrides,
    mut hup: mpsc::Receiver<()>,
    candidates: watch::Sender<Arc<Config>>,
    stats: Arc<AgentStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_bytes = read(&path).await.ok();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = crate::sync::until_true(&mut shutdown) => break,
            _ = ticker.tick() => false,
            Some(()) = hup.recv() => true,
        };
        let bytes = match read(&path).await {
            Ok(bytes) => bytes,
            Err(DocumentError::Limit(limit)) => {
                // Over the document limits: rejected as an invalid config is, reported once.
                if forced || last_bytes.is_some() {
                    stats.config_reload_failures.fetch_add(1, Ordering::Relaxed);
                    let errors = [format!("config: {limit}")];
                    tracing::error!(path = %path.display(), ?errors, "invalid config rejected; the last good config stays in force");
                }
                last_bytes = None;
                continue;
            }
            Err(DocumentError::Read(error)) => {
                if forced || last_bytes.is_some() {
                    stats.config_reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(path = %path.display(), %error, "config file unreadable; the last good config stays in force");
                }
                last_bytes = None;
                continue;
            }
        };
        if !forced && last_bytes.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last_bytes = Some(bytes.clone());
        let _span = tracing::info_span!("config_reload", path = %path.display(), forced).entered();
        let parsed = String::from_utf8(bytes)
            .map_err(|e| {
                vec![config::ConfigError::new(
                    "config",
                    format!("not UTF-8: {e}"),
                )]
            })
            .and_then(|text| config::read(&text))
            .and_then(|parsed| {
                let applied = parsed.config.clone().with_overrides(&overrides);
                // The hook path against the driver root in force once flags and env apply.
                config::check_hook_path(&applied, &overrides).map_err(|e| vec![e])?;
                Ok((parsed, applied))
            });
        match parsed {
            Ok((parsed, applied)) => {
                parsed.log_warnings();
                let config = Arc::new(applied);
                if *candidates.borrow() != config {
                    candidates.send_replace(config);
                } else if forced {
                    tracing::info!("config unchanged");
                }
            }
            Err(errors) => {
                stats.config_reload_failures.fetch_add(1, Ordering::Relaxed);
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::error!(
                    ?errors,
                    "invalid config rejected; the last good config stays in force"
                );
            }
        }
    }
}

/// The file's bytes, read off the async runtime ([`yaml_limits::read_bytes`]: regular files
/// only, never blocking, at most the document limit).
async fn read(path: &std::path::Path) -> Result<Vec<u8>, DocumentError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || yaml_limits::read_bytes(&path))
        .await
        .unwrap_or_else(|e| Err(DocumentError::Read(std::io::Error::other(e))))
}
