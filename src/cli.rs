//! Command-line interface (SPEC.md section 1). Every `run` flag also reads an environment
//! variable; precedence is flag > env > config file > default.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{
    DeviceIdStrategy, DeviceListStrategy, MigStrategy, Overrides, SharedPlacement,
};
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
    /// Run and supervise one MPS control daemon per MPS-shared resource (docs/mps.md).
    MpsControl(MpsControlArgs),
    /// Validate a config file: exit 0 and a summary, or exit 2 and every error.
    CheckConfig {
        /// Config file to validate.
        path: PathBuf,
    },
}

/// Where the inventory and config come from; shared by `run`, `list` and `plan` so that they
/// show exactly what `run` would advertise. Besides gpu-agent's own flags, every flag and env var
/// NVIDIA's device plugin reads is here, under NVIDIA's names and with NVIDIA's meaning, so that
/// NVIDIA's DaemonSet settings carry over unchanged (precedence: flag > env > config file).
#[derive(Debug, Clone, Args)]
pub struct InventoryArgs {
    /// GPU backend.
    #[arg(long, env = "GPU_AGENT_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// Mock inventory fixture (YAML); without it the mock is a built-in 8 × H100 node.
    #[arg(long, env = "GPU_AGENT_MOCK_FIXTURE", value_name = "PATH")]
    pub mock_fixture: Option<PathBuf>,
    /// Sharing / plugin config file (NVIDIA's v1 schema plus extensions).
    #[arg(
        long,
        visible_alias = "config-file",
        env = "CONFIG_FILE",
        value_name = "PATH"
    )]
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
    #[arg(long, env = "DEVICE_LIST_STRATEGY", value_delimiter = ',',
          value_parser = parse_device_list_strategy, value_name = "STRATEGY,...")]
    pub device_list_strategy: Option<Vec<DeviceListStrategy>>,
    /// Device ID strategy (overrides flags.plugin.deviceIDStrategy).
    #[arg(long, env = "DEVICE_ID_STRATEGY", value_enum)]
    pub device_id_strategy: Option<DeviceIdStrategy>,
    /// Pass /dev/nvidia* device specs to containers (overrides flags.plugin.passDeviceSpecs).
    #[arg(long, env = "PASS_DEVICE_SPECS", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub pass_device_specs: Option<bool>,
    /// Root of the driver installation on the host (flags.nvidiaDriverRoot), e.g.
    /// /run/nvidia/driver under the GPU Operator.
    #[arg(long = "driver-root", visible_alias = "nvidia-driver-root", env = "NVIDIA_DRIVER_ROOT",
          value_parser = parse_root, value_name = "PATH")]
    pub nvidia_driver_root: Option<String>,
    /// Root of /dev/nvidia* on the host (flags.nvidiaDevRoot); default: the driver root.
    #[arg(long = "dev-root", visible_alias = "nvidia-dev-root", env = "NVIDIA_DEV_ROOT",
          value_parser = parse_root, value_name = "PATH")]
    pub nvidia_dev_root: Option<String>,
    /// Hand GDRCopy to containers (flags.gdrcopyEnabled).
    #[arg(long, env = "GDRCOPY_ENABLED", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub gdrcopy_enabled: Option<bool>,
    /// Hand GPUDirect Storage to containers (flags.gdsEnabled).
    #[arg(long, env = "GDS_ENABLED", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub gds_enabled: Option<bool>,
    /// Hand Mellanox OFED to containers (flags.mofedEnabled).
    #[arg(long, env = "MOFED_ENABLED", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub mofed_enabled: Option<bool>,
    /// Prefix of CDI annotation keys (flags.plugin.cdiAnnotationPrefix).
    #[arg(long, env = "CDI_ANNOTATION_PREFIX", value_name = "PREFIX")]
    pub cdi_annotation_prefix: Option<String>,
    /// Host path of nvidia-ctk for the CDI spec's hook (flags.plugin.nvidiaCTKPath); also read
    /// from NVIDIA_CTK_PATH.
    #[arg(
        long = "nvidia-cdi-hook-path",
        visible_alias = "nvidia-ctk-path",
        env = "NVIDIA_CDI_HOOK_PATH",
        value_name = "PATH"
    )]
    pub nvidia_cdi_hook_path: Option<String>,
    /// Where the agent's container sees the driver root (flags.plugin.containerDriverRoot); also
    /// read from CONTAINER_DRIVER_ROOT.
    #[arg(long = "driver-root-ctr-path", visible_alias = "container-driver-root",
          env = "DRIVER_ROOT_CTR_PATH", value_parser = parse_absolute, value_name = "PATH")]
    pub container_driver_root: Option<String>,
    /// MPS root on the host (flags.mpsRoot).
    #[arg(long, env = "MPS_ROOT", value_name = "PATH")]
    pub mps_root: Option<String>,
    /// How replicas are picked for multi-device requests: distributed (spread) or packed
    /// (flags.plugin.sharedDevicesAllocationPolicy).
    #[arg(long, env = "SHARED_DEVICES_ALLOCATION_POLICY", value_parser = parse_allocation_policy,
          value_name = "POLICY")]
    pub shared_devices_allocation_policy: Option<SharedPlacement>,
    /// How GPUs are discovered: auto or nvml (tegra is not supported and is ignored).
    #[arg(long, env = "DEVICE_DISCOVERY_STRATEGY", value_enum)]
    pub device_discovery_strategy: Option<DiscoveryStrategy>,
    /// IMEX channels handed to every container: only 0 (imex.channelIDs).
    #[arg(long, env = "IMEX_CHANNEL_IDS", value_delimiter = ',', value_parser = parse_imex_channel,
          value_name = "ID,...")]
    pub imex_channel_ids: Option<Vec<u32>>,
    /// A requested IMEX channel missing on the node is fatal (imex.required).
    #[arg(long, env = "IMEX_REQUIRED", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub imex_required: Option<bool>,
    /// NVIDIA's CDI generator feature flags: gpu-agent writes its own CDI spec, so they are
    /// accepted and logged as having no effect.
    #[arg(long, env = "CDI_FEATURE_FLAGS", value_delimiter = ',', value_parser = trimmed,
          value_name = "FLAG,...")]
    pub cdi_feature_flags: Option<Vec<String>>,
    /// CDI hooks to leave out of the spec: `all`, or names (gpu-agent's spec has one,
    /// `update-ldcache`).
    #[arg(long, env = "CDI_DISABLE_HOOKS", value_delimiter = ',', value_parser = trimmed,
          value_name = "HOOK,...")]
    pub cdi_disable_hooks: Option<Vec<String>>,
}

