use std::collections::BTreeMap;

use crate::allocate::{grant, Grant, NVIDIA_VISIBLE_DEVICES};
use crate::config::{self, Config, DeviceListStrategy, ImexSettings};
use crate::extras::{Feature, FeatureFiles, NodeExtras};
use crate::gpu::fixture;
use crate::resources::{self, ResourceSet};

const NODE: &str = "gpus: [{model: NVIDIA H100 80GB HBM3}, {model: NVIDIA H100 80GB HBM3}]";

/// `config_text` with GDS, MOFED and GDRCopy on and IMEX channel 0 requested (set directly: the
/// file keys are the config loader's business).
fn setup(config_text: &str) -> (Config, ResourceSet, Vec<String>) {
    let inv = fixture::parse(NODE).unwrap().inventory;
    let mut config = config::parse(config_text).unwrap();
    config.plugin.gds_enabled = true;
    config.plugin.mofed_enabled = true;
    config.plugin.gdrcopy_enabled = true;
    config.plugin.imex = ImexSettings {
        channel_ids: vec![0],
        required: false,
    };
    let set = resources::build(&inv, &config, &Default::default())
        .unwrap()
        .resources;
    let uuids = inv.gpus.iter().map(|g| g.uuid.clone()).collect();
    (config, set, uuids)
}

/// GDS and GDRCopy devices found, MOFED's not; channel 0 present when `imex`.
fn found(imex: bool) -> NodeExtras {
    let nodes = |paths: &[&str]| FeatureFiles {
        device_nodes: paths.iter().map(|p| p.to_string()).collect(),
        mounts: Vec::new(),
    };
    NodeExtras {
        dev_root: "/".into(),
        features: BTreeMap::from([
            (Feature::Gds, nodes(&["/dev/nvidia-fs0"])),
            (Feature::Mofed, nodes(&[])),
            (Feature::Gdrcopy, nodes(&["/dev/gdrdrv"])),
        ]),
        imex_channels: if imex { vec![0] } else { Vec::new() },
        imex_missing: Vec::new(),
    }
}

fn allocate(config: &Config, set: &ResourceSet, ids: &[String], extras: &NodeExtras) -> Grant {
    grant(
        set.get("nvidia.com/gpu").unwrap(),
        ids,
        &config.plugin,
        extras,
    )
    .unwrap()
}

fn strategies(config: &Config, list: &[DeviceListStrategy]) -> Config {
    let mut config = config.clone();
    config.plugin.device_list_strategies = list.to_vec();
    config
}

#[test]
fn feature_envs_under_every_strategy_even_pure_cdi() {
    let (base, set, uuids) = setup("version: v1");
    for list in [
        &[DeviceListStrategy::Envvar][..],
        &[DeviceListStrategy::VolumeMounts],
        &[DeviceListStrategy::CdiAnnotations],
        &[DeviceListStrategy::CdiCri],
        &[DeviceListStrategy::CdiCri, DeviceListStrategy::Envvar],
    ] {
        let config = strategies(&base, list);
        // Found or not (MOFED is absent), the switch sets the env.
        for extras in [found(false), NodeExtras::default()] {
            let r = allocate(&config, &set, &uuids[..1], &extras);
            for env in ["NVIDIA_GDS", "NVIDIA_MOFED", "NVIDIA_GDRCOPY"] {
                assert_eq!(r.envs[env], "enabled", "{env} with {list:?}");
            }
        }
    }
    // Off: none of them.
    let (mut off, set, uuids) = setup("version: v1");
    off.plugin.gds_enabled = false;
    off.plugin.mofed_enabled = false;
    off.plugin.gdrcopy_enabled = false;
    let r = allocate(&off, &set, &uuids[..1], &found(false));
    assert_eq!(r.envs.keys().collect::<Vec<_>>(), [NVIDIA_VISIBLE_DEVICES]);
}

#[test]
fn cdi_names_the_found_extras_after_the_gpus_in_nvidias_order() {
    let (config, set, uuids) = setup(
        "flags: {plugin: {deviceListStrategy: [cdi-cri, cdi-annotations], deviceIDStrategy: index}}",
    );
    let r = allocate(&config, &set, &[uuids[1].clone()], &found(true));
    let names: Vec<&str> = r.cdi_devices.iter().map(String::as_str).collect();
    // MOFED is on but has no device on the node: not named.
    let expected = [
        "k8s.gpu-agent.io/gpu=1",
        "k8s.gpu-agent.io/imex-channel=0",
        "k8s.gpu-agent.io/gdrcopy=all",
        "k8s.gpu-agent.io/gds=all",
    ];
    assert_eq!(names, expected);
    assert_eq!(
        r.annotations["cdi.k8s.io/gpu-agent_nvidia.com_gpu"],
        expected.join(",")
    );
    // Pure CDI: no legacy env, no IMEX env, no mounts, no specs.
    assert!(!r.envs.contains_key(NVIDIA_VISIBLE_DEVICES));
    assert!(!r.envs.contains_key("NVIDIA_IMEX_CHANNELS"));
    assert!(r.mounts.is_empty() && r.device_nodes.is_empty());
    // Nothing discovered: the GPUs only.
    let r = allocate(&config, &set, &[uuids[1].clone()], &NodeExtras::default());
    assert_eq!(r.cdi_devices.len(), 1);
}

#[test]
fn imex_channel_under_envvar_volume_mounts_and_device_specs() {
    let (mut config, set, uuids) = setup(
        "flags: {nvidiaDriverRoot: /run/nvidia/driver, plugin: {passDeviceSpecs: true, deviceListStrategy: envvar}}",
    );
    let r = allocate(&config, &set, &uuids, &found(true));
    assert_eq!(r.envs["NVIDIA_IMEX_CHANNELS"], "0");
    assert_eq!(
        r.envs[NVIDIA_VISIBLE_DEVICES],
        format!("{},{}", uuids[0], uuids[1])
    );
    let last = r.device_nodes.last().unwrap();
    assert_eq!(
        (
            last.container_path.as_str(),
            last.host_path.as_str(),
            last.permissions.as_str()
        ),
        (
            "/dev/nvidia-caps-imex-channels/channel0",
            "/run/nvidia/driver/dev/nvidia-caps-imex-channels/channel0",
            "rw"
        )
    );
    // GDS etc. are never device specs: they are the runtime hook's (or CDI's) business.
    assert!(!r
        .device_nodes
        .iter()
        .any(|d| d.container_path.contains("nvidia-fs")));

    config.plugin.device_list_strategies = vec![DeviceListStrategy::VolumeMounts];
    let r = allocate(&config, &set, &uuids[..1], &found(true));
    assert!(!r.envs.contains_key("NVIDIA_IMEX_CHANNELS"));
    let mounts: Vec<(&str, &str, bool)> = r
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.host_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            (
                format!("/var/run/nvidia-container-devices/{}", uuids[0]).as_str(),
                "/dev/null",
                true
            ),
            (
                "/var/run/nvidia-container-devices/imex/0",
                "/dev/null",
                true
            ),
        ]
    );

    // The channel is not on the node (skipped at discovery): nothing anywhere.
    config.plugin.device_list_strategies =
        vec![DeviceListStrategy::Envvar, DeviceListStrategy::VolumeMounts];
    let r = allocate(&config, &set, &uuids[..1], &found(false));
    assert!(!r.envs.contains_key("NVIDIA_IMEX_CHANNELS"));
    assert_eq!(r.mounts.len(), 1);
    assert!(!r
        .device_nodes
        .iter()
        .any(|d| d.container_path.contains("imex")));
}
