//! Turns the three inputs (inventory, config, health) into the published [`Snapshot`].
//!
//! A new config that cannot be built on this node is rejected (logged, counted) and the last good
//! one stays; a new inventory that cannot be built keeps the last snapshot and logs why.
//!
//! The node's extras (GDS / MOFED / GDRCopy devices, IMEX channels) are discovered again with
//! every new config, as NVIDIA's plugin does when a config change restarts it; inventory and
//! health changes reuse what was found for the config in force.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::AgentStats;
use crate::config::Config;
use crate::extras::discover::Probe;
use crate::gpu::Inventory;
use crate::health::{HealthEnv, HealthPolicy, HealthState};
use crate::mps::readiness::NotReady;
use crate::snapshot::Snapshot;

/// The input channels, and how the node's extras are looked for.
pub struct Inputs {
    pub inventory: watch::Receiver<Arc<Inventory>>,
    pub config: watch::Receiver<Arc<Config>>,
    pub health: watch::Receiver<Arc<HealthState>>,
    /// MPS resources whose control daemon is not ready, merged into `health`.
    pub mps: watch::Receiver<Arc<NotReady>>,
    pub probe: Probe,
    /// GPUs handed to DRA, left out of the device plugin's resources.
    pub dra: crate::dra::partition::DraDevices,
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
    let mut good_extras = snapshots.borrow().extras.clone();
    let mut mps_open = true;
    loop {
        let config_changed = tokio::select! {
            _ = crate::sync::until_true(&mut shutdown) => break,
            r = inputs.config.changed() => { if r.is_err() { break } true }
            r = inputs.inventory.changed() => { if r.is_err() { break } false }
            r = inputs.health.changed() => { if r.is_err() { break } false }
            // Optional: without an MPS watcher (tests, benches) the sender is gone at once.
            r = inputs.mps.changed(), if mps_open => {
                if r.is_err() {
                    mps_open = false;
                    continue;
                }
                false
            }
        };
        let inventory = inputs.inventory.borrow_and_update().clone();
        let health = inputs.health.borrow_and_update().clone();
        let mps = inputs.mps.borrow_and_update().clone();
        let _span = tracing::info_span!("rebuild", config_changed).entered();
        let (config, extras) = if config_changed {
            let config = inputs.config.borrow_and_update().clone();
            let extras = Arc::new(inputs.probe.discover(&config.plugin));
            (config, extras)
        } else {
            (good_config.clone(), good_extras.clone())
        };
        // A new config's MPS resources are judged now, not at the watcher's next tick, so that
        // none is advertised Healthy before its daemon is seen.
        let health = if config_changed {
            with_mps(health, &crate::mps::readiness::check(&config))
        } else {
            with_mps(health, &mps)
        };
        match Snapshot::build_partitioned(
            inventory,
            config.clone(),
            health,
            extras.clone(),
            &inputs.dra,
        ) {
            Ok(snapshot) => {
                snapshot.log_warnings();
                if config_changed {
                    stats.config_reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(summary = %config.summary(), resources = ?snapshot.resources.names().collect::<Vec<_>>(), "config applied");
                    if config.dra != good_config.dra {
                        // Sockets, driver name and the slice pool are set up once.
                        tracing::warn!(
                            before = ?good_config.dra,
                            after = ?config.dra,
                            "the dra: section changed; it applies at the next start"
                        );
                    }
                    policies.send_replace(health_env.policy(&config.health));
                    good_config = config;
                    good_extras = extras;
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

/// `health` with the MPS resources that are not ready as unhealthy resources.
pub fn with_mps(health: Arc<HealthState>, mps: &NotReady) -> Arc<HealthState> {
    if health.resources == *mps {
        return health;
    }
    Arc::new((*health).clone().with_resources(mps.clone()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::time::Duration;

    use super::*;
    use crate::config::ImexSettings;
    use crate::extras::discover::Roots;
    use crate::gpu::fixture;

    fn imex_required() -> Arc<Config> {
        let mut config = Config::default();
        config.plugin.imex = ImexSettings {
            channel_ids: vec![0],
            required: true,
        };
        Arc::new(config)
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_reload_needing_a_missing_imex_channel_keeps_the_last_good_config() {
        let node = tempfile::tempdir().unwrap();
        let roots = Roots {
            dev: node.path().into(),
            driver: node.path().into(),
        };
        let inventory = Arc::new(
            fixture::parse("gpus: [{model: NVIDIA H100 80GB HBM3}]")
                .unwrap()
                .inventory,
        );
        let first = Arc::new(Config::default());
        let snapshot = Snapshot::build(inventory.clone(), first.clone(), Arc::default()).unwrap();
        let (_inventory_tx, inventory_rx) = watch::channel(inventory);
        let (config_tx, config_rx) = watch::channel(first.clone());
        let (health_tx, health_rx) = watch::channel(Arc::new(HealthState::default()));
        let (snapshot_tx, mut snapshots) = watch::channel(Arc::new(snapshot));
        let env = HealthEnv::default();
        let (policy_tx, _policies) = watch::channel(env.policy(&first.health));
        let stats = Arc::new(AgentStats::default());
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(run(
            Inputs {
                inventory: inventory_rx,
                config: config_rx,
                health: health_rx,
                mps: watch::channel(Arc::default()).1,
                probe: Probe::at(roots),
                dra: Default::default(),
            },
            snapshot_tx,
            policy_tx,
            env,
            stats.clone(),
            shutdown,
        ));

        // Channel 0 required and not on the node: refused, the first config stays.
        config_tx.send_replace(imex_required());
        let failures = || stats.config_reload_failures.load(Ordering::Relaxed);
        eventually("the reload to be refused", || failures() == 1).await;
        assert_eq!(snapshots.borrow_and_update().config, first);

        // The channel appears; the next reload finds it and applies.
        let channel = node.path().join("dev/nvidia-caps-imex-channels/channel0");
        std::fs::create_dir_all(channel.parent().unwrap()).unwrap();
        symlink("/dev/null", &channel).unwrap();
        config_tx.send_replace(imex_required());
        snapshots.changed().await.unwrap();
        let applied = snapshots.borrow_and_update().clone();
        assert!(applied.config.plugin.imex.required);
        assert_eq!(applied.extras.imex_channels, [0]);

        // A health change rebuilds with what was found for the config in force, without looking
        // again: the channel vanishing is not noticed until the next reload.
        std::fs::remove_file(&channel).unwrap();
        health_tx.send_replace(Arc::new(HealthState::default()));
        snapshots.changed().await.unwrap();
        assert_eq!(snapshots.borrow_and_update().extras.imex_channels, [0]);
        assert_eq!(failures(), 1);
    }
}
