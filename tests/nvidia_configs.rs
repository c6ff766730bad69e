//! NVIDIA's device-plugin configs, as NVIDIA's plugin judges them: every case its README, helm
//! values, config-manager and `api/config/v1` tests cover, written anew here (the case each one
//! mirrors is named), run through `check-config` and `list --output json` on the mock backend.
//! A config NVIDIA accepts must start gpu-agent with NVIDIA's resources (or the documented
//! deliberate difference, with the warning that says so); a config NVIDIA rejects is rejected.
//! MPS configs are accepted with NVIDIA's resources and its refusals.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The node a case runs on.
#[derive(Clone, Copy)]
enum Node {
    /// The built-in 8 × H100 node.
    Default,
    /// examples/mixed-node.yaml: six H100, the last cut into 3g.40gb, 2g.20gb, 2 × 1g.10gb.
    Mixed,
}

enum Expect {
    /// Accepted; advertises exactly these resources with these device counts.
    Advertises(&'static [(&'static str, usize)]),
    /// Rejected by `check-config` and `list` (exit 2), the error containing this text.
    Invalid(&'static str),
    /// A valid file that fails on this node (MIG layout): `check-config` 0, `list` exit 1.
    NodeRefused,
    /// Accepted with an unknown field: `check-config` reports it (exit 2), `list` warns, and
    /// advertises these.
    Unknown(&'static str, &'static [(&'static str, usize)]),
}

struct Case {
    /// What in NVIDIA's repository this mirrors.
    mirrors: &'static str,
    node: Node,
    config: &'static str,
    expect: Expect,
    /// A word the warnings (list's log and check-config's notes) must contain.
    note: Option<&'static str>,
}

const fn case(mirrors: &'static str, config: &'static str, expect: Expect) -> Case {
    Case {
        mirrors,
        node: Node::Default,
        config,
        expect,
        note: None,
    }
}

impl Case {
    const fn on(mut self, node: Node) -> Self {
        self.node = node;
        self
    }
    const fn note(mut self, note: &'static str) -> Self {
        self.note = Some(note);
        self
    }
}

use Expect::*;

const GPU8: &[(&str, usize)] = &[("nvidia.com/gpu", 8)];
const GPU16: &[(&str, usize)] = &[("nvidia.com/gpu", 16)];
const UUID: &str = "4cf8db2d-06c0-7d70-1a51-e59b25b2c16c";

fn cases() -> Vec<Case> {
    vec![
        // README.md
        case("README: config file example", "version: v1\nflags:\n  migStrategy: none\n  failOnInitError: true\n  nvidiaDriverRoot: /\n  plugin:\n    passDeviceSpecs: false\n    deviceListStrategy: envvar\n    deviceIDStrategy: uuid\n", Advertises(GPU8)),
        case("README: time-slicing, 10 replicas", "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 10\n", Advertises(&[("nvidia.com/gpu", 80)])),
        case("README: time-slicing with renameByDefault", "version: v1\nsharing:\n  timeSlicing:\n    renameByDefault: true\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 10\n", Advertises(&[("nvidia.com/gpu.shared", 80)])),
        case("README: time-slicing with failRequestsGreaterThanOne", "version: v1\nsharing:\n  timeSlicing:\n    failRequestsGreaterThanOne: true\n    resources:\n    - {name: nvidia.com/gpu, replicas: 10}\n", Advertises(&[("nvidia.com/gpu", 80)])),
        case("README: time-slicing option template (placeholders, not YAML)", "version: v1\nsharing:\n  timeSlicing:\n    renameByDefault: <bool>\n    resources:\n    - name: <resource-name>\n      replicas: <num-replicas>\n    ...\n", Invalid("config")),
        case("README: every time-sliceable resource, mixed strategy", "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 2}\n    - {name: nvidia.com/mig-1g.10gb, replicas: 2}\n    - {name: nvidia.com/mig-2g.20gb, replicas: 2}\n    - {name: nvidia.com/mig-3g.40gb, replicas: 2}\n    - {name: nvidia.com/mig-7g.80gb, replicas: 2}\n", Advertises(&[("nvidia.com/gpu", 10), ("nvidia.com/mig-1g.10gb", 4), ("nvidia.com/mig-2g.20gb", 2), ("nvidia.com/mig-3g.40gb", 2)])).on(Node::Mixed),
        case("README: renameByDefault on a MIG resource", "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    renameByDefault: true\n    resources:\n    - {name: nvidia.com/mig-1g.10gb, replicas: 2}\n", Advertises(&[("nvidia.com/gpu", 5), ("nvidia.com/mig-1g.10gb.shared", 4), ("nvidia.com/mig-2g.20gb", 1), ("nvidia.com/mig-3g.40gb", 1)])).on(Node::Mixed),
        // deployments/helm values.yaml
        case("helm values: defaults", "version: v1\nflags:\n  migStrategy: none\n  failOnInitError: true\n  plugin: {passDeviceSpecs: false, deviceListStrategy: envvar, deviceIDStrategy: uuid}\n", Advertises(GPU8)),
        case("helm values: defaults on a MIG node (the MIG GPU is advertised whole)", "version: v1\nflags: {migStrategy: none}\n", Advertises(&[("nvidia.com/gpu", 6)])).on(Node::Mixed),
        case("helm values: mig-mixed", "version: v1\nflags: {migStrategy: mixed}\n", Advertises(&[("nvidia.com/gpu", 5), ("nvidia.com/mig-1g.10gb", 2), ("nvidia.com/mig-2g.20gb", 1), ("nvidia.com/mig-3g.40gb", 1)])).on(Node::Mixed),
        case("helm values: mig-single on mixed profiles (failOnInitError defaults to true)", "version: v1\nflags: {migStrategy: single}\n", NodeRefused).on(Node::Mixed),
        // cmd/config-manager: the 'empty' fallback
        case("config-manager: an empty file", "", Advertises(GPU8)),
        case("config-manager: a comment-only file", "# no settings for this node\n", Advertises(GPU8)),
        // api/config/v1/config_test.go
        case("config_test.go TestNewConfigDefaultsMPSFailRequestsGreaterThanOne", "version: v1\nflags: {mpsRoot: /run/nvidia/mps}\nsharing:\n  mps:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 2}\n", Advertises(GPU16)),
        case("config_test.go TestNewConfigHonorsExplicitMPSFailRequestsGreaterThanOneFalse", "version: v1\nsharing:\n  mps:\n    failRequestsGreaterThanOne: false\n    resources:\n    - {name: nvidia.com/gpu, replicas: 2}\n", Advertises(GPU16)),
        // README: With CUDA MPS
        case("README: MPS, 10 replicas of each GPU", "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 10\n", Advertises(&[("nvidia.com/gpu", 80)])),
        case("README: MPS with renameByDefault", "version: v1\nsharing:\n  mps:\n    renameByDefault: true\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 10\n", Advertises(&[("nvidia.com/gpu.shared", 80)])),
        case("README: time-slicing and MPS are mutually exclusive", "version: v1\nsharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: 2}]\n  mps:\n    resources: [{name: nvidia.com/gpu, replicas: 2}]\n", Invalid("cannot be used together with sharing.mps")),
        case("README: MPS is not supported on MIG devices", "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  mps:\n    resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]\n", Invalid("sharing using MPS is not supported for MIG devices")),
        case("main.go validateFlags: --mig-strategy=mixed with MPS", "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  mps:\n    resources: [{name: nvidia.com/gpu, replicas: 2}]\n", Invalid("using --mig-strategy=mixed is not supported with MPS")),
        // api/config/v1/replicas_test.go TestUnmarshalReplicatedResources
        case("replicas_test.go ReplicatedResources: {} (no resources)", "sharing: {timeSlicing: {}}\n", Invalid("no resources specified")),
        case("replicas_test.go ReplicatedResources: empty resources list", "sharing: {timeSlicing: {resources: []}}\n", Invalid("no resources specified")),
        case("replicas_test.go ReplicatedResources: timeSlicing: null", "sharing:\n  timeSlicing:\n", Invalid("no resources specified")),
        case("replicas_test.go ReplicatedResources: a short name gets nvidia.com/", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2}]}}\n", Advertises(GPU16)),
        case("replicas_test.go ReplicatedResources: a name no device has is a no-op", "sharing: {timeSlicing: {resources: [{name: valid, replicas: 2}]}}\n", Advertises(GPU8)).note("shares nothing"),
        case("replicas_test.go ReplicatedResources: a null entry", "sharing: {timeSlicing: {resources: [null]}}\n", Invalid("resources[0]")),
        // api/config/v1/replicas_test.go TestUnmarshalReplicatedResource
        case("replicas_test.go ReplicatedResource: no name", "sharing: {timeSlicing: {resources: [{replicas: 2}]}}\n", Invalid("no resource name specified")),
        case("replicas_test.go ReplicatedResource: no replicas", "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu}]}}\n", Invalid("no replicas specified")),
        case("replicas_test.go ReplicatedResource: one replica", "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 1}]}}\n", Invalid("number of replicas must be >= 2")),
        case("replicas_test.go ReplicatedResource: replicas as a string", "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: \"2\"}]}}\n", Invalid("expected an integer")),
        case("replicas_test.go ReplicatedResource: an invalid name", "sharing: {timeSlicing: {resources: [{name: nvidia.com/GPU_1, replicas: 2}]}}\n", Invalid("incorrect format for resource name")),
        case("replicas_test.go ReplicatedResource: an invalid rename", "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, rename: Gpu Shared, replicas: 2}]}}\n", Invalid("incorrect format for resource name")),
        case("replicas_test.go ReplicatedResource: rename: null", "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, rename: null, replicas: 2}]}}\n", Invalid("rename")),
        case("replicas_test.go ReplicatedResource: a valid rename (honoured, unlike NVIDIA)", "sharing: {timeSlicing: {resources: [{name: gpu, rename: gpu-shared, replicas: 2}]}}\n", Advertises(&[("nvidia.com/gpu-shared", 16)])).note("rename"),
        case("replicas_test.go ReplicatedResource: a fully qualified rename", "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, rename: nvidia.com/gpu-shared, replicas: 2}]}}\n", Advertises(&[("nvidia.com/gpu-shared", 16)])).note("rename"),
        case("derived: resources: [null]", "sharing: {timeSlicing: {resources: [~]}}\n", Invalid("resources[0]")),
        // api/config/v1/replicas_test.go TestUnmarshalReplicatedDevices
        case("replicas_test.go ReplicatedDevices: a string other than all", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: not-all}]}}\n", Invalid("the only valid string input is 'all'")),
        case("replicas_test.go ReplicatedDevices: a negative count", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: -2}]}}\n", Invalid("a count of devices must be > 0")),
        case("replicas_test.go ReplicatedDevices: a negative index", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [-1]}]}}\n", Invalid("unsupported device reference")),
        case("replicas_test.go ReplicatedDevices: a negative index as a string", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [\"-1\"]}]}}\n", Invalid("unsupported device reference")),
        case("replicas_test.go ReplicatedDevices: not a UUID", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [invalid-UUID]}]}}\n", Invalid("unsupported device reference")),
        case("replicas_test.go ReplicatedDevices: GPU- without a UUID", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [GPU-UUID]}]}}\n", Invalid("unsupported device reference")),
        case("replicas_test.go ReplicatedDevices: MIG- without a UUID", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [MIG-UUID]}]}}\n", Invalid("unsupported device reference")),
        case("replicas_test.go ReplicatedDevices: MIG-GPU-<uuid> without /gi/ci", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [MIG-GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c]}]}}\n", Invalid("unsupported device reference")),
        case("derived: devices: null", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: null}]}}\n", Invalid("devices")),
        case("replicas_test.go ReplicatedDevices: all", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: all}]}}\n", Advertises(GPU16)),
        case("replicas_test.go ReplicatedDevices: a count, without rename (ignored, as NVIDIA does)", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: 2}]}}\n", Advertises(GPU16)).note("devices"),
        case("replicas_test.go ReplicatedDevices: a count written 2.0 (a YAML float)", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: 2.0}]}}\n", Advertises(GPU16)).note("devices"),
        case("replicas_test.go ReplicatedDevices: a count, with renameByDefault (honoured)", "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: gpu, replicas: 2, devices: 2}]}}\n", Advertises(&[("nvidia.com/gpu", 6), ("nvidia.com/gpu.shared", 4)])).note("devices"),
        case("replicas_test.go ReplicatedDevices: an index list, with renameByDefault", "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: gpu, replicas: 2, devices: [0, \"1\"]}]}}\n", Advertises(&[("nvidia.com/gpu", 6), ("nvidia.com/gpu.shared", 4)])),
        case("replicas_test.go ReplicatedDevices: a MIG index on a node without MIG selects nothing", "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: gpu, replicas: 2, devices: [\"0:0\"]}]}}\n", Advertises(GPU8)),
        case("replicas_test.go ReplicatedDevices: a GPU UUID this node lacks selects nothing", "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: gpu, replicas: 2, devices: [GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c]}]}}\n", Advertises(GPU8)),
        case("replicas_test.go ReplicatedDevices: a legacy MIG UUID", "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: gpu, replicas: 2, devices: [MIG-GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c/0/0]}]}}\n", Advertises(GPU8)),
        case("replicas_test.go ReplicatedDevices: mixed references", "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: gpu, replicas: 2, devices: [0, \"0:0\", GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c]}]}}\n", Advertises(&[("nvidia.com/gpu", 7), ("nvidia.com/gpu.shared", 2)])),
        // api/config/v1/flags_test.go
        case("flags_test.go: empty flags", "flags: {}\n", Advertises(GPU8)),
        case("flags_test.go: every plugin flag", "flags:\n  migStrategy: none\n  failOnInitError: true\n  nvidiaDriverRoot: /driver\n  plugin:\n    passDeviceSpecs: true\n    deviceListStrategy: [envvar, cdi-annotations]\n    deviceIDStrategy: index\n    cdiAnnotationPrefix: cdi.k8s.io/\n    nvidiaCTKPath: /usr/bin/nvidia-ctk\n    containerDriverRoot: /driver-root\n", Advertises(GPU8)),
        case("flags_test.go: deviceListStrategy as a string", "flags: {plugin: {deviceListStrategy: volume-mounts}}\n", Advertises(GPU8)),
        case("flags_test.go TestMarshalFlags: NVIDIA's own output, nulls included", "flags:\n  migStrategy: single\n  failOnInitError: null\n  gdrcopyEnabled: null\n  gdsEnabled: null\n  mofedEnabled: null\n  plugin: null\n  gfd:\n    oneshot: null\n    noTimestamp: null\n    outputFile: null\n    sleepInterval: 5s\n", Advertises(GPU8)),
        case("flags.go: gdrcopyEnabled and sharedDevicesAllocationPolicy", "flags:\n  gdrcopyEnabled: true\n  plugin: {sharedDevicesAllocationPolicy: packed}\n", Advertises(GPU8)),
        case("flags.go: a bad deviceIDStrategy", "flags: {plugin: {deviceIDStrategy: name}}\n", Invalid("must be uuid or index")),
        case("strategy.go: a comma list in one string is not split", "flags: {plugin: {deviceListStrategy: \"envvar,cdi-cri\"}}\n", Invalid("deviceListStrategy")),
        // api/config/v1/imex_test.go
        case("imex_test.go: null channel IDs", "imex: {channelIDs: null}\n", Advertises(GPU8)),
        case("imex_test.go: empty channel IDs", "imex: {channelIDs: []}\n", Advertises(GPU8)),
        case("imex_test.go: channel 0", "imex: {channelIDs: [0], required: false}\n", Advertises(GPU8)),
        case("imex.go AssertChannelIDsValid: channel 1", "imex: {channelIDs: [1]}\n", Invalid("channelIDs must be [] or [0]")),
        case("imex.go AssertChannelIDsValid: two channels", "imex: {channelIDs: [0, 1]}\n", Invalid("channelIDs must be [] or [0]")),
        // api/config/v1/resources_test.go + config.go DisableResourceNamingInConfig
        case("resources_test.go: resource patterns (ignored, as NVIDIA ignores them)", "resources:\n  gpus:\n  - {pattern: '*', name: gpu}\n  - {pattern: 'A100-SXM4-40GB', name: a100}\n  mig:\n  - {pattern: '1g.5gb', name: mig-small}\n", Advertises(GPU8)).note("resources"),
        case("resources.go: a pattern without a name", "resources: {gpus: [{pattern: '*'}]}\n", Invalid("resources must have a 'name' field set")),
        // Go decoding: keys
        case("flags.go: struct keys match in any case", "Version: v1\nFlags: {MigStrategy: mixed, Plugin: {deviceIdStrategy: uuid}}\n", Advertises(&[("nvidia.com/gpu", 5), ("nvidia.com/mig-1g.10gb", 2), ("nvidia.com/mig-2g.20gb", 1), ("nvidia.com/mig-3g.40gb", 1)])).on(Node::Mixed),
        case("replicas.go: map-decoded keys match exactly (Replicas is not replicas)", "sharing: {timeSlicing: {resources: [{name: gpu, Replicas: 2}]}}\n", Invalid("no replicas specified")),
        case("config.go parseConfigFrom: version v2", "version: v2\n", Invalid("unknown version")),
        // Unknown fields: NVIDIA ignores them
        case("config.go: an unknown top-level field", "version: v1\nextraSettings: {a: 1}\n", Unknown("extraSettings", GPU8)),
        case("config.go: a typo in flags.plugin", "flags: {plugin: {passDeviceSpec: true}}\n", Unknown("passDeviceSpec", GPU8)),
        case("config.go: an unknown field in a sharing entry", "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, comment: for inference}]}}\n", Unknown("comment", GPU16)),
    ]
}

