use super::*;
use crate::config;
use crate::gpu::fixture;
use crate::health::Unhealthy;

const FOUR_H100: &str = r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3, numaNode: 0}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 0}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 1, mig: {devices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 1, mig: {devices: [1g.10gb+me, 1g.10gb, 4g.40gb]}}
"#;

fn inventory(text: &str) -> Inventory {
    fixture::parse(text).unwrap().inventory
}

fn cfg(text: &str) -> Config {
    config::parse(text).unwrap()
}

fn ok(inv: &Inventory, text: &str) -> ResourceSet {
    build(inv, &cfg(text), &HealthState::default())
        .unwrap()
        .resources
}

fn ids(set: &ResourceSet, name: &str) -> Vec<String> {
    set.get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", set.names().collect::<Vec<_>>()))
        .devices
        .iter()
        .map(|d| d.id.clone())
        .collect()
}

#[test]
fn whole_gpus_by_uuid_or_index() {
    let inv = inventory(fixture::DEFAULT_FIXTURE);
    let set = ok(&inv, "version: v1");
    let gpu = set.get("nvidia.com/gpu").unwrap();
    assert_eq!(gpu.strategy, Strategy::Exclusive);
    let uuids: Vec<String> = inv.gpus.iter().map(|g| g.uuid.clone()).collect();
    assert_eq!(ids(&set, "nvidia.com/gpu"), uuids);
    assert_eq!(gpu.devices[5].numa_node, Some(1));
    assert_eq!(gpu.devices[5].visible_id, uuids[5]);

    // Index: the kubelet still sees UUIDs; only the name handed to the container changes.
    let set = ok(&inv, "flags: {plugin: {deviceIDStrategy: index}}");
    assert_eq!(ids(&set, "nvidia.com/gpu"), uuids);
    assert_eq!(
        visible_ids(&set, "nvidia.com/gpu"),
        ["0", "1", "2", "3", "4", "5", "6", "7"]
    );
}

fn visible_ids(set: &ResourceSet, name: &str) -> Vec<String> {
    set.get(name)
        .unwrap()
        .devices
        .iter()
        .map(|d| d.visible_id.clone())
        .collect()
}

#[test]
fn index_strategy_keeps_uuid_ids_for_replicas_and_slices() {
    let inv = inventory(FOUR_H100);
    let set = ok(
        &inv,
        "flags: {migStrategy: mixed, plugin: {deviceIDStrategy: index}}\nsharing:\n  timeSlicing: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]}\n  vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 40000, devices: [1]}]}",
    );
    let mig = &inv.gpus[2].mig_devices[2];
    let replicas = set.get("nvidia.com/mig-1g.10gb").unwrap();
    assert_eq!(replicas.devices[1].id, format!("{}::1", mig.uuid));
    assert_eq!(replicas.devices[1].visible_id, "2:2");
    let slices = set.get("nvidia.com/gpu.vgpu").unwrap();
    assert_eq!(
        slices
            .devices
            .iter()
            .map(|d| d.id.clone())
            .collect::<Vec<_>>(),
        [
            format!("{}::vgpu0", inv.gpus[1].uuid),
            format!("{}::vgpu1", inv.gpus[1].uuid)
        ]
    );
    assert!(slices.devices.iter().all(|d| d.visible_id == "1"));
    // Every advertised ID is found by its UUID-based name, none by an index.
    assert!(slices
        .device(&format!("{}::vgpu1", inv.gpus[1].uuid))
        .is_some());
    assert!(slices.device("1::vgpu1").is_none());
    assert!(set.get("nvidia.com/gpu").unwrap().device("0").is_none());

    // Index IDs an earlier agent advertised still place pods for attribution.
    let legacy = |resource: &str, id: &str| {
        set.get(resource)
            .unwrap()
            .device_or_legacy(id)
            .map(|d| d.id.clone())
    };
    assert_eq!(
        legacy("nvidia.com/mig-1g.10gb", "2:2::1"),
        Some(format!("{}::1", mig.uuid))
    );
    assert_eq!(
        legacy("nvidia.com/gpu.vgpu", "1::vgpu1"),
        Some(format!("{}::vgpu1", inv.gpus[1].uuid))
    );
    assert_eq!(
        legacy("nvidia.com/gpu", "0"),
        Some(inv.gpus[0].uuid.clone())
    );
    assert_eq!(
        legacy("nvidia.com/gpu", &inv.gpus[0].uuid),
        Some(inv.gpus[0].uuid.clone())
    );
    assert_eq!(legacy("nvidia.com/mig-1g.10gb", "2:2::7"), None);
    assert_eq!(legacy("nvidia.com/mig-1g.10gb", "2:2"), None);
    assert_eq!(legacy("nvidia.com/gpu", "1"), None);
}

