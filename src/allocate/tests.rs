use std::collections::BTreeMap;

use super::*;
use crate::config::{self, Config, DeviceListStrategy};
use crate::gpu::{fixture, Inventory};
use crate::health::{HealthState, Unhealthy};
use crate::resources::{self, ResourceSet};

/// GPU 0, 1 whole; GPU 2 with two MIG devices.
const NODE: &str = r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 1g.10gb]}}
"#;

fn setup(config_text: &str) -> (Inventory, Config, ResourceSet) {
    setup_with_health(config_text, HealthState::default())
}

fn setup_with_health(config_text: &str, health: HealthState) -> (Inventory, Config, ResourceSet) {
    let inv = fixture::parse(NODE).unwrap().inventory;
    let config = config::parse(config_text).unwrap();
    let set = resources::build(&inv, &config, &health).unwrap().resources;
    (inv, config, set)
}

fn ids(set: &ResourceSet, resource: &str, picks: &[usize]) -> Vec<String> {
    let r = set.get(resource).unwrap();
    picks.iter().map(|&i| r.devices[i].id.clone()).collect()
}

fn allocate(
    set: &ResourceSet,
    config: &Config,
    resource: &str,
    ids: &[String],
) -> Result<Grant, AllocateError> {
    grant(
        set.get(resource).unwrap(),
        ids,
        &config.plugin,
        &NodeExtras::default(),
    )
}

fn with_strategies(mut config: Config, list: &[DeviceListStrategy]) -> Config {
    config.plugin.device_list_strategies = list.to_vec();
    config
}

#[test]
fn envvar_names_underlying_devices_once() {
    let (inv, config, set) =
        setup("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 3}]}}");
    // Two replicas of GPU 0 and one of GPU 1.
    let picked = ids(&set, "nvidia.com/gpu", &[0, 1, 3]);
    assert_eq!(picked[0], format!("{}::0", inv.gpus[0].uuid));
    let r = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    assert_eq!(
        r.envs[NVIDIA_VISIBLE_DEVICES],
        format!("{},{}", inv.gpus[0].uuid, inv.gpus[1].uuid)
    );
    assert!(r.mounts.is_empty() && r.device_nodes.is_empty() && r.cdi_devices.is_empty());
    assert!(r.annotations.is_empty());
}

#[test]
fn index_strategy_hands_indices_for_uuid_ids() {
    let (inv, config, set) =
        setup("flags: {migStrategy: mixed, plugin: {deviceIDStrategy: index}}");
    // The kubelet names UUIDs; the container gets indices.
    let r = allocate(&set, &config, "nvidia.com/gpu", &[inv.gpus[1].uuid.clone()]).unwrap();
    assert_eq!(r.envs[NVIDIA_VISIBLE_DEVICES], "1");
    let mig = inv.gpus[2].mig_devices[1].uuid.clone();
    let r = allocate(&set, &config, "nvidia.com/mig-1g.10gb", &[mig]).unwrap();
    assert_eq!(r.envs[NVIDIA_VISIBLE_DEVICES], "2:1");
    // Index names are not advertised IDs.
    let err = allocate(&set, &config, "nvidia.com/gpu", &["1".into()]).unwrap_err();
    assert!(matches!(err, AllocateError::UnknownDevice { .. }), "{err}");
}

#[test]
fn index_strategy_collapses_replicas_in_request_order_everywhere() {
    let (inv, config, set) = setup(
        "flags: {plugin: {deviceIDStrategy: index, deviceListStrategy: [envvar, volume-mounts, cdi-cri]}}\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}",
    );
    // GPU 1's replica first, then both of GPU 0's.
    let picked = ids(&set, "nvidia.com/gpu", &[3, 1, 0]);
    assert_eq!(picked[0], format!("{}::1", inv.gpus[1].uuid));
    let r = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    let mounts: Vec<&str> = r.mounts.iter().map(|m| m.container_path.as_str()).collect();
    assert_eq!(
        mounts,
        [
            "/var/run/nvidia-container-devices/1",
            "/var/run/nvidia-container-devices/0"
        ]
    );
    let cdi: Vec<&str> = r.cdi_devices.iter().map(String::as_str).collect();
    assert_eq!(cdi, ["k8s.gpu-agent.io/gpu=1", "k8s.gpu-agent.io/gpu=0"]);
    let envvar_only = with_strategies(config, &[DeviceListStrategy::Envvar]);
    let r = allocate(&set, &envvar_only, "nvidia.com/gpu", &picked).unwrap();
    assert_eq!(r.envs[NVIDIA_VISIBLE_DEVICES], "1,0");
}

