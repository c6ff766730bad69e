//! What the hardware is: the GPU inventory, telemetry samples and health events, and the backends
//! (NVML, mock) that produce them.
//!
//! Everything here is plain data. The backends fill it; the pure core (`resources`, `allocate`,
//! `preferred`) reads it.

pub mod backend;
pub mod fixture;
pub mod ids;
pub mod mig_profiles;
pub mod mock;
pub mod nvml;
pub mod telemetry;

use std::collections::BTreeMap;

use serde::Serialize;

pub use backend::{open_backend, BackendError, BackendKind, GpuBackend};
pub use telemetry::{DeviceTelemetry, Profiling, Telemetry};

/// The GPUs of one node as a backend enumerated them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Node name the fixture names, if any (the real backend leaves it empty).
    pub node: Option<String>,
    /// Kernel driver version, e.g. `580.95.05`.
    pub driver_version: Option<String>,
    /// CUDA version the driver supports (`nvmlSystemGetCudaDriverVersion`), e.g. `12.8`. Feeds the
    /// `cuda.runtime-version.*` labels; the `cuda.driver-version.*` ones come from
    /// `driver_version`.
    pub cuda_driver_version: Option<String>,
    /// Physical GPUs in index order.
    pub gpus: Vec<Gpu>,
}

impl Inventory {
    /// The GPU with this UUID.
    pub fn gpu_by_uuid(&self, uuid: &str) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.uuid == uuid)
    }

    /// The GPU with this index.
    pub fn gpu_by_index(&self, index: u32) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.index == index)
    }

    /// True when both have the same device layout (GPUs, MIG devices, topology). The versions and
    /// the node name are not part of it, so a driver version that could not be read on one pass
    /// does not count as a re-partition.
    pub fn same_layout(&self, other: &Inventory) -> bool {
        self.gpus == other.gpus
    }
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    /// NVML index (0-based, the order `nvidia-smi` prints).
    pub index: u32,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
    /// Product name exactly as NVML reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// Total framebuffer memory in MiB as NVML reports it.
    pub memory_mib: u64,
    /// NUMA node the GPU is attached to; `None` when the platform reports no affinity.
    pub numa_node: Option<u32>,
    /// PCI bus id, `0000:18:00.0`.
    pub pci_bus_id: Option<String>,
    /// Minor number of the `/dev/nvidiaN` device node.
    pub minor_number: u32,
    /// MIG mode is enabled (current mode).
    pub mig_enabled: bool,
    /// MIG devices, when MIG is enabled.
    pub mig_devices: Vec<MigDevice>,
    /// Peer GPU index → number of NVLinks to it. Pairs absent here talk over PCIe.
    pub nvlinks: BTreeMap<u32, u32>,
}

/// One MIG device (a GPU instance with its compute instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigDevice {
    /// `MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
    /// Profile name without the `MIG ` prefix, e.g. `3g.40gb` or `1g.10gb+me`.
    pub profile: String,
    /// GPU instance id.
    pub gpu_instance_id: u32,
    /// Compute instance id inside the GPU instance.
    pub compute_instance_id: u32,
    /// Memory of the instance in MiB.
    pub memory_mib: u64,
    /// Position of this device under its parent (NVML MIG device index).
    pub index: u32,
}

impl MigDevice {
    /// Minor numbers of the `/dev/nvidia-caps/nvidia-capN` nodes that grant access to this
    /// instance (GPU-instance access, compute-instance access), for a parent with `gpu_minor`.
    ///
    /// The NVIDIA driver numbers these deterministically (`/proc/driver/nvidia-caps/mig-minors`):
    /// minor 1 is `config`, 2 is `monitor`, then per GPU 15 GPU instances, each followed by its
    /// 8 compute instances.
    pub fn cap_minors(&self, gpu_minor: u32) -> (u32, u32) {
        const PER_GI: u32 = 1 + 8;
        const PER_GPU: u32 = 15 * PER_GI;
        let gi = 3 + gpu_minor * PER_GPU + self.gpu_instance_id * PER_GI;
        (gi, gi + 1 + self.compute_instance_id)
    }
}

/// Something that happened to a device, as a backend observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// An XID error. `mig_uuid` is set when the driver scoped it to one MIG instance.
    Xid {
        gpu_uuid: String,
        mig_uuid: Option<String>,
        xid: u64,
    },
    /// A double-bit (uncorrectable) ECC error.
    DoubleBitEcc { gpu_uuid: String },
    /// The GPU stopped answering (fell off the bus).
    Lost { gpu_uuid: String },
    /// The GPU answers again (mock: `lost` set back to false).
    Found { gpu_uuid: String },
}
