//! What can be requested: resource names with their mode, the memory one device gives and how
//! many devices there are. `plan` builds it from the node's own resources ([`Catalog::from_node`]);
//! the webhook reads it from a file describing the cluster ([`Catalog::parse`]).
//!
//! The file (YAML or JSON) is one document or a list of documents (one per node pool). A document
//! has a `resources` list whose entries are either explicit:
//!
//! ```yaml
//! resources:
//!   - {name: nvidia.com/mig-1g.10gb, strategy: mig, memoryMiB: 9856, count: 14}
//! ```
//!
//! or the output of `gpu-agent list --output json`, whose entries list `devices`: the count is
//! the healthy devices, the memory each device's `memoryMiB`, else derived from the document's
//! `gpus` (the GPU or MIG device the ID names). Entries with the same name (several pools) merge:
//! counts add up and the memory is the smallest, since a request may land on any of them.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::Mode;
use crate::gpu::Inventory;
use crate::resources::{ids, Health, ResourceSet, Target};

/// One resource on offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Extended resource name, e.g. `nvidia.com/gpu`.
    pub name: String,
    pub mode: Mode,
    /// Memory one device gives the container, in MiB (the least, when devices differ).
    pub memory_mib: u64,
    /// Healthy devices; 0 = named but nothing usable now (skipped by resolution).
    pub count: u32,
}

/// Every resource on offer, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    pub offers: Vec<Offer>,
}

/// One problem in a catalog file, with the path it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CatalogError {
    /// E.g. `[1].resources[3].memoryMiB`.
    pub path: String,
    pub message: String,
}

fn error(path: impl Into<String>, message: impl Into<String>) -> CatalogError {
    CatalogError {
        path: path.into(),
        message: message.into(),
    }
}

/// Memory a container gets from one advertised device, in MiB: the vGPU slice, else the MIG
/// device, else the whole GPU (a time-sliced replica sees all of its device's memory).
pub fn device_memory_mib(inventory: &Inventory, target: &Target) -> Option<u64> {
    if let Some(slice) = &target.vgpu {
        return Some(slice.memory_mib);
    }
    if let Some(mig) = &target.mig {
        return Some(mig.memory_mib);
    }
    inventory
        .gpu_by_uuid(&target.gpu_uuid)
        .map(|g| g.memory_mib)
}

impl Catalog {
    /// What this node advertises: one offer per resource, counting healthy devices.
    pub fn from_node(inventory: &Inventory, resources: &ResourceSet) -> Self {
        let offers = resources
            .resources
            .values()
            .filter_map(|r| {
                let memory = r
                    .devices
                    .iter()
                    .filter_map(|d| device_memory_mib(inventory, &d.target))
                    .min()?;
                Some(Offer {
                    name: r.name.clone(),
                    mode: Mode::of_resource(r.strategy),
                    memory_mib: memory,
                    count: u32::try_from(r.count(Health::Healthy)).unwrap_or(u32::MAX),
                })
            })
            .collect();
        Self { offers }
    }

    /// Offers sorted by name, with duplicates merged (counts add up, memory is the least).
    /// Fails when one name is offered under two modes.
    pub fn from_offers(offers: Vec<(String, Offer)>) -> Result<Self, Vec<CatalogError>> {
        let mut merged: BTreeMap<String, (String, Offer)> = BTreeMap::new();
        let mut errors = Vec::new();
        for (path, offer) in offers {
            match merged.get_mut(&offer.name) {
                Some((first, existing)) if existing.mode != offer.mode => errors.push(error(
                    path,
                    format!(
                        "{} is {} here but {} at {first}; one name holds one kind of device",
                        offer.name,
                        offer.mode.as_str(),
                        existing.mode.as_str()
                    ),
                )),
                Some((_, existing)) => {
                    existing.memory_mib = existing.memory_mib.min(offer.memory_mib);
                    existing.count = existing.count.saturating_add(offer.count);
                }
                None => {
                    merged.insert(offer.name.clone(), (path, offer));
                }
            }
        }
        if errors.is_empty() {
            Ok(Self {
                offers: merged.into_values().map(|(_, o)| o).collect(),
            })
        } else {
            Err(errors)
        }
    }

