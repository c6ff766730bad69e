use super::*;
use crate::config;
use crate::gpu::fixture;
use crate::health::HealthState;
use crate::strategy::tests::offer;

const MIXED: &str = r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}}
"#;

fn node(fixture_text: &str, config_text: &str) -> (Inventory, ResourceSet) {
    let inventory = fixture::parse(fixture_text).unwrap().inventory;
    let config = config::parse(config_text).unwrap();
    let built = crate::resources::build(&inventory, &config, &HealthState::default()).unwrap();
    (inventory, built.resources)
}

#[test]
fn node_catalog_has_every_resource_with_its_device_memory() {
    let (inv, set) = node(
        MIXED,
        r#"
flags: {migStrategy: mixed}
sharing:
  timeSlicing:
    resources: [{name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 4, devices: [0]}]
  vgpu:
    resources: [{name: nvidia.com/gpu, memoryMiB: 20480, devices: [1]}]
"#,
    );
    let cat = Catalog::from_node(&inv, &set);
    assert_eq!(
        cat.offers,
        [
            offer("nvidia.com/gpu.shared", Mode::Shared, 81559, 4),
            offer("nvidia.com/gpu.vgpu", Mode::Vgpu, 20480, 3),
            offer("nvidia.com/mig-1g.10gb", Mode::Mig, 9984, 2),
            offer("nvidia.com/mig-2g.20gb", Mode::Mig, 20096, 1),
            offer("nvidia.com/mig-3g.40gb", Mode::Mig, 40448, 1),
        ]
    );
}

#[test]
fn node_catalog_counts_healthy_devices_only() {
    let (inv, _) = node(MIXED, "version: v1");
    let health = HealthState::default().with_lost([inv.gpus[0].uuid.clone()]);
    let config = config::parse("version: v1").unwrap();
    let set = crate::resources::build(&inv, &config, &health)
        .unwrap()
        .resources;
    let cat = Catalog::from_node(&inv, &set);
    assert_eq!(
        cat.offers,
        [offer("nvidia.com/gpu", Mode::Exclusive, 81559, 2)]
    );
}

#[test]
fn explicit_entries_and_merging_across_pools() {
    let cat = Catalog::parse(
        r#"
- resources:
    - {name: nvidia.com/gpu, strategy: exclusive, memoryMiB: 81559, count: 8}
    - {name: nvidia.com/mig-1g.10gb, strategy: mig, memoryMiB: 9984}
- resources:
    - {name: nvidia.com/gpu, strategy: exclusive, memoryMiB: 40960, count: 4}
    - {name: nvidia.com/gpu.shared, strategy: time-sliced, memoryMiB: 40960, count: 16}
    - {name: nvidia.com/vgpu, strategy: vgpu, memoryMiB: 10240, count: 0}
"#,
    )
    .unwrap();
    assert_eq!(
        cat.offers,
        [
            // Either pool may serve nvidia.com/gpu: the smaller GPU is what is guaranteed.
            offer("nvidia.com/gpu", Mode::Exclusive, 40960, 12),
            offer("nvidia.com/gpu.shared", Mode::Shared, 40960, 16),
            offer("nvidia.com/mig-1g.10gb", Mode::Mig, 9984, 1),
            offer("nvidia.com/vgpu", Mode::Vgpu, 10240, 0),
        ]
    );
}