#[test]
fn volume_mounts_point_the_env_at_one_mount_per_device() {
    let (inv, config, set) = setup("flags: {plugin: {deviceListStrategy: volume-mounts}}");
    let picked = ids(&set, "nvidia.com/gpu", &[0, 2]);
    let r = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    assert_eq!(
        r.envs[NVIDIA_VISIBLE_DEVICES],
        "/var/run/nvidia-container-devices"
    );
    let mounts: Vec<(String, String, bool)> = r
        .mounts
        .iter()
        .map(|m| (m.container_path.clone(), m.host_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            (
                format!("/var/run/nvidia-container-devices/{}", inv.gpus[0].uuid),
                "/dev/null".to_string(),
                true
            ),
            (
                format!("/var/run/nvidia-container-devices/{}", inv.gpus[2].uuid),
                "/dev/null".to_string(),
                true
            ),
        ]
    );
    // With envvar too, the env still points at the mounts (NVIDIA's order: volume-mounts wins).
    let both = with_strategies(
        config,
        &[DeviceListStrategy::Envvar, DeviceListStrategy::VolumeMounts],
    );
    let r = allocate(&set, &both, "nvidia.com/gpu", &picked).unwrap();
    assert_eq!(
        r.envs[NVIDIA_VISIBLE_DEVICES],
        "/var/run/nvidia-container-devices"
    );
    assert_eq!(r.mounts.len(), 2);
}

#[test]
fn cdi_strategies_name_fully_qualified_devices() {
    let (inv, config, set) = setup(
        "flags: {migStrategy: mixed, plugin: {deviceListStrategy: [cdi-annotations, cdi-cri]}}",
    );
    let mig = &inv.gpus[2].mig_devices[1];
    let r = allocate(
        &set,
        &config,
        "nvidia.com/mig-1g.10gb",
        std::slice::from_ref(&mig.uuid),
    )
    .unwrap();
    let name = format!("k8s.gpu-agent.io/gpu={}", mig.uuid);
    assert_eq!(
        r.cdi_devices.iter().map(String::as_str).collect::<Vec<_>>(),
        [name.as_str()]
    );
    assert_eq!(
        r.annotations,
        [(
            "cdi.k8s.io/gpu-agent_nvidia.com_mig-1g.10gb".to_string(),
            name
        )]
        .into()
    );
    // CDI alone: no env for the legacy hook.
    assert!(r.envs.is_empty(), "{:?}", r.envs);

    let picked = ids(&set, "nvidia.com/gpu", &[0, 1]);
    let r = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    assert_eq!(
        r.annotations["cdi.k8s.io/gpu-agent_nvidia.com_gpu"],
        format!(
            "k8s.gpu-agent.io/gpu={},k8s.gpu-agent.io/gpu={}",
            inv.gpus[0].uuid, inv.gpus[1].uuid
        )
    );
}

#[test]
fn cdi_annotation_prefix_and_envvar_combine() {
    let (inv, config, set) = setup(
        "flags: {plugin: {deviceListStrategy: [envvar, cdi-annotations], cdiAnnotationPrefix: cdi.example.com/}}",
    );
    let picked = ids(&set, "nvidia.com/gpu", &[1]);
    let r = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    assert_eq!(r.envs[NVIDIA_VISIBLE_DEVICES], inv.gpus[1].uuid);
    assert_eq!(
        r.annotations["cdi.example.com/gpu-agent_nvidia.com_gpu"],
        format!("k8s.gpu-agent.io/gpu={}", inv.gpus[1].uuid)
    );
    assert!(r.cdi_devices.is_empty());
}

fn spec_paths(r: &Grant) -> Vec<(String, String, String)> {
    r.device_nodes
        .iter()
        .map(|d| {
            (
                d.container_path.clone(),
                d.host_path.clone(),
                d.permissions.clone(),
            )
        })
        .collect()
}

#[test]
fn device_specs_for_gpus_de_duplicated() {
    let (_, config, set) = setup(
        "flags: {plugin: {passDeviceSpecs: true}}\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}",
    );
    // Both replicas of GPU 0, one of GPU 1.
    let picked = ids(&set, "nvidia.com/gpu", &[0, 1, 2]);
    let r = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    let rw = |p: &str| (p.to_string(), p.to_string(), "rw".to_string());
    assert_eq!(
        spec_paths(&r),
        [
            rw("/dev/nvidiactl"),
            rw("/dev/nvidia-uvm"),
            rw("/dev/nvidia-uvm-tools"),
            rw("/dev/nvidia0"),
            rw("/dev/nvidia1"),
        ]
    );
}