/// `--device-discovery-strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscoveryStrategy {
    Auto,
    Nvml,
    Tegra,
}

impl InventoryArgs {
    /// Flag / env values that override the config file.
    pub fn overrides(&self) -> Overrides {
        let ctk_path = self
            .nvidia_cdi_hook_path
            .clone()
            .or_else(|| non_empty_env("NVIDIA_CTK_PATH"));
        let container_driver_root = self
            .container_driver_root
            .clone()
            .or_else(|| non_empty_env("CONTAINER_DRIVER_ROOT"));
        // The only hook gpu-agent's CDI spec has is nvidia-ctk's update-ldcache: disabling it
        // (or all hooks) is an nvidia-ctk path of "" (no hook).
        let hooks_off = self.cdi_disable_hooks.as_ref().is_some_and(|hooks| {
            hooks
                .iter()
                .any(|h| h.eq_ignore_ascii_case("all") || h == "update-ldcache")
        });
        Overrides {
            mig_strategy: self.mig_strategy,
            fail_on_init_error: self.fail_on_init_error,
            device_list_strategies: self.device_list_strategy.clone(),
            device_id_strategy: self.device_id_strategy,
            pass_device_specs: self.pass_device_specs,
            nvidia_driver_root: self.nvidia_driver_root.clone(),
            nvidia_dev_root: self.nvidia_dev_root.clone(),
            gdrcopy_enabled: self.gdrcopy_enabled,
            gds_enabled: self.gds_enabled,
            mofed_enabled: self.mofed_enabled,
            cdi_annotation_prefix: self.cdi_annotation_prefix.clone(),
            nvidia_ctk_path: if hooks_off {
                Some(String::new())
            } else {
                ctk_path
            },
            container_driver_root,
            mps_root: self.mps_root.clone(),
            shared_placement: self.shared_devices_allocation_policy,
            imex_channel_ids: self.imex_channel_ids.clone(),
            imex_required: self.imex_required,
        }
    }

