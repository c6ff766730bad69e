//! What a validated config holds: the types the rest of the agent reads. Built by
//! [`super::validate`], adjusted by [`super::Overrides`].

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

/// How MIG devices are advertised (`flags.migStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MigStrategy {
    /// MIG GPUs are advertised whole, as `nvidia.com/gpu`.
    #[default]
    None,
    /// Every MIG device is an `nvidia.com/gpu`; all MIG GPUs must use one profile.
    Single,
    /// One `nvidia.com/mig-<profile>` resource per profile.
    Mixed,
}

impl MigStrategy {
    /// Name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            MigStrategy::None => "none",
            MigStrategy::Single => "single",
            MigStrategy::Mixed => "mixed",
        }
    }
}

/// How allocated devices are passed to the container runtime (`flags.plugin.deviceListStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceListStrategy {
    /// `NVIDIA_VISIBLE_DEVICES=<ids>`.
    Envvar,
    /// Mounts under `/var/run/nvidia-container-devices/<id>`.
    VolumeMounts,
    /// `cdi.k8s.io/…` annotations naming CDI devices.
    CdiAnnotations,
    /// The CRI `cdi_devices` field.
    CdiCri,
}

impl DeviceListStrategy {
    /// Name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceListStrategy::Envvar => "envvar",
            DeviceListStrategy::VolumeMounts => "volume-mounts",
            DeviceListStrategy::CdiAnnotations => "cdi-annotations",
            DeviceListStrategy::CdiCri => "cdi-cri",
        }
    }

    /// True for the strategies that need a CDI spec on disk.
    pub fn uses_cdi(self) -> bool {
        matches!(
            self,
            DeviceListStrategy::CdiAnnotations | DeviceListStrategy::CdiCri
        )
    }
}

/// How devices are named to the container: `NVIDIA_VISIBLE_DEVICES`, volume-mount names, CDI
/// device names (`deviceIDStrategy`). The IDs advertised to the kubelet are UUID-based either
/// way, as in NVIDIA's plugin, so that its checkpoint survives a change of strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceIdStrategy {
    #[default]
    Uuid,
    Index,
}

/// Which physical GPUs a sharing entry applies to (`devices:`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceSelector {
    /// Every GPU (or MIG device) the resource would otherwise advertise.
    #[default]
    All,
    /// The first `n` of them, in index order.
    Count(u32),
    /// These GPUs / MIG devices.
    List(Vec<DeviceRef>),
}

/// One entry of an explicit `devices:` list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum DeviceRef {
    /// GPU index.
    Index(u32),
    /// MIG device `<gpu index>:<mig index>`.
    MigIndex(u32, u32),
    /// `GPU-…` or `MIG-…`.
    Uuid(String),
}

impl std::fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceRef::Index(i) => write!(f, "{i}"),
            DeviceRef::MigIndex(g, m) => write!(f, "{g}:{m}"),
            DeviceRef::Uuid(u) => f.write_str(u),
        }
    }
}

/// A time-slicing entry: advertise `replicas` copies of each selected device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeSlicingRule {
    /// Resource the devices come from: `nvidia.com/gpu` or `nvidia.com/mig-<profile>`.
    pub name: String,
    /// Resource name to advertise the replicas under (None = `name`, or `<name>.shared` when
    /// `renameByDefault`).
    pub rename: Option<String>,
    pub replicas: u32,
    pub devices: DeviceSelector,
}

impl TimeSlicingRule {
    /// The resource name the replicas are advertised under.
    pub fn advertised(&self, rename_by_default: bool) -> String {
        match &self.rename {
            Some(name) => name.clone(),
            None if rename_by_default => crate::resources::names::shared_default(&self.name),
            None => self.name.clone(),
        }
    }
}

