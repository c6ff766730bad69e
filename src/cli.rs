//! Command-line interface (SPEC.md section 1). Every `run` flag also reads an environment
//! variable; precedence is flag > env > config file > default.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{DeviceIdStrategy, DeviceListStrategy, MigStrategy, Overrides};
use crate::gpu::BackendKind;

/// gpu-agent: Kubernetes GPU device plugin and node agent.
#[derive(Debug, Parser)]
#[command(name = "gpu-agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the device plugin and node agent.
    Run(RunArgs),
    /// Print the inventory and every resource the agent would advertise.
    List(ListArgs),
    /// Apply the strategy rules to this node: which resource a workload should request.
    Plan(PlanArgs),
    /// Serve the mutating admission webhook that applies the strategy rules to pods.
    Webhook(WebhookArgs),
    /// Validate a config file: exit 0 and a summary, or exit 2 and every error.
    CheckConfig {
        /// Config file to validate.
        path: PathBuf,
    },
}

/// Where the inventory and config come from; shared by `run`, `list` and `plan` so that they
/// show exactly what `run` would advertise.
#[derive(Debug, Clone, Args)]
pub struct InventoryArgs {
    /// GPU backend.
    #[arg(long, env = "GPU_AGENT_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// Mock inventory fixture (YAML); without it the mock is a built-in 8 × H100 node.
    #[arg(long, env = "GPU_AGENT_MOCK_FIXTURE", value_name = "PATH")]
    pub mock_fixture: Option<PathBuf>,
    /// Sharing / plugin config file (NVIDIA's v1 schema plus extensions).
    #[arg(long, env = "CONFIG_FILE", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Node name for labels, metrics and `list` (default: the fixture's node, else the hostname).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// MIG strategy (overrides flags.migStrategy).
    #[arg(long, env = "MIG_STRATEGY", value_enum)]
    pub mig_strategy: Option<MigStrategy>,
    /// Exit when NVML cannot be initialised (overrides flags.failOnInitError).
    #[arg(long, env = "FAIL_ON_INIT_ERROR", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub fail_on_init_error: Option<bool>,
    /// Device-list strategies, comma-separated: envvar, volume-mounts, cdi-annotations, cdi-cri.
    #[arg(long, env = "DEVICE_LIST_STRATEGY", value_delimiter = ',', value_enum)]
    pub device_list_strategy: Option<Vec<DeviceListStrategy>>,
    /// Device ID strategy (overrides flags.plugin.deviceIDStrategy).
    #[arg(long, env = "DEVICE_ID_STRATEGY", value_enum)]
    pub device_id_strategy: Option<DeviceIdStrategy>,
    /// Pass /dev/nvidia* device specs to containers (overrides flags.plugin.passDeviceSpecs).
    #[arg(long, env = "PASS_DEVICE_SPECS", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub pass_device_specs: Option<bool>,
}

impl InventoryArgs {
    /// Flag / env values that override the config file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            mig_strategy: self.mig_strategy,
            fail_on_init_error: self.fail_on_init_error,
            device_list_strategies: self.device_list_strategy.clone(),
            device_id_strategy: self.device_id_strategy,
            pass_device_specs: self.pass_device_specs,
        }
    }

    /// The config path, treating an empty value (`CONFIG_FILE=""`) as none.
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config.as_ref().filter(|p| !p.as_os_str().is_empty())
    }

    /// The fixture path, treating an empty value as none.
    pub fn fixture_path(&self) -> Option<&PathBuf> {
        self.mock_fixture
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub inventory: InventoryArgs,
    /// The kubelet's device-plugin directory (holds kubelet.sock and our sockets).
    #[arg(
        long,
        env = "GPU_AGENT_DEVICE_PLUGIN_DIR",
        default_value = "/var/lib/kubelet/device-plugins",
        value_name = "DIR"
    )]
    pub device_plugin_dir: PathBuf,
    /// The kubelet pod-resources socket (for attributing devices to pods).
    #[arg(
        long,
        env = "GPU_AGENT_POD_RESOURCES_SOCKET",
        default_value = "/var/lib/kubelet/pod-resources/kubelet.sock",
        value_name = "PATH"
    )]
    pub pod_resources_socket: PathBuf,
    /// Address for /metrics, /healthz and /readyz ("" disables HTTP).
    #[arg(
        long,
        env = "GPU_AGENT_METRICS_ADDR",
        default_value = "0.0.0.0:9400",
        value_name = "ADDR"
    )]
    pub metrics_addr: String,
    /// Node Feature Discovery feature file to write labels to ("" disables).
    #[arg(
        long,
        env = "GPU_AGENT_NFD_FEATURES_FILE",
        default_value = "/etc/kubernetes/node-feature-discovery/features.d/gpu-agent",
        value_name = "PATH"
    )]
    pub nfd_features_file: String,
    /// Directory for CDI specs (cdi-annotations / cdi-cri strategies).
    #[arg(
        long,
        env = "GPU_AGENT_CDI_SPEC_DIR",
        default_value = "/var/run/cdi",
        value_name = "DIR"
    )]
    pub cdi_spec_dir: PathBuf,
    /// Telemetry sampling interval; scrapes read the cache.
    #[arg(long, env = "GPU_AGENT_COLLECT_INTERVAL", default_value = "10s", value_parser = parse_interval, value_name = "DURATION")]
    pub collect_interval: Duration,
    /// Log format.
    #[arg(long, env = "GPU_AGENT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = crate::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!("must be at least 100ms, got {s:?}"));
    }
    Ok(d)
}

/// Output format of `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListOutput {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub inventory: InventoryArgs,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: ListOutput,
}

/// Output format of `plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    Text,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub inventory: InventoryArgs,
    /// What the workload does.
    #[arg(long, value_enum)]
    pub workload: crate::strategy::WorkloadType,
    /// GPU memory the workload needs, as a Kubernetes quantity (3Gi, 512Mi, 20G, 4096).
    #[arg(long, value_name = "QUANTITY", value_parser = parse_quantity)]
    pub gpu_memory: u64,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: PlanOutput,
}

fn parse_quantity(s: &str) -> Result<u64, String> {
    crate::units::parse_quantity(s).map_err(|e| e.to_string())
}

/// `gpu-agent webhook`: its own flags (it runs as a Deployment, not on GPU nodes).
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on (/mutate and /healthz).
    #[arg(
        long,
        env = "GPU_AGENT_WEBHOOK_LISTEN_ADDR",
        default_value = "0.0.0.0:8443",
        value_name = "ADDR"
    )]
    pub listen_addr: String,
    /// PEM certificate chain served to the API server; re-read when the file changes.
    #[arg(long, env = "GPU_AGENT_WEBHOOK_TLS_CERT_FILE", value_name = "PATH")]
    pub tls_cert_file: PathBuf,
    /// PEM private key of the certificate; re-read when the file changes.
    #[arg(long, env = "GPU_AGENT_WEBHOOK_TLS_KEY_FILE", value_name = "PATH")]
    pub tls_key_file: PathBuf,
    /// The resources the cluster offers (YAML or JSON; see README); re-read when it changes.
    #[arg(long, env = "GPU_AGENT_WEBHOOK_CATALOG", value_name = "PATH")]
    pub catalog: PathBuf,
    /// Config file whose `strategy:` thresholds apply (defaults without it); re-read when it
    /// changes.
    #[arg(long, env = "GPU_AGENT_WEBHOOK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "GPU_AGENT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl WebhookArgs {
    /// The config path, treating an empty value as none.
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config.as_ref().filter(|p| !p.as_os_str().is_empty())
    }
}