#[test]
fn mig_none_advertises_mig_gpus_whole() {
    let inv = inventory(FOUR_H100);
    let set = ok(&inv, "version: v1");
    assert_eq!(set.names().collect::<Vec<_>>(), ["nvidia.com/gpu"]);
    assert_eq!(ids(&set, "nvidia.com/gpu").len(), 4);
}

#[test]
fn mig_mixed_one_resource_per_profile() {
    let inv = inventory(FOUR_H100);
    let set = ok(&inv, "flags: {migStrategy: mixed}");
    assert_eq!(
        set.names().collect::<Vec<_>>(),
        [
            "nvidia.com/gpu",
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/mig-1g.10gb.me",
            "nvidia.com/mig-2g.20gb",
            "nvidia.com/mig-3g.40gb",
            "nvidia.com/mig-4g.40gb",
        ]
    );
    assert_eq!(
        ids(&set, "nvidia.com/gpu"),
        [inv.gpus[0].uuid.clone(), inv.gpus[1].uuid.clone()]
    );
    let small = set.get("nvidia.com/mig-1g.10gb").unwrap();
    assert_eq!(small.strategy, Strategy::Mig);
    assert_eq!(small.devices.len(), 3);
    let mig = small.devices[0].target.mig.as_ref().unwrap();
    assert_eq!(small.devices[0].id, mig.uuid);
    assert!(mig.uuid.starts_with("MIG-"));
    assert_eq!(small.devices[0].target.gpu_uuid, inv.gpus[2].uuid);

    let set = ok(
        &inv,
        "flags: {migStrategy: mixed, plugin: {deviceIDStrategy: index}}",
    );
    let small = set.get("nvidia.com/mig-1g.10gb").unwrap();
    assert!(small.devices.iter().all(|d| d.id.starts_with("MIG-")));
    assert_eq!(
        visible_ids(&set, "nvidia.com/mig-1g.10gb"),
        ["2:2", "2:3", "3:1"]
    );
}

#[test]
fn mig_single_uniform_layout() {
    let inv = inventory(
        r#"
gpus:
  - {model: NVIDIA A100-SXM4-40GB, mig: {devices: [1g.5gb, 1g.5gb]}}
  - {model: NVIDIA A100-SXM4-40GB, mig: {devices: [1g.5gb]}}
"#,
    );
    let set = ok(&inv, "flags: {migStrategy: single}");
    let gpu = set.get("nvidia.com/gpu").unwrap();
    assert_eq!(gpu.devices.len(), 3);
    assert_eq!(gpu.strategy, Strategy::Mig);
    assert!(gpu.devices.iter().all(|d| d.id.starts_with("MIG-")));
}

#[test]
fn mig_single_refuses_mixed_layouts_and_empty_mig_gpus() {
    let inv = inventory(FOUR_H100);
    let errors = build(
        &inv,
        &cfg("flags: {migStrategy: single}"),
        &HealthState::default(),
    )
    .unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(text.iter().all(|e| e.starts_with("MIG: ")), "{text:#?}");
    assert!(
        text.iter()
            .any(|e| e.contains("GPU 0") && e.contains("MIG disabled")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("one MIG profile") && e.contains("3g.40gb")),
        "{text:#?}"
    );

    let empty = inventory("gpus: [{model: NVIDIA H100 80GB HBM3, mig: {devices: []}}]");
    let errors = build(
        &empty,
        &cfg("flags: {migStrategy: single}"),
        &HealthState::default(),
    )
    .unwrap_err();
    assert!(
        errors[0].to_string().contains("GPU 0") && errors[0].to_string().contains("no MIG devices")
    );

    // failOnInitError: false runs without MIG resources and reports the same problem.
    let built = build(
        &inv,
        &cfg("flags: {migStrategy: single, failOnInitError: false}"),
        &HealthState::default(),
    )
    .unwrap();
    assert_eq!(ids(&built.resources, "nvidia.com/gpu").len(), 2);
    assert!(built.warnings.iter().any(|w| w.contains("one MIG profile")));
}

#[test]
fn time_slicing_replicas_and_renames() {
    let inv = inventory(fixture::DEFAULT_FIXTURE);
    let set = ok(
        &inv,
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}",
    );
    let r = set.get("nvidia.com/gpu").unwrap();
    assert_eq!(r.strategy, Strategy::TimeSliced);
    assert_eq!(r.devices.len(), 32);
    assert_eq!(r.devices[1].id, format!("{}::1", inv.gpus[0].uuid));
    assert_eq!(r.devices[1].visible_id, inv.gpus[0].uuid);
    assert_eq!(r.devices[1].target.replica, Some(1));
    assert!(!r.fail_requests_greater_than_one);

    let set = ok(
        &inv,
        "sharing: {timeSlicing: {renameByDefault: true, failRequestsGreaterThanOne: true, resources: [{name: nvidia.com/gpu, replicas: 2}]}}",
    );
    assert_eq!(set.names().collect::<Vec<_>>(), ["nvidia.com/gpu.shared"]);
    assert!(
        set.get("nvidia.com/gpu.shared")
            .unwrap()
            .fail_requests_greater_than_one
    );
}

