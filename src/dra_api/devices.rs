//! The DRA devices of a node, as plain data: from the inventory and the health state to named
//! devices with NVIDIA-DRA-driver attribute names and capacities (SPEC §8).
//!
//! Pure: no Kubernetes types here ([`super::slices`] turns these into ResourceSlices). A value
//! that the API server would refuse (a version that is not semver) is left out with a reason in
//! [`DeviceList::omitted`], so that one odd string never costs the node its whole slice.
//!
//! A MIG-enabled GPU is published as its MIG devices only, as NVIDIA's driver does: handing out
//! the whole GPU as well would give one claim the memory of instances another claim holds.

use std::collections::{BTreeMap, BTreeSet};

use crate::gpu::{Gpu, Inventory, MigDevice};
use crate::health::HealthState;

use super::{models, semver};

/// Device names and the DNS-label rule: one definition, shared with the kubelet side (which
/// resolves the names the scheduler allocated back to devices).
pub use crate::dra::names::{gpu_name, is_dns_label, mig_name};

/// The standard attribute naming a device's PCIe root complex (`k8s.io/dynamic-resource-
/// allocation/deviceattribute`): the scheduler can align GPUs and NICs under one root.
pub const PCIE_ROOT: &str = "resource.kubernetes.io/pcieRoot";
/// The standard attribute naming a device's PCI address (`deviceattribute`); NVIDIA's driver
/// publishes it since v25.12.
pub const PCI_BUS_ID: &str = "resource.kubernetes.io/pciBusID";

/// `type` of a whole GPU.
pub const TYPE_GPU: &str = "gpu";
/// `type` of a MIG device.
pub const TYPE_MIG: &str = "mig";

/// One attribute value; exactly one kind, as the API demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    String(String),
    Int(i64),
    Bool(bool),
    /// Already semver (see [`semver::normalize`]).
    Version(String),
}

/// One device of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraDevice {
    /// DNS label, unique in the pool: `gpu-<index>` or `gpu-<index>-mig-<gi>-<ci>`.
    pub name: String,
    /// GPU or MIG UUID.
    pub uuid: String,
    /// Attribute name (a C identifier, or `domain/identifier`) → value.
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Capacity name → quantity in canonical form (`81559Mi`, `80Gi`, `60`).
    pub capacity: BTreeMap<String, String>,
}

/// An attribute left out of a device, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Omission {
    pub device: String,
    pub attribute: &'static str,
    pub reason: String,
}

/// Every device to publish, in pool order (GPU index, then MIG devices by GPU-instance id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceList {
    pub devices: Vec<DraDevice>,
    /// Attributes left out (unknown model, a version that is not semver), for one log line each.
    pub omitted: Vec<Omission>,
}

/// Node facts the inventory does not carry: the PCIe root of each PCI address, as read from
/// sysfs by [`super::pcie::roots`] (empty where unknown, e.g. the mock backend).
pub type PcieRoots = BTreeMap<String, String>;

/// The devices of `inventory` that `selected` hands to DRA and that are healthy now.
pub fn build(
    inventory: &Inventory,
    health: &HealthState,
    roots: &PcieRoots,
    selected: impl Fn(&Gpu) -> bool,
) -> DeviceList {
    let mut list = DeviceList::default();
    let versions = Versions::of(inventory);
    for gpu in inventory.gpus.iter().filter(|g| selected(g)) {
        let common = Common::of(gpu, &versions, roots);
        if !gpu.mig_enabled {
            if health.gpu_healthy(&gpu.uuid) {
                list.devices
                    .push(whole_gpu(gpu, &common, &mut list.omitted));
            }
            continue;
        }
        let mut migs: Vec<&MigDevice> = gpu.mig_devices.iter().collect();
        migs.sort_by_key(|m| (m.gpu_instance_id, m.compute_instance_id));
        for mig in migs {
            if health.mig_healthy(&gpu.uuid, &mig.uuid) {
                list.devices
                    .push(mig_device(gpu, mig, &common, &mut list.omitted));
            }
        }
    }
    list
}

/// The node-wide versions, normalized once.
struct Versions {
    driver: Result<String, String>,
    cuda: Result<String, String>,
}

impl Versions {
    fn of(inventory: &Inventory) -> Self {
        let norm = |v: &Option<String>| match v {
            None => Err("unknown".to_string()),
            Some(raw) => semver::normalize(raw).map_err(|e| e.to_string()),
        };
        Self {
            driver: norm(&inventory.driver_version),
            cuda: norm(&inventory.cuda_driver_version),
        }
    }
}

