//! Runs one plugin per advertised resource and keeps the set in step with the snapshot:
//! unchanged resources keep their sockets and streams, removed ones stop, new ones start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lifecycle::{self, PluginContext};

struct Running {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let mut handle = self.handle;
        if tokio::time::timeout(Duration::from_secs(5), &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
}

/// Manage plugins until `shutdown` turns true, then stop them all (their sockets are removed).
pub async fn run(ctx: PluginContext, mut shutdown: watch::Receiver<bool>) {
    let mut snapshots = ctx.snapshots.clone();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        let wanted: BTreeSet<String> = snapshots
            .borrow_and_update()
            .resources
            .names()
            .map(str::to_string)
            .collect();
        let removed: Vec<String> = running
            .keys()
            .filter(|name| !wanted.contains(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(plugin) = running.remove(&name) {
                tracing::info!(resource = %name, "resource no longer advertised; stopping its plugin");
                plugin.stop().await;
                ctx.status.set_active(&name, false);
            }
        }
        for name in wanted {
            if running.contains_key(&name) {
                continue;
            }
            tracing::info!(resource = %name, "starting plugin");
            ctx.status.set_active(&name, true);
            let (stop, stop_rx) = watch::channel(false);
            let handle = tokio::spawn(lifecycle::run(ctx.clone(), name.clone(), stop_rx));
            running.insert(name, Running { stop, handle });
        }
        tokio::select! {
            _ = crate::sync::until_true(&mut shutdown) => break,
            changed = snapshots.changed() => if changed.is_err() { break },
        }
    }
    // Tell every plugin first, then wait: they stop side by side, not one after another.
    for plugin in running.values() {
        let _ = plugin.stop.send(true);
    }
    for plugin in running.into_values() {
        plugin.stop().await;
    }
}