#[test]
fn some_gpus_exclusive_others_shared_with_different_counts() {
    let inv = inventory(fixture::DEFAULT_FIXTURE);
    let set = ok(
        &inv,
        r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 4, devices: [0, 1]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.light, replicas: 8, devices: ["GPU-does-not-matter-here"]}
"#
        .replace("GPU-does-not-matter-here", &inv.gpus[7].uuid)
        .as_str(),
    );
    assert_eq!(ids(&set, "nvidia.com/gpu").len(), 5);
    assert_eq!(ids(&set, "nvidia.com/gpu.shared").len(), 8);
    assert_eq!(ids(&set, "nvidia.com/gpu.light").len(), 8);
    assert!(ids(&set, "nvidia.com/gpu.light")[0].starts_with(&inv.gpus[7].uuid));
}

#[test]
fn vgpu_slices_from_reported_memory() {
    let inv = inventory(fixture::DEFAULT_FIXTURE);
    let set = ok(
        &inv,
        "sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 10240, computePercent: 25, devices: 2}]}}",
    );
    let v = set.get("nvidia.com/gpu.vgpu").unwrap();
    assert_eq!(v.strategy, Strategy::Vgpu);
    // 81559 MiB / 10240 = 7 slices per GPU.
    assert_eq!(v.devices.len(), 14);
    assert_eq!(v.devices[0].id, format!("{}::vgpu0", inv.gpus[0].uuid));
    assert_eq!(v.devices[13].id, format!("{}::vgpu6", inv.gpus[1].uuid));
    assert_eq!(
        v.devices[3].target.vgpu,
        Some(VgpuSlice {
            slice: 3,
            memory_mib: 10240,
            compute_percent: Some(25)
        })
    );
    assert_eq!(ids(&set, "nvidia.com/gpu").len(), 6);

    let errors = build(
        &inv,
        &cfg("sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 90000}]}}"),
        &HealthState::default(),
    )
    .unwrap_err();
    assert!(errors[0]
        .to_string()
        .starts_with("sharing.vgpu.resources[0].memoryMiB: 90000 MiB is more than GPU 0"));
}

#[test]
fn node_only_overlaps_are_errors_and_missing_devices_select_nothing() {
    let inv = inventory(fixture::DEFAULT_FIXTURE);
    // One ConfigMap serves many nodes: GPU 9 and a count beyond the node select what exists.
    let built = build(
        &inv,
        &cfg(r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [1, 9]}
      - {name: nvidia.com/mig-1g.10gb, rename: nvidia.com/mig.b, replicas: 2, devices: 3}
"#),
        &HealthState::default(),
    )
    .unwrap();
    assert_eq!(
        built
            .resources
            .get("nvidia.com/gpu.a")
            .unwrap()
            .devices
            .len(),
        2
    );
    assert_eq!(
        built.warnings,
        [
            "sharing.timeSlicing.resources[0].devices[1]: 9 matches no nvidia.com/gpu device on this node; it selects nothing here",
            "sharing.timeSlicing.resources[1].devices: asks for 3 nvidia.com/mig-1g.10gb device(s), this node has 0: taking them all",
        ]
    );
    let errors = build(
        &inv,
        &cfg(r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: 2}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.b, replicas: 2, devices: [1, 9]}
"#),
        &HealthState::default(),
    )
    .unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    assert!(
        text[0].starts_with("sharing.timeSlicing.resources[1]: selects GPU 1")
            && text[0].contains("which sharing.timeSlicing.resources[0] already selects"),
        "{text:?}"
    );
    let errors = build(
        &inv,
        &cfg(r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: 2}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 20000, devices: [1]}
"#),
        &HealthState::default(),
    )
    .unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .starts_with("sharing.vgpu.resources[0]: selects GPU 1")
            && errors[0]
                .to_string()
                .contains("sharing.timeSlicing.resources[0] already selects"),
        "{errors:?}"
    );
}

