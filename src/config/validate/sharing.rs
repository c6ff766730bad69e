//! `sharing:` — time-slicing and MPS (NVIDIA's), vGPU slices (ours) — and the rules between
//! entries.
//!
//! NVIDIA's plugin validates `rename` and `devices` and then drops them
//! (`DisableResourceNamingInConfig`). gpu-agent honours `rename`, and `devices` together with a
//! rename, and says so in a [`WarningKind::Difference`] warning naming what NVIDIA would
//! advertise instead; `devices` without a rename is ignored as NVIDIA ignores it (one
//! [`WarningKind::Ignored`] warning), since the GPUs left out would stay exclusive under the
//! same name as the replicas.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

use super::names::{device_ref, resource_name};
use super::{Findings, MAX_REPLICAS};
use crate::config::file;
use crate::config::schema::short;
use crate::config::{
    Config, DeviceSelector, MigStrategy, SharedPlacement, TimeSlicing, TimeSlicingRule, VgpuRule,
    WarningKind,
};
use crate::resources::names;

/// Position in the file of each rule kept in `Config` (same order).
#[derive(Default)]
struct Positions {
    time_slicing: Vec<usize>,
    mps: Vec<usize>,
    vgpu: Vec<usize>,
}

/// Read `sharing:` into `config`.
pub(super) fn sharing(raw: &file::Sharing, config: &mut Config, f: &mut Findings) {
    // File positions of the rules kept, so that later errors name the entry as written even
    // when an earlier one was rejected.
    let mut positions = Positions::default();
    if let Some(ts) = &raw.time_slicing {
        config.time_slicing = replicated(
            "sharing.timeSlicing",
            ts,
            false,
            &mut positions.time_slicing,
            f,
        );
    }
    if let Some(mps) = &raw.mps {
        // NVIDIA's plugin keeps failRequestsGreaterThanOne on for MPS unless the file says
        // otherwise (`config.go`): an MPS client is pinned to one daemon's share.
        config.mps = replicated("sharing.mps", mps, true, &mut positions.mps, f);
        mps_rules(raw, config, &positions.mps, f);
    }
    for (i, r) in raw.vgpu.resources.iter().enumerate() {
        let Some(r) = r else { continue };
        let path = format!("sharing.vgpu.resources[{i}]");
        if let Some(rule) = vgpu_rule(&path, r, f) {
            config.vgpu.push(rule);
            positions.vgpu.push(i);
        }
    }
    match raw.placement.as_deref() {
        None => {}
        Some("spread") => config.shared_placement = SharedPlacement::Spread,
        Some("packed") => config.shared_placement = SharedPlacement::Packed,
        Some(other) => f.error(
            "sharing.placement",
            format!("must be spread or packed, got {other:?}"),
        ),
    }
    overlaps(&positions, config, f);
}

/// One `timeSlicing`-shaped section (`sharing.timeSlicing` or `sharing.mps`) at `section`.
fn replicated(
    section: &str,
    raw: &file::TimeSlicing,
    fail_by_default: bool,
    positions: &mut Vec<usize>,
    f: &mut Findings,
) -> TimeSlicing {
    let rename_by_default = raw.rename_by_default.unwrap_or(false);
    let mut out = TimeSlicing {
        rename_by_default,
        fail_requests_greater_than_one: raw
            .fail_requests_greater_than_one
            .unwrap_or(fail_by_default),
        resources: Vec::new(),
    };
    if raw.resources.is_empty() {
        f.error(format!("{section}.resources"), "no resources specified");
    }
    for (i, r) in raw.resources.iter().enumerate() {
        let Some(r) = r else { continue };
        let path = format!("{section}.resources[{i}]");
        if let Some(rule) = time_slicing_rule(&path, r, rename_by_default, f) {
            out.resources.push(rule);
            positions.push(i);
        }
    }
    out
}