fn node_args(node: Node) -> Vec<String> {
    match node {
        Node::Default => Vec::new(),
        Node::Mixed => vec![
            "--mock-fixture".into(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/mixed-node.yaml")
                .display()
                .to_string(),
        ],
    }
}

/// `name=count` of every resource in `list --output json`, sorted.
fn advertised(json: &str) -> Vec<(String, usize)> {
    let doc: serde_json::Value = serde_json::from_str(json).expect("list JSON");
    let mut out: Vec<(String, usize)> = doc["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["devices"].as_array().unwrap().len(),
            )
        })
        .collect();
    out.sort();
    out
}

fn sorted(expected: &[(&str, usize)]) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = expected.iter().map(|(n, c)| (n.to_string(), *c)).collect();
    v.sort();
    v
}

/// Run one case against `config` (a path): every mismatch, as text.
fn judge(c: &Case, config: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let (cc_code, cc_out, cc_err) = run_cli(&["check-config", arg(config)]);
    let node = node_args(c.node);
    let mut list_args: Vec<&str> = vec!["--config", arg(config), "--output", "json"];
    list_args.extend(node.iter().map(String::as_str));
    let (code, out, err) = list_mock(&list_args);
    let check_advertised = |want: &[(&str, usize)], problems: &mut Vec<String>| {
        if code != 0 {
            problems.push(format!("list exited {code}: {err}"));
        } else if advertised(&out) != sorted(want) {
            problems.push(format!(
                "list advertises {:?}, want {want:?}",
                advertised(&out)
            ));
        }
    };
    match &c.expect {
        Advertises(want) => {
            if cc_code != 0 {
                problems.push(format!("check-config exited {cc_code}: {cc_err}"));
            }
            check_advertised(want, &mut problems);
        }
        Invalid(needle) => {
            if cc_code != 2 || !cc_err.contains(needle) {
                problems.push(format!(
                    "check-config exited {cc_code} (want 2, naming {needle:?}): {cc_err}"
                ));
            }
            if code != 2 || !err.contains(needle) {
                problems.push(format!(
                    "list exited {code} (want 2, naming {needle:?}): {err}"
                ));
            }
        }
        NodeRefused => {
            if cc_code != 0 {
                problems.push(format!("check-config exited {cc_code}: {cc_err}"));
            }
            if code != 1 || !err.contains("MIG") {
                problems.push(format!("list exited {code} (want 1, naming MIG): {err}"));
            }
        }
        Unknown(field, want) => {
            if cc_code != 2 || !cc_err.contains(field) || !cc_err.contains("unknown field") {
                problems.push(format!(
                    "check-config exited {cc_code} (want 2 naming {field:?}): {cc_err}"
                ));
            }
            check_advertised(want, &mut problems);
            if !err.contains(field) {
                problems.push(format!("list does not warn about {field:?}: {err}"));
            }
        }
    }
    if let Some(note) = c.note {
        if !err.contains(note) {
            problems.push(format!("list's warnings do not mention {note:?}: {err}"));
        }
        if cc_code == 0 && !cc_out.contains(note) {
            problems.push(format!(
                "check-config's notes do not mention {note:?}: {cc_out}"
            ));
        }
    }
    problems
}

