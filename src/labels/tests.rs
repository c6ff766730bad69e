use super::*;
use crate::config::{self, Config};
use crate::gpu::mock::MockBackend;
use crate::gpu::GpuBackend;
use crate::health::HealthState;

fn snapshot(fixture: &str, config: &str) -> Snapshot {
    let inventory = MockBackend::from_text(fixture)
        .unwrap()
        .inventory()
        .unwrap();
    let config = if config.is_empty() {
        Config::default()
    } else {
        config::parse(config).unwrap()
    };
    Snapshot::build(
        Arc::new(inventory),
        Arc::new(config),
        Arc::new(HealthState::default()),
    )
    .unwrap()
}

const TWO_H100: &str = r#"
driverVersion: "580.95.05"
cudaDriverVersion: "13.0"
gpus:
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3}
"#;

fn get<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    labels
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no label {key} in {labels:?}"))
}

#[test]
fn whole_gpus_get_gfd_keys() {
    let labels = node_labels(&snapshot(TWO_H100, ""));
    assert_eq!(get(&labels, "nvidia.com/gpu.present"), "true");
    assert_eq!(
        get(&labels, "nvidia.com/gpu.product"),
        "NVIDIA-H100-80GB-HBM3"
    );
    assert_eq!(get(&labels, "nvidia.com/gpu.count"), "2");
    let memory = mig_profiles::model("NVIDIA H100 80GB HBM3")
        .unwrap()
        .memory_total_mib;
    assert_eq!(get(&labels, "nvidia.com/gpu.memory"), memory.to_string());
    assert_eq!(get(&labels, "nvidia.com/gpu.replicas"), "1");
    assert_eq!(get(&labels, "nvidia.com/gpu.sharing-strategy"), "none");
    assert_eq!(get(&labels, "nvidia.com/mig.capable"), "true");
    assert_eq!(get(&labels, "nvidia.com/mig.strategy"), "none");
    assert_eq!(
        get(&labels, "nvidia.com/cuda.driver-version.full"),
        "580.95.05"
    );
    assert_eq!(get(&labels, "nvidia.com/cuda.driver-version.major"), "580");
    assert_eq!(get(&labels, "nvidia.com/cuda.driver-version.minor"), "95");
    assert_eq!(
        get(&labels, "nvidia.com/cuda.driver-version.revision"),
        "05"
    );
    assert_eq!(get(&labels, "nvidia.com/cuda.runtime-version.full"), "13.0");
    assert_eq!(get(&labels, "nvidia.com/cuda.runtime-version.major"), "13");
    assert!(!labels.keys().any(|k| k.starts_with("nvidia.com/mig-")));
}

#[test]
fn time_slicing_marks_the_product_shared_and_sets_replicas() {
    let labels = node_labels(&snapshot(
        TWO_H100,
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 4}\n",
    ));
    assert_eq!(
        get(&labels, "nvidia.com/gpu.product"),
        "NVIDIA-H100-80GB-HBM3-SHARED"
    );
    assert_eq!(get(&labels, "nvidia.com/gpu.replicas"), "4");
    assert_eq!(
        get(&labels, "nvidia.com/gpu.sharing-strategy"),
        "time-slicing"
    );

    // Renamed replicas leave nvidia.com/gpu's product alone, as in GFD.
    let renamed = node_labels(&snapshot(
        TWO_H100,
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 4, rename: nvidia.com/gpu.shared}\n",
    ));
    assert_eq!(
        get(&renamed, "nvidia.com/gpu.product"),
        "NVIDIA-H100-80GB-HBM3"
    );
    assert_eq!(get(&renamed, "nvidia.com/gpu.replicas"), "4");
}

#[test]
fn vgpu_slices_are_their_own_sharing_strategy() {
    let labels = node_labels(&snapshot(
        "gpus: [{model: NVIDIA L4, memoryMiB: 23034}]",
        "version: v1\nsharing:\n  vgpu:\n    resources:\n      - {name: nvidia.com/gpu, memoryMiB: 4096}\n",
    ));
    assert_eq!(get(&labels, "nvidia.com/gpu.sharing-strategy"), "vgpu");
    assert_eq!(get(&labels, "nvidia.com/gpu.replicas"), "5");
    assert_eq!(get(&labels, "nvidia.com/gpu.product"), "NVIDIA-L4");
    assert_eq!(get(&labels, "nvidia.com/mig.capable"), "false");
}

const MIG_NODE: &str = r#"
gpus:
  - {model: NVIDIA A100-SXM4-40GB, mig: {devices: [3g.20gb, 1g.5gb, 1g.5gb]}}
  - {model: NVIDIA A100-SXM4-40GB, mig: {devices: [1g.5gb]}}
