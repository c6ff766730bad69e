//! `gpu-agent list`: the inventory and every resource the agent would advertise.

use serde::Serialize;

use super::{load_node, Fatal, NodeView};
use crate::cli::{ListArgs, ListOutput};
use crate::resources::Health;

/// The stable JSON document of `list --output json` (SPEC.md section 1).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListDocument {
    pub node: String,
    pub backend: String,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuEntry>,
    pub resources: Vec<ResourceEntry>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuEntry {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    pub numa_node: Option<u32>,
    pub pci_bus_id: Option<String>,
    pub mig_enabled: bool,
    pub health: Health,
    pub mig_devices: Vec<MigEntry>,
    /// Peer GPU index → NVLink count.
    pub nvlinks: std::collections::BTreeMap<u32, u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigEntry {
    pub uuid: String,
    pub profile: String,
    pub gpu_instance_id: u32,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    pub health: Health,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceEntry {
    pub name: String,
    pub strategy: &'static str,
    pub devices: Vec<DeviceEntry>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceEntry {
    pub id: String,
    pub health: Health,
    /// Physical GPU UUIDs the device maps to.
    pub gpus: Vec<String>,
    /// Memory the device gives a container (vGPU slice, MIG device or whole GPU), so that the
    /// document can serve as the webhook's catalog.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: Option<u64>,
}

/// Build the document from a node view.
pub fn document(view: &NodeView) -> ListDocument {
    let s = &view.snapshot;
    let health = &s.health;
    ListDocument {
        node: view.node.clone(),
        backend: view.backend.name().to_string(),
        driver_version: s.inventory.driver_version.clone(),
        cuda_driver_version: s.inventory.cuda_driver_version.clone(),
        gpus: s
            .inventory
            .gpus
            .iter()
            .map(|g| GpuEntry {
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_mib: g.memory_mib,
                numa_node: g.numa_node,
                pci_bus_id: g.pci_bus_id.clone(),
                mig_enabled: g.mig_enabled,
                health: Health::from_healthy(health.gpu_healthy(&g.uuid)),
                mig_devices: g
                    .mig_devices
                    .iter()
                    .map(|m| MigEntry {
                        uuid: m.uuid.clone(),
                        profile: m.profile.clone(),
                        gpu_instance_id: m.gpu_instance_id,
                        memory_mib: m.memory_mib,
                        health: Health::from_healthy(health.mig_healthy(&g.uuid, &m.uuid)),
                    })
                    .collect(),
                nvlinks: g.nvlinks.clone(),
            })
            .collect(),
        resources: s
            .resources
            .resources
            .values()
            .map(|r| ResourceEntry {
                name: r.name.clone(),
                strategy: r.strategy.as_str(),
                devices: r
                    .devices
                    .iter()
                    .map(|d| DeviceEntry {
                        id: d.id.clone(),
                        health: d.health,
                        gpus: vec![d.target.gpu_uuid.clone()],
                        memory_mib: crate::strategy::catalog::device_memory_mib(
                            &s.inventory,
                            &d.target,
                        ),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Render `list`.
pub fn run(args: &ListArgs) -> Result<String, Fatal> {
    let view = load_node(&args.inventory)?;
    let doc = document(&view);
    match args.output {
        ListOutput::Json => serde_json::to_string_pretty(&doc)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| Fatal::Other(e.to_string())),
        ListOutput::Table => Ok(table(&doc)),
    }
}

fn table(doc: &ListDocument) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Node {} (backend {}, driver {}, CUDA {})",
        doc.node,
        doc.backend,
        doc.driver_version.as_deref().unwrap_or("-"),
        doc.cuda_driver_version.as_deref().unwrap_or("-"),
    );
    let _ = writeln!(out, "\nGPUS");
    let _ = writeln!(
        out,
        "{:<4} {:<42} {:<26} {:>10} {:>4} {:<13} {:<4} {:<9}",
        "IDX", "UUID", "MODEL", "MEMORY", "NUMA", "PCI", "MIG", "HEALTH"
    );
    for g in &doc.gpus {
        let _ = writeln!(
            out,
            "{:<4} {:<42} {:<26} {:>6} MiB {:>4} {:<13} {:<4} {:<9}",
            g.index,
            g.uuid,
            g.model,
            g.memory_mib,
            g.numa_node.map_or("-".to_string(), |n| n.to_string()),
            g.pci_bus_id.as_deref().unwrap_or("-"),
            if g.mig_enabled { "on" } else { "off" },
            format!("{:?}", g.health),
        );
        for m in &g.mig_devices {
            let _ = writeln!(
                out,
                "  └ {:<42} {:<12} gi {:<3} {:>6} MiB {:?}",
                m.uuid, m.profile, m.gpu_instance_id, m.memory_mib, m.health
            );
        }
    }
    let _ = writeln!(out, "\nRESOURCES");
    let _ = writeln!(
        out,
        "{:<32} {:<12} {:>7} {:>9}  DEVICE IDS",
        "NAME", "STRATEGY", "DEVICES", "UNHEALTHY"
    );
    for r in &doc.resources {
        let unhealthy = r
            .devices
            .iter()
            .filter(|d| d.health == Health::Unhealthy)
            .count();
        let ids: Vec<&str> = r.devices.iter().map(|d| d.id.as_str()).collect();
        let shown = if ids.len() > 3 {
            format!("{}, … ({} more)", ids[..3].join(", "), ids.len() - 3)
        } else {
            ids.join(", ")
        };
        let _ = writeln!(
            out,
            "{:<32} {:<12} {:>7} {:>9}  {}",
            r.name,
            r.strategy,
            r.devices.len(),
            unhealthy,
            shown
        );
    }
    if doc.resources.is_empty() {
        let _ = writeln!(out, "(none)");
    }
    out
}