/// The combinations NVIDIA's plugin refuses with MPS, with its reasons.
fn mps_rules(raw: &file::Sharing, config: &Config, positions: &[usize], f: &mut Findings) {
    if raw.time_slicing.is_some() {
        // NVIDIA's plugin runs one sharing strategy: with `mps` set it ignores `timeSlicing`
        // entirely. Refused here rather than silently dropped.
        f.error(
            "sharing.timeSlicing",
            "cannot be used together with sharing.mps: NVIDIA's plugin applies one sharing \
             strategy per config (MPS when sharing.mps is set) and would ignore timeSlicing",
        );
    }
    if config.mig_strategy == MigStrategy::Mixed {
        f.error(
            "flags.migStrategy",
            "using --mig-strategy=mixed is not supported with MPS",
        );
    }
    for (r, &i) in config.mps.resources.iter().zip(positions) {
        if r.name.starts_with("nvidia.com/mig-") {
            f.error(
                format!("sharing.mps.resources[{i}].name"),
                format!(
                    "sharing using MPS is not supported for MIG devices; only {} can be \
                     shared with MPS, got {}",
                    names::GPU,
                    r.name
                ),
            );
        }
    }
}

/// A name that passes NVIDIA's `ResourceName` rules, or an error at `path`.
fn named(path: String, name: &str, f: &mut Findings) -> Option<String> {
    resource_name(name).map_err(|e| f.error(path, e)).ok()
}

/// The `rename` and `devices` of an entry, each checked (errors at their paths).
fn rename_and_devices(
    path: &str,
    rename: Option<&str>,
    devices: Option<&Value>,
    f: &mut Findings,
) -> (Option<String>, Option<DeviceSelector>) {
    let rename = rename.and_then(|n| named(format!("{path}.rename"), n, f));
    (rename, selector(&format!("{path}.devices"), devices, f))
}

/// The source resources gpu-agent advertises, which a sharing entry may take devices from.
fn advertised_source(name: &str) -> bool {
    name == names::GPU || name.starts_with("nvidia.com/mig-")
}

fn time_slicing_rule(
    path: &str,
    r: &file::ReplicatedResource,
    rename_by_default: bool,
    f: &mut Findings,
) -> Option<TimeSlicingRule> {
    let before = f.errors.len();
    let name = named(format!("{path}.name"), &r.name, f);
    if r.replicas < 2 {
        f.error(
            format!("{path}.replicas"),
            format!("number of replicas must be >= 2, got {}", r.replicas),
        );
    } else if r.replicas > MAX_REPLICAS {
        f.error(
            format!("{path}.replicas"),
            format!(
                "must be <= {MAX_REPLICAS}, got {} (gpu-agent's limit: the kubelet receives every \
                 replica in one ListAndWatch message)",
                r.replicas
            ),
        );
    }
    let (rename, devices) = rename_and_devices(path, r.rename.as_deref(), r.devices.as_ref(), f);
    if f.errors.len() != before {
        return None;
    }
    let (name, mut devices) = (name?, devices?);
    if !advertised_source(&name) {
        f.warn(
            WarningKind::Ignored,
            format!("{path}.name"),
            format!(
                "{name} is not a resource gpu-agent advertises (nvidia.com/gpu, \
                 nvidia.com/mig-<profile>): this entry shares nothing, as in NVIDIA's plugin"
            ),
        );
        return None;
    }
    let nvidia_name = if rename_by_default {
        names::shared_default(&name)
    } else {
        name.clone()
    };
    let advertised = rename.clone().unwrap_or_else(|| nvidia_name.clone());
    devices = keep_devices(path, &name, &advertised, &nvidia_name, devices, f);
    if rename.is_some() && advertised != nvidia_name {
        f.warn(
            WarningKind::Difference,
            format!("{path}.rename"),
            format!(
                "gpu-agent advertises these replicas as {advertised}; NVIDIA's plugin ignores \
                 rename and would advertise them as {nvidia_name}"
            ),
        );
    }
    Some(TimeSlicingRule {
        name,
        rename,
        replicas: r.replicas as u32,
        devices,
    })
}

