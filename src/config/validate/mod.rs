//! Static validation of a config file: everything that can be checked without seeing the node,
//! with NVIDIA's rules (`api/config/v1`) for NVIDIA's fields. Node-dependent checks (a count
//! overlapping a list, MIG layouts) happen when resources are built.

pub mod hook_path;
mod names;
mod sharing;

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use super::file::{self, ConfigFile};
use super::schema::short;
use super::*;

/// Most replicas per device: keeps the advertised list (and the kubelet's checkpoint) bounded.
pub const MAX_REPLICAS: i64 = 1024;

/// Errors and warnings found so far.
#[derive(Default)]
struct Findings {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl Findings {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn warn(&mut self, kind: WarningKind, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning::new(kind, path, message));
    }
}

/// The outcome of [`validate`]: the config or every error, and the warnings either way.
pub struct Validated {
    pub config: Result<Config, Vec<ConfigError>>,
    pub warnings: Vec<ConfigWarning>,
}

pub fn validate(raw: ConfigFile) -> Validated {
    let mut f = Findings::default();
    let mut config = Config::default();

    match raw.version.as_deref() {
        None | Some("") | Some("v1") => {}
        Some(other) => f.error("version", format!("unknown version {other:?}: must be v1")),
    }
    flags(&raw.flags, &mut config, &mut f);
    named_resources(&raw.resources, &mut f);
    sharing::sharing(&raw.sharing, &mut config, &mut f);
    imex(&raw.imex, &mut config, &mut f);
    health(&raw.health, &mut config, &mut f);
    strategy(&raw.strategy, &mut config, &mut f);
    dra(&raw.dra, &mut config, &mut f);

    Validated {
        config: if f.errors.is_empty() {
            Ok(config)
        } else {
            Err(f.errors)
        },
        warnings: f.warnings,
    }
}

fn flags(fl: &file::Flags, config: &mut Config, f: &mut Findings) {
    match fl.mig_strategy.as_deref() {
        None | Some("none") => {}
        Some("single") => config.mig_strategy = MigStrategy::Single,
        Some("mixed") => config.mig_strategy = MigStrategy::Mixed,
        Some(other) => f.error(
            "flags.migStrategy",
            format!("must be none, single or mixed, got {other:?}"),
        ),
    }
    if let Some(v) = fl.fail_on_init_error {
        config.fail_on_init_error = v;
    }
    if let Some(root) = &fl.mps_root {
        if root.is_empty() || absolute("flags.mpsRoot", root, f) {
            config.plugin.mps_root = Some(root.clone()).filter(|r| !r.is_empty());
        }
    }
    // NVIDIA: the dev root defaults to the driver root; "" means "/" (paths are joined to it).
    if let Some(root) = &fl.nvidia_driver_root {
        if let Some(root) = root_path("flags.nvidiaDriverRoot", root, f) {
            config.plugin.nvidia_driver_root = root.clone();
            config.plugin.nvidia_dev_root = root;
        }
    }
    if let Some(root) = fl.nvidia_dev_root.as_deref().filter(|r| !r.is_empty()) {
        if let Some(root) = root_path("flags.nvidiaDevRoot", root, f) {
            config.plugin.nvidia_dev_root = root;
        }
    }
    let switch = |v: Option<bool>, into: &mut bool| {
        if let Some(v) = v {
            *into = v;
        }
    };
    switch(fl.gds_enabled, &mut config.plugin.gds_enabled);
    switch(fl.mofed_enabled, &mut config.plugin.mofed_enabled);
    switch(fl.gdrcopy_enabled, &mut config.plugin.gdrcopy_enabled);
    match fl.device_discovery_strategy.as_deref() {
        None | Some("auto") | Some("nvml") => {}
        Some("tegra") => f.warn(
            WarningKind::Ignored,
            "flags.deviceDiscoveryStrategy",
            "gpu-agent discovers GPUs through NVML only; tegra is ignored",
        ),
        Some(other) => f.error(
            "flags.deviceDiscoveryStrategy",
            format!("must be auto, nvml or tegra, got {other:?}"),
        ),
    }
    let Some(plugin) = &fl.plugin else { return };
    if let Some(root) = &plugin.container_driver_root {
        if absolute("flags.plugin.containerDriverRoot", root, f) {
            config.plugin.container_driver_root = Some(root.clone());
        }
    }
    if let Some(path) = &plugin.nvidia_ctk_path {
        // "" turns the CDI ldcache hook off.
        if path.is_empty() || absolute(hook_path::FIELD, path, f) {
            match hook_path::check(path, &config.plugin.nvidia_driver_root) {
                Ok(()) => config.plugin.nvidia_ctk_path = Some(path.clone()),
                Err(message) => f.error(hook_path::FIELD, message),
            }
        }
    }
    if let Some(v) = plugin.pass_device_specs {
        config.plugin.pass_device_specs = v;
    }
    if let Some(value) = &plugin.device_list_strategy {
        match device_list_strategies(value) {
            Ok(list) => {
                if list.is_empty() {
                    f.warn(
                        WarningKind::Ignored,
                        "flags.plugin.deviceListStrategy",
                        "an empty list hands containers no devices at all (as in NVIDIA's plugin);                          the usual setting is envvar",
                    );
                }
                config.plugin.device_list_strategies = list;
            }
            Err(message) => f.error("flags.plugin.deviceListStrategy", message),
        }
    }
    match plugin.device_id_strategy.as_deref() {
        None | Some("uuid") => {}
        Some("index") => config.plugin.device_id_strategy = DeviceIdStrategy::Index,
        Some(other) => f.error(
            "flags.plugin.deviceIDStrategy",
            format!("must be uuid or index, got {other:?}"),
        ),
    }
    if let Some(prefix) = &plugin.cdi_annotation_prefix {
        if prefix.is_empty() {
            f.error(
                "flags.plugin.cdiAnnotationPrefix",
                "must be a non-empty annotation key prefix such as cdi.k8s.io/, got \"\"",
            );
        } else {
            if !prefix.ends_with('/') {
                f.warn(
                    WarningKind::Ignored,
                    "flags.plugin.cdiAnnotationPrefix",
                    format!(
                        "{prefix:?} does not end in '/': annotation keys become {prefix}<name>,                          which container runtimes do not read as CDI annotations"
                    ),
                );
            }
            config.plugin.cdi_annotation_prefix = prefix.clone();
        }
    }
    match plugin.shared_devices_allocation_policy.as_deref() {
        None | Some("distributed") => {}
        Some("packed") => config.shared_placement = SharedPlacement::Packed,
        Some(other) => f.error(
            "flags.plugin.sharedDevicesAllocationPolicy",
            format!("must be distributed or packed, got {other:?}"),
        ),
    }
}