/// A vGPU entry: cut each selected GPU into fixed memory slices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VgpuRule {
    /// Resource the GPUs come from (`nvidia.com/gpu`).
    pub name: String,
    /// Resource name of the slices (None = `<name>.vgpu`).
    pub rename: Option<String>,
    /// Slice size.
    pub memory_mib: u64,
    /// SM share handed to the container (`CUDA_DEVICE_SM_LIMIT`), 1..=100.
    pub compute_percent: Option<u32>,
    pub devices: DeviceSelector,
}

impl VgpuRule {
    /// The resource name the slices are advertised under.
    pub fn advertised(&self) -> String {
        self.rename
            .clone()
            .unwrap_or_else(|| crate::resources::names::vgpu_default(&self.name))
    }
}

/// How shared devices (replicas, vGPU slices) are picked for a multi-device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedPlacement {
    /// Spread over as many physical GPUs as possible (the default: least contention).
    #[default]
    Spread,
    /// Pack onto as few physical GPUs as possible (leaves whole GPUs free).
    Packed,
}

/// Plugin flags (`flags.plugin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginSettings {
    pub device_list_strategies: Vec<DeviceListStrategy>,
    pub device_id_strategy: DeviceIdStrategy,
    pub pass_device_specs: bool,
    /// Prefix of CDI annotation keys (default `cdi.k8s.io/`).
    pub cdi_annotation_prefix: String,
    /// Root of the driver installation on the host (default `/`).
    pub nvidia_driver_root: String,
    /// Root under which `/dev/nvidia*` exist on the host (default: the driver root).
    pub nvidia_dev_root: String,
    /// Where the agent can read the driver root (`flags.plugin.containerDriverRoot`, e.g. the
    /// DaemonSet's mount of it); `None`: at `nvidia_driver_root` itself. Only CDI's driver
    /// discovery reads it.
    pub container_driver_root: Option<String>,
    /// Host path of `nvidia-ctk` for the CDI spec's ldcache hook (`flags.plugin.nvidiaCTKPath`);
    /// `None`: `/usr/bin/nvidia-ctk` under the driver root if it is there; `Some("")`: no hook.
    pub nvidia_ctk_path: Option<String>,
    /// GPUDirect Storage (`flags.gdsEnabled`, `GDS_ENABLED`): `NVIDIA_GDS=enabled` in every
    /// container, and with CDI the `gds` device.
    pub gds_enabled: bool,
    /// Mellanox OFED (`flags.mofedEnabled`, `MOFED_ENABLED`): `NVIDIA_MOFED=enabled`, CDI `mofed`.
    pub mofed_enabled: bool,
    /// GDRCopy (`flags.gdrcopyEnabled`, `GDRCOPY_ENABLED`): `NVIDIA_GDRCOPY=enabled`, CDI
    /// `gdrcopy`.
    pub gdrcopy_enabled: bool,
    /// IMEX channels handed to every container (`imex:`, `IMEX_CHANNEL_IDS`, `IMEX_REQUIRED`).
    pub imex: ImexSettings,
    /// Where MPS control daemons keep their pipes (`flags.mpsRoot`, `MPS_ROOT`); unset means
    /// [`crate::mps::layout::DEFAULT_ROOT`], the default of NVIDIA's helm chart. Here because
    /// Allocate mounts the resource's pipe directory from it.
    pub mps_root: Option<String>,
}

/// IMEX channels (`imex:`): NVIDIA allows only channel 0.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImexSettings {
    /// `[]` or `[0]`.
    #[serde(rename = "channelIDs")]
    pub channel_ids: Vec<u32>,
    /// A requested channel missing on the node is fatal instead of skipped.
    pub required: bool,
}

impl PluginSettings {
    /// `MPS_ROOT` on the host, its default filled in.
    pub fn mps_root(&self) -> &str {
        self.mps_root
            .as_deref()
            .unwrap_or(crate::mps::layout::DEFAULT_ROOT)
    }