/// `devices` as gpu-agent applies it: honoured when the entry is renamed (with a warning that
/// NVIDIA would share every device), ignored like NVIDIA ignores it when it is not.
fn keep_devices(
    path: &str,
    source: &str,
    advertised: &str,
    nvidia_name: &str,
    devices: DeviceSelector,
    f: &mut Findings,
) -> DeviceSelector {
    if devices == DeviceSelector::All {
        return devices;
    }
    if advertised == source {
        f.warn(
            WarningKind::Ignored,
            format!("{path}.devices"),
            format!(
                "ignored without a rename, as NVIDIA's plugin ignores devices: every {source} \
                 device is shared; set rename (e.g. {source}.shared) to share only these"
            ),
        );
        return DeviceSelector::All;
    }
    if devices == DeviceSelector::List(Vec::new()) {
        f.warn(
            WarningKind::Ignored,
            format!("{path}.devices"),
            format!("an empty list selects no device: nothing is advertised as {advertised}"),
        );
    } else {
        f.warn(
            WarningKind::Difference,
            format!("{path}.devices"),
            format!(
                "gpu-agent shares only these {source} devices, as {advertised}; NVIDIA's plugin \
                 ignores devices and would share every {source} device as {nvidia_name}"
            ),
        );
    }
    devices
}

fn vgpu_rule(path: &str, r: &file::VgpuResource, f: &mut Findings) -> Option<VgpuRule> {
    let before = f.errors.len();
    let name = named(format!("{path}.name"), &r.name, f);
    if let Some(name) = &name {
        if name != names::GPU {
            f.error(
                format!("{path}.name"),
                format!(
                    "must be nvidia.com/gpu (vGPU slices are cut from whole GPUs), got {name:?}"
                ),
            );
        }
    }
    if r.memory_mib < 1 {
        f.error(
            format!("{path}.memoryMiB"),
            format!("must be >= 1, got {}", r.memory_mib),
        );
    }
    if let Some(pct) = r.compute_percent {
        if !(1..=100).contains(&pct) {
            f.error(
                format!("{path}.computePercent"),
                format!("must be within 1..=100, got {pct}"),
            );
        }
    }
    let (rename, devices) = rename_and_devices(path, r.rename.as_deref(), r.devices.as_ref(), f);
    if f.errors.len() != before {
        return None;
    }
    Some(VgpuRule {
        name: name?,
        rename,
        memory_mib: r.memory_mib as u64,
        compute_percent: r.compute_percent.map(|p| p as u32),
        devices: devices?,
    })
}