    /// Log once what NVIDIA settings are accepted but have no effect here.
    pub fn log_ignored(&self) {
        if self.device_discovery_strategy == Some(DiscoveryStrategy::Tegra) {
            tracing::warn!(
                "DEVICE_DISCOVERY_STRATEGY=tegra: gpu-agent discovers GPUs through NVML only; ignored"
            );
        }
        for flag in self.cdi_feature_flags.iter().flatten() {
            tracing::info!(flag = %flag, "CDI_FEATURE_FLAGS: NVIDIA's CDI generator flag; gpu-agent writes its own CDI spec, no effect");
        }
        for hook in self.cdi_disable_hooks.iter().flatten() {
            if !(hook.eq_ignore_ascii_case("all") || hook == "update-ldcache") {
                tracing::info!(hook = %hook, "CDI_DISABLE_HOOKS: gpu-agent's CDI spec has no such hook (only update-ldcache)");
            }
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

/// An env var that is set to something.
fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// One list element as NVIDIA reads it: trimmed (`"envvar, volume-mounts"` is two strategies).
fn trimmed(s: &str) -> Result<String, String> {
    Ok(s.trim().to_string())
}

fn parse_device_list_strategy(s: &str) -> Result<DeviceListStrategy, String> {
    crate::config::parse_device_list_strategy(s.trim())
}

fn parse_allocation_policy(s: &str) -> Result<SharedPlacement, String> {
    match s.trim() {
        "distributed" => Ok(SharedPlacement::Spread),
        "packed" => Ok(SharedPlacement::Packed),
        other => Err(format!("must be distributed or packed, got {other:?}")),
    }
}

fn parse_imex_channel(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Ok(0),
        _ => Err(format!(
            "invalid IMEX config: channel IDs must be [] or [0]; found {s:?}"
        )),
    }
}

/// A host root: absolute, or "" for `/`.
fn parse_root(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Ok("/".into());
    }
    parse_absolute(s)
}

fn parse_absolute(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_string())
    } else {
        Err(format!("must be an absolute path, got {s:?}"))
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
    /// The kubelet's registration socket (NVIDIA's KUBELET_SOCKET); default
    /// `<device-plugin-dir>/kubelet.sock`. Empty: serve without registering, as NVIDIA's plugin
    /// does.
    #[arg(long, env = "KUBELET_SOCKET", value_name = "PATH")]
    pub kubelet_socket: Option<String>,
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
    /// Metric names on /metrics: gpu-agent's own, dcgm-exporter's (DCGM_FI_*), or both side by
    /// side; the agent's gpu_agent_* metrics under every naming.
    #[arg(
        long,
        env = "GPU_AGENT_METRICS_NAMES",
        value_enum,
        default_value = "gpu-agent",
        value_name = "NAMES"
    )]
    pub metrics_names: crate::metrics::Naming,
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
    #[command(flatten)]
    pub dra: Box<DraArgs>,
}

/// `run`'s Dynamic Resource Allocation flags (SPEC.md section 8).
#[derive(Debug, Clone, Args)]
pub struct DraArgs {
    /// Also act as a DRA driver: register with the kubelet's plugin watcher and prepare
    /// ResourceClaims for the GPUs handed to DRA.
    /// Unset: the config file's `dra.enabled`, else off.
    #[arg(long = "dra", env = "GPU_AGENT_DRA", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub enabled: Option<bool>,
    /// DRA driver name (a DNS subdomain): the registration name, ResourceSlice `spec.driver`.
    /// Unset: the config file's `dra.driverName`, else gpu.gpu-agent.io.
    #[arg(long = "dra-driver-name", env = "GPU_AGENT_DRA_DRIVER_NAME",
          value_parser = parse_driver_name, value_name = "NAME")]
    pub driver_name: Option<String>,
    /// GPUs handed to DRA: all, none, or a comma-separated list of indexes and UUIDs; the rest
    /// stay with the device plugin (default with --dra: all).
    #[arg(long = "dra-devices", env = "GPU_AGENT_DRA_DEVICES",
          value_parser = parse_dra_devices, value_name = "all|none|LIST")]
    pub devices: Option<crate::dra::partition::DraDevices>,
    /// The kubelet's plugin-watcher directory, where the registration socket goes.
    #[arg(
        long = "kubelet-registry-dir",
        env = "GPU_AGENT_KUBELET_REGISTRY_DIR",
        default_value = "/var/lib/kubelet/plugins_registry",
        value_name = "DIR"
    )]
    pub registry_dir: PathBuf,
    /// The kubelet's plugins directory; the DRA socket and checkpoint go in `<DIR>/<driver name>/`.
    #[arg(
        long = "kubelet-plugins-dir",
        env = "GPU_AGENT_KUBELET_PLUGINS_DIR",
        default_value = "/var/lib/kubelet/plugins",
        value_name = "DIR"
    )]
    pub plugins_dir: PathBuf,
    /// Kubeconfig for the API server (default: the in-cluster config).
    #[arg(long = "kubeconfig", env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Test only: read ResourceClaims from this JSON file instead of the API server (see
    /// docs/dra.md).
    #[arg(
        long = "dra-claims-file",
        env = "GPU_AGENT_TEST_DRA_CLAIMS",
        hide = true,
        value_name = "PATH"
    )]
    pub claims_file: Option<PathBuf>,
}

