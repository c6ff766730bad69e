//! Which GPUs DRA gets and which stay with the device plugin (`--dra-devices`). A GPU is
//! advertised by exactly one of the two: the device plugin builds its resources from
//! [`device_plugin_inventory`], DRA publishes and prepares only what [`Partition::owns`]. Pure.

use std::collections::BTreeSet;
use std::str::FromStr;

use crate::gpu::{Gpu, Inventory};

/// `--dra-devices`: `all`, `none`, or a comma-separated list of GPU indexes and UUIDs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DraDevices {
    /// Every GPU is DRA's; the device plugin advertises nothing.
    All,
    /// DRA gets no GPU (also what no `--dra` means).
    #[default]
    None,
    /// These GPUs (index or UUID, as given); the rest stay with the device plugin.
    List(Vec<String>),
}

impl FromStr for DraDevices {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => return Ok(DraDevices::All),
            "none" | "" => return Ok(DraDevices::None),
            _ => {}
        }
        let mut list = Vec::new();
        for entry in s.split(',').map(str::trim) {
            let index = entry.bytes().all(|b| b.is_ascii_digit()) && entry.parse::<u32>().is_ok();
            if !(index || entry.starts_with("GPU-")) {
                return Err(format!(
                    "{entry:?} is neither a GPU index nor a GPU UUID (GPU-…); expected all, none, or a comma-separated list of them"
                ));
            }
            if !list.iter().any(|e| e == entry) {
                list.push(entry.to_string());
            }
        }
        Ok(DraDevices::List(list))
    }
}

/// The GPUs of one inventory that DRA owns, by UUID.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Partition {
    dra: BTreeSet<String>,
    /// List entries that name no GPU of the inventory (reported, not fatal: a GPU may be
    /// missing for a while).
    pub unknown: Vec<String>,
}

impl Partition {
    /// Split `inventory` by `devices`.
    pub fn new(inventory: &Inventory, devices: &DraDevices) -> Self {
        let mut part = Partition::default();
        match devices {
            DraDevices::None => {}
            DraDevices::All => part.dra = inventory.gpus.iter().map(|g| g.uuid.clone()).collect(),
            DraDevices::List(entries) => {
                for entry in entries {
                    let gpu = match entry.parse::<u32>() {
                        Ok(index) => inventory.gpu_by_index(index),
                        Err(_) => inventory.gpu_by_uuid(entry),
                    };
                    match gpu {
                        Some(gpu) => {
                            part.dra.insert(gpu.uuid.clone());
                        }
                        None => part.unknown.push(entry.clone()),
                    }
                }
            }
        }
        part
    }

    /// Is `gpu` DRA's?
    pub fn owns(&self, gpu: &Gpu) -> bool {
        self.dra.contains(&gpu.uuid)
    }

    /// True when DRA owns no GPU.
    pub fn is_empty(&self) -> bool {
        self.dra.is_empty()
    }

    /// The UUIDs DRA owns.
    pub fn uuids(&self) -> impl Iterator<Item = &str> {
        self.dra.iter().map(String::as_str)
    }
}

/// `inventory` without DRA's GPUs: what the device plugin builds its resources from.
pub fn device_plugin_inventory(inventory: &Inventory, partition: &Partition) -> Inventory {
    Inventory {
        gpus: inventory
            .gpus
            .iter()
            .filter(|g| !partition.owns(g))
            .cloned()
            .collect(),
        ..inventory.clone()
    }
}

/// `inventory` with DRA's GPUs only: what DRA publishes and prepares.
pub fn dra_inventory(inventory: &Inventory, partition: &Partition) -> Inventory {
    Inventory {
        gpus: inventory
            .gpus
            .iter()
            .filter(|g| partition.owns(g))
            .cloned()
            .collect(),
        ..inventory.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fixture;

    fn node() -> Inventory {
        let gpus = "  - {model: NVIDIA H100 80GB HBM3}\n".repeat(4);
        fixture::parse(&format!("gpus:\n{gpus}")).unwrap().inventory
    }

    fn indexes(inv: &Inventory) -> Vec<u32> {
        inv.gpus.iter().map(|g| g.index).collect()
    }

    #[test]
    fn parses_all_none_and_lists() {
        assert_eq!("all".parse(), Ok(DraDevices::All));
        assert_eq!(" none ".parse(), Ok(DraDevices::None));
        assert_eq!(
            "0, 2,GPU-abc,2".parse(),
            Ok(DraDevices::List(vec![
                "0".into(),
                "2".into(),
                "GPU-abc".into()
            ]))
        );
        for bad in ["0,,1", "-1", "MIG-abc", "gpu-0", "0x1", "99999999999"] {
            let err = bad.parse::<DraDevices>().unwrap_err();
            assert!(
                err.contains("neither a GPU index nor a GPU UUID"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn every_gpu_goes_to_exactly_one_side() {
        let inv = node();
        let uuid3 = inv.gpus[3].uuid.clone();
        for devices in [
            DraDevices::All,
            DraDevices::None,
            DraDevices::List(vec!["1".into(), uuid3.clone()]),
        ] {
            let part = Partition::new(&inv, &devices);
            let dp = device_plugin_inventory(&inv, &part);
            let dra = dra_inventory(&inv, &part);
            assert_eq!(
                dp.gpus.len() + dra.gpus.len(),
                inv.gpus.len(),
                "{devices:?}"
            );
            assert!(dp.gpus.iter().all(|g| !part.owns(g)));
            assert!(dra.gpus.iter().all(|g| part.owns(g)));
            assert_eq!(dp.driver_version, inv.driver_version);
        }
        let part = Partition::new(&inv, &DraDevices::List(vec!["1".into(), uuid3]));
        assert_eq!(indexes(&dra_inventory(&inv, &part)), [1, 3]);
        assert_eq!(indexes(&device_plugin_inventory(&inv, &part)), [0, 2]);
        assert!(Partition::new(&inv, &DraDevices::None).is_empty());
        assert_eq!(Partition::new(&inv, &DraDevices::All).uuids().count(), 4);
    }

    #[test]
    fn unknown_entries_are_reported_not_fatal() {
        let inv = node();
        let part = Partition::new(
            &inv,
            &DraDevices::List(vec!["0".into(), "9".into(), "GPU-nope".into()]),
        );
        assert_eq!(part.unknown, ["9", "GPU-nope"]);
        assert_eq!(indexes(&dra_inventory(&inv, &part)), [0]);
    }
}
