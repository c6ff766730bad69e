//! The command line as users and scripts see it: `--version`, `list` output shapes, `check-config`
//! exit codes and messages, fatal errors.

mod common;

use common::{arg, list_json_text, list_mock, run_cli, write_file};
use serde_json::Value;

#[test]
fn version_prints_name_and_semver() {
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("gpu-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn list_json_has_the_spec_shape() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(
        dir.path(),
        "fixture.yaml",
        r#"
node: n1
driverVersion: "580.95.05"
gpus:
  - model: NVIDIA H100 80GB HBM3
    numaNode: 0
    pciBusId: "0000:18:00.0"
    mig: {devices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}
  - {model: NVIDIA H100 80GB HBM3}
"#,
    );
    let config = write_file(dir.path(), "config.yaml", "flags: {migStrategy: mixed}\n");
    let args = ["--mock-fixture", arg(&fixture), "--config", arg(&config)];
    let out = list_json_text(&args);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["node"], "n1");
    assert_eq!(doc["backend"], "mock");
    assert_eq!(doc["driverVersion"], "580.95.05");
    let gpu = &doc["gpus"][0];
    for key in [
        "index",
        "uuid",
        "model",
        "memoryMiB",
        "numaNode",
        "pciBusId",
        "migEnabled",
        "health",
        "migDevices",
    ] {
        assert!(gpu.get(key).is_some(), "gpus[0] lacks {key}: {gpu}");
    }
    assert_eq!(gpu["model"], "NVIDIA H100 80GB HBM3");
    assert_eq!(gpu["memoryMiB"], 81559);
    assert_eq!(gpu["pciBusId"], "0000:18:00.0");
    assert_eq!(gpu["migEnabled"], true);
    assert_eq!(gpu["health"], "Healthy");
    let mig = &gpu["migDevices"][0];
    assert_eq!(mig["profile"], "3g.40gb");
    assert_eq!(mig["gpuInstanceId"], 2);
    assert_eq!(mig["memoryMiB"], 40448);
    assert!(mig["uuid"].as_str().unwrap().starts_with("MIG-"));
    assert!(doc["gpus"][1]["numaNode"].is_null());

    let resources = doc["resources"].as_array().unwrap();
    let by_name = |name: &str| {
        resources
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let whole = by_name("nvidia.com/gpu");
    assert_eq!(whole["strategy"], "exclusive");
    assert_eq!(whole["devices"][0]["id"], doc["gpus"][1]["uuid"]);
    assert_eq!(whole["devices"][0]["gpus"][0], doc["gpus"][1]["uuid"]);
    assert_eq!(whole["devices"][0]["health"], "Healthy");
    let small = by_name("nvidia.com/mig-1g.10gb");
    assert_eq!(small["strategy"], "mig");
    assert_eq!(small["devices"].as_array().unwrap().len(), 2);
    assert_eq!(small["devices"][0]["gpus"][0], gpu["uuid"]);

    // The same fixture gives the same IDs every time.
    assert_eq!(out, list_json_text(&args));
}

#[test]
fn list_table_on_the_builtin_node() {
    let (code, out, err) = list_mock(&["--node-name", "demo"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Node demo (backend mock"), "{out}");
    assert_eq!(out.matches("NVIDIA H100 80GB HBM3").count(), 8, "{out}");
    assert!(out.contains("nvidia.com/gpu"), "{out}");
}

#[test]
fn invalid_fixture_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(
        dir.path(),
        "fixture.yaml",
        "gpus: [{model: NVIDIA H100 80GB HBM3, mig: {devices: [4g.40gb, 4g.40gb]}}]\n",
    );
    let (code, _, err) = list_mock(&["--mock-fixture", arg(&fixture)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gpus[0].mig.devices"), "{err}");
    assert!(err.contains("4g.40gb"), "{err}");
}

#[test]
fn check_config_ok_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(
        dir.path(),
        "good.yaml",
        "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}\n",
    );
    let (code, out, err) = run_cli(&["check-config", arg(&good)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");

    let bad = write_file(
        dir.path(),
        "bad.yaml",
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 1}]}}\nflags: {migStrategy: weird}\n",
    );
    let (code, _, err) = run_cli(&["check-config", arg(&bad)]);
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2, got 1"
        ),
        "{err}"
    );
    assert!(
        err.contains("flags.migStrategy: must be none, single or mixed, got \"weird\""),
        "{err}"
    );

    let (code, _, err) = run_cli(&["check-config", "/nonexistent/config.yaml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/config.yaml"), "{err}");
}

#[test]
fn nvml_missing_is_fatal_with_advice_unless_fail_on_init_error_is_false() {
    // This machine has no NVIDIA driver; on a GPU machine the backend opens and the test has
    // nothing to check.
    let (code, _, err) = run_cli(&["list", "--backend", "nvml", "--output", "json"]);
    if code == 0 && err.is_empty() {
        return;
    }
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--backend mock"), "{err}");
    assert!(err.contains("NVML"), "{err}");

    let (code, out, err) = run_cli(&[
        "list",
        "--backend",
        "nvml",
        "--fail-on-init-error=false",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["gpus"].as_array().unwrap().len(), 0);
    assert_eq!(doc["resources"].as_array().unwrap().len(), 0);
    assert!(err.contains("no GPU resources"), "{err}");
}

#[test]
fn mig_single_with_mixed_profiles_exits_1_naming_mig_and_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(
        dir.path(),
        "fixture.yaml",
        "gpus: [{model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 1g.10gb]}}]\n",
    );
    let single = ["--mock-fixture", arg(&fixture), "--mig-strategy", "single"];
    let (code, _, err) = list_mock(&single);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("MIG") && err.contains("on GPU 0"), "{err}");

    let (code, out, err) = list_mock(
        &[
            &single[..],
            &["--fail-on-init-error=false", "--output", "json"],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("MIG"), "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["resources"].as_array().unwrap().len(), 0);
}
