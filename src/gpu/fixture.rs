//! The mock inventory fixture (SPEC.md section 2): parsing and validation. Pure: text in, values
//! out, every problem reported with its field path.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

mod telemetry;

use super::ids::{mock_gpu_uuid, mock_mig_uuid};
use super::mig_profiles;
use super::{Gpu, Inventory, MigDevice, Telemetry};
use telemetry::{check_telemetry, TelemetryEntry};
pub use telemetry::{has_gpm, idle};

/// The built-in node used when no fixture is given: 8 × H100 80GB HBM3, NVLink all-to-all.
pub const DEFAULT_FIXTURE: &str = include_str!("../../fixtures/default-h100x8.yaml");

/// One problem in a fixture, with the field path it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FixtureError {
    /// Field path, e.g. `gpus[1].mig.devices`.
    pub path: String,
    pub message: String,
}

impl FixtureError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Everything a fixture says: the inventory plus the mutable state tests and demos inject.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fixture {
    pub inventory: Inventory,
    /// Telemetry per device UUID (GPU and MIG).
    pub telemetry: Telemetry,
    /// XIDs listed per GPU UUID.
    pub gpu_xids: BTreeMap<String, Vec<u64>>,
    /// XIDs listed per MIG device UUID (extension: `mig.devices[].xids`).
    pub mig_xids: BTreeMap<String, Vec<u64>>,
    /// GPUs marked `lost: true`.
    pub lost: BTreeSet<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FixtureDoc {
    node: Option<String>,
    driver_version: Option<String>,
    cuda_driver_version: Option<String>,
    #[serde(default)]
    gpus: Vec<GpuEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GpuEntry {
    model: String,
    uuid: Option<String>,
    #[serde(rename = "memoryMiB")]
    memory_mib: Option<u64>,
    numa_node: Option<u32>,
    pci_bus_id: Option<String>,
    mig: Option<MigEntry>,
    #[serde(default)]
    nvlink: BTreeMap<u32, u32>,
    telemetry: Option<TelemetryEntry>,
    #[serde(default)]
    xids: Vec<u64>,
    #[serde(default)]
    lost: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigEntry {
    #[serde(default)]
    devices: Vec<MigDeviceEntry>,
}

/// `3g.40gb` or `{profile: 3g.40gb, memoryUsedMiB: 1200, xids: [], telemetry: {…}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MigDeviceEntry {
    Name(String),
    Detailed(Box<MigDeviceDetail>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MigDeviceDetail {
    profile: String,
    /// Same as `telemetry.memoryUsedMiB` (the older spelling).
    #[serde(rename = "memoryUsedMiB")]
    memory_used_mib: Option<u64>,
    #[serde(default)]
    xids: Vec<u64>,
    telemetry: Option<TelemetryEntry>,
}

impl MigDeviceEntry {
    fn profile(&self) -> &str {
        match self {
            MigDeviceEntry::Name(name) => name,
            MigDeviceEntry::Detailed(detail) => &detail.profile,
        }
    }
}

/// Parse and validate fixture text. On failure every problem found is returned. A text over the
/// document limits ([`crate::yaml_limits`]) is refused before it is parsed.
pub fn parse(text: &str) -> Result<Fixture, Vec<FixtureError>> {
    crate::yaml_limits::check(text)
        .map_err(|limit| vec![FixtureError::new("fixture", limit.to_string())])?;
    let doc: FixtureDoc = serde_yaml_ng::from_str(text).map_err(|e| vec![yaml_error(&e)])?;
    build(doc)
}

fn yaml_error(error: &serde_yaml_ng::Error) -> FixtureError {
    // serde_yaml_ng puts the field path first ("gpus[0]: unknown field ..."); keep it as the path.
    let text = error.to_string();
    match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => FixtureError::new(path, message),
        _ => FixtureError::new("fixture", text),
    }
}

fn build(doc: FixtureDoc) -> Result<Fixture, Vec<FixtureError>> {
    let mut errors = Vec::new();
    let mut fixture = Fixture {
        inventory: Inventory {
            node: doc.node.filter(|n| !n.is_empty()),
            driver_version: doc.driver_version,
            cuda_driver_version: doc.cuda_driver_version,
            gpus: Vec::with_capacity(doc.gpus.len()),
        },
        ..Fixture::default()
    };
    let gpu_count = doc.gpus.len();
    let mut seen_uuids = BTreeSet::new();

    for (position, entry) in doc.gpus.into_iter().enumerate() {
        let path = format!("gpus[{position}]");
        let index = position as u32;
        let model_spec = mig_profiles::model(&entry.model);

        let memory_mib = match (entry.memory_mib, model_spec) {
            (Some(0), _) => {
                errors.push(FixtureError::new(
                    format!("{path}.memoryMiB"),
                    "must be > 0, got 0",
                ));
                continue;
            }
            (Some(mib), _) => mib,
            (None, Some(spec)) => spec.memory_total_mib,
            (None, None) => {
                errors.push(FixtureError::new(
                    format!("{path}.memoryMiB"),
                    format!(
                        "required for model {:?}, which has no built-in table (known: {})",
                        entry.model,
                        known_models()
                    ),
                ));
                continue;
            }
        };

        let uuid = entry.uuid.clone().unwrap_or_else(|| mock_gpu_uuid(index));
        if !uuid.starts_with("GPU-") || uuid.len() < 5 {
            errors.push(FixtureError::new(
                format!("{path}.uuid"),
                format!("must look like GPU-<hex>, got {uuid:?}"),
            ));
        }
        if !seen_uuids.insert(uuid.clone()) {
            errors.push(FixtureError::new(
                format!("{path}.uuid"),
                format!("duplicate UUID {uuid}"),
            ));
        }

        for (&peer, &links) in &entry.nvlink {
            if peer as usize >= gpu_count || peer == index {
                errors.push(FixtureError::new(
                    format!("{path}.nvlink.{peer}"),
                    format!("peer must be the index of another GPU (0..{gpu_count}, not {index}), got {peer}"),
                ));
            } else if links == 0 {
                errors.push(FixtureError::new(
                    format!("{path}.nvlink.{peer}"),
                    "link count must be >= 1 (leave the pair out for PCIe), got 0",
                ));
            }
        }

        let telemetry = entry.telemetry.unwrap_or_default();
        check_telemetry(
            &format!("{path}.telemetry"),
            &telemetry,
            memory_mib,
            &mut errors,
        );
        let gpm = has_gpm(&entry.model);

        let mut gpu = Gpu {
            index,
            uuid: uuid.clone(),
            model: entry.model.clone(),
            memory_mib,
            numa_node: entry.numa_node,
            pci_bus_id: entry.pci_bus_id,
            minor_number: index,
            mig_enabled: entry.mig.is_some(),
            mig_devices: Vec::new(),
            nvlinks: entry.nvlink,
        };

        if let Some(mig) = entry.mig {
            match model_spec {
                None => errors.push(FixtureError::new(
                    format!("{path}.mig"),
                    format!(
                        "model {:?} has no MIG support (MIG models: {})",
                        entry.model,
                        known_models()
                    ),
                )),
                Some(spec) => {
                    gpu.mig_devices = mig_devices(
                        &format!("{path}.mig.devices"),
                        (&uuid, gpm),
                        spec,
                        mig.devices,
                        &mut fixture,
                        &mut errors,
                    )
                }
            }
        }

        fixture
            .telemetry
            .insert(uuid.clone(), telemetry.gpu(memory_mib, gpm));
        if !entry.xids.is_empty() {
            fixture.gpu_xids.insert(uuid.clone(), entry.xids);
        }
        if entry.lost {
            fixture.lost.insert(uuid);
        }
        fixture.inventory.gpus.push(gpu);
    }

    symmetrize_nvlinks(&mut fixture.inventory.gpus);

    if errors.is_empty() {
        Ok(fixture)
    } else {
        Err(errors)
    }
}

/// The MIG devices of the GPU `gpu_uuid` (with GPM or not), placed on `spec` as listed at `path`
/// (`gpus[i].mig.devices`); their telemetry and XIDs go into `fixture`, problems into `errors`.
fn mig_devices(
    path: &str,
    (gpu_uuid, gpm): (&str, bool),
    spec: &mig_profiles::ModelSpec,
    devices: Vec<MigDeviceEntry>,
    fixture: &mut Fixture,
    errors: &mut Vec<FixtureError>,
) -> Vec<MigDevice> {
    let names: Vec<&str> = devices.iter().map(MigDeviceEntry::profile).collect();
    let placements = match spec.place(&names) {
        Ok(placements) => placements,
        Err(e) => {
            errors.push(FixtureError::new(path, e.to_string()));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(devices.len());
    for (i, (device, placement)) in devices.into_iter().zip(placements).enumerate() {
        let uuid = mock_mig_uuid(gpu_uuid, placement.gpu_instance_id);
        let memory = placement.profile.memory_mib;
        let (telemetry, xids) = match device {
            MigDeviceEntry::Name(_) => (TelemetryEntry::default(), Vec::new()),
            MigDeviceEntry::Detailed(d) => {
                let mut telemetry = d.telemetry.unwrap_or_default();
                match (d.memory_used_mib, telemetry.memory_used_mib) {
                    (Some(_), Some(_)) => errors.push(FixtureError::new(
                        format!("{path}[{i}].memoryUsedMiB"),
                        "given twice: here and in telemetry (keep one)",
                    )),
                    (Some(used), None) => telemetry.memory_used_mib = Some(Some(used)),
                    _ => {}
                }
                (telemetry, d.xids)
            }
        };
        check_telemetry(&format!("{path}[{i}]"), &telemetry, memory, errors);
        fixture
            .telemetry
            .insert(uuid.clone(), telemetry.mig(memory, gpm));
        if !xids.is_empty() {
            fixture.mig_xids.insert(uuid.clone(), xids);
        }
        out.push(MigDevice {
            uuid,
            profile: placement.profile.name.to_string(),
            gpu_instance_id: placement.gpu_instance_id,
            compute_instance_id: 0,
            memory_mib: memory,
            index: i as u32,
        });
    }
    out
}

/// NVLink is symmetric: a pair listed on either side counts for both.
fn symmetrize_nvlinks(gpus: &mut [Gpu]) {
    let mut pairs = Vec::new();
    for gpu in gpus.iter() {
        for (&peer, &links) in &gpu.nvlinks {
            pairs.push((peer, gpu.index, links));
        }
    }
    for (at, peer, links) in pairs {
        if let Some(gpu) = gpus.get_mut(at as usize) {
            let entry = gpu.nvlinks.entry(peer).or_insert(links);
            *entry = (*entry).max(links);
        }
    }
}

fn known_models() -> String {
    mig_profiles::models()
        .iter()
        .map(|m| m.nvml_name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_fixture_is_refused_before_it_is_parsed() {
        let deep = format!("gpus: {}", "[".repeat(200_000));
        let started = std::time::Instant::now();
        let errors = parse(&deep).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(
            errors[0].to_string(),
            "fixture: nested 65 levels deep at line 1; the limit is 64"
        );
    }

    #[test]
    fn other_models_need_memory_and_cannot_use_mig() {
        let ok = parse("gpus: [{model: NVIDIA L4, memoryMiB: 23034}]").unwrap();
        assert_eq!(ok.inventory.gpus[0].memory_mib, 23034);
        assert!(!ok.inventory.gpus[0].mig_enabled);

        let errors = parse("gpus: [{model: NVIDIA L4}]").unwrap_err();
        assert_eq!(errors[0].path, "gpus[0].memoryMiB");
        assert!(errors[0].message.contains("NVIDIA L4"), "{errors:?}");

        let errors =
            parse("gpus: [{model: NVIDIA L4, memoryMiB: 23034, mig: {devices: []}}]").unwrap_err();
        assert_eq!(errors[0].path, "gpus[0].mig");
    }

    #[test]
    fn unknown_fields_are_errors_with_a_path() {
        let errors = parse("gpus: [{model: NVIDIA L4, memoryMiB: 1, colour: red}]").unwrap_err();
        assert!(errors[0].to_string().contains("colour"), "{errors:?}");
        let errors = parse("gpu: []").unwrap_err();
        assert!(errors[0].to_string().contains("gpu"), "{errors:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
gpus:
  - {model: NVIDIA L4, memoryMiB: 100, telemetry: {utilizationPercent: 150}}
  - {model: NVIDIA L4, memoryMiB: 100, uuid: nope, nvlink: {7: 2}}
"#;
        let errors = parse(text).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"gpus[0].telemetry.utilizationPercent"),
            "{paths:?}"
        );
        assert!(paths.contains(&"gpus[1].uuid"), "{paths:?}");
        assert!(paths.contains(&"gpus[1].nvlink.7"), "{paths:?}");
    }

    #[test]
    fn nvlinks_are_symmetric_and_state_is_collected() {
        let text = r#"
gpus:
  - {model: NVIDIA L4, memoryMiB: 100, nvlink: {1: 4}, xids: [43], lost: true}
  - {model: NVIDIA L4, memoryMiB: 100, telemetry: {utilizationPercent: 50, memoryUsedMiB: 10}}
"#;
        let f = parse(text).unwrap();
        let gpus = &f.inventory.gpus;
        assert_eq!(gpus[1].nvlinks.get(&0), Some(&4));
        assert_eq!(f.gpu_xids[&gpus[0].uuid], vec![43]);
        assert!(f.lost.contains(&gpus[0].uuid));
        let t = &f.telemetry[&gpus[1].uuid];
        assert_eq!(t.utilization_percent, Some(50.0));
        assert_eq!(t.memory_used_mib, Some(10));
        assert_eq!(t.memory_total_mib, Some(100));
    }

    #[test]
    fn default_fixture_is_eight_h100_all_to_all() {
        let f = parse(DEFAULT_FIXTURE).unwrap();
        assert_eq!(f.inventory.gpus.len(), 8);
        for gpu in &f.inventory.gpus {
            assert_eq!(gpu.model, "NVIDIA H100 80GB HBM3");
            assert_eq!(
                gpu.nvlinks.len(),
                7,
                "gpu {} links {:?}",
                gpu.index,
                gpu.nvlinks
            );
        }
        assert_eq!(f.inventory.gpus[0].uuid, mock_gpu_uuid(0));
    }

    #[test]
    fn telemetry_keys_left_out_look_idle_and_null_means_unsupported() {
        let text = r#"
gpus:
  - model: NVIDIA H100 80GB HBM3
    telemetry: {memoryUsedMiB: 1000, memoryReservedMiB: 500, smClockMhz: null, profiling: {smActive: 0.25}}
    mig: {devices: [{profile: 3g.40gb, telemetry: {memoryUsedMiB: 100, temperatureCelsius: 50}}, {profile: 1g.10gb, memoryUsedMiB: 7}]}
  - {model: NVIDIA A100-SXM4-40GB, telemetry: {profiling: null}}
  - {model: NVIDIA L4, memoryMiB: 23034, telemetry: {profiling: {grEngineActive: 1}}}
"#;
        let f = parse(text).unwrap();
        let gpus = &f.inventory.gpus;
        let h100 = &f.telemetry[&gpus[0].uuid];
        assert_eq!(h100.utilization_percent, Some(0.0));
        assert_eq!(h100.temperature_celsius, Some(idle::TEMPERATURE_CELSIUS));
        assert_eq!(h100.sm_clock_mhz, None, "null: unsupported");
        assert_eq!(h100.memory_clock_mhz, Some(idle::MEMORY_CLOCK_MHZ));
        assert_eq!(h100.clock_throttle_reasons, Some(1), "idle");
        assert_eq!(h100.energy_millijoules, Some(0));
        assert_eq!(h100.row_remap_failure, Some(false));
        assert_eq!(
            h100.memory_free_mib,
            Some(gpus[0].memory_mib - 1000 - 500),
            "free = total - used - reserved"
        );
        let p = h100.profiling.as_ref().unwrap();
        assert_eq!((p.sm_active, p.tensor_active), (Some(0.25), Some(0.0)));

        // MIG devices: memory and profiling (GPM per instance) unless told more.
        let big = &f.telemetry[&gpus[0].mig_devices[0].uuid];
        assert_eq!(big.memory_used_mib, Some(100));
        assert_eq!(big.temperature_celsius, Some(50.0));
        assert_eq!(big.utilization_percent, None);
        assert_eq!(big.power_watts, None);
        assert!(big.profiling.is_some());
        let small = &f.telemetry[&gpus[0].mig_devices[1].uuid];
        assert_eq!(
            small.memory_used_mib,
            Some(7),
            "the older spelling still works"
        );
        assert_eq!(
            small.memory_free_mib,
            Some(gpus[0].mig_devices[1].memory_mib - 7)
        );

        // GPM: Hopper by default; an A100 told so anyway, an L4 given profiling keys.
        assert!(f.telemetry[&gpus[1].uuid].profiling.is_none());
        let l4 = f.telemetry[&gpus[2].uuid].profiling.as_ref().unwrap();
        assert_eq!(l4.gr_engine_active, Some(1.0));
        assert!(!has_gpm("NVIDIA A100-SXM4-80GB") && has_gpm("NVIDIA H200"));
    }

    #[test]
    fn telemetry_values_are_checked_with_their_paths() {
        let text = r#"
gpus:
  - model: NVIDIA H100 80GB HBM3
    telemetry: {memoryUsedMiB: 80000, memoryReservedMiB: 5000, encoderUtilizationPercent: 101, profiling: {dramActive: 1.5, pcieRxBytesPerSecond: -1}}
    mig: {devices: [{profile: 1g.10gb, memoryUsedMiB: 5, telemetry: {memoryUsedMiB: 5}}, {profile: 1g.10gb, telemetry: {memoryUsedMiB: 999999}}]}
"#;
        let errors = parse(text).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "gpus[0].telemetry.memoryReservedMiB",
            "gpus[0].telemetry.encoderUtilizationPercent",
            "gpus[0].telemetry.profiling.dramActive",
            "gpus[0].telemetry.profiling.pcieRxBytesPerSecond",
            "gpus[0].mig.devices[0].memoryUsedMiB",
            "gpus[0].mig.devices[1].memoryUsedMiB",
        ] {
            assert!(paths.contains(&want), "{want} in {errors:?}");
        }
        let errors = parse("gpus: [{model: NVIDIA L4, memoryMiB: 1, telemetry: {colour: 1}}]");
        assert!(errors.unwrap_err()[0].to_string().contains("colour"));
    }
}
