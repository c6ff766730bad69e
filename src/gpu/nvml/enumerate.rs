//! The inventory as NVML reports it: each GPU's facts, its MIG devices, and the pure helpers that
//! turn NVML's text into ours (bus ids in sysfs form, MIG profile names, CUDA versions, NUMA
//! nodes). NVLink peers are `topology`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings::{nvmlDevice_t, nvmlReturn_t, NVML_DEVICE_MIG_ENABLE};
use tracing::{debug, warn};

use super::topology::read_nvlink_remotes;
use super::{optional, NvmlBackend, State, MIB};
use crate::gpu::{Gpu, MigDevice};

/// Where Linux exposes PCI devices (`<busid>/numa_node`).
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

impl NvmlBackend {
    /// Read GPU `index`: its facts plus the remote bus ids of its active NVLinks.
    pub(super) fn read_gpu(&self, index: u32) -> Result<GpuProbe, ReadFailure> {
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(|e| ReadFailure::new("nvmlDeviceGetHandleByIndex", None, e))?;
        let uuid = device
            .uuid()
            .map_err(|e| ReadFailure::new("nvmlDeviceGetUUID", None, e))?;
        let fail = |call: &'static str, e| ReadFailure::new(call, Some(uuid.clone()), e);
        let model = device.name().map_err(|e| fail("nvmlDeviceGetName", e))?;
        let memory = device
            .memory_info()
            .map_err(|e| fail("nvmlDeviceGetMemoryInfo_v2", e))?;
        let minor_number = device
            .minor_number()
            .map_err(|e| fail("nvmlDeviceGetMinorNumber", e))?;
        let pci_bus_id = optional(&uuid, "nvmlDeviceGetPciInfo_v3", device.pci_info())
            .and_then(|pci| normalize_bus_id(&pci.bus_id));
        let numa_node = pci_bus_id
            .as_deref()
            .and_then(|bus| read_numa_node(Path::new(SYSFS_PCI_DEVICES), bus));
        let mig_enabled = optional(&uuid, "nvmlDeviceGetMigMode", device.mig_mode())
            .is_some_and(|mode| mode.current == NVML_DEVICE_MIG_ENABLE);
        let mig_devices = if mig_enabled {
            read_mig_devices(&device, &uuid)
        } else {
            Vec::new()
        };
        let remote_links = read_nvlink_remotes(&device, &uuid);
        let gpu = Gpu {
            index,
            uuid,
            model,
            memory_mib: memory.total / MIB,
            numa_node,
            pci_bus_id,
            minor_number,
            mig_enabled,
            mig_devices,
            nvlinks: BTreeMap::new(),
        };
        Ok(GpuProbe {
            gpu,
            remote_links: Some(remote_links),
        })
    }

    /// Handle a GPU that could not be read: remember it as lost and, when an earlier inventory
    /// knew it, keep that entry so the device stays advertised (as unhealthy) instead of
    /// vanishing from the layout.
    pub(super) fn carry_forward(
        index: u32,
        failure: &ReadFailure,
        previous: &State,
        lost: &mut BTreeSet<String>,
    ) -> Option<Gpu> {
        let known = previous
            .last_inventory
            .as_ref()
            .and_then(|inv| match &failure.uuid {
                Some(uuid) => inv.gpu_by_uuid(uuid),
                None => inv.gpu_by_index(index),
            });
        let uuid = failure
            .uuid
            .clone()
            .or_else(|| known.map(|g| g.uuid.clone()));
        let gpu = uuid.as_deref().unwrap_or("unknown");
        let error = &failure.error;
        if uuid.as_ref().is_some_and(|u| previous.lost.contains(u)) {
            debug!(index, gpu, call = failure.call, error = %error, "GPU still lost");
        } else {
            warn!(index, gpu, call = failure.call, error = %error, kept = known.is_some(), "cannot read GPU; treating it as lost");
        }
        if let Some(uuid) = uuid {
            lost.insert(uuid);
        }
        known.cloned()
    }
}

/// A GPU as read in one pass, plus what is needed to compute its NVLink peers.
pub(super) struct GpuProbe {
    pub(super) gpu: Gpu,
    /// Remote bus id of each active NVLink (`None` = unreadable). `None` for a GPU carried
    /// forward from an earlier inventory, which keeps its earlier peers.
    pub(super) remote_links: Option<Vec<Option<String>>>,
}

/// Why one GPU could not be read.
pub(super) struct ReadFailure {
    call: &'static str,
    uuid: Option<String>,
    error: NvmlError,
}

