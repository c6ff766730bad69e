//! What one scrape reports, borrowed from the caches: the [`View`], its devices, and which
//! containers hold them.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};

use super::sink::LabelSet;
use super::Naming;
use crate::gpu::{DeviceTelemetry, Gpu, MigDevice, Telemetry};
use crate::health::policy::XidTally;
use crate::plugin::PluginStatus;
use crate::podresources::{ContainerDevice, PodAllocations};
use crate::snapshot::Snapshot;

/// Everything one scrape reports, borrowed from the caches.
pub struct View<'a> {
    pub node: &'a str,
    pub version: &'a str,
    pub naming: Naming,
    pub snapshot: &'a Snapshot,
    pub telemetry: &'a Telemetry,
    /// XIDs delivered per device.
    pub xids: &'a XidTally,
    pub pods: &'a PodAllocations,
    pub plugins: &'a BTreeMap<String, PluginStatus>,
    pub config_reloads: u64,
    pub config_reload_failures: u64,
}

/// One GPU or MIG device.
pub struct Device<'a> {
    pub gpu: &'a Gpu,
    pub mig: Option<&'a MigDevice>,
    pub telemetry: Option<&'a DeviceTelemetry>,
    /// Of a MIG device: its GPU's telemetry.
    pub parent: Option<&'a DeviceTelemetry>,
    pub healthy: bool,
    /// From the inventory, for when the backend could not read the total.
    pub memory_total_mib: u64,
    agent_labels: OnceCell<LabelSet>,
    dcgm_labels: OnceCell<LabelSet>,
}

impl Device<'_> {
    pub fn uuid(&self) -> &str {
        self.mig.map_or(&self.gpu.uuid, |m| &m.uuid)
    }

    /// A value of the device's own telemetry.
    pub fn own<T>(&self, f: impl FnOnce(&DeviceTelemetry) -> Option<T>) -> Option<T> {
        self.telemetry.and_then(f)
    }

    /// A value of the device's own telemetry or, on a MIG device that has none, of its GPU's.
    pub fn own_or_parent<T>(&self, f: impl Fn(&DeviceTelemetry) -> Option<T>) -> Option<T> {
        self.telemetry
            .and_then(&f)
            .or_else(|| self.parent.and_then(&f))
    }

    /// gpu-agent's device labels: `node`, `gpu`, `uuid`, `model` (MIG: `parent_uuid`,
    /// `mig_profile`, `gpu_instance_id`).
    pub fn agent_labels(&self, node: &str) -> &LabelSet {
        self.agent_labels.get_or_init(|| {
            let mut set = LabelSet::default();
            set.push("node", node);
            set.push("gpu", &self.gpu.index.to_string());
            set.push("uuid", self.uuid());
            set.push("model", &self.gpu.model);
            if let Some(mig) = self.mig {
                set.push("parent_uuid", &self.gpu.uuid);
                set.push("mig_profile", &mig.profile);
                set.push("gpu_instance_id", &mig.gpu_instance_id.to_string());
            }
            set
        })
    }

    /// dcgm-exporter's device labels: the GPU's `gpu`, `UUID`, `pci_bus_id`, `device`,
    /// `modelName` (a MIG device is its GPU instance: `GPU_I_PROFILE`, `GPU_I_ID`), `Hostname`,
    /// `DCGM_FI_DRIVER_VERSION`.
    pub fn dcgm_labels(&self, node: &str, driver: Option<&str>) -> &LabelSet {
        self.dcgm_labels.get_or_init(|| {
            let mut set = LabelSet::default();
            set.push("gpu", &self.gpu.index.to_string());
            set.push("UUID", &self.gpu.uuid);
            set.push(
                "pci_bus_id",
                &nvml_bus_id(self.gpu.pci_bus_id.as_deref().unwrap_or("")),
            );
            set.push("device", &format!("nvidia{}", self.gpu.index));
            set.push("modelName", &self.gpu.model);
            if let Some(mig) = self.mig {
                set.push("GPU_I_PROFILE", &mig.profile);
                set.push("GPU_I_ID", &mig.gpu_instance_id.to_string());
            }
            if !node.is_empty() {
                set.push("Hostname", node);
            }
            if let Some(driver) = driver.filter(|d| !d.is_empty()) {
                set.push("DCGM_FI_DRIVER_VERSION", driver);
            }
            set
        })
    }
}