    /// Where the agent reads the driver root.
    pub fn driver_root_readable_at(&self) -> &str {
        self.container_driver_root
            .as_deref()
            .unwrap_or(&self.nvidia_driver_root)
    }
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            device_list_strategies: vec![DeviceListStrategy::Envvar],
            device_id_strategy: DeviceIdStrategy::Uuid,
            pass_device_specs: false,
            cdi_annotation_prefix: "cdi.k8s.io/".into(),
            nvidia_driver_root: "/".into(),
            nvidia_dev_root: "/".into(),
            container_driver_root: None,
            nvidia_ctk_path: None,
            gds_enabled: false,
            mofed_enabled: false,
            gdrcopy_enabled: false,
            imex: ImexSettings::default(),
            mps_root: None,
        }
    }
}

/// Time-slicing settings (`sharing.timeSlicing`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeSlicing {
    pub rename_by_default: bool,
    pub fail_requests_greater_than_one: bool,
    pub resources: Vec<TimeSlicingRule>,
}

/// Health settings (`health:`, extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthSettings {
    /// XIDs that do not make a device unhealthy (application errors, not hardware faults).
    pub ignored_xids: BTreeSet<u64>,
    /// A device is Healthy again after this long without a new XID; zero = never.
    #[serde(serialize_with = "serialize_duration")]
    pub recover_after: Duration,
}

/// XIDs NVIDIA's plugin ignores by default: application faults, not GPU faults.
pub const DEFAULT_IGNORED_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            ignored_xids: DEFAULT_IGNORED_XIDS.into_iter().collect(),
            recover_after: Duration::ZERO,
        }
    }
}

/// Workload → strategy thresholds (`strategy:`, extension; SPEC.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StrategyThresholds {
    pub training_exclusive_above_gib: f64,
    pub inference_shared_below_gib: f64,
    pub mig_range_gib: [f64; 2],
}

impl Default for StrategyThresholds {
    fn default() -> Self {
        Self {
            training_exclusive_above_gib: 16.0,
            inference_shared_below_gib: 4.0,
            mig_range_gib: [4.0, 20.0],
        }
    }
}

/// A validated config: everything the agent needs, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub mig_strategy: MigStrategy,
    pub fail_on_init_error: bool,
    pub plugin: PluginSettings,
    pub time_slicing: TimeSlicing,
    /// MPS sharing (`sharing.mps`): the same shape as time-slicing; replicas share a GPU through
    /// one MPS control daemon per resource. `failRequestsGreaterThanOne` defaults to true here,
    /// as in NVIDIA's plugin.
    pub mps: TimeSlicing,
    pub vgpu: Vec<VgpuRule>,
    pub shared_placement: SharedPlacement,
    pub health: HealthSettings,
    pub strategy: StrategyThresholds,
    pub dra: DraSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mig_strategy: MigStrategy::None,
            fail_on_init_error: true,
            plugin: PluginSettings::default(),
            time_slicing: TimeSlicing::default(),
            mps: TimeSlicing::default(),
            vgpu: Vec::new(),
            shared_placement: SharedPlacement::Spread,
            health: HealthSettings::default(),
            strategy: StrategyThresholds::default(),
            dra: DraSettings::default(),
        }
    }
}

/// The DRA driver settings of the file (`dra:`, extension). Each applies only where its flag or
/// env variable is not set (`--dra`, `--dra-driver-name`, `--dra-devices`), and only at start:
/// the sockets and the ResourceSlice pool are set up once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DraSettings {
    pub enabled: Option<bool>,
    pub driver_name: Option<String>,
    #[serde(serialize_with = "serialize_dra_devices")]
    pub devices: Option<crate::dra::partition::DraDevices>,
}

fn serialize_dra_devices<S: serde::Serializer>(
    d: &Option<crate::dra::partition::DraDevices>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use crate::dra::partition::DraDevices;
    match d {
        None => s.serialize_none(),
        Some(DraDevices::All) => s.serialize_str("all"),
        Some(DraDevices::None) => s.serialize_str("none"),
        Some(DraDevices::List(list)) => s.serialize_str(&list.join(",")),
    }
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::units::format_duration(*d))
}