#[test]
fn every_case_is_judged_as_nvidia_judges_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, c) in cases().iter().enumerate() {
        let path = write_file(dir.path(), &format!("case-{i}.yaml"), c.config);
        let problems = judge(c, &path);
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({}):\n    {}",
                c.mirrors,
                path.display(),
                problems.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// NVIDIA's config-manager writes the config as a symlink, to `/dev/null` for its "empty" choice.
#[test]
fn dev_null_and_a_symlink_to_it_are_all_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let link: PathBuf = dir.path().join("config.yaml");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    for path in [Path::new("/dev/null"), link.as_path()] {
        let c = case("config-manager: /dev/null", "", Advertises(GPU8));
        let problems = judge(&c, path);
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
    }
}

#[test]
fn the_cases_cover_what_they_say() {
    // Guards the table itself: each NVIDIA source is represented.
    let cases = cases();
    for source in [
        "README",
        "helm values",
        "config-manager",
        "config_test.go",
        "ReplicatedResources",
        "ReplicatedResource:",
        "ReplicatedDevices",
        "flags_test.go",
        "imex_test.go",
        "resources_test.go",
    ] {
        assert!(
            cases.iter().any(|c| c.mirrors.contains(source)),
            "no case mirrors {source}"
        );
    }
    assert!(UUID.len() == 36);
}
