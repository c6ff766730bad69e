//! Device health: which GPUs and MIG devices are unusable, and why.
//!
//! [`HealthState`] is the pure value the resource builder reads; the policy that turns backend
//! events into it (ignored XIDs, recovery, fan-out) lives beside it.

pub mod policy;
pub mod queue;
pub mod report;
pub mod watcher;

use std::collections::BTreeMap;

use serde::Serialize;

pub use policy::{xid_meaning, HealthEnv, HealthPolicy, HealthTracker};

/// Why a device is unhealthy, for logs and `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unhealthy {
    /// Human-readable reason, e.g. `XID 79 (GPU has fallen off the bus)`.
    pub reason: String,
}

/// Unhealthy devices. A GPU entry makes every device on that GPU unhealthy (its MIG devices,
/// replicas and vGPU slices); a MIG entry only that instance (and its replicas).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthState {
    /// Unhealthy physical GPUs by UUID.
    pub gpus: BTreeMap<String, Unhealthy>,
    /// Unhealthy MIG devices by UUID.
    pub migs: BTreeMap<String, Unhealthy>,
    /// Advertised resources all of whose shared devices are unusable, by resource name: an MPS
    /// resource whose control daemon is not ready ([`crate::mps::readiness`]). Not a device
    /// fault, so it comes from its own watcher and is merged in by the assembler.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, Unhealthy>,
}

impl HealthState {
    /// True when every device is healthy.
    pub fn all_healthy(&self) -> bool {
        self.gpus.is_empty() && self.migs.is_empty() && self.resources.is_empty()
    }

    /// Are the shared devices of the advertised resource `name` usable as a whole?
    pub fn resource_healthy(&self, name: &str) -> bool {
        !self.resources.contains_key(name)
    }

    /// This state with `resources` as the unhealthy resources (replacing any before).
    pub fn with_resources(mut self, resources: BTreeMap<String, Unhealthy>) -> Self {
        self.resources = resources;
        self
    }

    /// Is the GPU `uuid` healthy?
    pub fn gpu_healthy(&self, uuid: &str) -> bool {
        !self.gpus.contains_key(uuid)
    }

    /// Is the MIG device `mig_uuid` on GPU `gpu_uuid` healthy (itself and its parent)?
    pub fn mig_healthy(&self, gpu_uuid: &str, mig_uuid: &str) -> bool {
        self.gpu_healthy(gpu_uuid) && !self.migs.contains_key(mig_uuid)
    }

    /// Mark GPUs lost (initial state from the backend).
    pub fn with_lost(mut self, lost: impl IntoIterator<Item = String>) -> Self {
        for uuid in lost {
            self.gpus.insert(
                uuid,
                Unhealthy {
                    reason: policy::Cause::Lost.reason(),
                },
            );
        }
        self
    }
}