impl DraArgs {
    /// Whether the agent is a DRA driver (`--dra`; default off).
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(false)
    }

    /// The driver name (`--dra-driver-name`; default gpu.gpu-agent.io).
    pub fn driver_name(&self) -> &str {
        self.driver_name
            .as_deref()
            .unwrap_or(crate::dra::DEFAULT_DRIVER_NAME)
    }

    /// The GPUs handed to DRA: none without `--dra`, else `--dra-devices` (default all).
    pub fn selection(&self) -> crate::dra::partition::DraDevices {
        use crate::dra::partition::DraDevices;
        match (self.enabled(), &self.devices) {
            (false, _) => DraDevices::None,
            (true, Some(devices)) => devices.clone(),
            (true, None) => DraDevices::All,
        }
    }

    /// These flags with the config file's `dra:` section filling what no flag or env variable
    /// set (flag > env > file, as for every setting).
    pub fn with_file(&self, file: &crate::config::DraSettings) -> DraArgs {
        let mut out = self.clone();
        out.enabled = out.enabled.or(file.enabled);
        out.driver_name = out.driver_name.or_else(|| file.driver_name.clone());
        out.devices = out.devices.or_else(|| file.devices.clone());
        out
    }
}

fn parse_driver_name(s: &str) -> Result<String, String> {
    crate::dra::names::check_driver_name(s).map(|()| s.to_string())
}

fn parse_dra_devices(s: &str) -> Result<crate::dra::partition::DraDevices, String> {
    s.parse()
}

impl RunArgs {
    /// Where to register: `--kubelet-socket`, else `kubelet.sock` in the device-plugin
    /// directory; `None` (an empty `--kubelet-socket`) when the agent must not register.
    pub fn kubelet_socket(&self) -> Option<PathBuf> {
        match &self.kubelet_socket {
            Some(path) if path.is_empty() => None,
            Some(path) => Some(PathBuf::from(path)),
            None => Some(
                self.device_plugin_dir
                    .join(crate::proto::v1beta1::KUBELET_SOCKET),
            ),
        }
    }
}

/// The command line as `main` should parse it. Invoked through a link named
/// `nvidia-device-plugin` (NVIDIA's image command, which its config-manager sidecar finds by
/// that name to send SIGHUP), the binary is `gpu-agent run`, taking NVIDIA's flag spellings.
pub fn argv() -> Vec<std::ffi::OsString> {
    let mut args = argv_from(std::env::args_os());
    empty_env_vars(&mut args);
    args
}

/// Env vars whose empty value means something: no registration, HTTP or labels off, no config
/// or fixture, the driver at `/`.
const EMPTY_MEANS_SOMETHING: &[&str] = &[
    "KUBELET_SOCKET",
    "GPU_AGENT_METRICS_ADDR",
    "GPU_AGENT_NFD_FEATURES_FILE",
    "CONFIG_FILE",
    "GPU_AGENT_MOCK_FIXTURE",
    "NVIDIA_DRIVER_ROOT",
];

