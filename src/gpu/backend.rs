//! The backend abstraction: where inventory, telemetry and health events come from.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Inventory, Telemetry};
use crate::health::queue::EventSender;

/// Which backend to use (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// NVML (the same as `nvml`; kept so that manifests can say "whatever the node has").
    Auto,
    /// The NVIDIA Management Library, loaded at run time.
    Nvml,
    /// A YAML fixture (or the built-in 8 × H100 node): no GPU needed.
    Mock,
}

/// Why a backend could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// NVML could not be loaded or initialised (no driver, no library, no device access).
    #[error(
        "NVML could not be initialised: {reason}. Check that the NVIDIA driver is installed and loaded \
         (nvidia-smi works on the host), that libnvidia-ml.so.1 is visible to this process (the NVIDIA \
         container runtime injects it when NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES=utility \
         are set), and that /dev/nvidia* are accessible. To run without a GPU, use --backend mock"
    )]
    NvmlInit { reason: String },
    /// An NVML call failed.
    #[error("NVML {call} failed: {reason}")]
    Nvml { call: String, reason: String },
    /// The mock fixture file could not be read.
    #[error("cannot read mock fixture {path}: {source}")]
    FixtureRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A backend's watcher thread could not be started.
    #[error(
        "cannot start the {thread} thread: {source}. The process is out of threads or memory; \
         check the container's pids and memory limits"
    )]
    WatchThread {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The mock fixture is invalid; every problem is listed with its field path.
    #[error("invalid mock fixture {path}:\n{}", .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    FixtureInvalid {
        path: String,
        errors: Vec<super::fixture::FixtureError>,
    },
}

impl BackendError {
    /// True when the fault is in the input (fixture) rather than the environment: exit code 2.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, BackendError::FixtureInvalid { .. })
    }
}

/// Channels a backend's watcher publishes into.
#[derive(Clone)]
pub struct BackendEvents {
    /// The latest inventory; a new value means the layout changed (MIG re-partition, fixture edit).
    pub inventory: watch::Sender<Arc<Inventory>>,
    /// Health events. A coalescing mailbox: sending never blocks and never loses a device, so an
    /// XID storm can neither stall the watcher nor grow memory.
    pub health: EventSender,
}

/// A source of GPU facts. Implementations: [`super::nvml::NvmlBackend`], [`super::mock::MockBackend`].
///
/// Methods are synchronous (NVML is a blocking C library); the agent calls them from blocking
/// threads, never from an RPC handler.
pub trait GpuBackend: Send + Sync + 'static {
    /// `nvml` or `mock`.
    fn name(&self) -> &'static str;

    /// Enumerate the GPUs and MIG devices now.
    fn inventory(&self) -> Result<Inventory, BackendError>;

    /// UUIDs of GPUs that are unusable right now (lost, fell off the bus), for the initial health.
    fn lost_gpus(&self) -> Vec<String>;

    /// Sample every device of `inventory`. A device that fails is left out; the others are kept.
    fn telemetry(&self, inventory: &Inventory) -> Telemetry;

    /// Start watching for health events and layout changes, publishing into `events`. The watcher
    /// runs on its own thread until `events.health` is closed.
    fn watch(self: Arc<Self>, events: BackendEvents) -> Result<(), BackendError>;
}

/// Open the backend `kind`. `fixture` is only used by the mock.
pub fn open_backend(
    kind: BackendKind,
    fixture: Option<PathBuf>,
) -> Result<Arc<dyn GpuBackend>, BackendError> {
    match kind {
        BackendKind::Mock => Ok(Arc::new(super::mock::MockBackend::open(fixture)?)),
        BackendKind::Auto | BackendKind::Nvml => Ok(Arc::new(super::nvml::NvmlBackend::open()?)),
    }
}