/// `all`, a count > 0, or a list of device references (NVIDIA's `ReplicatedDevices`).
fn selector(path: &str, value: Option<&Value>, f: &mut Findings) -> Option<DeviceSelector> {
    match value {
        None => Some(DeviceSelector::All),
        Some(Value::String(s)) if s == "all" => Some(DeviceSelector::All),
        Some(Value::String(s)) => {
            f.error(
                path,
                format!("devices set as {s:?} but the only valid string input is 'all'"),
            );
            None
        }
        Some(n @ Value::Number(_)) => match crate::config::schema::integer(n) {
            Some(Value::Number(i)) => match i.as_u64() {
                Some(count) if count >= 1 && count <= u32::MAX as u64 => {
                    Some(DeviceSelector::Count(count as u32))
                }
                _ => {
                    f.error(
                        path,
                        format!("devices set as {i} but a count of devices must be > 0"),
                    );
                    None
                }
            },
            _ => {
                f.error(
                    path,
                    format!("unrecognized type for devices spec: {}", short(n)),
                );
                None
            }
        },
        Some(Value::Sequence(items)) => {
            let mut refs = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match device_ref(item) {
                    // NVIDIA accepts a device listed twice; it is one device.
                    Some(r) if refs.contains(&r) => {}
                    Some(r) => refs.push(r),
                    None => {
                        f.error(
                            format!("{path}[{i}]"),
                            format!(
                                "unsupported device reference {}: expected a GPU index, <gpu>:<mig>, \
                                 GPU-<uuid>, MIG-<uuid> or MIG-GPU-<uuid>/<gi>/<ci>",
                                short(item)
                            ),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(DeviceSelector::List(refs))
        }
        Some(other) => {
            f.error(
                path,
                format!("unrecognized type for devices spec: {}", short(other)),
            );
            None
        }
    }
}

/// The rules between entries (SPEC section 3): entries on the same source may not select the same
/// device, two entries may not advertise the same name, and a rename may not take a source's name.
fn overlaps(positions: &Positions, config: &Config, f: &mut Findings) {
    struct Entry<'a> {
        path: String,
        source: &'a str,
        advertised: String,
        devices: &'a DeviceSelector,
        renamed: bool,
    }
    let rename_by_default = config.time_slicing.rename_by_default;
    let mut entries = Vec::new();
    for (r, &i) in config
        .time_slicing
        .resources
        .iter()
        .zip(&positions.time_slicing)
    {
        let advertised = r.advertised(rename_by_default);
        entries.push(Entry {
            path: format!("sharing.timeSlicing.resources[{i}]"),
            source: &r.name,
            renamed: advertised != r.name,
            advertised,
            devices: &r.devices,
        });
    }
    for (r, &i) in config.mps.resources.iter().zip(&positions.mps) {
        let advertised = r.advertised(config.mps.rename_by_default);
        entries.push(Entry {
            path: format!("sharing.mps.resources[{i}]"),
            source: &r.name,
            renamed: advertised != r.name,
            advertised,
            devices: &r.devices,
        });
    }
    for (r, &i) in config.vgpu.iter().zip(&positions.vgpu) {
        let advertised = r.advertised();
        entries.push(Entry {
            path: format!("sharing.vgpu.resources[{i}]"),
            source: &r.name,
            renamed: advertised != r.name,
            advertised,
            devices: &r.devices,
        });
    }

    let mut advertised: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &entries {
        if let Some(first) = advertised.insert(&e.advertised, &e.path) {
            f.error(
                e.path.clone(),
                format!(
                    "advertises {} which {first} already advertises; give one of them another rename",
                    e.advertised
                ),
            );
        }
    }
    let sources: BTreeSet<&str> = entries.iter().map(|e| e.source).collect();
    for e in &entries {
        if e.renamed && (sources.contains(e.advertised.as_str()) || e.advertised == names::GPU) {
            f.error(
                format!("{}.rename", e.path),
                format!(
                    "{} is also a source resource; choose a name of its own, e.g. {}.shared",
                    e.advertised, e.source
                ),
            );
        }
    }

    for (i, a) in entries.iter().enumerate() {
        for b in &entries[i + 1..] {
            if a.source != b.source {
                continue;
            }
            if let Some(why) = static_overlap(a.devices, b.devices) {
                f.error(
                    b.path.clone(),
                    format!(
                        "selects the same {} device(s) as {} ({why}); a device belongs to one sharing mode",
                        a.source, a.path
                    ),
                );
            }
        }
    }
}

fn static_overlap(a: &DeviceSelector, b: &DeviceSelector) -> Option<String> {
    use DeviceSelector::*;
    match (a, b) {
        (List(x), _) | (_, List(x)) if x.is_empty() => None,
        (All, _) | (_, All) => Some("devices: all".into()),
        (Count(_), Count(_)) => Some("both take the first devices".into()),
        (List(x), List(y)) => {
            let common: Vec<String> = x
                .iter()
                .filter(|r| y.contains(r))
                .map(ToString::to_string)
                .collect();
            (!common.is_empty()).then(|| format!("both list {}", common.join(", ")))
        }
        // A count against a list can only be checked on the node.
        _ => None,
    }
}