#[test]
fn device_specs_for_mig_devices_include_both_caps_under_the_dev_root() {
    let (inv, config, set) = setup(
        "flags: {migStrategy: mixed, nvidiaDriverRoot: /run/nvidia/driver, plugin: {passDeviceSpecs: true}}",
    );
    let gpu = &inv.gpus[2];
    let mig = &gpu.mig_devices[0];
    let r = allocate(
        &set,
        &config,
        "nvidia.com/mig-3g.40gb",
        std::slice::from_ref(&mig.uuid),
    )
    .unwrap();
    let (gi, ci) = mig.cap_minors(gpu.minor_number);
    assert_ne!(gi, ci);
    let paths: Vec<String> = r
        .device_nodes
        .iter()
        .map(|d| d.container_path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/dev/nvidiactl".to_string(),
            "/dev/nvidia-uvm".into(),
            "/dev/nvidia-uvm-tools".into(),
            "/dev/nvidia2".into(),
            format!("/dev/nvidia-caps/nvidia-cap{gi}"),
            format!("/dev/nvidia-caps/nvidia-cap{ci}"),
        ]
    );
    assert!(r
        .device_nodes
        .iter()
        .all(|d| d.host_path == format!("/run/nvidia/driver{}", d.container_path)));
}

#[test]
fn device_specs_are_left_to_the_cdi_spec_under_cdi_alone() {
    let (_, config, set) =
        setup("flags: {plugin: {passDeviceSpecs: true, deviceListStrategy: cdi-cri}}");
    let picked = ids(&set, "nvidia.com/gpu", &[0]);
    let r = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    assert!(r.device_nodes.is_empty());
    let mixed = with_strategies(
        config,
        &[DeviceListStrategy::CdiCri, DeviceListStrategy::VolumeMounts],
    );
    let r = allocate(&set, &mixed, "nvidia.com/gpu", &picked).unwrap();
    assert_eq!(r.device_nodes.len(), 4);
}

#[test]
fn vgpu_limits_with_every_strategy() {
    let (inv, base, set) = setup(
        "sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 20480, computePercent: 30}]}}",
    );
    let slices = ids(&set, "nvidia.com/gpu.vgpu", &[0, 1]);
    assert_eq!(slices[1], format!("{}::vgpu1", inv.gpus[0].uuid));
    for strategy in [
        DeviceListStrategy::Envvar,
        DeviceListStrategy::VolumeMounts,
        DeviceListStrategy::CdiAnnotations,
        DeviceListStrategy::CdiCri,
    ] {
        let config = with_strategies(base.clone(), &[strategy]);
        let r = allocate(&set, &config, "nvidia.com/gpu.vgpu", &slices).unwrap();
        assert_eq!(r.envs[CUDA_DEVICE_MEMORY_LIMIT], "40960m", "{strategy:?}");
        assert_eq!(r.envs[CUDA_DEVICE_SM_LIMIT], "60", "{strategy:?}");
    }
    let r = allocate(&set, &base, "nvidia.com/gpu.vgpu", &slices[..1]).unwrap();
    assert_eq!(r.envs[CUDA_DEVICE_MEMORY_LIMIT], "20480m");
    assert_eq!(r.envs[CUDA_DEVICE_SM_LIMIT], "30");
    assert_eq!(r.envs[NVIDIA_VISIBLE_DEVICES], inv.gpus[0].uuid);
}

#[test]
fn vgpu_without_compute_share_sets_no_sm_limit_and_caps_at_100() {
    let (_, config, set) =
        setup("sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 10240}]}}");
    let r = allocate(
        &set,
        &config,
        "nvidia.com/gpu.vgpu",
        &ids(&set, "nvidia.com/gpu.vgpu", &[0]),
    )
    .unwrap();
    assert!(!r.envs.contains_key(CUDA_DEVICE_SM_LIMIT));
    let (_, config, set) = setup(
        "sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 10240, computePercent: 40}]}}",
    );
    let three = ids(&set, "nvidia.com/gpu.vgpu", &[0, 1, 2]);
    let r = allocate(&set, &config, "nvidia.com/gpu.vgpu", &three).unwrap();
    assert_eq!(r.envs[CUDA_DEVICE_SM_LIMIT], "100");
}

