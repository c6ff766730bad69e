//! Static validation of a config file: everything that can be checked without seeing the node.
//! Node-dependent checks (a count overlapping a list, MIG layouts) happen when resources are built.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

use super::file::{self, ConfigFile};
use super::schema::short;
use super::*;
use crate::resources::names;

/// Most replicas per device: keeps the advertised list (and the kubelet's checkpoint) bounded.
pub const MAX_REPLICAS: i64 = 1024;

struct Errors(Vec<ConfigError>);

/// Position in the file of each rule kept in `Config` (same order).
#[derive(Default)]
struct Positions {
    time_slicing: Vec<usize>,
    vgpu: Vec<usize>,
}

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }
}

pub fn validate(raw: ConfigFile) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Errors(Vec::new());
    let mut config = Config::default();

    if let Some(version) = &raw.version {
        if version != "v1" {
            errors.push("version", format!("must be v1, got {version:?}"));
        }
    }

    flags(&raw.flags, &mut config, &mut errors);

    if !raw.resources.gpus.is_empty() || !raw.resources.mig.is_empty() {
        let which = if raw.resources.gpus.is_empty() {
            "resources.mig"
        } else {
            "resources.gpus"
        };
        errors.push(
            which,
            "pattern-based resource renaming is not supported by gpu-agent; rename through \
             sharing.timeSlicing.resources[].rename or sharing.vgpu.resources[].rename instead",
        );
    }
    if let Some(mps) = &raw.sharing.mps {
        if !mps.resources.is_empty() {
            errors.push(
                "sharing.mps",
                "MPS sharing is not supported by gpu-agent; use sharing.timeSlicing or sharing.vgpu",
            );
        }
    }

    config.time_slicing.rename_by_default = raw.sharing.time_slicing.rename_by_default;
    config.time_slicing.fail_requests_greater_than_one =
        raw.sharing.time_slicing.fail_requests_greater_than_one;
    // File positions of the rules kept, so that later errors name the entry as written even
    // when an earlier one was rejected.
    let mut positions = Positions::default();
    for (i, r) in raw.sharing.time_slicing.resources.iter().enumerate() {
        let Some(r) = r else { continue };
        let path = format!("sharing.timeSlicing.resources[{i}]");
        if let Some(rule) = time_slicing_rule(&path, r, &mut errors) {
            config.time_slicing.resources.push(rule);
            positions.time_slicing.push(i);
        }
    }
    for (i, r) in raw.sharing.vgpu.resources.iter().enumerate() {
        let Some(r) = r else { continue };
        let path = format!("sharing.vgpu.resources[{i}]");
        if let Some(rule) = vgpu_rule(&path, r, &mut errors) {
            config.vgpu.push(rule);
            positions.vgpu.push(i);
        }
    }
    match raw.sharing.placement.as_deref() {
        None | Some("spread") => {}
        Some("packed") => config.shared_placement = SharedPlacement::Packed,
        Some(other) => errors.push(
            "sharing.placement",
            format!("must be spread or packed, got {other:?}"),
        ),
    }
    sharing_overlaps(&positions, &config, &mut errors);

    health(&raw.health, &mut config, &mut errors);
    strategy(&raw.strategy, &mut config, &mut errors);

    if errors.0.is_empty() {
        Ok(config)
    } else {
        Err(errors.0)
    }
}