impl ReadFailure {
    fn new(call: &'static str, uuid: Option<String>, error: NvmlError) -> Self {
        Self { call, uuid, error }
    }
}

/// The MIG devices of a MIG-enabled GPU, in NVML index order; unpopulated slots are skipped.
fn read_mig_devices(parent: &Device<'_>, parent_uuid: &str) -> Vec<MigDevice> {
    let Some(max) = optional(
        parent_uuid,
        "nvmlDeviceGetMaxMigDeviceCount",
        parent.mig_device_count(),
    ) else {
        return Vec::new();
    };
    (0..max)
        .filter_map(|index| match parent.mig_device_by_index(index) {
            Ok(mig) => read_mig_device(&mig, index, parent_uuid),
            Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => None,
            Err(error) => {
                warn!(gpu = %parent_uuid, index, error = %error, "cannot open MIG device");
                None
            }
        })
        .collect()
}

fn read_mig_device(mig: &Device<'_>, index: u32, parent_uuid: &str) -> Option<MigDevice> {
    let read = |call: &'static str, e: NvmlError| {
        warn!(gpu = %parent_uuid, index, call, error = %e, "cannot read MIG device; skipped");
    };
    let uuid = mig.uuid().map_err(|e| read("nvmlDeviceGetUUID", e)).ok()?;
    let name = mig.name().map_err(|e| read("nvmlDeviceGetName", e)).ok()?;
    let gpu_instance_id = gpu_instance_id(mig)
        .map_err(|e| read("nvmlDeviceGetGpuInstanceId", e))
        .ok()?;
    let compute_instance_id = compute_instance_id(mig)
        .map_err(|e| read("nvmlDeviceGetComputeInstanceId", e))
        .ok()?;
    let memory = mig
        .memory_info()
        .map_err(|e| read("nvmlDeviceGetMemoryInfo_v2", e))
        .ok()?;
    let profile = match mig_profile_from_name(&name) {
        Some(profile) => profile.to_string(),
        None => {
            warn!(gpu = %parent_uuid, mig = %uuid, name = %name, "unexpected MIG device name; using it whole as the profile");
            name
        }
    };
    Some(MigDevice {
        uuid,
        profile,
        gpu_instance_id,
        compute_instance_id,
        memory_mib: memory.total / MIB,
        index,
    })
}

/// The C signature of NVML's MIG instance id getters.
type InstanceIdGetter = unsafe extern "C" fn(nvmlDevice_t, *mut u32) -> nvmlReturn_t;

/// Call `getter` (a symbol of the library `mig` was opened with) on the MIG device `mig`.
fn instance_id(mig: &Device<'_>, getter: &InstanceIdGetter) -> Result<u32, NvmlError> {
    let mut id: u32 = 0;
    // SAFETY: `getter` comes from the loaded NVML library with its C signature; the handle is a
    // live NVML device handle (it borrows the `Nvml` it came from) and `id` is a valid out pointer.
    nvml_try(unsafe { getter(mig.handle(), &mut id) })?;
    Ok(id)
}

/// `nvmlDeviceGetGpuInstanceId` of a MIG device handle (nvml-wrapper 0.13 has no wrapper).
pub(super) fn gpu_instance_id(mig: &Device<'_>) -> Result<u32, NvmlError> {
    instance_id(
        mig,
        nvml_sym(mig.nvml().lib().nvmlDeviceGetGpuInstanceId.as_ref())?,
    )
}

/// `nvmlDeviceGetComputeInstanceId` of a MIG device handle (nvml-wrapper 0.13 has no wrapper).
fn compute_instance_id(mig: &Device<'_>) -> Result<u32, NvmlError> {
    instance_id(
        mig,
        nvml_sym(mig.nvml().lib().nvmlDeviceGetComputeInstanceId.as_ref())?,
    )
}