#[test]
fn refusals_name_what_is_wrong() {
    let (inv, config, set) =
        setup("sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 40000}]}}");
    let r = set.get("nvidia.com/gpu.vgpu").unwrap();
    let on_gpu1 = r
        .devices
        .iter()
        .find(|d| d.target.gpu_index == 1)
        .unwrap()
        .id
        .clone();
    let err = allocate(
        &set,
        &config,
        "nvidia.com/gpu.vgpu",
        &[r.devices[0].id.clone(), on_gpu1],
    )
    .unwrap_err();
    assert!(matches!(err, AllocateError::VgpuAcrossGpus { .. }));
    assert!(err.to_string().contains(&inv.gpus[1].uuid), "{err}");

    let err = allocate(
        &set,
        &config,
        "nvidia.com/gpu.vgpu",
        &["GPU-nope::vgpu0".into()],
    )
    .unwrap_err();
    assert!(err.to_string().contains("GPU-nope::vgpu0"), "{err}");
    let err = allocate(&set, &config, "nvidia.com/gpu.vgpu", &[]).unwrap_err();
    assert!(matches!(err, AllocateError::Empty { .. }));

    let (_, config, set) = setup(
        "sharing: {timeSlicing: {failRequestsGreaterThanOne: true, resources: [{name: nvidia.com/gpu, replicas: 4}]}}",
    );
    let two = ids(&set, "nvidia.com/gpu", &[0, 5]);
    let err = allocate(&set, &config, "nvidia.com/gpu", &two).unwrap_err();
    assert_eq!(
        err,
        AllocateError::TooManyReplicas {
            resource: "nvidia.com/gpu".into(),
            count: 2
        }
    );
    // NVIDIA's wording, exactly.
    assert!(err.to_string().starts_with(
        "invalid allocation request for \"nvidia.com/gpu\": invalid request: maximum request size for shared resources is 1; found 2"
    ), "{err}");
    allocate(&set, &config, "nvidia.com/gpu", &two[..1]).unwrap();
}

#[test]
fn unhealthy_devices_are_refused() {
    let inv = fixture::parse(NODE).unwrap().inventory;
    let health = HealthState {
        gpus: BTreeMap::from([(
            inv.gpus[1].uuid.clone(),
            Unhealthy {
                reason: "XID 79".into(),
            },
        )]),
        ..HealthState::default()
    };
    let (_, config, set) = setup_with_health("version: v1", health);
    let err = allocate(&set, &config, "nvidia.com/gpu", &[inv.gpus[1].uuid.clone()]).unwrap_err();
    assert!(matches!(err, AllocateError::UnhealthyDevice { .. }));
    assert!(err.to_string().contains(&inv.gpus[1].uuid));
}

#[test]
fn mps_replicas_get_nvidias_pipe_directory_env_and_mounts() {
    let (inv, config, set) =
        setup("sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}");
    let picked = ids(&set, "nvidia.com/gpu", &[5]);
    assert_eq!(picked[0], format!("{}::1", inv.gpus[1].uuid));
    let g = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    assert_eq!(
        g.envs.get("CUDA_MPS_PIPE_DIRECTORY").map(String::as_str),
        Some("/mps/nvidia.com/gpu/pipe")
    );
    assert_eq!(
        g.envs.get("NVIDIA_VISIBLE_DEVICES"),
        Some(&inv.gpus[1].uuid)
    );
    // NVIDIA's daemon, not Allocate, sets the per-client limits.
    assert!(!g.envs.contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
    assert!(!g.envs.contains_key("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"));
    let mounts: Vec<(&str, &str, bool)> = g
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.host_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            (
                "/mps/nvidia.com/gpu/pipe",
                "/run/nvidia/mps/nvidia.com/gpu/pipe",
                false
            ),
            ("/dev/shm", "/run/nvidia/mps/shm", false),
        ]
    );

    // MPS_ROOT moves the host side only; a renamed resource has its own pipe directory.
    let (_, config, set) = setup(
        "flags: {mpsRoot: /var/mps}\nsharing: {mps: {renameByDefault: true, resources: [{name: gpu, replicas: 2}]}}",
    );
    let picked = ids(&set, "nvidia.com/gpu.shared", &[0]);
    let g = allocate(&set, &config, "nvidia.com/gpu.shared", &picked).unwrap();
    assert_eq!(
        g.envs.get("CUDA_MPS_PIPE_DIRECTORY").map(String::as_str),
        Some("/mps/nvidia.com/gpu.shared/pipe")
    );
    assert_eq!(g.mounts[0].host_path, "/var/mps/nvidia.com/gpu.shared/pipe");
    assert_eq!(g.mounts[1].host_path, "/var/mps/shm");

    // failRequestsGreaterThanOne defaults to true for MPS.
    let (_, config, set) =
        setup("sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}");
    let two = ids(&set, "nvidia.com/gpu", &[0, 4]);
    assert!(matches!(
        allocate(&set, &config, "nvidia.com/gpu", &two),
        Err(AllocateError::TooManyReplicas { .. })
    ));
}

#[test]
fn time_sliced_replicas_get_no_mps_env() {
    let (_, config, set) =
        setup("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}");
    let picked = ids(&set, "nvidia.com/gpu", &[0]);
    let g = allocate(&set, &config, "nvidia.com/gpu", &picked).unwrap();
    assert!(!g.envs.contains_key("CUDA_MPS_PIPE_DIRECTORY"));
    assert!(g.mounts.is_empty());
}