fn flags(f: &file::Flags, config: &mut Config, errors: &mut Errors) {
    match f.mig_strategy.as_deref() {
        None | Some("none") => {}
        Some("single") => config.mig_strategy = MigStrategy::Single,
        Some("mixed") => config.mig_strategy = MigStrategy::Mixed,
        Some(other) => errors.push(
            "flags.migStrategy",
            format!("must be none, single or mixed, got {other:?}"),
        ),
    }
    if let Some(v) = f.fail_on_init_error {
        config.fail_on_init_error = v;
    }
    if let Some(root) = &f.nvidia_driver_root {
        if absolute("flags.nvidiaDriverRoot", root, errors) {
            config.plugin.nvidia_driver_root = root.clone();
            config.plugin.nvidia_dev_root = root.clone();
        }
    }
    if let Some(root) = &f.nvidia_dev_root {
        if absolute("flags.nvidiaDevRoot", root, errors) {
            config.plugin.nvidia_dev_root = root.clone();
        }
    }
    let Some(plugin) = &f.plugin else { return };
    if let Some(root) = &plugin.container_driver_root {
        if absolute("flags.plugin.containerDriverRoot", root, errors) {
            config.plugin.container_driver_root = Some(root.clone());
        }
    }
    if let Some(path) = &plugin.nvidia_ctk_path {
        // "" turns the CDI ldcache hook off.
        if path.is_empty() || absolute("flags.plugin.nvidiaCTKPath", path, errors) {
            config.plugin.nvidia_ctk_path = Some(path.clone());
        }
    }
    if let Some(v) = plugin.pass_device_specs {
        config.plugin.pass_device_specs = v;
    }
    if let Some(value) = &plugin.device_list_strategy {
        match device_list_strategies(value) {
            Ok(list) => config.plugin.device_list_strategies = list,
            Err(message) => errors.push("flags.plugin.deviceListStrategy", message),
        }
    }
    match plugin.device_id_strategy.as_deref() {
        None | Some("uuid") => {}
        Some("index") => config.plugin.device_id_strategy = DeviceIdStrategy::Index,
        Some(other) => errors.push(
            "flags.plugin.deviceIDStrategy",
            format!("must be uuid or index, got {other:?}"),
        ),
    }
    if let Some(prefix) = &plugin.cdi_annotation_prefix {
        if prefix.is_empty() || !prefix.ends_with('/') {
            errors.push(
                "flags.plugin.cdiAnnotationPrefix",
                format!("must be a non-empty key prefix ending in '/', got {prefix:?}"),
            );
        } else {
            config.plugin.cdi_annotation_prefix = prefix.clone();
        }
    }
}

/// True when `path` is absolute; else an error at `field`.
fn absolute(field: &str, path: &str, errors: &mut Errors) -> bool {
    let ok = path.starts_with('/');
    if !ok {
        errors.push(field, format!("must be an absolute path, got {path:?}"));
    }
    ok
}