    /// Parse a catalog file's text (YAML or JSON). Every error is returned, with its path. A
    /// text over the document limits ([`crate::yaml_limits`]) is refused before it is parsed:
    /// the webhook parses it while admissions wait.
    pub fn parse(text: &str) -> Result<Self, Vec<CatalogError>> {
        crate::yaml_limits::check(text)
            .map_err(|limit| vec![error("catalog", limit.to_string())])?;
        let root: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| vec![error("catalog", format!("not valid YAML or JSON: {e}"))])?;
        let docs: Vec<(String, &Value)> = match &root {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("[{i}]."), d))
                .collect(),
            Value::Object(_) => vec![(String::new(), &root)],
            other => {
                return Err(vec![error(
                    "catalog",
                    format!(
                        "expected a mapping with `resources` or a list of them, got {}",
                        kind(other)
                    ),
                )])
            }
        };
        let mut errors = Vec::new();
        let mut offers = Vec::new();
        for (prefix, doc) in docs {
            document(&prefix, doc, &mut offers, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if offers.is_empty() {
            return Err(vec![error("catalog", "offers no resources")]);
        }
        Self::from_offers(offers)
    }

    /// Read and parse the catalog file at `path` (regular files only, at most the document
    /// limit: see [`crate::yaml_limits::read_bytes`]).
    pub fn load(path: &Path) -> Result<Self, CatalogLoadError> {
        use crate::yaml_limits::{read_text, DocumentError};
        let text = read_text(path).map_err(|e| match e {
            DocumentError::Read(source) => CatalogLoadError::Read {
                path: path.display().to_string(),
                source,
            },
            DocumentError::Limit(limit) => CatalogLoadError::Invalid {
                path: path.display().to_string(),
                errors: vec![error("catalog", limit.to_string())],
            },
        })?;
        Self::parse(&text).map_err(|errors| CatalogLoadError::Invalid {
            path: path.display().to_string(),
            errors,
        })
    }
}

/// A catalog file that could not be loaded: every error, for printing all at once.
#[derive(Debug, thiserror::Error)]
pub enum CatalogLoadError {
    #[error("cannot read catalog {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid catalog {path}:\n{}", .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        errors: Vec<CatalogError>,
    },
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "exclusive" => Some(Mode::Exclusive),
        "shared" | "time-sliced" => Some(Mode::Shared),
        "mig" => Some(Mode::Mig),
        "vgpu" => Some(Mode::Vgpu),
        _ => None,
    }
}

/// One document: its `resources`, with `gpus` (if any) to derive device memory from.
fn document(
    prefix: &str,
    doc: &Value,
    offers: &mut Vec<(String, Offer)>,
    errors: &mut Vec<CatalogError>,
) {
    let Some(map) = doc.as_object() else {
        errors.push(error(
            prefix.trim_end_matches('.'),
            format!("expected a mapping with `resources`, got {}", kind(doc)),
        ));
        return;
    };
    let path = format!("{prefix}resources");
    let resources = match map.get("resources") {
        Some(Value::Array(list)) => list,
        Some(other) => {
            errors.push(error(path, format!("expected a list, got {}", kind(other))));
            return;
        }
        None => {
            errors.push(error(path, "is required"));
            return;
        }
    };
    let memory = GpuMemory::from_doc(map.get("gpus"));
    for (j, entry) in resources.iter().enumerate() {
        let path = format!("{prefix}resources[{j}]");
        match resource(&path, entry, &memory) {
            Ok(offer) => offers.push((path, offer)),
            Err(mut e) => errors.append(&mut e),
        }
    }
}

fn resource(path: &str, entry: &Value, memory: &GpuMemory) -> Result<Offer, Vec<CatalogError>> {
    let Some(map) = entry.as_object() else {
        return Err(vec![error(
            path,
            format!("expected a mapping, got {}", kind(entry)),
        )]);
    };
    let mut errors = Vec::new();
    let name = match map.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(other) => {
            errors.push(error(
                format!("{path}.name"),
                format!("must be a resource name such as nvidia.com/gpu, got {other}"),
            ));
            None
        }
        None => {
            errors.push(error(format!("{path}.name"), "is required"));
            None
        }
    };
    let mode = match map.get("strategy") {
        Some(Value::String(s)) => parse_mode(s).or_else(|| {
            errors.push(error(
                format!("{path}.strategy"),
                format!("must be exclusive, shared (or time-sliced), mig or vgpu, got {s:?}"),
            ));
            None
        }),
        Some(other) => {
            errors.push(error(
                format!("{path}.strategy"),
                format!("must be a string, got {other}"),
            ));
            None
        }
        None => {
            errors.push(error(format!("{path}.strategy"), "is required"));
            None
        }
    };
    let sized = match map.get("devices") {
        Some(devices) => from_devices(path, devices, mode, memory, &mut errors),
        None => explicit(path, map, &mut errors),
    };
    match (name, mode, sized) {
        (Some(name), Some(mode), Some((memory_mib, count))) if errors.is_empty() => Ok(Offer {
            name,
            mode,
            memory_mib,
            count,
        }),
        _ => Err(errors),
    }
}