/// True when `path` is absolute; else an error at `field`.
fn absolute(field: &str, path: &str, f: &mut Findings) -> bool {
    let ok = path.starts_with('/');
    if !ok {
        f.error(field, format!("must be an absolute path, got {path:?}"));
    }
    ok
}

/// A host root: absolute, or "" for `/` (NVIDIA joins paths to it).
fn root_path(field: &str, path: &str, f: &mut Findings) -> Option<String> {
    if path.is_empty() {
        return Some("/".into());
    }
    absolute(field, path, f).then(|| path.to_string())
}

/// `envvar` or `[envvar, cdi-cri]` (a list may be empty, and may name one twice).
pub fn device_list_strategies(value: &Value) -> Result<Vec<DeviceListStrategy>, String> {
    let names: Vec<String> = match value {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("expected strategy names, got {}", short(other))),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "expected a strategy name or a list of them, got {}",
                short(other)
            ))
        }
    };
    let mut out = Vec::new();
    for name in names {
        let strategy = parse_device_list_strategy(&name)?;
        if !out.contains(&strategy) {
            out.push(strategy);
        }
    }
    Ok(out)
}

/// One device-list strategy name.
pub fn parse_device_list_strategy(name: &str) -> Result<DeviceListStrategy, String> {
    match name {
        "envvar" => Ok(DeviceListStrategy::Envvar),
        "volume-mounts" => Ok(DeviceListStrategy::VolumeMounts),
        "cdi-annotations" => Ok(DeviceListStrategy::CdiAnnotations),
        "cdi-cri" => Ok(DeviceListStrategy::CdiCri),
        other => Err(format!(
            "must be envvar, volume-mounts, cdi-annotations or cdi-cri, got {other:?}"
        )),
    }
}