#[test]
fn list_documents_are_catalogs() {
    // What `gpu-agent list --output json` prints, with memoryMiB per device (vGPU, the replica
    // of a GPU) and without (derived from gpus: a MIG device, a whole GPU by ID).
    let cat = Catalog::parse(
        r#"{
  "node": "n1", "backend": "mock", "driverVersion": "580.95.05",
  "gpus": [
    {"index": 0, "uuid": "GPU-a", "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559, "migEnabled": false, "migDevices": []},
    {"index": 1, "uuid": "GPU-b", "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559, "migEnabled": true,
     "migDevices": [{"uuid": "MIG-x", "profile": "1g.10gb", "gpuInstanceId": 9, "memoryMiB": 9984},
                    {"uuid": "MIG-y", "profile": "1g.10gb", "gpuInstanceId": 10, "memoryMiB": 9984}]},
    {"index": 2, "uuid": "GPU-c", "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559, "migEnabled": false, "migDevices": []}
  ],
  "resources": [
    {"name": "nvidia.com/gpu", "strategy": "exclusive", "devices": [{"id": "GPU-a", "health": "Healthy", "gpus": ["GPU-a"]}]},
    {"name": "nvidia.com/mig-1g.10gb", "strategy": "mig", "devices": [
       {"id": "MIG-x", "health": "Healthy", "gpus": ["GPU-b"]},
       {"id": "MIG-y", "health": "Unhealthy", "gpus": ["GPU-b"]}]},
    {"name": "nvidia.com/gpu.vgpu", "strategy": "vgpu", "devices": [
       {"id": "GPU-c::vgpu0", "health": "Healthy", "gpus": ["GPU-c"], "memoryMiB": 40960},
       {"id": "GPU-c::vgpu1", "health": "Healthy", "gpus": ["GPU-c"], "memoryMiB": 40960}]}
  ]
}"#,
    )
    .unwrap();
    assert_eq!(
        cat.offers,
        [
            offer("nvidia.com/gpu", Mode::Exclusive, 81559, 1),
            offer("nvidia.com/gpu.vgpu", Mode::Vgpu, 40960, 2),
            offer("nvidia.com/mig-1g.10gb", Mode::Mig, 9984, 1),
        ]
    );
}

fn errors(text: &str) -> Vec<String> {
    Catalog::parse(text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn bad_catalogs_name_the_path_and_value() {
    assert_eq!(
        errors("resources:\n  - {name: nvidia.com/gpu, strategy: whole, memoryMiB: -1, count: x}\n  - {strategy: mig}"),
        [
            "resources[0].strategy: must be exclusive, shared (or time-sliced), mig or vgpu, got \"whole\"",
            "resources[0].memoryMiB: must be a positive whole number of MiB, got -1",
            "resources[0].count: must be a whole number >= 0, got \"x\"",
            "resources[1].name: is required",
            "resources[1].memoryMiB: is required (memory one device gives, in MiB), or list `devices` as `gpu-agent list --output json` does",
        ]
    );
    assert_eq!(errors("[{gpus: []}]"), ["[0].resources: is required"]);
    assert_eq!(
        errors("42"),
        ["catalog: expected a mapping with `resources` or a list of them, got a number"]
    );
    assert_eq!(errors("resources: []"), ["catalog: offers no resources"]);
    assert!(errors("resources: [")[0].starts_with("catalog: not valid YAML or JSON"));
    assert_eq!(
        errors(
            "- resources: [{name: nvidia.com/gpu, strategy: exclusive, memoryMiB: 10}]\n\
             - resources: [{name: nvidia.com/gpu, strategy: mig, memoryMiB: 10}]"
        ),
        ["[1].resources[0]: nvidia.com/gpu is mig here but exclusive at [0].resources[0]; one name holds one kind of device"]
    );
    // A vGPU entry from a list document without memoryMiB cannot be sized.
    assert_eq!(
        errors(
            r#"{"gpus": [{"uuid": "GPU-c", "memoryMiB": 81559}],
                "resources": [{"name": "nvidia.com/gpu.vgpu", "strategy": "vgpu",
                               "devices": [{"id": "GPU-c::vgpu0", "gpus": ["GPU-c"]}]}]}"#
        ),
        ["resources[0].devices[0].memoryMiB: is required: a vGPU slice's size is not in the gpus list (regenerate with `gpu-agent list --output json`)"]
    );
    assert_eq!(
        errors(r#"{"resources": [{"name": "nvidia.com/gpu", "strategy": "exclusive", "devices": [{"id": "GPU-z"}]}]}"#),
        ["resources[0].devices[0].memoryMiB: is required: device \"GPU-z\" names no GPU or MIG device of the document's gpus (regenerate with `gpu-agent list --output json`)"]
    );
}

#[test]
fn a_deep_or_large_catalog_is_refused_before_it_is_parsed() {
    // 200 KB of nested `{a: ` took serde_yaml_ng 14 s; the check takes milliseconds.
    let deep = format!("resources: {}", "{a: ".repeat(50_000));
    let started = std::time::Instant::now();
    let errors = Catalog::parse(&deep).unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(
        errors[0].to_string(),
        "catalog: nested 65 levels deep at line 1; the limit is 64"
    );

    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("catalog.yaml");
    std::fs::write(&large, format!("# {}\n", "x".repeat(300 * 1024))).unwrap();
    let error = Catalog::load(&large).unwrap_err();
    assert!(matches!(error, CatalogLoadError::Invalid { .. }), "{error}");
    assert!(
        error
            .to_string()
            .ends_with("catalog: the file is 301 KiB; the limit is 256 KiB"),
        "{error}"
    );
}