/// clap reads an env var set to "" as a flag given without a value, an error. A DaemonSet's
/// `value: ""` is common, so before parsing: an empty env var of the command being run is
/// unset, or, where "" means something, turned into the flag with an empty value (unless the
/// flag itself was given, which wins as flags do). Runs first thing in `main`, while the
/// process has one thread.
fn empty_env_vars(args: &mut Vec<std::ffi::OsString>) {
    use clap::CommandFactory;
    let cli = Cli::command();
    let Some(command) = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(|name| cli.find_subcommand(name))
    else {
        return;
    };
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        if !std::env::var_os(env).is_some_and(|v| v.is_empty()) {
            continue;
        }
        std::env::remove_var(env);
        if !EMPTY_MEANS_SOMETHING.contains(&env) {
            continue;
        }
        let names: Vec<String> = arg
            .get_long_and_visible_aliases()
            .into_iter()
            .flatten()
            .map(|n| format!("--{n}"))
            .collect();
        let given = args.iter().filter_map(|a| a.to_str()).any(|a| {
            names
                .iter()
                .any(|n| a == n || a.starts_with(&format!("{n}=")))
        });
        if let (false, Some(flag)) = (given, names.first()) {
            extra.push(flag.into());
            extra.push("".into());
        }
    }
    args.extend(extra);
}

fn argv_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_os_string());
    if invoked_as.as_deref() == Some(std::ffi::OsStr::new(NVIDIA_DEVICE_PLUGIN)) {
        args.insert(1, "run".into());
    }
    args
}

/// `gpu-agent mps-control`.
#[derive(Debug, Clone, Args)]
pub struct MpsControlArgs {
    /// The node and its config, read as `run` reads them: the MPS-shared resources and
    /// `flags.mpsRoot` / `--mps-root` / `MPS_ROOT` (default /run/nvidia/mps) come from there, so
    /// both containers agree on every path.
    #[command(flatten)]
    pub inventory: InventoryArgs,
    /// nvidia-cuda-mps-control to run (default: found on PATH).
    #[arg(long, env = "GPU_AGENT_MPS_CONTROL_BINARY", value_name = "PATH")]
    pub mps_control_binary: Option<PathBuf>,
    /// nvidia-smi, which sets the compute mode (default: found on PATH).
    #[arg(long, env = "GPU_AGENT_NVIDIA_SMI_BINARY", value_name = "PATH")]
    pub nvidia_smi_binary: Option<PathBuf>,
    /// Set each shared GPU's compute mode to EXCLUSIVE_PROCESS before starting its daemon, and
    /// back to DEFAULT on shutdown, as NVIDIA's plugin does.
    #[arg(long, env = "GPU_AGENT_MPS_SET_COMPUTE_MODE", default_value_t = true,
          num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), value_name = "BOOL")]
    pub set_compute_mode: bool,
    /// How often each running daemon is probed with get_server_list.
    #[arg(long, env = "GPU_AGENT_MPS_PROBE_INTERVAL", default_value = "1s",
          value_parser = parse_interval, value_name = "DURATION")]
    pub probe_interval: Duration,
    /// Test only: the daemons to run, as a JSON list of MpsDaemonSpec, instead of the config's.
    #[arg(long, hide = true, value_name = "PATH")]
    pub mps_spec_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "GPU_AGENT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// The name NVIDIA's image runs its plugin under.