/// `{memoryMiB, count}`: count defaults to 1.
fn explicit(
    path: &str,
    map: &serde_json::Map<String, Value>,
    errors: &mut Vec<CatalogError>,
) -> Option<(u64, u32)> {
    let memory = match map.get("memoryMiB") {
        Some(v) => match v.as_u64().filter(|&m| m > 0) {
            Some(m) => Some(m),
            None => {
                errors.push(error(
                    format!("{path}.memoryMiB"),
                    format!("must be a positive whole number of MiB, got {v}"),
                ));
                None
            }
        },
        None => {
            errors.push(error(
                format!("{path}.memoryMiB"),
                "is required (memory one device gives, in MiB), or list `devices` as `gpu-agent list --output json` does",
            ));
            None
        }
    };
    let count = match map.get("count") {
        None => Some(1),
        Some(v) => match v.as_u64().and_then(|c| u32::try_from(c).ok()) {
            Some(c) => Some(c),
            None => {
                errors.push(error(
                    format!("{path}.count"),
                    format!("must be a whole number >= 0, got {v}"),
                ));
                None
            }
        },
    };
    Some((memory?, count?))
}

/// `devices: [{id, health, gpus, memoryMiB?}]` as `list --output json` prints them.
fn from_devices(
    path: &str,
    devices: &Value,
    mode: Option<Mode>,
    memory: &GpuMemory,
    errors: &mut Vec<CatalogError>,
) -> Option<(u64, u32)> {
    let Some(list) = devices.as_array() else {
        errors.push(error(
            format!("{path}.devices"),
            format!("expected a list, got {}", kind(devices)),
        ));
        return None;
    };
    let mut least: Option<u64> = None;
    let mut healthy: u32 = 0;
    let before = errors.len();
    for (k, device) in list.iter().enumerate() {
        let dpath = format!("{path}.devices[{k}]");
        let Some(d) = device.as_object() else {
            errors.push(error(
                dpath,
                format!("expected a mapping, got {}", kind(device)),
            ));
            continue;
        };
        if d.get("health").and_then(Value::as_str) != Some("Unhealthy") {
            healthy = healthy.saturating_add(1);
        }
        let mib = match d.get("memoryMiB") {
            Some(v) => v.as_u64().filter(|&m| m > 0).ok_or_else(|| {
                error(
                    format!("{dpath}.memoryMiB"),
                    format!("must be a positive whole number of MiB, got {v}"),
                )
            }),
            None => memory.derive(&dpath, d, mode),
        };
        match mib {
            Ok(m) => least = Some(least.map_or(m, |l| l.min(m))),
            Err(e) => errors.push(e),
        }
    }
    if errors.len() > before {
        return None;
    }
    match least {
        Some(m) => Some((m, healthy)),
        None => {
            errors.push(error(format!("{path}.devices"), "lists no device"));
            None
        }
    }
}

/// Memory of the GPUs and MIG devices a `list` document names, by UUID.
#[derive(Default)]
struct GpuMemory {
    gpus: BTreeMap<String, u64>,
    migs: BTreeMap<String, u64>,
}

impl GpuMemory {
    fn from_doc(gpus: Option<&Value>) -> Self {
        let mut out = Self::default();
        for gpu in gpus.and_then(Value::as_array).into_iter().flatten() {
            let uuid = gpu.get("uuid").and_then(Value::as_str);
            let mib = gpu.get("memoryMiB").and_then(Value::as_u64);
            if let (Some(uuid), Some(mib)) = (uuid, mib) {
                out.gpus.insert(uuid.to_string(), mib);
            }
            let migs = gpu.get("migDevices").and_then(Value::as_array);
            for mig in migs.into_iter().flatten() {
                let uuid = mig.get("uuid").and_then(Value::as_str);
                let mib = mig.get("memoryMiB").and_then(Value::as_u64);
                if let (Some(uuid), Some(mib)) = (uuid, mib) {
                    out.migs.insert(uuid.to_string(), mib);
                }
            }
        }
        out
    }

    /// A device's memory from its ID (`<uuid>` or a replica `<uuid>::<n>`) or, for whole GPUs,
    /// from the GPU it maps to. vGPU slices cannot be derived: their size is in the config.
    fn derive(
        &self,
        path: &str,
        device: &serde_json::Map<String, Value>,
        mode: Option<Mode>,
    ) -> Result<u64, CatalogError> {
        let missing = |why: &str| {
            error(
                format!("{path}.memoryMiB"),
                format!("is required: {why} (regenerate with `gpu-agent list --output json`)"),
            )
        };
        if mode == Some(Mode::Vgpu) {
            return Err(missing("a vGPU slice's size is not in the gpus list"));
        }
        let id = device.get("id").and_then(Value::as_str).unwrap_or("");
        let base = ids::base(id);
        if let Some(&m) = self.migs.get(base) {
            return Ok(m);
        }
        if let Some(&m) = self.gpus.get(base) {
            return Ok(m);
        }
        if mode != Some(Mode::Mig) {
            let gpu = device
                .get("gpus")
                .and_then(Value::as_array)
                .and_then(|g| g.first())
                .and_then(Value::as_str);
            if let Some(&m) = gpu.and_then(|g| self.gpus.get(g)) {
                return Ok(m);
            }
        }
        Err(missing(&format!(
            "device {id:?} names no GPU or MIG device of the document's gpus"
        )))
    }
}

#[cfg(test)]
mod tests;
