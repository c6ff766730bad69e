//! `gpu-agent plan`: the strategy rules applied to this node's own resources (exactly what `run`
//! would advertise) and thresholds, printed with a ready `resources.limits` snippet.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{load_node, Fatal};
use crate::cli::{PlanArgs, PlanOutput};
use crate::strategy::{self, format_bytes, Catalog, Decision};

/// The document `plan --output json|yaml` prints (SPEC.md section 5); keys are the contract.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDocument {
    pub workload: &'static str,
    pub gpu_memory_bytes: u64,
    /// The mode found: `exclusive`, `shared`, `mig` or `vgpu`.
    pub strategy: &'static str,
    pub resource: String,
    /// Devices to request.
    pub count: u32,
    /// True when the rules' strategy had nothing fitting and a fallback was used.
    pub fallback: bool,
    pub reason: String,
    /// `{"<resource>": <count>}`, ready for a container's `resources.limits`.
    pub limits: BTreeMap<String, u32>,
}

impl From<&Decision> for PlanDocument {
    fn from(d: &Decision) -> Self {
        Self {
            workload: d.workload.as_str(),
            gpu_memory_bytes: d.memory_bytes,
            strategy: d.mode.as_str(),
            resource: d.resource.clone(),
            count: d.count,
            fallback: d.fallback,
            reason: d.reason.clone(),
            limits: BTreeMap::from([(d.resource.clone(), d.count)]),
        }
    }
}

/// Plan on this node; exit 1 with the reason when nothing fits.
pub fn run(args: &PlanArgs) -> Result<String, Fatal> {
    let view = load_node(&args.inventory)?;
    let snapshot = &view.snapshot;
    let catalog = Catalog::from_node(&snapshot.inventory, &snapshot.resources);
    let decision = strategy::plan(
        args.workload,
        args.gpu_memory,
        &snapshot.config.strategy,
        &catalog,
    )
    .map_err(|e| Fatal::Other(format!("nothing on node {} fits: {e}", view.node)))?;
    let doc = PlanDocument::from(&decision);
    match args.output {
        PlanOutput::Json => serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| Fatal::Other(e.to_string())),
        PlanOutput::Yaml => serde_yaml_ng::to_string(&doc).map_err(|e| Fatal::Other(e.to_string())),
        PlanOutput::Text => Ok(text(&view.node, &decision)),
    }
}

fn text(node: &str, d: &Decision) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node:       {node}");
    let _ = writeln!(out, "workload:   {}", d.workload.as_str());
    let _ = writeln!(
        out,
        "gpu memory: {} ({} bytes)",
        format_bytes(d.memory_bytes),
        d.memory_bytes
    );
    let fallback = if d.fallback {
        format!(" (fallback from {})", d.classified.as_str())
    } else {
        String::new()
    };
    let _ = writeln!(out, "strategy:   {}{fallback}", d.mode.as_str());
    let _ = writeln!(
        out,
        "resource:   {} ({} per device, {} available)",
        d.resource,
        format_bytes(d.device_memory_mib.saturating_mul(crate::units::MIB)),
        d.available
    );
    let _ = writeln!(out, "count:      {}", d.count);
    let _ = writeln!(out, "fallback:   {}", d.fallback);
    let _ = writeln!(out, "reason:     {}", d.reason);
    let _ = writeln!(
        out,
        "\nresources:\n  limits:\n    {}: {}",
        d.resource, d.count
    );
    out
}