/// `envvar` or `[envvar, cdi-cri]`.
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
    if names.is_empty() {
        return Err("must name at least one strategy, got []".into());
    }
    let mut out = Vec::new();
    for name in names {
        let strategy = parse_device_list_strategy(&name)?;
        if out.contains(&strategy) {
            return Err(format!("{name:?} is listed twice"));
        }
        out.push(strategy);
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

/// Extended resource names: `<domain>/<name>`, lower-case DNS-ish characters.
pub fn valid_resource_name(name: &str) -> bool {
    let Some((domain, rest)) = name.split_once('/') else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    domain.contains('.') && ok(domain) && ok(rest) && !domain.starts_with("kubernetes.io")
}

/// The source resources a sharing entry may name.
fn sharable_source(name: &str, allow_mig: bool) -> bool {
    name == names::GPU
        || (allow_mig && name.starts_with("nvidia.com/mig-") && valid_resource_name(name))
}

fn time_slicing_rule(
    path: &str,
    r: &file::ReplicatedResource,
    errors: &mut Errors,
) -> Option<TimeSlicingRule> {
    let before = errors.0.len();
    if !sharable_source(&r.name, true) {
        errors.push(
            format!("{path}.name"),
            format!(
                "must be nvidia.com/gpu or nvidia.com/mig-<profile>, got {:?}",
                r.name
            ),
        );
    }
    if r.replicas < 2 {
        errors.push(
            format!("{path}.replicas"),
            format!("must be >= 2, got {}", r.replicas),
        );
    } else if r.replicas > MAX_REPLICAS {
        errors.push(
            format!("{path}.replicas"),
            format!("must be <= {MAX_REPLICAS}, got {}", r.replicas),
        );
    }
    check_rename(path, r.rename.as_deref(), errors);
    let devices = selector(&format!("{path}.devices"), r.devices.as_ref(), errors);
    (errors.0.len() == before).then(|| TimeSlicingRule {
        name: r.name.clone(),
        rename: r.rename.clone(),
        replicas: r.replicas as u32,
        devices: devices.unwrap_or_default(),
    })
}

fn vgpu_rule(path: &str, r: &file::VgpuResource, errors: &mut Errors) -> Option<VgpuRule> {
    let before = errors.0.len();
    if !sharable_source(&r.name, false) {
        errors.push(
            format!("{path}.name"),
            format!(
                "must be nvidia.com/gpu (vGPU slices are cut from whole GPUs), got {:?}",
                r.name
            ),
        );
    }
    if r.memory_mib < 1 {
        errors.push(
            format!("{path}.memoryMiB"),
            format!("must be >= 1, got {}", r.memory_mib),
        );
    }
    if let Some(pct) = r.compute_percent {
        if !(1..=100).contains(&pct) {
            errors.push(
                format!("{path}.computePercent"),
                format!("must be within 1..=100, got {pct}"),
            );
        }
    }
    check_rename(path, r.rename.as_deref(), errors);
    let devices = selector(&format!("{path}.devices"), r.devices.as_ref(), errors);
    (errors.0.len() == before).then(|| VgpuRule {
        name: r.name.clone(),
        rename: r.rename.clone(),
        memory_mib: r.memory_mib as u64,
        compute_percent: r.compute_percent.map(|p| p as u32),
        devices: devices.unwrap_or_default(),
    })
}

fn check_rename(path: &str, rename: Option<&str>, errors: &mut Errors) {
    if let Some(rename) = rename {
        if !valid_resource_name(rename) {
            errors.push(
                format!("{path}.rename"),
                format!("must be a resource name like nvidia.com/gpu.shared, got {rename:?}"),
            );
        }
    }
}

/// `all`, a count, or a list of indexes, `<gpu>:<mig>` pairs and GPU-/MIG- UUIDs.
fn selector(path: &str, value: Option<&Value>, errors: &mut Errors) -> Option<DeviceSelector> {
    match value {
        None | Some(Value::Null) => Some(DeviceSelector::All),
        Some(Value::String(s)) if s == "all" => Some(DeviceSelector::All),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(count) if count >= 1 && count <= u32::MAX as u64 => {
                Some(DeviceSelector::Count(count as u32))
            }
            _ => {
                errors.push(path, format!("a device count must be >= 1, got {n}"));
                None
            }
        },
        Some(Value::Sequence(items)) if !items.is_empty() => {
            let mut refs = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match device_ref(item) {
                    Some(r) if refs.contains(&r) => {
                        errors.push(format!("{path}[{i}]"), format!("{r} is listed twice"));
                        ok = false;
                    }
                    Some(r) => refs.push(r),
                    None => {
                        errors.push(
                            format!("{path}[{i}]"),
                            format!(
                                "expected a GPU index, <gpu>:<mig> index pair, GPU-… or MIG-… UUID, got {}",
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
            errors.push(
                path,
                format!(
                    "must be all, a count, or a list of indexes / UUIDs, got {}",
                    short(other)
                ),
            );
            None
        }
    }
}

fn device_ref(value: &Value) -> Option<DeviceRef> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .map(DeviceRef::Index),
        Value::String(s) => {
            if (s.starts_with("GPU-") || s.starts_with("MIG-")) && s.len() > 4 {
                Some(DeviceRef::Uuid(s.clone()))
            } else if let Some((g, m)) = s.split_once(':') {
                Some(DeviceRef::MigIndex(g.parse().ok()?, m.parse().ok()?))
            } else {
                s.parse().ok().map(DeviceRef::Index)
            }
        }
        _ => None,
    }
}

/// The static sharing rules of SPEC.md section 3: subsets need a rename, entries on the same
/// source may not select the same device, and two entries may not advertise the same name.
fn sharing_overlaps(positions: &Positions, config: &Config, errors: &mut Errors) {
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

    for e in &entries {
        if *e.devices != DeviceSelector::All && !e.renamed {
            errors.push(
                format!("{}.rename", e.path),
                format!(
                    "required when devices is not all: the GPUs left out stay exclusive under {}, and one \
                     resource name cannot mix whole GPUs with shared replicas (set rename, e.g. {}.shared, \
                     or renameByDefault: true)",
                    e.source, e.source
                ),
            );
        }
    }

    let mut advertised: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &entries {
        if let Some(first) = advertised.insert(&e.advertised, &e.path) {
            errors.push(
                e.path.clone(),
                format!("advertises {} which {first} already advertises; give one of them another rename", e.advertised),
            );
        }
    }
    let sources: BTreeSet<&str> = entries.iter().map(|e| e.source).collect();
    for e in &entries {
        if e.renamed && (sources.contains(e.advertised.as_str()) || e.advertised == names::GPU) {
            errors.push(
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
                errors.push(
                    b.path.clone(),
                    format!("selects the same {} device(s) as {} ({why}); a device belongs to one sharing mode", a.source, a.path),
                );
            }
        }
    }
}

fn static_overlap(a: &DeviceSelector, b: &DeviceSelector) -> Option<String> {
    use DeviceSelector::*;
    match (a, b) {
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

fn health(h: &file::Health, config: &mut Config, errors: &mut Errors) {
    if let Some(xids) = &h.ignored_xids {
        let mut set = BTreeSet::new();
        for (i, &xid) in xids.iter().enumerate() {
            if xid < 0 {
                errors.push(
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
            Err(e) => errors.push("health.recoverAfter", e.to_string()),
        },
        Some(other) => errors.push(
            "health.recoverAfter",
            format!(
                "must be a duration such as 0s, 30s or 5m, got {}",
                short(other)
            ),
        ),
    }
}

fn strategy(s: &file::Strategy, config: &mut Config, errors: &mut Errors) {
    let mut gib = |path: &str, v: Option<f64>, into: &mut f64| {
        if let Some(v) = v {
            if v.is_finite() && v >= 0.0 {
                *into = v;
            } else {
                errors.push(path, format!("must be >= 0, got {v}"));
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
            _ => errors.push(
                "strategy.migRangeGiB",
                format!("must be [low, high] with 0 <= low <= high, got {range:?}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn empty_and_nvidia_examples_are_accepted() {
        assert_eq!(parse("version: v1").unwrap(), Config::default());
        assert!(parse("  \n").unwrap_err()[0].message.contains("empty"));
        let nvidia = r#"
version: v1
flags:
  migStrategy: "none"
  failOnInitError: true
  nvidiaDriverRoot: "/"
  plugin:
    passDeviceSpecs: false
    deviceListStrategy: envvar
    deviceIDStrategy: uuid
  gfd:
    oneshot: false
    noTimestamp: false
    outputFile: /etc/kubernetes/node-feature-discovery/features.d/gfd
    sleepInterval: 60s
sharing:
  timeSlicing:
    resources:
    - name: nvidia.com/gpu
      replicas: 4
"#;
        let c = parse(nvidia).unwrap();
        assert_eq!(c.time_slicing.resources[0].replicas, 4);
        assert_eq!(c.time_slicing.resources[0].devices, DeviceSelector::All);
    }

    #[test]
    fn replicas_error_names_path_and_value() {
        let e =
            errors("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 1}]}}");
        assert_eq!(
            e,
            ["sharing.timeSlicing.resources[0].replicas: must be >= 2, got 1"]
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = errors("flags: {migStrategy: none, colour: red}");
        assert!(e[0].contains("colour"), "{e:?}");
        assert!(e[0].starts_with("flags"), "{e:?}");
    }

    #[test]
    fn an_empty_key_is_named_quoted() {
        // Found by tests/properties.rs: an empty key used to give an error with an empty path.
        assert_eq!(
            errors("!!str : 1"),
            ["\"\": unknown field, expected one of version, flags, resources, sharing, imex, health, strategy"]
        );
        assert!(errors("flags: {\"\": 1}")[0].starts_with("flags.\"\": unknown field"));
    }

    #[test]
    fn all_errors_at_once() {
        let text = r#"
version: v2
flags: {migStrategy: weird, plugin: {deviceListStrategy: [envvar, nope], deviceIDStrategy: name}}
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, replicas: 0, devices: [0, 1]}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 0, computePercent: 101}
health: {recoverAfter: soon}
strategy: {migRangeGiB: [20, 4]}
"#;
        let e = errors(text);
        for needle in [
            "version: must be v1",
            "flags.migStrategy: must be none, single or mixed, got \"weird\"",
            "flags.plugin.deviceListStrategy: must be envvar, volume-mounts, cdi-annotations or cdi-cri, got \"nope\"",
            "flags.plugin.deviceIDStrategy: must be uuid or index, got \"name\"",
            "sharing.timeSlicing.resources[0].replicas: must be >= 2, got 0",
            "sharing.vgpu.resources[0].memoryMiB: must be >= 1, got 0",
            "sharing.vgpu.resources[0].computePercent: must be within 1..=100, got 101",
            "health.recoverAfter:",
            "strategy.migRangeGiB:",
        ] {
            assert!(e.iter().any(|m| m.starts_with(needle)), "missing {needle:?} in {e:#?}");
        }
    }

    #[test]
    fn unknown_fields_and_type_errors_are_all_reported_with_paths() {
        let text = r#"
version: 1
colour: red
flags:
  foo: 1
  failOnInitError: "yes"
  plugin: {passDeviceSpecs: maybe, extra: true}
sharing:
  timeSlicing:
    renameByDefault: 3
    resources:
      - {name: nvidia.com/gpu, replicas: four}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.b, replicas: 1, devices: [0]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.c, replicas: 0, colour: blue, devices: [1]}
      - {replicas: 2}
      - just-a-string
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: lots, computePercent: 200}
health: {ignoredXids: [13, x, ~], recoverAfter: soon}
strategy: {trainingExclusiveAboveGiB: big, migRangeGiB: 4}
"#;
        let e = errors(text);
        let expected = [
            "version: expected a string, got an integer 1",
            "colour: unknown field, expected one of version, flags, resources, sharing, imex, health, strategy",
            "flags.foo: unknown field, expected one of migStrategy, failOnInitError,",
            "flags.failOnInitError: expected true or false, got a string \"yes\"",
            "flags.plugin.passDeviceSpecs: expected true or false, got a string \"maybe\"",
            "flags.plugin.extra: unknown field, expected one of passDeviceSpecs,",
            "sharing.timeSlicing.renameByDefault: expected true or false, got an integer 3",
            "sharing.timeSlicing.resources[0].replicas: expected an integer, got a string \"four\"",
            "sharing.timeSlicing.resources[1].replicas: must be >= 2, got 1",
            "sharing.timeSlicing.resources[2].colour: unknown field, expected one of name, rename, devices, replicas",
            "sharing.timeSlicing.resources[2].replicas: must be >= 2, got 0",
            "sharing.timeSlicing.resources[3].name: required field missing",
            "sharing.timeSlicing.resources[4]: expected a mapping, got a string \"just-a-string\"",
            "sharing.vgpu.resources[0].memoryMiB: expected an integer, got a string \"lots\"",
            "health.ignoredXids[1]: expected an integer, got a string \"x\"",
            "health.ignoredXids[2]: expected an integer, got nothing",
            "health.recoverAfter:",
            "strategy.trainingExclusiveAboveGiB: expected a number, got a string \"big\"",
            "strategy.migRangeGiB: expected a list, got an integer 4",
        ];
        for needle in expected {
            assert!(
                e.iter().any(|m| m.starts_with(needle)),
                "missing {needle:?} in {e:#?}"
            );
        }
        // Nothing is reported twice, and nothing beyond these (the vGPU entry lost its required
        // memoryMiB, so its computePercent is not judged on top).
        assert_eq!(e.len(), expected.len(), "{e:#?}");
    }

    #[test]
    fn a_config_with_every_field_parses() {
        // Guards the agreement of `schema` and `file`: every field both know.
        let text = r#"
version: v1
flags:
  migStrategy: mixed
  failOnInitError: false
  mpsRoot: /run/nvidia/mps
  nvidiaDriverRoot: /run/nvidia/driver
  nvidiaDevRoot: /
  gdsEnabled: false
  mofedEnabled: false
  useNodeFeatureAPI: false
  deviceDiscoveryStrategy: auto
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [envvar, cdi-cri]
    deviceIDStrategy: index
    cdiAnnotationPrefix: cdi.example.com/
    nvidiaCTKPath: /usr/bin/nvidia-ctk
    containerDriverRoot: /driver-root
  gfd: {oneshot: false}
resources: {}
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: true
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.ts, replicas: 2, devices: [0]}
  mps: {resources: []}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/vgpu, memoryMiB: 1024, computePercent: 10, devices: [1]}
  placement: packed
imex: {}
health: {ignoredXids: [13], recoverAfter: 1m}
strategy: {trainingExclusiveAboveGiB: 16, inferenceSharedBelowGiB: 4.5, migRangeGiB: [4, 20]}
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.mig_strategy, MigStrategy::Mixed);
        assert!(c.plugin.pass_device_specs);
        assert_eq!(c.plugin.nvidia_driver_root, "/run/nvidia/driver");
        assert_eq!(c.plugin.nvidia_dev_root, "/");
        assert_eq!(
            c.plugin.container_driver_root.as_deref(),
            Some("/driver-root")
        );
        assert_eq!(c.plugin.driver_root_readable_at(), "/driver-root");
        assert_eq!(
            c.plugin.nvidia_ctk_path.as_deref(),
            Some("/usr/bin/nvidia-ctk")
        );
        assert_eq!(c.plugin.cdi_annotation_prefix, "cdi.example.com/");
        assert_eq!(c.shared_placement, SharedPlacement::Packed);
        assert_eq!(c.strategy.inference_shared_below_gib, 4.5);
        assert_eq!(c.vgpu[0].compute_percent, Some(10));
    }

    #[test]
    fn driver_paths_must_be_absolute_and_an_empty_ctk_path_turns_the_hook_off() {
        assert_eq!(
            errors(
                "flags: {nvidiaDriverRoot: run/nvidia/driver, nvidiaDevRoot: dev, \
                 plugin: {containerDriverRoot: driver-root, nvidiaCTKPath: bin/nvidia-ctk}}"
            ),
            [
                r#"flags.nvidiaDriverRoot: must be an absolute path, got "run/nvidia/driver""#,
                r#"flags.nvidiaDevRoot: must be an absolute path, got "dev""#,
                r#"flags.plugin.containerDriverRoot: must be an absolute path, got "driver-root""#,
                r#"flags.plugin.nvidiaCTKPath: must be an absolute path, got "bin/nvidia-ctk""#,
            ]
        );
        let c = parse("flags: {plugin: {nvidiaCTKPath: \"\"}}").unwrap();
        assert_eq!(c.plugin.nvidia_ctk_path.as_deref(), Some(""));
        let c = parse("flags: {nvidiaDriverRoot: /run/nvidia/driver}").unwrap();
        assert_eq!(c.plugin.container_driver_root, None);
        assert_eq!(c.plugin.driver_root_readable_at(), "/run/nvidia/driver");
        assert_eq!(c.plugin.nvidia_ctk_path, None);
    }

    #[test]
    fn whole_document_shape_errors() {
        assert_eq!(
            errors("- version: v1"),
            ["config: expected a mapping of sections (version, flags, sharing, …), got a list - version: v1"]
        );
        assert!(errors("# nothing but a comment")[0].contains("no settings"));
        // A YAML syntax error stops everything: there is no tree to walk.
        let e = errors("flags: {migStrategy: [");
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn a_rejected_entry_does_not_shift_later_paths() {
        let e = errors(
            r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, replicas: x}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [0]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [1]}
"#,
        );
        assert!(
            e.iter().any(|m| m.starts_with(
                "sharing.timeSlicing.resources[2]: advertises nvidia.com/gpu.a which sharing.timeSlicing.resources[1]"
            )),
            "{e:#?}"
        );
    }

    #[test]
    fn subset_without_rename_is_rejected_with_a_suggestion() {
        let e = errors("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: [0]}]}}");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("sharing.timeSlicing.resources[0].rename: required"),
            "{e:?}"
        );
        assert!(e[0].contains("nvidia.com/gpu.shared"), "{e:?}");
        // renameByDefault satisfies it.
        parse("sharing: {timeSlicing: {renameByDefault: true, resources: [{name: nvidia.com/gpu, replicas: 2, devices: 2}]}}")
            .unwrap();
    }

    #[test]
    fn overlapping_entries_are_rejected() {
        let e = errors(
            r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [0, 1]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.b, replicas: 4, devices: [1, 2]}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 10240}
"#,
        );
        assert!(
            e.iter().any(
                |m| m.starts_with("sharing.timeSlicing.resources[1]: selects the same")
                    && m.contains("both list 1")
            ),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("sharing.vgpu.resources[0]: selects the same")),
            "{e:#?}"
        );
        // Disjoint lists and a count next to a list pass the static check.
        parse(
            r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [0, 1]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.b, replicas: 4, devices: ["GPU-abc", 3]}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 10240, devices: 1}
