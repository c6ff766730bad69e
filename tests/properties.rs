//! Property tests (proptest): the parsers and request handlers that take input from outside the
//! process never panic, and keep their contracts on any input — the config and fixture parsers,
//! quantities and durations, Allocate, MIG placement and GetPreferredAllocation.
//!
//! Case counts are modest (256 by default, fewer for the heavier suites) so that `cargo test`
//! stays quick; `PROPTEST_CASES=20000 cargo test --test properties` runs a long fuzzing session
//! of the same properties.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use gpu_agent::allocate::{self, AllocateError, NVIDIA_VISIBLE_DEVICES};
use gpu_agent::config::{self, Config, SharedPlacement};
use gpu_agent::gpu::fixture;
use gpu_agent::gpu::mig_profiles::{self, ModelSpec};
use gpu_agent::health::HealthState;
use gpu_agent::preferred::{self, Topology};
use gpu_agent::resources::{self, Health, ResourceSet, Strategy as Sharing};
use gpu_agent::units::{format_duration, parse_duration, parse_quantity};
use proptest::prelude::*;
use proptest::test_runner::Config as RunnerConfig;
use serde_yaml_ng::{Mapping, Value};

/// `cases` unless `PROPTEST_CASES` asks for more (or fewer).
fn cases(cases: u32) -> RunnerConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Text that is often almost YAML: YAML punctuation, keys of our formats, numbers and noise.
fn yamlish_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just(": ".to_string()),
        Just("\n".to_string()),
        Just("\n  ".to_string()),
        Just("- ".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(", ".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!str ".to_string()),
        Just("<<: ".to_string()),
        Just("# c".to_string()),
        Just("---\n".to_string()),
        Just("|\n".to_string()),
        prop::sample::select(
            &[
                "version",
                "v1",
                "flags",
                "migStrategy",
                "plugin",
                "deviceListStrategy",
                "sharing",
                "timeSlicing",
                "resources",
                "name",
                "nvidia.com/gpu",
                "replicas",
                "devices",
                "rename",
                "vgpu",
                "memoryMiB",
                "health",
                "recoverAfter",
                "ignoredXids",
                "strategy",
                "gpus",
                "model",
                "NVIDIA H100 80GB HBM3",
                "mig",
                "1g.10gb",
                "nvlink",
                "telemetry",
                "xids",
                "lost",
                "uuid",
                "numaNode",
                "true",
                "null",
                "~",
                "0",
                "-1",
                "1e400",
                "0x1F",
                ".5",
            ][..]
        )
        .prop_map(str::to_string),
        "[a-zA-Z0-9_.]{1,8}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

/// Any YAML scalar or small collection: the wrong-typed values a field may be given.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        (-1e6f64..1e6).prop_map(|f| Value::Number(f.into())),
        "[a-z0-9./ -]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Sequence),
            prop::collection::vec(("[a-zA-Z]{1,6}", inner), 0..3).prop_map(|kv| {
                Value::Mapping(kv.into_iter().map(|(k, v)| (Value::String(k), v)).collect())
            }),
        ]
    })
}

fn s(text: &str) -> Value {
    Value::String(text.to_string())
}

fn n(number: i64) -> Value {
    Value::Number(number.into())
}

/// A value for a field: usually one of the plausible `good` ones, sometimes anything at all.
fn field(good: Vec<Value>) -> impl Strategy<Value = Value> {
    prop_oneof![4 => prop::sample::select(good), 1 => any_value()]
}

/// A mapping holding a random subset of `fields`, now and then with an unknown key.
fn mapping(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let count = fields.len();
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    (
        prop::collection::vec(any::<bool>(), count),
        values,
        prop::option::weighted(0.1, ("[a-zA-Z]{1,8}", any_value())),
    )
        .prop_map(move |(present, values, unknown)| {
            let mut map = Mapping::new();
            for ((name, value), keep) in names.iter().zip(values).zip(present) {
                if keep {
                    map.insert(s(name), value);
                }
            }
            if let Some((key, value)) = unknown {
                map.insert(Value::String(key), value);
            }
            Value::Mapping(map)
        })
        .boxed()
}

