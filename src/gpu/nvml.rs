//! The NVML backend (nvml-wrapper; libnvidia-ml is loaded at run time).
//!
//! STUB: being written.

use std::sync::Arc;

use super::backend::{BackendError, BackendEvents, GpuBackend};
use super::{Inventory, Telemetry};

/// GPUs as NVML reports them.
pub struct NvmlBackend {}

impl NvmlBackend {
    /// Load and initialise NVML.
    pub fn open() -> Result<Self, BackendError> {
        Err(BackendError::NvmlInit {
            reason: "not implemented yet".into(),
        })
    }
}

impl GpuBackend for NvmlBackend {
    fn name(&self) -> &'static str {
        "nvml"
    }
    fn inventory(&self) -> Result<Inventory, BackendError> {
        Ok(Inventory::default())
    }
    fn lost_gpus(&self) -> Vec<String> {
        vec![]
    }
    fn telemetry(&self, _inventory: &Inventory) -> Telemetry {
        Telemetry::default()
    }
    fn watch(self: Arc<Self>, _events: BackendEvents) -> Result<(), BackendError> {
        Ok(())
    }
}
