//! `gpu-agent plan` on mock nodes: the strategy rules against what `run` would advertise.

mod common;

use common::{arg, run_cli, write_file};
use serde_json::Value;

/// One whole H100 and one H100 cut into MIG devices.
const MIG_NODE: &str = r#"
node: mig-node
gpus:
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}}
"#;

/// `plan` on the mock backend with `fixture` (None = built-in 8 × H100) and `config`.
fn plan(fixture: Option<&str>, config: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture.map(|text| write_file(dir.path(), "fixture.yaml", text));
    let config = config.map(|text| write_file(dir.path(), "config.yaml", text));
    let mut argv = vec!["plan", "--backend", "mock"];
    if let Some(path) = &fixture {
        argv.extend(["--mock-fixture", arg(path)]);
    }
    if let Some(path) = &config {
        argv.extend(["--config", arg(path)]);
    }
    argv.extend(args);
    run_cli(&argv)
}

fn plan_json(fixture: Option<&str>, config: Option<&str>, workload: &str, memory: &str) -> Value {
    let (code, out, err) = plan(
        fixture,
        config,
        &[
            "--workload",
            workload,
            "--gpu-memory",
            memory,
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn mig_node_inference_8gi_gets_the_smallest_profile() {
    let doc = plan_json(
        Some(MIG_NODE),
        Some("flags: {migStrategy: mixed}"),
        "inference",
        "8Gi",
    );
    let keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = [
        "workload",
        "gpuMemoryBytes",
        "strategy",
        "resource",
        "count",
        "fallback",
        "reason",
        "limits",
    ];
    expected.sort_unstable();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    assert_eq!(doc["workload"], "inference");
    assert_eq!(doc["gpuMemoryBytes"], 8u64 << 30);
    assert_eq!(doc["strategy"], "mig");
    assert_eq!(doc["resource"], "nvidia.com/mig-1g.10gb");
    assert_eq!(doc["count"], 1);
    assert_eq!(doc["fallback"], false);
    assert_eq!(
        doc["limits"],
        serde_json::json!({"nvidia.com/mig-1g.10gb": 1})
    );
    assert_eq!(
        doc["reason"],
        "inference needing 8 GiB: rule 3: 4 GiB <= 8 GiB <= 20 GiB -> mig; \
         mig: nvidia.com/mig-1g.10gb (9984 MiB per device, 2 available)"
    );
    // Just over the 1g.10gb profile's memory: the next profile up.
    let doc = plan_json(
        Some(MIG_NODE),
        Some("flags: {migStrategy: mixed}"),
        "inference",
        "9985Mi",
    );
    assert_eq!(doc["resource"], "nvidia.com/mig-2g.20gb");
}

#[test]
fn small_inference_gets_the_time_sliced_resource() {
    let config = r#"
version: v1
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 4, devices: [0, 1]}
"#;
    let doc = plan_json(None, Some(config), "inference", "2Gi");
    assert_eq!(doc["strategy"], "shared");
    assert_eq!(doc["resource"], "nvidia.com/gpu.shared");
    assert_eq!(doc["fallback"], false);
    assert_eq!(
        doc["limits"],
        serde_json::json!({"nvidia.com/gpu.shared": 1})
    );
}

#[test]
fn without_shared_vgpu_or_mig_it_falls_back_to_exclusive() {
    let doc = plan_json(None, None, "inference", "2Gi");
    assert_eq!(doc["strategy"], "exclusive");
    assert_eq!(doc["resource"], "nvidia.com/gpu");
    assert_eq!(doc["fallback"], true);
    assert_eq!(
        doc["reason"],
        "inference needing 2 GiB: rule 2: inference with 2 GiB < 4 GiB -> shared; \
         shared: no time-sliced resource offered; vgpu: no vGPU resource offered; \
         mig: no MIG resource offered; fell back to exclusive: nvidia.com/gpu (81559 MiB per device, 8 available)"
    );
}

#[test]
fn mig_falls_back_to_vgpu_slices() {
    let config =
        "sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 10240, devices: [0, 1]}]}}";
    let doc = plan_json(None, Some(config), "data-processing", "6Gi");
    assert_eq!(doc["strategy"], "vgpu");
    assert_eq!(doc["resource"], "nvidia.com/gpu.vgpu");
    assert_eq!(doc["fallback"], true);
    // 12 GiB no longer fits a 10 GiB slice: on to whole GPUs.
    let doc = plan_json(None, Some(config), "data-processing", "12Gi");
    assert_eq!(doc["strategy"], "exclusive");
    assert_eq!(doc["resource"], "nvidia.com/gpu");
}

#[test]
fn thresholds_come_from_the_config() {
    let doc = plan_json(
        Some(MIG_NODE),
        Some("flags: {migStrategy: mixed}\nstrategy: {migRangeGiB: [4, 6]}"),
        "inference",
        "8Gi",
    );
    assert_eq!(doc["strategy"], "exclusive");
    assert_eq!(doc["fallback"], false);
    assert!(doc["reason"]
        .as_str()
        .unwrap()
        .contains("rule 4: inference with 8 GiB matches no sharing rule -> exclusive"));
}

#[test]
fn nothing_fitting_exits_1_with_the_reason() {
    let (code, out, err) = plan(
        Some(MIG_NODE),
        Some("flags: {migStrategy: mixed}"),
        &[
            "--workload",
            "training",
            "--gpu-memory",
            "200Gi",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 1, "stdout: {out}");
    assert!(out.is_empty());
    assert_eq!(
        err.trim(),
        "error: nothing on node mig-node fits: training needing 200 GiB: rule 1: training with 200 GiB > 16 GiB -> exclusive; \
         exclusive: no whole-GPU resource has >= 200 GiB per device (largest is nvidia.com/gpu with 81559 MiB); nothing fits"
    );
}

#[test]
fn text_and_yaml_outputs() {
    let args = ["--workload", "inference", "--gpu-memory", "8Gi"];
    let config = Some("flags: {migStrategy: mixed}");
    let (code, out, err) = plan(Some(MIG_NODE), config, &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("strategy:   mig\n"), "{out}");
    assert!(
        out.contains("resources:\n  limits:\n    nvidia.com/mig-1g.10gb: 1\n"),
        "{out}"
    );

    let (code, out, err) = plan(
        Some(MIG_NODE),
        config,
        &[&args[..], &["-o", "yaml"]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    let yaml: Value = serde_yaml_ng::from_str(&out).unwrap();
    let json = plan_json(Some(MIG_NODE), config, "inference", "8Gi");
    assert_eq!(yaml, json);
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        ["--workload", "gaming", "--gpu-memory", "8Gi"],
        ["--workload", "inference", "--gpu-memory", "8GB"],
        ["--workload", "inference", "--gpu-memory", "-1"],
    ] {
        let (code, _, err) = plan(None, None, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("--"), "{err}");
    }
    let (code, _, err) = plan(
        None,
        Some("strategy: {migRangeGiB: [20, 4]}"),
        &["--workload", "inference", "--gpu-memory", "8Gi"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("strategy.migRangeGiB"), "{err}");
}