/// A PCI bus id in NVML's form, with the 8-digit domain (`00000000:18:00.0`), as dcgm-exporter
/// prints it; the 4-digit form (`0000:18:00.0`, sysfs) is widened.
pub fn nvml_bus_id(id: &str) -> String {
    match id.split_once(':') {
        Some((domain, rest))
            if domain.len() < 8 && domain.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            format!("{domain:0>8}:{rest}")
        }
        _ => id.to_string(),
    }
}

/// Every GPU and MIG device of the snapshot, GPUs first, each followed by its MIG devices.
pub fn devices<'a>(view: &View<'a>) -> Vec<Device<'a>> {
    let health = &view.snapshot.health;
    let mut out = Vec::new();
    for gpu in &view.snapshot.inventory.gpus {
        let telemetry = view.telemetry.get(&gpu.uuid);
        out.push(Device {
            gpu,
            mig: None,
            telemetry,
            parent: None,
            healthy: health.gpu_healthy(&gpu.uuid),
            memory_total_mib: gpu.memory_mib,
            agent_labels: OnceCell::new(),
            dcgm_labels: OnceCell::new(),
        });
        for mig in &gpu.mig_devices {
            out.push(Device {
                gpu,
                mig: Some(mig),
                telemetry: view.telemetry.get(&mig.uuid),
                parent: telemetry,
                healthy: health.mig_healthy(&gpu.uuid, &mig.uuid),
                memory_total_mib: mig.memory_mib,
                agent_labels: OnceCell::new(),
                dcgm_labels: OnceCell::new(),
            });
        }
    }
    out
}

/// A container on one of our devices.
pub struct Holder<'a> {
    /// Position in the attribution list (stable while the attribution is).
    pub position: usize,
    pub held: &'a ContainerDevice,
    /// The GPU or MIG device behind the advertised ID.
    pub uuid: &'a str,
    /// Index into [`devices`], when the device is in the inventory.
    pub device: Option<usize>,
}

impl Holder<'_> {
    /// dcgm-exporter's `vgpu` label: what follows `::` in the advertised ID (the replica or
    /// slice of a shared GPU).
    pub fn vgpu(&self) -> Option<&str> {
        self.held.device_id.split_once("::").map(|(_, n)| n)
    }
}

/// Every container the kubelet reports on a device we advertise, in attribution order; IDs we do
/// not advertise are left out.
pub fn holders<'a>(view: &View<'a>, devices: &[Device<'_>]) -> Vec<Holder<'a>> {
    let by_uuid: HashMap<&str, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.uuid(), i))
        .collect();
    view.pods
        .devices
        .iter()
        .enumerate()
        .filter_map(|(position, held)| {
            let uuid = match view.snapshot.resources.get(&held.resource) {
                Some(resource) => resource
                    .device_or_legacy(&held.device_id)?
                    .target
                    .device_uuid(),
                // Not a device-plugin resource: a device of our DRA driver's pool, by its DRA name.
                None => {
                    match crate::dra::names::resolve(&view.snapshot.inventory, &held.device_id)? {
                        (_, Some(mig)) => mig.uuid.as_str(),
                        (gpu, None) => gpu.uuid.as_str(),
                    }
                }
            };
            Some(Holder {
                position,
                held,
                uuid,
                device: by_uuid.get(uuid).copied(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_take_nvml_form() {
        assert_eq!(nvml_bus_id("0000:18:00.0"), "00000000:18:00.0");
        assert_eq!(nvml_bus_id("00000000:18:00.0"), "00000000:18:00.0");
        assert_eq!(nvml_bus_id("1:18:00.0"), "00000001:18:00.0");
        assert_eq!(nvml_bus_id(""), "");
    }
}
