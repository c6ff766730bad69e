//! Which MPS resources have no ready control daemon, so that their replicas are advertised
//! Unhealthy until it is up: a client scheduled there would fail to connect to the pipe.
//!
//! NVIDIA's plugin checks its daemon once, at start, and fails if it is down. gpu-agent keeps
//! checking: a daemon writes `<MPS_ROOT>/<resource>/.started` once it runs with its limits set
//! and removes it when it stops ([`layout::started_marker`]), and [`run`] polls for that file
//! and feeds the result to the assembler as part of the health state.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::layout;
use crate::config::Config;
use crate::health::Unhealthy;

/// Unhealthy MPS resources by advertised name.
pub type NotReady = BTreeMap<String, Unhealthy>;

/// How often [`run`] looks at the markers: a daemon's restart shows within this.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The MPS resources of `config` whose started marker `exists` does not find. Pure: `exists`
/// is the only look at the file system.
pub fn not_ready(config: &Config, exists: impl Fn(&Path) -> bool) -> NotReady {
    let root = Path::new(config.plugin.mps_root());
    let mut out = NotReady::new();
    for rule in &config.mps.resources {
        let name = rule.advertised(config.mps.rename_by_default);
        let marker = layout::started_marker(root, &name);
        if !exists(&marker) {
            let reason = format!(
                "MPS control daemon not ready ({} missing)",
                marker.display()
            );
            out.insert(name, Unhealthy { reason });
        }
    }
    out
}

/// [`not_ready`] against the real file system.
pub fn check(config: &Config) -> NotReady {
    not_ready(config, |p| p.exists())
}

/// Poll the markers of the config in force every `interval` and publish the MPS resources that
/// are not ready on `tx` when that set changes, logging each change with its reason.
pub async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    tx: watch::Sender<Arc<NotReady>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::sync::until_true(&mut shutdown) => break,
            r = config.changed() => if r.is_err() { break },
            _ = ticker.tick() => {}
        }
        let current = config.borrow_and_update().clone();
        let now = check(&current);
        tx.send_if_modified(|before| {
            if **before == now {
                return false;
            }
            log_changes(before, &now);
            *before = Arc::new(now);
            true
        });
    }
}

fn log_changes(before: &NotReady, now: &NotReady) {
    for (resource, why) in now {
        if !before.contains_key(resource) {
            tracing::warn!(%resource, reason = %why.reason, "MPS resource not ready; its replicas are Unhealthy");
        }
    }
    for resource in before.keys() {
        if !now.contains_key(resource) {
            tracing::info!(%resource, "MPS control daemon ready; replicas Healthy again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_ready_only_while_its_started_marker_exists() {
        let config = crate::config::parse(
            "flags: {mpsRoot: /m}\nsharing: {mps: {renameByDefault: true, resources: [{name: gpu, replicas: 2}]}}",
        )
        .unwrap();
        let down = not_ready(&config, |_| false);
        assert_eq!(down.keys().collect::<Vec<_>>(), ["nvidia.com/gpu.shared"]);
        assert_eq!(
            down["nvidia.com/gpu.shared"].reason,
            "MPS control daemon not ready (/m/nvidia.com/gpu.shared/.started missing)"
        );
        let up = not_ready(&config, |p| {
            p == Path::new("/m/nvidia.com/gpu.shared/.started")
        });
        assert!(up.is_empty());
        // No MPS: nothing to wait for.
        assert!(not_ready(&Config::default(), |_| false).is_empty());
    }
}