fn resource_names() -> Vec<Value> {
    [
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/gpu.shared",
        "gpu",
        "",
    ]
    .map(s)
    .to_vec()
}

fn devices_values() -> Vec<Value> {
    vec![
        s("all"),
        n(2),
        Value::Sequence(vec![n(0), n(1)]),
        Value::Sequence(vec![s("GPU-0")]),
        n(-1),
    ]
}

/// A config document that follows our schema in shape, with plausible and wrong values mixed.
fn config_tree() -> impl Strategy<Value = Value> {
    let plugin = mapping(vec![
        (
            "passDeviceSpecs",
            field(vec![Value::Bool(true), Value::Bool(false)]).boxed(),
        ),
        (
            "deviceListStrategy",
            field(vec![
                s("envvar"),
                s("cdi-cri"),
                s("volume-mounts"),
                Value::Sequence(vec![s("envvar"), s("cdi-annotations")]),
                s("nope"),
            ])
            .boxed(),
        ),
        (
            "deviceIDStrategy",
            field(vec![s("uuid"), s("index"), s("name")]).boxed(),
        ),
        ("cdiAnnotationPrefix", field(vec![s("cdi.k8s.io/")]).boxed()),
    ]);
    let flags = mapping(vec![
        (
            "migStrategy",
            field(vec![s("none"), s("single"), s("mixed"), s("weird")]).boxed(),
        ),
        ("failOnInitError", field(vec![Value::Bool(false)]).boxed()),
        (
            "nvidiaDriverRoot",
            field(vec![s("/"), s("/run/nvidia/driver")]).boxed(),
        ),
        ("plugin", plugin),
    ]);
    let replicated = mapping(vec![
        ("name", field(resource_names()).boxed()),
        ("rename", field(resource_names()).boxed()),
        ("devices", field(devices_values()).boxed()),
        (
            "replicas",
            field(vec![n(1), n(2), n(4), n(1024), n(1025), n(0)]).boxed(),
        ),
    ]);
    let time_slicing = mapping(vec![
        ("renameByDefault", field(vec![Value::Bool(true)]).boxed()),
        (
            "failRequestsGreaterThanOne",
            field(vec![Value::Bool(true)]).boxed(),
        ),
        (
            "resources",
            prop::collection::vec(replicated, 0..3)
                .prop_map(Value::Sequence)
                .boxed(),
        ),
    ]);
    let vgpu_resource = mapping(vec![
        ("name", field(resource_names()).boxed()),
        ("rename", field(resource_names()).boxed()),
        ("memoryMiB", field(vec![n(10240), n(0), n(-5)]).boxed()),
        ("computePercent", field(vec![n(10), n(100), n(101)]).boxed()),
        ("devices", field(devices_values()).boxed()),
    ]);
    let vgpu = mapping(vec![(
        "resources",
        prop::collection::vec(vgpu_resource, 0..2)
            .prop_map(Value::Sequence)
            .boxed(),
    )]);
    let sharing = mapping(vec![
        ("timeSlicing", time_slicing),
        ("vgpu", vgpu),
        (
            "placement",
            field(vec![s("spread"), s("packed"), s("random")]).boxed(),
        ),
    ]);
    let health = mapping(vec![
        (
            "ignoredXids",
            field(vec![
                Value::Sequence(vec![n(13), n(31)]),
                Value::Sequence(vec![]),
                Value::Sequence(vec![n(-1)]),
            ])
            .boxed(),
        ),
        (
            "recoverAfter",
            field(vec![s("10m"), s("0s"), n(0), s("1h30m"), s("-1s"), s("10")]).boxed(),
        ),
    ]);
    let strategy = mapping(vec![
        (
            "trainingExclusiveAboveGiB",
            field(vec![n(16), n(-1)]).boxed(),
        ),
        (
            "migRangeGiB",
            field(vec![
                Value::Sequence(vec![n(4), n(20)]),
                Value::Sequence(vec![n(20), n(4)]),
                Value::Sequence(vec![n(4)]),
            ])
            .boxed(),
        ),
    ]);
    mapping(vec![
        ("version", field(vec![s("v1"), s("v2")]).boxed()),
        ("flags", flags),
        ("sharing", sharing),
        ("health", health),
        ("strategy", strategy),
    ])
}

