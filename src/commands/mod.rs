//! The subcommands. Thin: they wire the core and the shells together and turn failures into
//! exit codes (0 ok, 2 invalid config / fixture / arguments, 1 anything else).

pub mod check_config;
pub mod list;
pub mod mps_control;
pub mod plan;
pub mod run;
pub mod webhook;

use std::sync::Arc;

use crate::cli::InventoryArgs;
use crate::config::{self, Config, LoadError};
use crate::extras::discover::Probe;
use crate::gpu::{self, BackendError, GpuBackend, Inventory};
use crate::health::{HealthEnv, HealthTracker};
use crate::resources::BuildError;
use crate::snapshot::Snapshot;

/// A failure that ends the process, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// Invalid config, fixture or arguments: exit 2.
    #[error("{0}")]
    Invalid(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Other(String),
}

impl Fatal {
    /// Process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Fatal::Invalid(_) => 2,
            Fatal::Other(_) => 1,
        }
    }
}

impl From<LoadError> for Fatal {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Invalid { .. } => Fatal::Invalid(e.to_string()),
            LoadError::Read { .. } => Fatal::Other(e.to_string()),
        }
    }
}

/// Load the config named by `args` (defaults when none) with flag / env overrides applied. Its
/// warnings (unknown fields, ignored settings, differences from NVIDIA) are logged once here.
pub fn load_config(args: &InventoryArgs) -> Result<Config, Fatal> {
    args.log_ignored();
    let config = match args.config_path() {
        Some(path) => {
            let parsed = config::load(path)?;
            parsed.log_warnings();
            parsed.config
        }
        None => Config::default(),
    };
    let overrides = args.overrides();
    let config = config.with_overrides(&overrides);
    // Flags and env may change the hook path or the driver root it must be under.
    config::check_hook_path(&config, &overrides)
        .map_err(|e| Fatal::Invalid(format!("invalid config: {e}")))?;
    Ok(config)
}

/// A backend with no GPUs: what the agent runs on when NVML fails and failOnInitError is false.
struct NoGpus;

impl GpuBackend for NoGpus {
    fn name(&self) -> &'static str {
        "nvml"
    }
    fn inventory(&self) -> Result<Inventory, BackendError> {
        Ok(Inventory::default())
    }
    fn lost_gpus(&self) -> Vec<String> {
        Vec::new()
    }
    fn telemetry(&self, _inventory: &Inventory) -> gpu::Telemetry {
        gpu::Telemetry::new()
    }
    fn watch(self: Arc<Self>, _events: gpu::backend::BackendEvents) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Open the backend named by `args`. NVML failing with `failOnInitError: false` gives a backend
/// with no GPUs (and a warning); with `true` it is fatal, with a message that says what to check.
pub fn open_backend(args: &InventoryArgs, config: &Config) -> Result<Arc<dyn GpuBackend>, Fatal> {
    match gpu::open_backend(args.backend, args.fixture_path().cloned()) {
        Ok(backend) => Ok(backend),
        Err(e) if e.is_invalid_input() => Err(Fatal::Invalid(e.to_string())),
        Err(e @ BackendError::NvmlInit { .. }) if !config.fail_on_init_error => {
            tracing::warn!(error = %e, "failOnInitError is false: running with no GPU resources");
            Ok(Arc::new(NoGpus))
        }
        Err(e) => Err(Fatal::Other(e.to_string())),
    }
}

/// Turn resource-building errors into a fatal error: MIG problems and missing required devices
/// exit 1 (the node is not as the config needs it), config rules that fail on this node exit 2.
pub fn build_failure(errors: Vec<BuildError>) -> Fatal {
    let text = errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n");
    if errors.iter().all(|e| matches!(e, BuildError::Mig(_))) {
        Fatal::Other(format!("cannot advertise MIG devices:\n{text}"))
    } else if errors.iter().all(BuildError::is_node_problem) {
        Fatal::Other(format!("this node lacks what the config requires:\n{text}"))
    } else {
        Fatal::Invalid(format!("invalid config for this node:\n{text}"))
    }
}

/// The node as `run` starts from, and as `list` and `plan` show it: what `run` would advertise.
pub struct NodeView {
    pub node: String,
    pub backend: Arc<dyn GpuBackend>,
    pub snapshot: Snapshot,
    /// Health so far (lost GPUs), under the config's and NVIDIA's env health policy.
    pub tracker: HealthTracker,
    pub health_env: HealthEnv,
}

/// Read the node once: config, backend, inventory, health, resources.
pub fn load_node(args: &InventoryArgs) -> Result<NodeView, Fatal> {
    let config = load_config(args)?;
    let backend = open_backend(args, &config)?;
    let inventory = backend
        .inventory()
        .map_err(|e| Fatal::Other(e.to_string()))?;
    let health_env = HealthEnv::from_process();
    let tracker =
        HealthTracker::new(health_env.policy(&config.health)).with_lost(backend.lost_gpus());
    let node = node_name(args.node_name.as_deref(), &inventory);
    let extras = Probe::host().discover(&config.plugin);
    let snapshot = Snapshot::build_with(
        Arc::new(inventory),
        Arc::new(config),
        Arc::new(tracker.state()),
        Arc::new(extras),
    )
    .map_err(build_failure)?;
    snapshot.log_warnings();
    Ok(NodeView {
        node,
        backend,
        snapshot,
        tracker,
        health_env,
    })
}

/// `--node-name` / `NODE_NAME`, else the fixture's node, else the hostname.
pub fn node_name(flag: Option<&str>, inventory: &Inventory) -> String {
    if let Some(name) = flag.filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    if let Some(name) = inventory.node.as_deref().filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    hostname()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates when it fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end]) {
            if !name.is_empty() {
                return name.to_string();
            }
        }
    }
    "unknown".to_string()
}