/// NVML's bus id (`00000000:18:00.0`, upper-case hex, 8-digit domain) in the Linux sysfs form
/// `dddd:bb:dd.f` (lower-case; the domain keeps at least 4 digits, more only when it needs them,
/// as Linux prints it for VMD domains). `None` when the text is not a bus id.
pub(super) fn normalize_bus_id(raw: &str) -> Option<String> {
    let mut parts = raw.trim().split(':');
    let (domain, bus, devfn) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (device, function) = devfn.split_once('.')?;
    let hex = |s: &str, max_len: usize| {
        (!s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    let domain = hex(domain, 8)?;
    let bus = hex(bus, 2)?;
    let device = hex(device, 2)?;
    let function = hex(function, 1).filter(|f| *f <= 7)?;
    Some(format!("{domain:04x}:{bus:02x}:{device:02x}.{function}"))
}

/// The MIG profile in an NVML MIG device name: `NVIDIA H100 80GB HBM3 MIG 3g.40gb` → `3g.40gb`,
/// `NVIDIA A100-SXM4-40GB MIG 1g.5gb+me` → `1g.5gb+me`.
fn mig_profile_from_name(name: &str) -> Option<&str> {
    let profile = match name.rsplit_once(" MIG ") {
        Some((_, profile)) => profile,
        None => name.strip_prefix("MIG ")?,
    };
    let profile = profile.trim();
    (!profile.is_empty()).then_some(profile)
}

/// `nvmlSystemGetCudaDriverVersion` as `major.minor`: 12080 → `12.8`, 13000 → `13.0`.
pub(super) fn cuda_version_string(version: i32) -> Option<String> {
    (version > 0).then(|| format!("{}.{}", version / 1000, (version % 1000) / 10))
}

/// The content of a sysfs `numa_node` file: `-1` (no affinity) or garbage → `None`.
fn parse_numa_node(text: &str) -> Option<u32> {
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// NUMA node of PCI device `bus_id` from `<pci_devices>/<bus_id>/numa_node`.
fn read_numa_node(pci_devices: &Path, bus_id: &str) -> Option<u32> {
    let path = pci_devices.join(bus_id).join("numa_node");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_numa_node(&text),
        Err(error) => {
            debug!(path = %path.display(), error = %error, "no NUMA node");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_take_the_sysfs_form() {
        assert_eq!(
            normalize_bus_id("00000000:18:00.0").as_deref(),
            Some("0000:18:00.0")
        );
        assert_eq!(
            normalize_bus_id("00000000:B3:00.1").as_deref(),
            Some("0000:b3:00.1")
        );
        assert_eq!(
            normalize_bus_id("0000:9a:00.0").as_deref(),
            Some("0000:9a:00.0")
        );
        assert_eq!(
            normalize_bus_id("00010000:01:00.0").as_deref(),
            Some("10000:01:00.0")
        );
        for bad in [
            "",
            "garbage",
            "0000:18:00",
            "0000:18:00.8",
            "0000:1g:00.0",
            "a:b:c:d.0",
        ] {
            assert_eq!(normalize_bus_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mig_profiles_come_from_device_names() {
        assert_eq!(
            mig_profile_from_name("NVIDIA H100 80GB HBM3 MIG 3g.40gb"),
            Some("3g.40gb")
        );
        assert_eq!(
            mig_profile_from_name("NVIDIA A100-SXM4-40GB MIG 1g.5gb+me"),
            Some("1g.5gb+me")
        );
        assert_eq!(
            mig_profile_from_name("NVIDIA H200 MIG 1g.18gb"),
            Some("1g.18gb")
        );
        assert_eq!(mig_profile_from_name("MIG 7g.80gb"), Some("7g.80gb"));
        assert_eq!(mig_profile_from_name("NVIDIA H100 80GB HBM3"), None);
        assert_eq!(mig_profile_from_name("NVIDIA H100 MIG "), None);
    }

    #[test]
    fn cuda_versions_are_major_dot_minor() {
        assert_eq!(cuda_version_string(12080).as_deref(), Some("12.8"));
        assert_eq!(cuda_version_string(12020).as_deref(), Some("12.2"));
        assert_eq!(cuda_version_string(13000).as_deref(), Some("13.0"));
        assert_eq!(cuda_version_string(0), None);
    }

    #[test]
    fn numa_nodes_parse_and_minus_one_is_none() {
        assert_eq!(parse_numa_node("1\n"), Some(1));
        assert_eq!(parse_numa_node("0"), Some(0));
        assert_eq!(parse_numa_node("-1\n"), None);
        assert_eq!(parse_numa_node("x"), None);
    }

    #[test]
    fn numa_nodes_are_read_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("0000:18:00.0");
        std::fs::create_dir(&dev).unwrap();
        std::fs::write(dev.join("numa_node"), "1\n").unwrap();
        assert_eq!(read_numa_node(dir.path(), "0000:18:00.0"), Some(1));
        assert_eq!(read_numa_node(dir.path(), "0000:19:00.0"), None);
    }
}
