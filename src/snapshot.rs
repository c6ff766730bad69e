//! The agent's current view: inventory, config, health and the resources built from them.
//! Published on a `tokio::sync::watch` channel; every RPC handler, the HTTP side and the label
//! writer read the latest one and never block on hardware.

use std::sync::Arc;

use crate::config::Config;
use crate::dra::partition::{self, DraDevices, Partition};
use crate::extras::NodeExtras;
use crate::gpu::Inventory;
use crate::health::HealthState;
use crate::preferred::Topology;
use crate::resources::{self, BuildError, ResourceSet};

/// One consistent view of the node.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub inventory: Arc<Inventory>,
    pub config: Arc<Config>,
    pub health: Arc<HealthState>,
    pub resources: Arc<ResourceSet>,
    /// GPU interconnect tables for GetPreferredAllocation, built once here so that no RPC reads
    /// topology from the hardware.
    pub topology: Arc<Topology>,
    /// Problems tolerated while building (e.g. MIG with `failOnInitError: false`).
    pub warnings: Arc<Vec<String>>,
    /// What the node has for GDS / MOFED / GDRCopy and the IMEX channels, discovered for this
    /// config: Allocate and the CDI spec read it, never the filesystem.
    pub extras: Arc<NodeExtras>,
}

impl Snapshot {
    /// Log the problems tolerated while building, one event each.
    pub fn log_warnings(&self) {
        for warning in self.warnings.iter() {
            tracing::warn!(%warning, "tolerated while building the resources");
        }
    }

    /// Build the resources for these inputs, with nothing discovered on the node (no IMEX
    /// channel, no GDS / MOFED / GDRCopy device): for tools and tests that read no node.
    pub fn build(
        inventory: Arc<Inventory>,
        config: Arc<Config>,
        health: Arc<HealthState>,
    ) -> Result<Self, Vec<BuildError>> {
        Self::build_with(inventory, config, health, Arc::default())
    }

    /// Build the resources for these inputs and what discovery found for `config` on the node.
    /// A requested IMEX channel missing under `imex.required` refuses the whole config, as a
    /// config rule failing on this node does: fatal at start, the last good config kept on reload.
    pub fn build_with(
        inventory: Arc<Inventory>,
        config: Arc<Config>,
        health: Arc<HealthState>,
        extras: Arc<NodeExtras>,
    ) -> Result<Self, Vec<BuildError>> {
        Self::build_partitioned(inventory, config, health, extras, &DraDevices::None)
    }

    /// [`Self::build_with`] with the GPUs `dra` names handed to DRA: the resources (what the
    /// device plugin advertises) leave them out, the inventory (metrics, labels, DRA) keeps them.
    pub fn build_partitioned(
        inventory: Arc<Inventory>,
        config: Arc<Config>,
        health: Arc<HealthState>,
        extras: Arc<NodeExtras>,
        dra: &DraDevices,
    ) -> Result<Self, Vec<BuildError>> {
        let partition = Partition::new(&inventory, dra);
        let device_plugin = if partition.is_empty() {
            None
        } else {
            Some(partition::device_plugin_inventory(&inventory, &partition))
        };
        let advertised = device_plugin.as_ref().unwrap_or(&inventory);
        let missing: Vec<BuildError> = extras
            .required_imex(&config.plugin)
            .into_iter()
            .map(BuildError::from)
            .collect();
        let built = match resources::build(advertised, &config, &health) {
            Ok(built) if missing.is_empty() => built,
            Ok(_) => return Err(missing),
            Err(mut errors) => {
                errors.extend(missing);
                return Err(errors);
            }
        };
        let topology = Arc::new(Topology::new(&inventory));
        Ok(Self {
            inventory,
            config,
            health,
            resources: Arc::new(built.resources),
            topology,
            warnings: Arc::new(built.warnings),
            extras,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImexSettings;
    use crate::extras::{MissingImexChannel, NodeExtras};
    use crate::gpu::fixture;

    /// A config asking for IMEX channel 0 (built directly: the `imex` file keys are the config
    /// loader's business).
    fn imex(required: bool) -> Config {
        let mut config = Config::default();
        config.plugin.imex = ImexSettings {
            channel_ids: vec![0],
            required,
        };
        config
    }

    fn build(config: Config, extras: NodeExtras) -> Result<Snapshot, Vec<BuildError>> {
        let inventory = fixture::parse("gpus: [{model: NVIDIA H100 80GB HBM3}]")
            .unwrap()
            .inventory;
        Snapshot::build_with(
            Arc::new(inventory),
            Arc::new(config),
            Arc::default(),
            Arc::new(extras),
        )
    }

    #[test]
    fn dra_gpus_are_left_out_of_the_resources_but_not_the_inventory() {
        let inventory = fixture::parse(
            "gpus:\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n",
        )
        .unwrap()
        .inventory;
        let dra_uuid = inventory.gpus[1].uuid.clone();
        let snapshot = Snapshot::build_partitioned(
            Arc::new(inventory),
            Arc::default(),
            Arc::default(),
            Arc::default(),
            &DraDevices::List(vec!["1".into()]),
        )
        .unwrap();
        assert_eq!(snapshot.inventory.gpus.len(), 2);
        let advertised: Vec<String> = snapshot
            .resources
            .names()
            .flat_map(|name| snapshot.resources.get(name))
            .flat_map(|r| r.devices.iter().map(|d| d.target.gpu_uuid.clone()))
            .collect();
        assert_eq!(advertised.len(), 1);
        assert!(!advertised.contains(&dra_uuid));
        let all = Snapshot::build_partitioned(
            snapshot.inventory.clone(),
            Arc::default(),
            Arc::default(),
            Arc::default(),
            &DraDevices::All,
        )
        .unwrap();
        assert!(all.resources.is_empty());
    }

    #[test]
    fn a_required_imex_channel_missing_refuses_the_config() {
        let missing = NodeExtras {
            imex_missing: vec![MissingImexChannel {
                id: 0,
                path: "/driver-root/dev/nvidia-caps-imex-channels/channel0".into(),
                reason: "not found".into(),
            }],
            ..NodeExtras::default()
        };
        let errors = build(imex(true), missing.clone()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].is_node_problem());
        assert_eq!(
            errors[0].to_string(),
            "IMEX: requested IMEX channel channel0 does not exist: /driver-root/dev/nvidia-caps-imex-channels/channel0: not found (imex.required is set)"
        );
        let present = NodeExtras {
            imex_channels: vec![0],
            ..NodeExtras::default()
        };
        let snapshot = build(imex(true), present.clone()).unwrap();
        assert_eq!(*snapshot.extras, present);
        // Not required: skipped, the snapshot builds.
        build(imex(false), missing).unwrap();
        // A node problem and a config problem are both reported.
        let mut bad = imex(true);
        // A slice larger than the GPU: a config rule that fails on this node.
        bad.vgpu.push(crate::config::VgpuRule {
            name: "nvidia.com/gpu".into(),
            rename: None,
            memory_mib: 1 << 30,
            compute_percent: None,
            devices: crate::config::DeviceSelector::All,
        });
        let errors = build(bad, NodeExtras::default()).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(!errors[0].is_node_problem() && errors[1].is_node_problem());
    }
}