/// Attributes a GPU and its MIG devices share, with the reasons for those left out.
struct Common {
    attributes: BTreeMap<String, AttributeValue>,
    omitted: Vec<(&'static str, String)>,
}

impl Common {
    fn of(gpu: &Gpu, versions: &Versions, roots: &PcieRoots) -> Self {
        let mut attributes = BTreeMap::new();
        let mut omitted = Vec::new();
        let mut put = |name: &str, value: AttributeValue| {
            attributes.insert(name.to_string(), value);
        };
        put("productName", AttributeValue::String(gpu.model.clone()));
        match models::facts(&gpu.model) {
            Some(facts) => {
                put("brand", AttributeValue::String(facts.brand.into()));
                put(
                    "architecture",
                    AttributeValue::String(facts.architecture.into()),
                );
                match semver::normalize(facts.compute_capability) {
                    Ok(v) => put("cudaComputeCapability", AttributeValue::Version(v)),
                    Err(e) => omitted.push(("cudaComputeCapability", e.to_string())),
                }
            }
            None => {
                let reason = format!("model {:?} is not in the model table", gpu.model);
                for name in ["brand", "architecture", "cudaComputeCapability"] {
                    omitted.push((name, reason.clone()));
                }
            }
        }
        for (name, version) in [
            ("driverVersion", &versions.driver),
            ("cudaDriverVersion", &versions.cuda),
        ] {
            match version {
                Ok(v) => put(name, AttributeValue::Version(v.clone())),
                Err(reason) => omitted.push((name, reason.clone())),
            }
        }
        if let Some(bus_id) = &gpu.pci_bus_id {
            // SPEC's name, NVIDIA's (v25.3/v25.8) and the standard one: selectors written for
            // any of them keep working.
            for name in ["pciBusID", "pcieBusID", PCI_BUS_ID] {
                put(name, AttributeValue::String(bus_id.clone()));
            }
            if let Some(root) = roots.get(bus_id) {
                put(PCIE_ROOT, AttributeValue::String(root.clone()));
            }
        }
        Self {
            attributes,
            omitted,
        }
    }

    fn start(&self, device: &str, omitted: &mut Vec<Omission>) -> BTreeMap<String, AttributeValue> {
        omitted.extend(self.omitted.iter().map(|(attribute, reason)| Omission {
            device: device.to_string(),
            attribute,
            reason: reason.clone(),
        }));
        self.attributes.clone()
    }
}

fn whole_gpu(gpu: &Gpu, common: &Common, omitted: &mut Vec<Omission>) -> DraDevice {
    let name = gpu_name(gpu.index);
    let mut attributes = common.start(&name, omitted);
    attributes.insert("type".into(), AttributeValue::String(TYPE_GPU.into()));
    attributes.insert("uuid".into(), AttributeValue::String(gpu.uuid.clone()));
    attributes.insert("index".into(), AttributeValue::Int(gpu.index.into()));
    attributes.insert("minor".into(), AttributeValue::Int(gpu.minor_number.into()));
    let mut capacity = BTreeMap::new();
    capacity.insert("memory".into(), binary_quantity_mib(gpu.memory_mib));
    DraDevice {
        name,
        uuid: gpu.uuid.clone(),
        attributes,
        capacity,
    }
}

fn mig_device(
    gpu: &Gpu,
    mig: &MigDevice,
    common: &Common,
    omitted: &mut Vec<Omission>,
) -> DraDevice {
    let name = mig_name(gpu.index, mig.gpu_instance_id, mig.compute_instance_id);
    let mut attributes = common.start(&name, omitted);
    let mut put = |n: &str, v: AttributeValue| {
        attributes.insert(n.to_string(), v);
    };
    put("type", AttributeValue::String(TYPE_MIG.into()));
    put("uuid", AttributeValue::String(mig.uuid.clone()));
    put("index", AttributeValue::Int(mig.index.into()));
    put("profile", AttributeValue::String(mig.profile.clone()));
    put("parentUUID", AttributeValue::String(gpu.uuid.clone()));
    put("parentIndex", AttributeValue::Int(gpu.index.into()));
    put("parentMinor", AttributeValue::Int(gpu.minor_number.into()));
    put(
        "gpuInstanceId",
        AttributeValue::Int(mig.gpu_instance_id.into()),
    );
    put(
        "computeInstanceId",
        AttributeValue::Int(mig.compute_instance_id.into()),
    );
    let mut capacity = BTreeMap::new();
    capacity.insert("memory".into(), binary_quantity_mib(mig.memory_mib));
    match models::mig_multiprocessors(&gpu.model, &mig.profile) {
        Some(sms) => {
            capacity.insert("multiprocessors".into(), decimal_quantity(sms.into()));
        }
        None => omitted.push(Omission {
            device: name.clone(),
            attribute: "multiprocessors",
            reason: format!("no SM count known for {} on {}", mig.profile, gpu.model),
        }),
    }
    DraDevice {
        name,
        uuid: mig.uuid.clone(),
        attributes,
        capacity,
    }
}

/// `mib` MiB as a Kubernetes quantity in the canonical form the API server stores and returns
/// (binary suffix, the largest one that divides exactly: `81559Mi`, `40Gi`), so that what the
/// agent compares against never differs by spelling alone.
pub fn binary_quantity_mib(mib: u64) -> String {
    const SUFFIXES: [&str; 4] = ["Mi", "Gi", "Ti", "Pi"];
    if mib == 0 {
        return "0".into();
    }
    let mut value = mib;
    let mut step = 0;
    while step + 1 < SUFFIXES.len() && value.is_multiple_of(1024) {
        value /= 1024;
        step += 1;
    }
    format!("{value}{}", SUFFIXES[step])
}

/// A count as a canonical decimal quantity (`132`, `2k`, `1500`).
pub fn decimal_quantity(n: u64) -> String {
    const SUFFIXES: [&str; 5] = ["", "k", "M", "G", "T"];
    if n == 0 {
        return "0".into();
    }
    let mut value = n;
    let mut step = 0;
    while step + 1 < SUFFIXES.len() && value.is_multiple_of(1000) {
        value /= 1000;
        step += 1;
    }
    format!("{value}{}", SUFFIXES[step])
}

/// The names in `list` that are not unique (must be none).
pub fn duplicate_names(list: &DeviceList) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    list.devices
        .iter()
        .filter(|d| !seen.insert(d.name.clone()))
        .map(|d| d.name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
