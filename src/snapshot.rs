//! The agent's current view: inventory, config, health and the resources built from them.
//! Published on a `tokio::sync::watch` channel; every RPC handler, the HTTP side and the label
//! writer read the latest one and never block on hardware.

use std::sync::Arc;

use crate::config::Config;
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
}

impl Snapshot {
    /// Log the problems tolerated while building, one event each.
    pub fn log_warnings(&self) {
        for warning in self.warnings.iter() {
            tracing::warn!(%warning, "tolerated while building the resources");
        }
    }

    /// Build the resources for these inputs.
    pub fn build(
        inventory: Arc<Inventory>,
        config: Arc<Config>,
        health: Arc<HealthState>,
    ) -> Result<Self, Vec<BuildError>> {
        let built = resources::build(&inventory, &config, &health)?;
        let topology = Arc::new(Topology::new(&inventory));
        Ok(Self {
            inventory,
            config,
            health,
            resources: Arc::new(built.resources),
            topology,
            warnings: Arc::new(built.warnings),
        })
    }
}