#[test]
fn health_fans_out_from_gpus_but_not_from_mig_devices() {
    let inv = inventory(FOUR_H100);
    let config = cfg(r#"
flags: {migStrategy: mixed}
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, replicas: 3}
      - {name: nvidia.com/mig-1g.10gb, replicas: 2}
"#);
    let mut health = HealthState::default();
    health.gpus.insert(
        inv.gpus[0].uuid.clone(),
        Unhealthy {
            reason: "XID 48".into(),
        },
    );
    health.migs.insert(
        inv.gpus[2].mig_devices[2].uuid.clone(),
        Unhealthy {
            reason: "XID 94".into(),
        },
    );
    let set = build(&inv, &config, &health).unwrap().resources;

    let gpu = set.get("nvidia.com/gpu").unwrap();
    let unhealthy: Vec<u32> = gpu
        .devices
        .iter()
        .filter(|d| d.health == Health::Unhealthy)
        .map(|d| d.target.gpu_index)
        .collect();
    assert_eq!(unhealthy, [0, 0, 0]);

    let small = set.get("nvidia.com/mig-1g.10gb").unwrap();
    assert_eq!(small.count(Health::Unhealthy), 2);
    assert_eq!(small.count(Health::Healthy), 4);
    assert_eq!(
        set.get("nvidia.com/mig-3g.40gb")
            .unwrap()
            .count(Health::Unhealthy),
        0
    );

    // A GPU-level fault takes its MIG devices with it.
    let mut health = HealthState::default();
    health.gpus.insert(
        inv.gpus[2].uuid.clone(),
        Unhealthy {
            reason: "XID 79".into(),
        },
    );
    let set = build(&inv, &config, &health).unwrap().resources;
    assert_eq!(
        set.get("nvidia.com/mig-3g.40gb")
            .unwrap()
            .count(Health::Unhealthy),
        1
    );
    assert_eq!(
        set.get("nvidia.com/mig-1g.10gb")
            .unwrap()
            .count(Health::Unhealthy),
        4
    );
}

#[test]
fn every_strategy_side_by_side() {
    let inv = inventory(FOUR_H100);
    let set = ok(
        &inv,
        r#"
flags: {migStrategy: mixed}
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 4, devices: [0]}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 20480, devices: [1]}
"#,
    );
    let strategies: Vec<(&str, Strategy)> = set
        .resources
        .values()
        .map(|r| (r.name.as_str(), r.strategy))
        .collect();
    assert!(strategies.contains(&("nvidia.com/gpu.shared", Strategy::TimeSliced)));
    assert!(strategies.contains(&("nvidia.com/gpu.vgpu", Strategy::Vgpu)));
    assert!(strategies.contains(&("nvidia.com/mig-3g.40gb", Strategy::Mig)));
    // Both whole GPUs are shared, so no exclusive nvidia.com/gpu is left.
    assert!(set.get("nvidia.com/gpu").is_none());
}

#[test]
fn a_rename_onto_an_exclusive_name_is_refused() {
    let inv = inventory(FOUR_H100);
    let errors = build(
        &inv,
        &cfg(r#"
flags: {migStrategy: mixed}
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/mig-1g.10gb, rename: nvidia.com/mig-2g.20gb, replicas: 2}
"#),
        &HealthState::default(),
    )
    .unwrap_err();
    assert!(errors[0].to_string().contains("cannot mix"), "{errors:?}");
}

#[test]
fn mps_replicas_are_advertised_as_nvidia_does() {
    let inv = inventory(fixture::DEFAULT_FIXTURE);
    let set = ok(
        &inv,
        "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 10}]}}",
    );
    let r = set.get("nvidia.com/gpu").unwrap();
    assert_eq!(r.strategy, Strategy::Mps);
    assert_eq!(r.devices.len(), 80);
    assert_eq!(r.devices[3].id, format!("{}::3", inv.gpus[0].uuid));
    assert_eq!(r.devices[3].visible_id, inv.gpus[0].uuid);
    // NVIDIA's default for MPS.
    assert!(r.fail_requests_greater_than_one);

    let set = ok(
        &inv,
        "sharing: {mps: {renameByDefault: true, failRequestsGreaterThanOne: false, resources: [{name: gpu, replicas: 2}]}}",
    );
    assert_eq!(set.names().collect::<Vec<_>>(), ["nvidia.com/gpu.shared"]);
    let shared = set.get("nvidia.com/gpu.shared").unwrap();
    assert_eq!(shared.strategy, Strategy::Mps);
    assert!(!shared.fail_requests_greater_than_one);
}

#[test]
fn mps_on_mig_devices_is_refused_on_the_node() {
    // migStrategy single advertises MIG devices as nvidia.com/gpu: NVIDIA refuses MPS on them.
    let inv = inventory(
        r#"
gpus:
  - {model: NVIDIA A100-SXM4-40GB, mig: {devices: [1g.5gb, 1g.5gb]}}
"#,
    );
    let errors = build(
        &inv,
        &cfg(
            "flags: {migStrategy: single}\nsharing: {mps: {resources: [{name: gpu, replicas: 2}]}}",
        ),
        &HealthState::default(),
    )
    .unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("sharing.mps.resources[0].name")
                && e.contains("sharing using MPS is not supported for MIG devices")),
        "{text:#?}"
    );
}