/// `resources.gpus` / `resources.mig`: checked as NVIDIA checks them, then ignored as NVIDIA
/// ignores them.
fn named_resources(raw: &file::NamedResources, f: &mut Findings) {
    for (section, entries) in [("gpus", &raw.gpus), ("mig", &raw.mig)] {
        for (i, entry) in entries.iter().enumerate() {
            let Some(entry) = entry else { continue };
            if let Err(e) = names::resource_name(&entry.name) {
                f.error(format!("resources.{section}[{i}].name"), e);
            }
        }
        if !entries.is_empty() {
            f.warn(
                WarningKind::Ignored,
                format!("resources.{section}"),
                "pattern-based resource naming is ignored, as NVIDIA's plugin ignores it;                  rename shared devices through sharing.timeSlicing.resources[].rename instead",
            );
        }
    }
}

/// `imex:` — NVIDIA allows channel 0 only.
fn imex(raw: &file::Imex, config: &mut Config, f: &mut Findings) {
    if let Some(ids) = &raw.channel_ids {
        if ids.is_empty() || ids.as_slice() == [0] {
            config.plugin.imex.channel_ids = ids.iter().map(|&i| i as u32).collect();
        } else {
            f.error(
                "imex.channelIDs",
                format!("invalid IMEX config: channelIDs must be [] or [0]; found {ids:?}"),
            );
        }
    }
    if let Some(required) = raw.required {
        config.plugin.imex.required = required;
    }
}

fn health(h: &file::Health, config: &mut Config, f: &mut Findings) {
    if let Some(xids) = &h.ignored_xids {
        let mut set = BTreeSet::new();
        for (i, &xid) in xids.iter().enumerate() {
            if xid < 0 {
                f.error(
                    format!("health.ignoredXids[{i}]"),
                    format!("must be >= 0, got {xid}"),
                );
            } else {
                set.insert(xid as u64);
            }
        }
        config.health.ignored_xids = set;
    }
    match &h.recover_after {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(0) => {}
        Some(Value::String(s)) => match crate::units::parse_duration(s) {
            Ok(d) => config.health.recover_after = d,
            Err(e) => f.error("health.recoverAfter", e.to_string()),
        },
        Some(other) => f.error(
            "health.recoverAfter",
            format!(
                "must be a duration such as 0s, 30s or 5m, got {}",
                short(other)
            ),
        ),
    }
}

fn dra(d: &file::Dra, config: &mut Config, f: &mut Findings) {
    config.dra.enabled = d.enabled;
    if let Some(name) = &d.driver_name {
        match crate::dra::names::check_driver_name(name) {
            Ok(()) => config.dra.driver_name = Some(name.clone()),
            Err(e) => f.error("dra.driverName", e),
        }
    }
    // "all", "none", "0,GPU-…" or a list of indexes and UUIDs, as --dra-devices takes.
    let text = match &d.devices {
        None | Some(Value::Null) => return,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => n.as_u64().map(|n| n.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        Some(_) => None,
    };
    match text {
        Some(text) => match text.parse() {
            Ok(devices) => config.dra.devices = Some(devices),
            Err(e) => f.error("dra.devices", e),
        },
        None => f.error(
            "dra.devices",
            format!(
                "must be all, none, or a list of GPU indexes and UUIDs, got {}",
                short(d.devices.as_ref().unwrap_or(&Value::Null))
            ),
        ),
    }
}

fn strategy(s: &file::Strategy, config: &mut Config, f: &mut Findings) {
    let mut gib = |path: &str, v: Option<f64>, into: &mut f64| {
        if let Some(v) = v {
            if v.is_finite() && v >= 0.0 {
                *into = v;
            } else {
                f.error(path, format!("must be >= 0, got {v}"));
            }
        }
    };
    let t = &mut config.strategy;
    gib(
        "strategy.trainingExclusiveAboveGiB",
        s.training_exclusive_above_gib,
        &mut t.training_exclusive_above_gib,
    );
    gib(
        "strategy.inferenceSharedBelowGiB",
        s.inference_shared_below_gib,
        &mut t.inference_shared_below_gib,
    );
    if let Some(range) = &s.mig_range_gib {
        match range.as_slice() {
            [lo, hi] if lo.is_finite() && hi.is_finite() && *lo >= 0.0 && lo <= hi => {
                t.mig_range_gib = [*lo, *hi];
            }
            _ => f.error(
                "strategy.migRangeGiB",
                format!("must be [low, high] with 0 <= low <= high, got {range:?}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