/// The section an error path starts with: `sharing` for `sharing.timeSlicing.resources[0].name`.
fn top_level(path: &str) -> &str {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    &path[..end]
}

fn check_config_errors(
    text: &str,
    result: &Result<Config, Vec<config::ConfigError>>,
) -> Result<(), TestCaseError> {
    if let Err(errors) = result {
        prop_assert!(!errors.is_empty(), "an empty error list for {text:?}");
        for e in errors {
            prop_assert!(
                !e.path.trim().is_empty(),
                "error without a path: {e:?} for {text:?}"
            );
            prop_assert!(
                !e.message.trim().is_empty(),
                "error without a message: {e:?}"
            );
        }
    }
    Ok(())
}

/// Non-overlapping placements of random profiles on an empty GPU of `model`, within every
/// limit: a layout the hardware can hold, in a shuffled order.
fn valid_layout(model: &'static ModelSpec) -> impl Strategy<Value = Vec<&'static str>> {
    (
        prop::collection::vec(
            (0..model.profiles.len(), any::<prop::sample::Index>()),
            0..10,
        ),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(tries, rotate)| {
            let mut used = 0u64;
            let mut counts = BTreeMap::<&str, u8>::new();
            let mut layout = Vec::new();
            for (p, start) in tries {
                let profile = &model.profiles[p];
                let start = profile.starts[start.index(profile.starts.len())];
                let mask = ((1u64 << profile.memory_slices) - 1) << start;
                let count = counts.entry(profile.name).or_default();
                if used & mask != 0
                    || *count >= profile.max_instances
                    || layout.len() >= usize::from(model.max_gpu_instances)
                    || start + profile.memory_slices > model.memory_slices
                {
                    continue;
                }
                used |= mask;
                *count += 1;
                layout.push(profile.name);
            }
            if !layout.is_empty() {
                let k = rotate.index(layout.len());
                layout.rotate_left(k);
            }
            layout
        })
}

fn mig_model() -> impl Strategy<Value = &'static ModelSpec> {
    prop::sample::select(mig_profiles::models().iter().collect::<Vec<_>>())
}

/// One GPU entry of a generated fixture: (YAML, number of MIG devices or None).
fn fixture_gpu() -> impl Strategy<Value = (String, Option<usize>)> {
    (
        mig_model(),
        any::<bool>(),
        prop::option::of(0u32..2),
        any::<bool>(),
    )
        .prop_flat_map(|(model, mig, numa, lost)| {
            let layout = if mig {
                valid_layout(model).prop_map(Some).boxed()
            } else {
                Just(None).boxed()
            };
            (Just(model), layout, Just(numa), Just(lost))
        })
        .prop_map(|(model, layout, numa, lost)| {
            let mut yaml = format!("  - model: {}\n    lost: {lost}\n", model.nvml_name);
            if let Some(numa) = numa {
                yaml += &format!("    numaNode: {numa}\n");
            }
            if let Some(layout) = &layout {
                yaml += &format!("    mig: {{devices: [{}]}}\n", layout.join(", "));
            }
            (yaml, layout.map(|l| l.len()))
        })
}

