//! The shipped examples work: `examples/sharing.yaml` on `examples/mixed-node.yaml` shows every
//! sharing strategy side by side.

mod common;

use std::collections::BTreeMap;

use common::{arg, list_json, list_mock, run_cli, write_file};

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn list_shows_exclusive_time_sliced_mig_and_vgpu_side_by_side() {
    let (fixture, config) = (example("mixed-node.yaml"), example("sharing.yaml"));
    let args = [
        "--mock-fixture",
        fixture.as_str(),
        "--config",
        config.as_str(),
    ];
    let doc = list_json(&args);
    let gpus: Vec<&str> = doc["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap())
        .collect();
    let mut by_strategy: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut devices: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in doc["resources"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        by_strategy
            .entry(r["strategy"].as_str().unwrap())
            .or_default()
            .push(name);
        devices.insert(
            name,
            r["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap())
                .collect(),
        );
    }
    assert_eq!(by_strategy["exclusive"], ["nvidia.com/gpu"]);
    assert_eq!(by_strategy["time-sliced"], ["nvidia.com/gpu.shared"]);
    assert_eq!(by_strategy["vgpu"], ["nvidia.com/vgpu"]);
    assert_eq!(
        by_strategy["mig"],
        [
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/mig-2g.20gb",
            "nvidia.com/mig-3g.40gb"
        ]
    );
    assert_eq!(devices["nvidia.com/gpu"], gpus[..2]);
    assert_eq!(devices["nvidia.com/gpu.shared"].len(), 8);
    assert_eq!(
        devices["nvidia.com/gpu.shared"][4],
        format!("{}::0", gpus[3])
    );
    assert_eq!(devices["nvidia.com/vgpu"].len(), 7);
    assert_eq!(devices["nvidia.com/vgpu"][6], format!("{}::vgpu6", gpus[4]));
    assert_eq!(devices["nvidia.com/mig-1g.10gb"].len(), 2);

    // The table says the same.
    let (code, table, stderr) = list_mock(&args);
    assert_eq!(code, 0, "{stderr}");
    for strategy in ["exclusive", "time-sliced", "mig", "vgpu"] {
        assert!(table.contains(strategy), "{table}");
    }
}

#[test]
fn example_config_passes_check_config() {
    let (code, stdout, stderr) = run_cli(&["check-config", &example("sharing.yaml")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn check_config_prints_every_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "bad.yaml",
        "version: v1\nflags: {foo: 1, migStrategy: lots}\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: many}\n      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.b, replicas: 1, devices: [0]}\n",
    );
    let (code, stdout, stderr) = run_cli(&["check-config", arg(&path)]);
    assert_eq!(code, 2, "{stdout}");
    for line in [
        "flags.foo: unknown field, expected one of",
        "flags.migStrategy: must be none, single or mixed, got \"lots\"",
        "sharing.timeSlicing.resources[0].replicas: expected an integer, got a string \"many\"",
        "sharing.timeSlicing.resources[1].replicas: number of replicas must be >= 2, got 1",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
}