pub const NVIDIA_DEVICE_PLUGIN: &str = "nvidia-device-plugin";

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(argv_from(args.iter().map(std::ffi::OsString::from)))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn invoked_as_nvidia_device_plugin_it_runs_with_nvidia_flag_spellings() {
        let cli = parse(&[
            "/usr/bin/nvidia-device-plugin",
            "--mig-strategy=mixed",
            "--fail-on-init-error=false",
            "--device-list-strategy=envvar, cdi-cri",
            "--nvidia-driver-root=/run/nvidia/driver",
            "--config-file=/config/config.yaml",
            "--pass-device-specs",
        ]);
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        let o = run.inventory.overrides();
        assert_eq!(o.mig_strategy, Some(MigStrategy::Mixed));
        assert_eq!(o.fail_on_init_error, Some(false));
        assert_eq!(
            o.device_list_strategies,
            Some(vec![DeviceListStrategy::Envvar, DeviceListStrategy::CdiCri])
        );
        assert_eq!(o.nvidia_driver_root.as_deref(), Some("/run/nvidia/driver"));
        assert_eq!(o.pass_device_specs, Some(true));
        assert_eq!(
            run.inventory.config_path().unwrap().to_str(),
            Some("/config/config.yaml")
        );
        // Under its own name nothing changes.
        assert!(matches!(
            parse(&["gpu-agent", "list"]).command,
            Command::List(_)
        ));
    }

    #[test]
    fn kubelet_socket_default_override_and_empty() {
        let run = |extra: &[&str]| {
            let mut args = vec!["gpu-agent", "run", "--device-plugin-dir", "/dp"];
            args.extend_from_slice(extra);
            match parse(&args).command {
                Command::Run(run) => run.kubelet_socket(),
                _ => unreachable!(),
            }
        };
        assert_eq!(run(&[]), Some(PathBuf::from("/dp/kubelet.sock")));
        assert_eq!(
            run(&["--kubelet-socket", "/k/kubelet.sock"]),
            Some(PathBuf::from("/k/kubelet.sock"))
        );
        assert_eq!(run(&["--kubelet-socket", ""]), None);
    }

    #[test]
    fn dra_flags_default_and_checks() {
        use crate::dra::partition::DraDevices;
        let dra = |extra: &[&str]| {
            let mut args = vec!["gpu-agent", "run"];
            args.extend_from_slice(extra);
            match parse(&args).command {
                Command::Run(run) => run.dra,
                _ => unreachable!(),
            }
        };
        let off = dra(&[]);
        assert!(!off.enabled());
        assert_eq!(off.selection(), DraDevices::None);
        assert_eq!(off.driver_name(), "gpu.gpu-agent.io");
        assert_eq!(
            off.registry_dir,
            PathBuf::from("/var/lib/kubelet/plugins_registry")
        );
        assert_eq!(off.plugins_dir, PathBuf::from("/var/lib/kubelet/plugins"));
        // --dra-devices alone hands nothing to DRA: --dra turns it on.
        assert_eq!(dra(&["--dra-devices", "0"]).selection(), DraDevices::None);
        assert_eq!(dra(&["--dra"]).selection(), DraDevices::All);
        assert_eq!(
            dra(&["--dra", "--dra-devices", "1,GPU-x"]).selection(),
            DraDevices::List(vec!["1".into(), "GPU-x".into()])
        );
        assert_eq!(
            dra(&["--dra=false", "--dra-devices", "all"]).selection(),
            DraDevices::None
        );
        // The config file's dra: section fills what no flag set; a flag wins.
        let file = crate::config::DraSettings {
            enabled: Some(true),
            driver_name: Some("gpu.example.com".into()),
            devices: Some(DraDevices::List(vec!["3".into()])),
        };
        let from_file = dra(&[]).with_file(&file);
        assert!(from_file.enabled());
        assert_eq!(from_file.driver_name(), "gpu.example.com");
        assert_eq!(from_file.selection(), DraDevices::List(vec!["3".into()]));
        let flags_win = dra(&["--dra=false", "--dra-driver-name", "a.b"]).with_file(&file);
        assert!(!flags_win.enabled());
        assert_eq!(flags_win.driver_name(), "a.b");
        assert_eq!(
            dra(&["--dra", "--dra-devices", "all"])
                .with_file(&file)
                .selection(),
            DraDevices::All
        );
        let err = Cli::try_parse_from(["gpu-agent", "run", "--dra-driver-name", "GPU.io"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--dra-driver-name")
                && err.contains("GPU.io")
                && err.contains("DNS subdomain"),
            "{err}"
        );
    }

    #[test]
    fn nvidia_values_are_checked_and_trimmed() {
        let err = |args: &[&str]| Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(err(&["gpu-agent", "run", "--imex-channel-ids", "0,1"])
            .contains("channel IDs must be [] or [0]"));
        assert!(err(&["gpu-agent", "run", "--driver-root", "run/nvidia"]).contains("absolute"));
        assert!(err(&[
            "gpu-agent",
            "run",
            "--shared-devices-allocation-policy",
            "spread"
        ])
        .contains("distributed or packed"));
        let cli = parse(&[
            "gpu-agent",
            "run",
            "--shared-devices-allocation-policy",
            "packed",
            "--imex-channel-ids",
            " 0 ",
        ]);
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        let o = run.inventory.overrides();
        assert_eq!(o.shared_placement, Some(SharedPlacement::Packed));
        assert_eq!(o.imex_channel_ids, Some(vec![0]));
    }
}