/// A valid fixture: its text and the MIG device count per GPU.
fn valid_fixture(
    gpus: std::ops::Range<usize>,
) -> impl Strategy<Value = (String, Vec<Option<usize>>)> {
    prop::collection::vec(fixture_gpu(), gpus).prop_map(|gpus| {
        let mut text = String::from("node: prop\ngpus:\n");
        let mut migs = Vec::new();
        for (yaml, mig) in gpus {
            text += &yaml;
            migs.push(mig);
        }
        if migs.is_empty() {
            text = "node: prop\ngpus: []\n".into();
        }
        (text, migs)
    })
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn config_parse_never_panics_on_any_text(text in "\\PC{0,200}") {
        let result = config::parse(&text);
        check_config_errors(&text, &result)?;
    }

    #[test]
    fn config_parse_never_panics_on_yamlish_text(text in yamlish_text()) {
        let result = config::parse(&text);
        check_config_errors(&text, &result)?;
    }

    #[test]
    fn config_errors_name_a_section_of_the_document(tree in config_tree()) {
        let text = serde_yaml_ng::to_string(&tree).expect("a generated tree serializes");
        let result = config::parse(&text);
        check_config_errors(&text, &result)?;
        if let Err(errors) = &result {
            let sections: BTreeSet<String> = match &tree {
                Value::Mapping(map) => map.keys().filter_map(|k| k.as_str().map(str::to_string)).collect(),
                _ => BTreeSet::new(),
            };
            for e in errors {
                let top = top_level(&e.path);
                prop_assert!(
                    top == "config" || sections.contains(top),
                    "error {e:?} names no section of\n{text}"
                );
            }
        }
    }

    /// Configs made only of valid values parse, and say what was written.
    #[test]
    fn valid_configs_parse_to_what_they_say(
        mig in prop::sample::select(vec!["none", "single", "mixed"]),
        strategies in prop::sample::subsequence(vec!["envvar", "volume-mounts", "cdi-annotations", "cdi-cri"], 1..=4),
        pass_specs in any::<bool>(),
        index_ids in any::<bool>(),
        replicas in 2i64..=1024,
        rename in any::<bool>(),
        recover_secs in 0u64..100_000,
        placement in prop::sample::select(vec!["spread", "packed"]),
    ) {
        let rename_line = if rename { "\n          rename: nvidia.com/gpu.shared" } else { "" };
        let text = format!(
            "version: v1\nflags:\n  migStrategy: {mig}\n  plugin:\n    passDeviceSpecs: {pass_specs}\n    deviceListStrategy: [{}]\n    deviceIDStrategy: {}\nsharing:\n  placement: {placement}\n  timeSlicing:\n    resources:\n        - name: nvidia.com/gpu\n          replicas: {replicas}{rename_line}\nhealth:\n  recoverAfter: {}\n",
            strategies.join(", "),
            if index_ids { "index" } else { "uuid" },
            format_duration(Duration::from_secs(recover_secs)),
        );
        let config = config::parse(&text).map_err(|e| TestCaseError::fail(format!("{e:?}\n{text}")))?;
        prop_assert_eq!(config.mig_strategy.as_str(), mig);
        prop_assert_eq!(config.plugin.pass_device_specs, pass_specs);
        let got: Vec<&str> = config.plugin.device_list_strategies.iter().map(|s| s.as_str()).collect();
        prop_assert_eq!(got, strategies);
        prop_assert_eq!(config.time_slicing.resources.len(), 1);
        prop_assert_eq!(i64::from(config.time_slicing.resources[0].replicas), replicas);
        prop_assert_eq!(config.health.recover_after, Duration::from_secs(recover_secs));
        let packed = config.shared_placement == SharedPlacement::Packed;
        prop_assert_eq!(packed, placement == "packed");
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn fixture_parse_never_panics(text in prop_oneof!["\\PC{0,200}", yamlish_text()]) {
        if let Err(errors) = fixture::parse(&text) {
            prop_assert!(!errors.is_empty());
            for e in errors {
                prop_assert!(!e.path.trim().is_empty(), "error without a path: {e:?} for {text:?}");
                prop_assert!(!e.message.trim().is_empty(), "error without a message: {e:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// Fixtures of known models with layouts a GPU can hold parse into that inventory.
    #[test]
    fn valid_fixtures_parse_into_their_inventory((text, migs) in valid_fixture(0..9)) {
        let parsed = fixture::parse(&text).map_err(|e| TestCaseError::fail(format!("{e:?}\n{text}")))?;
        let gpus = &parsed.inventory.gpus;
        prop_assert_eq!(gpus.len(), migs.len());
        let mut uuids = BTreeSet::new();
        for (gpu, mig) in gpus.iter().zip(&migs) {
            prop_assert!(uuids.insert(gpu.uuid.clone()), "duplicate UUID {}", gpu.uuid);
            prop_assert_eq!(gpu.mig_enabled, mig.is_some());
            prop_assert_eq!(gpu.mig_devices.len(), mig.unwrap_or(0));
            for device in &gpu.mig_devices {
                prop_assert!(uuids.insert(device.uuid.clone()), "duplicate UUID {}", device.uuid);
            }
        }
        // Every GPU and MIG device has telemetry.
        prop_assert_eq!(parsed.telemetry.len(), uuids.len());
    }

    /// The same fixture with one field broken is refused with that GPU's path.
    #[test]
    fn a_broken_gpu_entry_is_named((text, migs) in valid_fixture(1..9), pick in any::<prop::sample::Index>(), breakage in 0usize..4) {
        let victim = pick.index(migs.len());
        // A link to itself; the other fields break by value.
        let self_link = format!("{{{victim}: 1}}");
        let (field, bad) = [
            ("memoryMiB", "0"),
            ("uuid", "nope"),
            ("nvlink", self_link.as_str()),
            ("telemetry", "{utilizationPercent: 101}"),
        ][breakage];
        // Insert the bad field right after the victim's `model:` line.
        let mut seen = 0;
        let mut out = String::new();
        for line in text.lines() {
            out += line;
            out += "\n";
            if line.starts_with("  - model: ") {
                if seen == victim {
                    out += &format!("    {field}: {bad}\n");
                }
                seen += 1;
            }
        }
        let errors = fixture::parse(&out).err().ok_or_else(|| TestCaseError::fail(format!("accepted:\n{out}")))?;
        let prefix = format!("gpus[{victim}]");
        prop_assert!(
            errors.iter().any(|e| e.path.starts_with(&prefix)),
            "{errors:?} does not name {prefix}\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Quantities and durations
// ---------------------------------------------------------------------------------------------

const SUFFIXES: [(&str, u128); 13] = [
    ("", 1),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
];

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn quantity_and_duration_never_panic(text in prop_oneof![
        "\\PC{0,30}",
        "[0-9.]{0,25}(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|m|ns|us|µs|ms|s|h|x)?",
        "([0-9.]{1,22}(ns|us|µs|ms|s|m|h)){1,4}",
    ]) {
        let _ = parse_quantity(&text);
        if let Err(e) = parse_duration(&text) {
            prop_assert_eq!(e.input, text);
        }
    }

    /// `<n><suffix>` is n × the suffix's multiplier, or a "too large" error when that does not
    /// fit in 64 bits.
    #[test]
    fn whole_quantities_multiply_out(number in any::<u64>(), suffix in prop::sample::select(SUFFIXES.to_vec())) {
        let text = format!("{number}{}", suffix.0);
        let expected = u128::from(number) * suffix.1;
        match parse_quantity(&text) {
            Ok(bytes) => prop_assert_eq!(u128::from(bytes), expected),
            Err(e) => {
                prop_assert!(expected > u128::from(u64::MAX), "{text} refused: {e}");
                prop_assert!(e.message.contains("too large"), "{e}");
            }
        }
    }

    /// A fraction is rounded up to a whole byte, never down.
    #[test]
    fn fractional_quantities_round_up(whole in 0u64..1_000_000, frac in 0u32..1000, suffix in prop::sample::select(SUFFIXES.to_vec())) {
        let text = format!("{whole}.{frac:03}{}", suffix.0);
        let expected = ((u128::from(whole) * 1000 + u128::from(frac)) * suffix.1).div_ceil(1000);
        match parse_quantity(&text) {
            Ok(bytes) => prop_assert_eq!(u128::from(bytes), expected),
            Err(e) => prop_assert!(expected > u128::from(u64::MAX), "{text} refused: {e}"),
        }
    }

    /// What `format_duration` writes, `parse_duration` reads back: whole seconds, and whole
    /// milliseconds below a second.
    #[test]
    fn durations_round_trip(secs in any::<u64>(), millis in 1u32..1000, sub_second in any::<bool>()) {
        let d = if sub_second { Duration::from_millis(u64::from(millis)) } else { Duration::from_secs(secs) };
        let text = format_duration(d);
        prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
    }

    /// `<a>h<b>m<c>s` adds up.
    #[test]
    fn duration_components_add_up(h in 0u64..1000, m in 0u64..1000, sec in 0u64..1000, ms in 0u64..1000) {
        let text = format!("{h}h{m}m{sec}s{ms}ms");
        let expected = Duration::from_secs(h * 3600 + m * 60 + sec) + Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&text), Ok(expected));
    }
}

// ---------------------------------------------------------------------------------------------
// Allocate
// ---------------------------------------------------------------------------------------------

/// A node with every kind of resource: whole GPUs, time-sliced replicas, MIG devices (with
/// replicas) and vGPU slices, with GPU 1 lost so that some devices are unhealthy.
fn allocate_node(strategies: &str, pass_specs: bool, fail_gt_one: bool) -> ResourceSet {
    let inventory = fixture::parse(
        "gpus:\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [1g.10gb, 1g.10gb, 3g.40gb]}}\n",
    )
    .expect("fixture")
    .inventory;
    let config = config::parse(&format!(
        "version: v1\nflags: {{migStrategy: mixed, plugin: {{deviceListStrategy: [{strategies}], passDeviceSpecs: {pass_specs}}}}}\nsharing:\n  timeSlicing:\n    failRequestsGreaterThanOne: {fail_gt_one}\n    resources:\n      - {{name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 4, devices: [1, 2]}}\n      - {{name: nvidia.com/mig-1g.10gb, replicas: 2}}\n  vgpu: {{resources: [{{name: nvidia.com/gpu, memoryMiB: 20000, computePercent: 25, devices: [3]}}]}}\n"
    ))
    .expect("config");
    let health = HealthState::default().with_lost([inventory.gpus[1].uuid.clone()]);
    resources::build(&inventory, &config, &health)
        .expect("node builds")
        .resources
}

fn allocate_request(
) -> impl Strategy<Value = (usize, Vec<prop::sample::Index>, Vec<Option<String>>)> {
    (
        0usize..16,
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        // None: a known ID picked by index; Some: anything at all.
        prop::collection::vec(
            prop_oneof![6 => Just(None), 1 => "\\PC{0,12}".prop_map(Some)],
            0..6,
        ),
    )
}

proptest! {
    #![proptest_config(cases(512))]

    /// Any list of IDs (known, unknown, duplicate, unhealthy, empty) gets either a response
    /// that hands over exactly the named devices, or an error about the first bad ID.
    #[test]
    fn allocate_answers_or_names_the_bad_id(
        settings in (prop::sample::select(vec!["envvar", "envvar, cdi-cri", "volume-mounts, cdi-annotations", "cdi-cri"]), any::<bool>(), any::<bool>()),
        (which, picks, shapes) in allocate_request(),
    ) {
        let (strategies, pass_specs, fail_gt_one) = settings;
        let set = allocate_node(strategies, pass_specs, fail_gt_one);
        let config = config::parse(&format!("flags: {{plugin: {{deviceListStrategy: [{strategies}], passDeviceSpecs: {pass_specs}}}}}")).expect("plugin config");
        let names: Vec<&str> = set.names().collect();
        let resource = set.get(names[which % names.len()]).expect("resource");
        let mut picks = picks.into_iter();
        let ids: Vec<String> = shapes
            .into_iter()
            .map(|shape| match shape {
                Some(text) => text,
                None => {
                    let i = picks.next().map_or(0, |p| p.index(resource.devices.len()));
                    resource.devices[i].id.clone()
                }
            })
            .collect();

        let result = allocate::grant(resource, &ids, &config.plugin, &Default::default());
        prop_assert_eq!(allocate::resolve(resource, &ids).is_ok(), result.is_ok());
        let first_bad = ids.iter().find(|id| {
            resource.device(id).is_none_or(|d| d.health != Health::Healthy)
        });
        match result {
            Ok(response) => {
                prop_assert!(!ids.is_empty());
                prop_assert!(first_bad.is_none());
                let visible: Vec<String> = {
                    let mut v: Vec<String> = Vec::new();
                    for id in &ids {
                        let d = resource.device(id).expect("known");
                        if !v.contains(&d.visible_id) { v.push(d.visible_id.clone()); }
                    }
                    v
                };
                if strategies.starts_with("envvar") {
                    prop_assert_eq!(response.envs.get(NVIDIA_VISIBLE_DEVICES), Some(&visible.join(",")));
                }
                if strategies.contains("cdi-cri") {
                    prop_assert_eq!(response.cdi_devices.len(), visible.len());
                }
                if resource.strategy == Sharing::Vgpu {
                    prop_assert!(response.envs.contains_key(allocate::CUDA_DEVICE_MEMORY_LIMIT));
                }
            }
            Err(error) => {
                let message = error.to_string();
                match &error {
                    AllocateError::Empty { .. } => prop_assert!(ids.is_empty()),
                    AllocateError::UnknownDevice { id, .. } | AllocateError::UnhealthyDevice { id, .. } => {
                        prop_assert_eq!(Some(id), first_bad);
                        prop_assert!(message.contains(&format!("{id:?}")), "{message}");
                    }
                    AllocateError::TooManyReplicas { count, .. } => {
                        prop_assert!(resource.fail_requests_greater_than_one);
                        prop_assert_eq!(*count, ids.len());
                    }
                    AllocateError::VgpuAcrossGpus { .. } => {
                        prop_assert_eq!(resource.strategy, Sharing::Vgpu);
                    }
                }
                prop_assert!(message.contains(&resource.name), "{message}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MIG placement
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(1000))]

    /// Any list of names (profiles of the model, of other models, garbage): never panics; a
    /// placement keeps every instance at a legal start, apart from the others, in input order.
    #[test]
    fn mig_placement_never_overlaps(
        model in mig_model(),
        layout in prop::collection::vec(
            prop_oneof![
                8 => any::<prop::sample::Index>().prop_map(Ok),
                1 => prop::sample::select(vec!["1g.10gb", "7g.80gb", "1g.5gb", "4g.20gb", "", "nope"]).prop_map(Err),
            ],
            0..12,
        ),
    ) {
        let names: Vec<&str> = layout
            .iter()
            .map(|n| match n {
                Ok(i) => model.profiles[i.index(model.profiles.len())].name,
                Err(name) => name,
            })
            .collect();
        let Ok(placed) = model.place(&names) else { return Ok(()); };
        prop_assert_eq!(placed.len(), names.len());
        let mut used = 0u64;
        let mut ids = HashSet::new();
        for (p, name) in placed.iter().zip(&names) {
            prop_assert_eq!(p.profile.name, *name);
            prop_assert!(p.profile.starts.contains(&p.start));
            prop_assert!(p.start + p.profile.memory_slices <= model.memory_slices);
            let mask = ((1u64 << p.profile.memory_slices) - 1) << p.start;
            prop_assert_eq!(used & mask, 0, "overlap in {:?}", names);
            used |= mask;
            prop_assert!(ids.insert(p.gpu_instance_id), "duplicate GPU instance id in {:?}", names);
        }
        prop_assert_eq!(model.place(&names), Ok(placed), "not deterministic");
    }

    /// Every layout the hardware can hold is placed (the search is complete).
    #[test]
    fn mig_placement_finds_every_valid_layout(
        (model, layout) in mig_model().prop_flat_map(|m| (Just(m), valid_layout(m))),
    ) {
        let placed = model.place(&layout);
        prop_assert!(placed.is_ok(), "{} refused {:?}: {:?}", model.nvml_name, layout, placed);
    }
}

// ---------------------------------------------------------------------------------------------
// GetPreferredAllocation
// ---------------------------------------------------------------------------------------------

/// A random node: 1–12 whole GPUs with random NVLinks and NUMA nodes, some lost.
fn preferred_node() -> impl Strategy<Value = (String, usize)> {
    (1usize..=12).prop_flat_map(|count| {
        (
            Just(count),
            prop::collection::vec((prop::option::of(0u32..2), any::<bool>()), count),
            prop::collection::vec((0..count, 0..count, 1u32..19), 0..count * 2),
        )
            .prop_map(|(count, gpus, links)| {
                let mut nvlinks: Vec<BTreeMap<usize, u32>> = vec![BTreeMap::new(); count];
                for (a, b, n) in links {
                    if a != b {
                        nvlinks[a].insert(b, n);
                        nvlinks[b].insert(a, n);
                    }
                }
                let mut text = String::from("gpus:\n");
                for (i, (numa, lost)) in gpus.iter().enumerate() {
                    text += &format!(
                        "  - model: NVIDIA H100 80GB HBM3\n    lost: {}\n",
                        *lost && i % 3 == 0
                    );
                    if let Some(numa) = numa {
                        text += &format!("    numaNode: {numa}\n");
                    }
                    let links: Vec<String> = nvlinks[i]
                        .iter()
                        .map(|(p, n)| format!("{p}: {n}"))
                        .collect();
                    text += &format!("    nvlink: {{{}}}\n", links.join(", "));
                }
                (text, count)
            })
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever the kubelet asks: at most `size` IDs, all available, no duplicate, every known
    /// must-include ID (up to `size`), healthy picks only, and as many as it can give.
    #[test]
    fn preferred_allocation_keeps_its_contract(
        (text, count) in preferred_node(),
        config_index in 0usize..3,
        available_mask in prop::collection::vec(any::<bool>(), 64),
        must_mask in prop::collection::vec(prop::bool::weighted(0.2), 64),
        unknown in prop::option::weighted(0.2, "\\PC{0,10}"),
        size in 0usize..14,
        packed in any::<bool>(),
    ) {
        let parsed = fixture::parse(&text).map_err(|e| TestCaseError::fail(format!("{e:?}\n{text}")))?;
        let inventory = parsed.inventory;
        let health = HealthState::default().with_lost(parsed.lost.iter().cloned());
        let config = config::parse([
            "version: v1",
            "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 3}]}}",
            "sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 20000}]}}",
        ][config_index]).expect("config");
        let set = resources::build(&inventory, &config, &health).expect("node builds").resources;
        prop_assert_eq!(inventory.gpus.len(), count);
        let topology = Topology::new(&inventory);
        let placement = if packed { SharedPlacement::Packed } else { SharedPlacement::Spread };
        for resource in set.resources.values() {
            let mut available: Vec<String> = resource
                .devices
                .iter()
                .zip(available_mask.iter().cycle())
                .filter(|(_, keep)| **keep)
                .map(|(d, _)| d.id.clone())
                .collect();
            available.extend(unknown.clone());
            let must: Vec<String> = available
                .iter()
                .zip(must_mask.iter().cycle())
                .filter(|(_, keep)| **keep)
                .map(|(id, _)| id.clone())
                .collect();
            let request = preferred::Request { available: &available, must_include: &must, size };
            let got = preferred::choose(resource, &topology, placement, &request);
            prop_assert!(got.len() <= size, "{got:?}");
            prop_assert!(got.iter().all(|id| available.contains(id)), "{got:?}");
            prop_assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), got.len(), "duplicates in {:?}", got);
            let known_must: Vec<&String> = must.iter().filter(|id| resource.device(id).is_some()).take(size).collect();
            prop_assert!(known_must.iter().all(|id| got.contains(id)), "{got:?} lacks some of {known_must:?}");
            for id in got.iter().filter(|id| !must.contains(id)) {
                prop_assert_eq!(resource.device(id).map(|d| d.health), Some(Health::Healthy), "{}", id);
            }
            if resource.strategy != Sharing::Vgpu {
                let healthy = available
                    .iter()
                    .filter(|id| !must.contains(id) && resource.device(id).is_some_and(|d| d.health == Health::Healthy))
                    .count();
                prop_assert_eq!(got.len(), size.min(known_must.len() + healthy).max(known_must.len()));
            } else {
                // Slices come from one GPU (the must-include ones may name others).
                let gpus: BTreeSet<&str> = got
                    .iter()
                    .filter(|id| !must.contains(id))
                    .filter_map(|id| resource.device(id))
                    .map(|d| d.target.gpu_uuid.as_str())
                    .collect();
                prop_assert!(gpus.len() <= 1, "slices of {gpus:?}");
            }
        }
    }
}