"#;

#[test]
fn mixed_strategy_counts_every_profile() {
    let labels = node_labels(&snapshot(
        MIG_NODE,
        "version: v1\nflags: {migStrategy: mixed}\n",
    ));
    assert_eq!(get(&labels, "nvidia.com/mig.strategy"), "mixed");
    assert_eq!(get(&labels, "nvidia.com/mig-1g.5gb.count"), "3");
    assert_eq!(get(&labels, "nvidia.com/mig-3g.20gb.count"), "1");
    assert_eq!(
        get(&labels, "nvidia.com/mig-1g.5gb.product"),
        "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    );
    let spec = mig_profiles::model("NVIDIA A100-SXM4-40GB").unwrap();
    assert_eq!(
        get(&labels, "nvidia.com/mig-3g.20gb.memory"),
        spec.profile("3g.20gb").unwrap().memory_mib.to_string()
    );
    assert_eq!(get(&labels, "nvidia.com/mig-1g.5gb.replicas"), "1");
    // The whole GPUs are still counted, without sharing.
    assert_eq!(get(&labels, "nvidia.com/gpu.count"), "2");
    assert_eq!(get(&labels, "nvidia.com/gpu.replicas"), "0");
}

#[test]
fn mixed_strategy_keys_follow_the_resource_names() {
    // `+me` profiles are advertised as `nvidia.com/mig-<profile with + as .>`; their labels use
    // that name too (a `+` is not allowed in a label key), and find its time-slicing entry.
    let labels = node_labels(&snapshot(
        "gpus:\n  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [1g.10gb+me, 1g.10gb]}}\n",
        "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/mig-1g.10gb.me, replicas: 2}\n",
    ));
    assert_eq!(get(&labels, "nvidia.com/mig-1g.10gb.me.count"), "1");
    assert_eq!(get(&labels, "nvidia.com/mig-1g.10gb.me.replicas"), "2");
    assert_eq!(
        get(&labels, "nvidia.com/mig-1g.10gb.me.product"),
        "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb-me-SHARED"
    );
    assert_eq!(get(&labels, "nvidia.com/mig-1g.10gb.count"), "1");
    assert!(!labels.keys().any(|k| k.contains('+')), "{labels:?}");
}

#[test]
fn single_strategy_describes_the_mig_devices_as_gpus() {
    let fixture = "gpus:\n  - {model: NVIDIA A100-SXM4-40GB, mig: {devices: [1g.5gb, 1g.5gb]}}\n  - {model: NVIDIA A100-SXM4-40GB, mig: {devices: [1g.5gb]}}\n";
    let labels = node_labels(&snapshot(
        fixture,
        "version: v1\nflags: {migStrategy: single}\n",
    ));
    assert_eq!(
        get(&labels, "nvidia.com/gpu.product"),
        "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    );
    assert_eq!(get(&labels, "nvidia.com/gpu.count"), "3");
    assert_eq!(get(&labels, "nvidia.com/gpu.replicas"), "1");
}

#[test]
fn single_strategy_on_a_mixed_layout_gets_the_invalid_labels() {
    let labels = node_labels(&snapshot(
        MIG_NODE,
        "version: v1\nflags: {migStrategy: single, failOnInitError: false}\n",
    ));
    assert_eq!(
        get(&labels, "nvidia.com/gpu.product"),
        "NVIDIA-A100-SXM4-40GB-MIG-INVALID"
    );
    assert_eq!(get(&labels, "nvidia.com/gpu.count"), "0");
}

#[test]
fn a_node_without_gpus_only_says_so() {
    let labels = node_labels(&snapshot("gpus: []", ""));
    assert_eq!(labels.len(), 1);
    assert_eq!(get(&labels, "nvidia.com/gpu.present"), "false");
}

#[test]
fn label_values_are_always_valid() {
    assert_eq!(
        sanitize("NVIDIA GeForce RTX 4090"),
        "NVIDIA-GeForce-RTX-4090"
    );
    assert_eq!(sanitize("Tesla (V100)"), "Tesla--V100");
    assert_eq!(sanitize(&"x".repeat(80)).len(), 63);
    assert_eq!(sanitize(" !"), "");
}

#[test]
fn render_is_sorted_key_value_lines() {
    let text = render(&node_labels(&snapshot(TWO_H100, "")));
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    assert!(lines.contains(&"nvidia.com/gpu.count=2"));
    assert!(lines.iter().all(|l| l.split_once('=').is_some()));
}
