//! Turns the three inputs (inventory, config, health) into the published [`Snapshot`].
//!
//! A new config that cannot be built on this node is rejected (logged, counted) and the last good
//! one stays; a new inventory that cannot be built keeps the last snapshot and logs why.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::AgentStats;
use crate::config::Config;
use crate::gpu::Inventory;
use crate::health::{HealthEnv, HealthPolicy, HealthState};
use crate::snapshot::Snapshot;

/// The input channels.
pub struct Inputs {
    pub inventory: watch::Receiver<Arc<Inventory>>,
    pub config: watch::Receiver<Arc<Config>>,
    pub health: watch::Receiver<Arc<HealthState>>,
}

/// Run until every input sender is gone or `shutdown`.
pub async fn run(
    mut inputs: Inputs,
    snapshots: watch::Sender<Arc<Snapshot>>,
    policies: watch::Sender<HealthPolicy>,
    health_env: HealthEnv,
    stats: Arc<AgentStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut good_config = snapshots.borrow().config.clone();
    loop {
        let config_changed = tokio::select! {
            _ = crate::sync::until_true(&mut shutdown) => break,
            r = inputs.config.changed() => { if r.is_err() { break } true }
            r = inputs.inventory.changed() => { if r.is_err() { break } false }
            r = inputs.health.changed() => { if r.is_err() { break } false }
        };
        let inventory = inputs.inventory.borrow_and_update().clone();
        let health = inputs.health.borrow_and_update().clone();
        let config = if config_changed {
            inputs.config.borrow_and_update().clone()
        } else {
            good_config.clone()
        };
        let _span = tracing::info_span!("rebuild", config_changed).entered();
        match Snapshot::build(inventory, config.clone(), health) {
            Ok(snapshot) => {
                snapshot.log_warnings();
                if config_changed {
                    stats.config_reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(summary = %config.summary(), resources = ?snapshot.resources.names().collect::<Vec<_>>(), "config applied");
                    policies.send_replace(health_env.policy(&config.health));
                    good_config = config;
                }
                crate::health::report::log_changes(
                    &snapshots.borrow().resources,
                    &snapshot.resources,
                );
                snapshots.send_replace(Arc::new(snapshot));
            }
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                if config_changed {
                    stats.config_reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(?errors, "config cannot be applied on this node; the last good config stays in force");
                } else {
                    tracing::error!(?errors, "the new device layout cannot be advertised with the current config; keeping the last advertised resources");
                }
            }
        }
    }
}
