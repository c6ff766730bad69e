//! What the agent advertises: resource names and device IDs, built as a pure function of the
//! inventory, the config and device health ([`build()`]).
//!
//! Names and IDs are made in one place each: [`names`] (resource names, socket names) and [`ids`]
//! (device IDs). Every RPC handler reads a prebuilt [`ResourceSet`]; nothing is computed on the
//! Allocate or ListAndWatch path beyond a hash lookup.

mod build;
pub mod ids;
pub mod names;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

pub use build::{build, BuildError, Built};

/// How a resource shares its GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One device = one whole GPU.
    Exclusive,
    /// One device = one of N replicas of a GPU or MIG device.
    TimeSliced,
    /// One device = one of N replicas of a GPU, served by the resource's MPS control daemon
    /// (a share of the SMs and of the memory per client; Allocate adds the pipe directory).
    Mps,
    /// One device = one MIG device.
    Mig,
    /// One device = one fixed memory slice of a GPU.
    Vgpu,
}

impl Strategy {
    /// Name as `list` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Exclusive => "exclusive",
            Strategy::TimeSliced => "time-sliced",
            Strategy::Mps => "mps",
            Strategy::Mig => "mig",
            Strategy::Vgpu => "vgpu",
        }
    }
}

/// `Healthy` / `Unhealthy` as the kubelet spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Health {
    Healthy,
    Unhealthy,
}

impl Health {
    /// `Healthy` when `healthy`, else `Unhealthy`.
    pub fn from_healthy(healthy: bool) -> Self {
        if healthy {
            Health::Healthy
        } else {
            Health::Unhealthy
        }
    }

    /// The kubelet's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => crate::proto::v1beta1::HEALTHY,
            Health::Unhealthy => crate::proto::v1beta1::UNHEALTHY,
        }
    }
}

/// The MIG device a device maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigTarget {
    pub uuid: String,
    pub profile: String,
    /// Position under the parent GPU (for `<gpu>:<mig>` names under `deviceIDStrategy: index`).
    pub index: u32,
    pub gpu_instance_id: u32,
    pub compute_instance_id: u32,
    pub memory_mib: u64,
    /// Minor of the `/dev/nvidia-caps/nvidia-capN` node granting access to the GPU instance.
    pub gpu_instance_cap_minor: u32,
    /// Minor of the `/dev/nvidia-caps/nvidia-capN` node granting access to the compute instance.
    pub compute_instance_cap_minor: u32,
}

/// The vGPU slice a device is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VgpuSlice {
    /// Slice number on its GPU (0-based).
    pub slice: u32,
    pub memory_mib: u64,
    pub compute_percent: Option<u32>,
}

/// The hardware behind one advertised device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    /// Minor number of `/dev/nvidiaN`.
    pub gpu_minor: u32,
    pub mig: Option<MigTarget>,
    /// Replica number for time-sliced devices (0-based).
    pub replica: Option<u32>,
    pub vgpu: Option<VgpuSlice>,
}

impl Target {
    /// UUID of the device the container sees: the MIG device, else the GPU.
    pub fn device_uuid(&self) -> &str {
        self.mig.as_ref().map_or(&self.gpu_uuid, |m| &m.uuid)
    }
}

/// One advertised device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Device ID as the kubelet sees it (see [`ids`]): UUID-based under every
    /// `deviceIDStrategy`.
    pub id: String,
    pub health: Health,
    /// NUMA node of the GPU, for the kubelet's topology manager.
    pub numa_node: Option<u32>,
    pub target: Target,
    /// The name of the underlying GPU / MIG device under the configured `deviceIDStrategy`
    /// (UUID, or index / `<gpu>:<mig>`): what goes into `NVIDIA_VISIBLE_DEVICES`, volume-mount
    /// paths and CDI device names. Replicas and slices of one device share it.
    pub visible_id: String,
}

/// One extended resource with its devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub name: String,
    pub strategy: Strategy,
    /// Devices in a stable order (GPU index, MIG index, replica / slice number).
    pub devices: Vec<Device>,
    /// Refuse requests for more than one device (`failRequestsGreaterThanOne`).
    pub fail_requests_greater_than_one: bool,
    #[serde(skip)]
    by_id: HashMap<String, usize>,
}

impl Resource {
    /// A resource with `devices`, indexed by ID.
    pub fn new(
        name: String,
        strategy: Strategy,
        devices: Vec<Device>,
        fail_requests_greater_than_one: bool,
    ) -> Self {
        let by_id = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        Self {
            name,
            strategy,
            devices,
            fail_requests_greater_than_one,
            by_id,
        }
    }

    /// The device with this ID.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.by_id.get(id).map(|&i| &self.devices[i])
    }

    /// The device with this ID or, failing that, the one an agent before UUID-only IDs advertised
    /// under this ID with `deviceIDStrategy: index` (`<gpu>`, `<gpu>:<mig>`, plus `::<n>` /
    /// `::vgpu<n>`). The kubelet keeps the IDs it allocated in its checkpoint and reports them
    /// through pod-resources until the pod ends, so metrics attribution still places pods started
    /// before an upgrade. Allocate never accepts these: it uses [`Self::device`].
    pub fn device_or_legacy(&self, id: &str) -> Option<&Device> {
        self.device(id).or_else(|| {
            let base = ids::base(id);
            let suffix = &id[base.len()..];
            self.devices.iter().find(|d| {
                let t = &d.target;
                ids::index_name(t.gpu_index, t.mig.as_ref().map(|m| m.index)) == base
                    && d.id[ids::base(&d.id).len()..] == *suffix
            })
        })
    }

    /// Number of devices per health state.
    pub fn count(&self, health: Health) -> usize {
        self.devices.iter().filter(|d| d.health == health).count()
    }
}

/// Every resource the agent advertises, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ResourceSet {
    pub resources: BTreeMap<String, Resource>,
}

impl ResourceSet {
    /// The resource called `name`.
    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.resources.get(name)
    }

    /// Resource names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// True when nothing is advertised.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}