"#,
        )
        .unwrap();
    }

    #[test]
    fn selectors_parse() {
        let c = parse(
            r#"
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
      - {name: nvidia.com/mig-1g.10gb, replicas: 3, devices: ["0:1", "MIG-abc", 2]}
"#,
        )
        .unwrap();
        assert_eq!(
            c.time_slicing.resources[0].devices,
            DeviceSelector::List(vec![
                DeviceRef::MigIndex(0, 1),
                DeviceRef::Uuid("MIG-abc".into()),
                DeviceRef::Index(2)
            ])
        );
        let e = errors("sharing: {timeSlicing: {renameByDefault: true, resources: [{name: nvidia.com/gpu, replicas: 2, devices: [zero]}]}}");
        assert!(
            e[0].starts_with("sharing.timeSlicing.resources[0].devices[0]: expected"),
            "{e:?}"
        );
    }

    #[test]
    fn device_list_strategy_string_or_list_and_overrides() {
        let c = parse("flags: {plugin: {deviceListStrategy: [envvar, cdi-cri]}}").unwrap();
        assert_eq!(
            c.plugin.device_list_strategies,
            [DeviceListStrategy::Envvar, DeviceListStrategy::CdiCri]
        );
        let c = c.with_overrides(&Overrides {
            device_list_strategies: Some(vec![DeviceListStrategy::VolumeMounts]),
            mig_strategy: Some(MigStrategy::Mixed),
            ..Overrides::default()
        });
        assert_eq!(
            c.plugin.device_list_strategies,
            [DeviceListStrategy::VolumeMounts]
        );
        assert_eq!(c.mig_strategy, MigStrategy::Mixed);
    }

    #[test]
    fn health_and_strategy_extensions() {
        let c = parse("health: {ignoredXids: [13], recoverAfter: 30s}\nstrategy: {trainingExclusiveAboveGiB: 24, migRangeGiB: [2, 40]}").unwrap();
        assert_eq!(c.health.ignored_xids, BTreeSet::from([13]));
        assert_eq!(c.health.recover_after, std::time::Duration::from_secs(30));
        assert_eq!(c.strategy.training_exclusive_above_gib, 24.0);
        assert_eq!(c.strategy.mig_range_gib, [2.0, 40.0]);
    }

    #[test]
    fn resource_names() {
        assert!(valid_resource_name("nvidia.com/gpu.shared"));
        assert!(valid_resource_name("nvidia.com/mig-1g.10gb"));
        assert!(!valid_resource_name("gpu"));
        assert!(!valid_resource_name("nvidia.com/"));
        assert!(!valid_resource_name("nvidia.com/GPU Shared"));
    }
}
