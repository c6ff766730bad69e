//! Sharing strategies and device-list strategies through a test kubelet against the real binary:
//! time-slicing, MIG mixed, vGPU slices, CDI (response and spec file), volume-mounts and
//! passDeviceSpecs.

mod common;

use std::path::Path;

use common::*;

#[tokio::test]
async fn time_sliced_replicas_and_fail_requests_greater_than_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.yaml",
        "version: v1\nsharing:\n  timeSlicing:\n    failRequestsGreaterThanOne: true\n    resources:\n      - {name: nvidia.com/gpu, replicas: 4}\n",
    );
    let (kubelet, _agent, reg) = start_registered(dir.path(), &["--config", arg(&config)]).await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");

    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    assert_eq!(ids.len(), 32);
    let doc = list_json(&[]);
    for (g, gpu) in doc["gpus"].as_array().unwrap().iter().enumerate() {
        let uuid = gpu["uuid"].as_str().unwrap();
        for n in 0..4 {
            assert_eq!(ids[g * 4 + n], format!("{uuid}::{n}"));
        }
    }

    let r = plugin.allocate(&ids[5..6]).await.unwrap();
    assert_eq!(
        r.envs["NVIDIA_VISIBLE_DEVICES"],
        doc["gpus"][1]["uuid"].as_str().unwrap()
    );
    let status = plugin.allocate(&ids[0..2]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("failRequestsGreaterThanOne"),
        "{}",
        status.message()
    );
}

const MIG_NODE: &str = r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}}
"#;

#[tokio::test]
async fn mig_mixed_advertises_one_resource_per_profile() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(dir.path(), "node.yaml", MIG_NODE);
    let config = write_file(
        dir.path(),
        "config.yaml",
        "flags: {migStrategy: mixed, plugin: {passDeviceSpecs: true}}\n",
    );
    let (fixture, config) = (arg(&fixture), arg(&config));
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let _agent = Agent::spawn(dir.path(), &["--mock-fixture", fixture, "--config", config]);
    let names = [
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/mig-2g.20gb",
        "nvidia.com/mig-3g.40gb",
    ];
    let regs = kubelet.registrations_until(&names).await;
    assert_eq!(regs.len(), names.len(), "{regs:?}");
    let endpoint = |name: &str| {
        regs.iter()
            .find(|r| r.resource_name == name)
            .unwrap()
            .endpoint
            .clone()
    };
    assert_eq!(
        endpoint("nvidia.com/mig-1g.10gb"),
        "gpu-agent-nvidia.com_mig-1g.10gb.sock"
    );

    let doc = list_json(&["--mock-fixture", fixture]);
    let gpus = doc["gpus"].as_array().unwrap();
    let mig_uuids = |profile: &str| -> Vec<String> {
        gpus[1]["migDevices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["profile"] == profile)
            .map(|m| m["uuid"].as_str().unwrap().to_string())
            .collect()
    };
    let mut small_plugin = Plugin::open(&kubelet, &endpoint("nvidia.com/mig-1g.10gb")).await;
    let small = small_plugin.ids();
    assert_eq!(small, mig_uuids("1g.10gb"));
    assert!(small.iter().all(|id| id.starts_with("MIG-")));
    let big = Plugin::open(&kubelet, &endpoint("nvidia.com/mig-3g.40gb")).await;
    assert_eq!(big.ids(), mig_uuids("3g.40gb"));
    let whole = Plugin::open(&kubelet, &endpoint("nvidia.com/gpu")).await;
    assert_eq!(whole.ids(), [gpus[0]["uuid"].as_str().unwrap()]);

    let r = small_plugin.allocate(&small[1..2]).await.unwrap();
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], small[1]);
    let paths: Vec<&str> = r
        .devices
        .iter()
        .map(|d| d.container_path.as_str())
        .collect();
    assert_eq!(paths.len(), 6, "{paths:?}");
    assert_eq!(
        &paths[..4],
        [
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia1"
        ]
    );
    assert!(
        paths[4..]
            .iter()
            .all(|p| p.starts_with("/dev/nvidia-caps/nvidia-cap")),
        "{paths:?}"
    );
    assert_ne!(paths[4], paths[5]);
}

#[tokio::test]
async fn vgpu_slices_carry_their_limits_and_stay_on_one_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.yaml",
        "sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 20480, computePercent: 25}]}}\n",
    );
    let (kubelet, _agent, reg) = start_registered(dir.path(), &["--config", arg(&config)]).await;
    // Every GPU is cut into slices, so no whole GPU is left to advertise.
    assert_eq!(reg.resource_name, "nvidia.com/gpu.vgpu");
    let mut vgpu = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = vgpu.ids();
    // 81559 MiB / 20480 MiB = 3 slices per GPU.
    assert_eq!(ids.len(), 24);
    let uuid0 = ids[0].split("::").next().unwrap().to_string();
    assert_eq!(ids[..3], [0, 1, 2].map(|n| format!("{uuid0}::vgpu{n}")));

    let r = vgpu.allocate(&ids[0..2]).await.unwrap();
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], uuid0);
    assert_eq!(r.envs["CUDA_DEVICE_MEMORY_LIMIT"], "40960m");
    assert_eq!(r.envs["CUDA_DEVICE_SM_LIMIT"], "50");

    let status = vgpu.allocate(&[&ids[0], &ids[3]]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("different GPUs"),
        "{}",
        status.message()
    );
}

/// A fake driver root: the running 580.95.05 driver's libraries (with their soname links),
/// an older driver's leftovers, nvidia-smi and GSP firmware.
fn fake_driver_root(root: &Path) {
    use std::os::unix::fs::symlink;
    let lib = root.join(format!("usr/lib/{}-linux-gnu", std::env::consts::ARCH));
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("lib/firmware/nvidia/580.95.05")).unwrap();
    for version in ["580.95.05", "570.86.15"] {
        for stem in ["libcuda", "libnvidia-ml"] {
            std::fs::write(lib.join(format!("{stem}.so.{version}")), b"elf").unwrap();
        }
    }
    symlink("libcuda.so.580.95.05", lib.join("libcuda.so.1")).unwrap();
    symlink("libnvidia-ml.so.580.95.05", lib.join("libnvidia-ml.so.1")).unwrap();
    std::fs::write(root.join("usr/bin/nvidia-smi"), b"elf").unwrap();
    std::fs::write(
        root.join("lib/firmware/nvidia/580.95.05/gsp_ga10x.bin"),
        b"fw",
    )
    .unwrap();
}

#[tokio::test]
async fn cdi_strategies_fill_the_response_and_write_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(
        dir.path(),
        "node.yaml",
        &format!("driverVersion: \"580.95.05\"\n{MIG_NODE}"),
    );
    let driver_root = dir.path().join("driver");
    fake_driver_root(&driver_root);
    let config = write_file(
        dir.path(),
        "config.yaml",
        &format!(
            "flags: {{migStrategy: mixed, nvidiaDriverRoot: {}, \
             plugin: {{deviceListStrategy: [cdi-annotations, cdi-cri]}}}}\n",
            driver_root.display()
        ),
    );
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let _agent = Agent::spawn(
        dir.path(),
        &["--mock-fixture", arg(&fixture), "--config", arg(&config)],
    );
    let regs = kubelet
        .registrations_until(&["nvidia.com/gpu", "nvidia.com/mig-1g.10gb"])
        .await;
    let endpoint = |name: &str| {
        regs.iter()
            .find(|r| r.resource_name == name)
            .unwrap()
            .endpoint
            .clone()
    };

    let mut gpu_plugin = Plugin::open(&kubelet, &endpoint("nvidia.com/gpu")).await;
    let gpu = gpu_plugin.ids();
    let r = gpu_plugin.allocate(&gpu).await.unwrap();
    let gpu_name = format!("k8s.gpu-agent.io/gpu={}", gpu[0]);
    assert_eq!(
        r.cdi_devices.iter().map(|d| &d.name).collect::<Vec<_>>(),
        [&gpu_name]
    );
    assert_eq!(
        r.annotations["cdi.k8s.io/gpu-agent_nvidia.com_gpu"],
        gpu_name
    );
    assert!(
        !r.envs.contains_key("NVIDIA_VISIBLE_DEVICES"),
        "{:?}",
        r.envs
    );

    let mut mig_plugin = Plugin::open(&kubelet, &endpoint("nvidia.com/mig-1g.10gb")).await;
    let migs = mig_plugin.ids();
    let r = mig_plugin.allocate(&migs).await.unwrap();
    let mig_names: Vec<String> = migs
        .iter()
        .map(|m| format!("k8s.gpu-agent.io/gpu={m}"))
        .collect();
    assert_eq!(
        r.cdi_devices
            .iter()
            .map(|d| d.name.clone())
            .collect::<Vec<_>>(),
        mig_names
    );
    assert_eq!(
        r.annotations["cdi.k8s.io/gpu-agent_nvidia.com_mig-1g.10gb"],
        mig_names.join(",")
    );

    // The spec names every device handed out, with its nodes.
    let spec_path = dir.path().join("cdi").join("k8s.gpu-agent.io-gpu.json");
    eventually("the CDI spec", || spec_path.exists()).await;
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    assert_eq!(spec["kind"], "k8s.gpu-agent.io/gpu");
    assert_eq!(spec["cdiVersion"], "0.6.0");
    assert_eq!(
        spec["containerEdits"]["env"][0],
        "NVIDIA_VISIBLE_DEVICES=void"
    );
    let devices = spec["devices"].as_array().unwrap();
    for name in std::iter::once(&gpu_name).chain(&mig_names) {
        let id = name.strip_prefix("k8s.gpu-agent.io/gpu=").unwrap();
        let device = devices
            .iter()
            .find(|d| d["name"] == id)
            .unwrap_or_else(|| panic!("{id} not in the spec: {spec:#}"));
        let first_node = &device["containerEdits"]["deviceNodes"][0]["path"];
        let expected = if id == gpu[0] {
            "/dev/nvidia0"
        } else {
            "/dev/nvidia1"
        };
        assert_eq!(first_node, expected);
    }
    // The driver's files, found under nvidiaDriverRoot, in the /usr/local/nvidia layout (no
    // nvidia-ctk in the fake root): the running version only, under its soname.
    let root = driver_root.to_str().unwrap();
    let lib = format!("{root}/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let mounts: Vec<(String, String)> = spec["containerEdits"]["mounts"]
        .as_array()
        .unwrap_or_else(|| panic!("no mounts: {spec:#}"))
        .iter()
        .map(|m| {
            assert_eq!(
                m["options"],
                serde_json::json!(["ro", "nosuid", "nodev", "bind"])
            );
            let s = |k: &str| m[k].as_str().unwrap().to_string();
            (s("hostPath"), s("containerPath"))
        })
        .collect();
    let pair = |host: String, container: &str| (host, container.to_string());
    assert_eq!(
        mounts,
        [
            pair(
                format!("{lib}/libnvidia-ml.so.580.95.05"),
                "/usr/local/nvidia/lib64/libnvidia-ml.so.1"
            ),
            pair(
                format!("{lib}/libcuda.so.580.95.05"),
                "/usr/local/nvidia/lib64/libcuda.so.1"
            ),
            pair(
                format!("{root}/usr/bin/nvidia-smi"),
                "/usr/local/nvidia/bin/nvidia-smi"
            ),
            pair(
                format!("{root}/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin"),
                "/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin"
            ),
        ]
    );
    assert!(spec["containerEdits"].get("hooks").is_none(), "{spec:#}");
}

#[tokio::test]
async fn volume_mounts_and_device_specs_with_index_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.yaml",
        "flags: {plugin: {deviceListStrategy: volume-mounts, deviceIDStrategy: index}}\n",
    );
    // passDeviceSpecs from the flag: flag > config file.
    let args = ["--config", arg(&config), "--pass-device-specs"];
    let (kubelet, _agent, reg) = start_registered(dir.path(), &args).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    // The kubelet sees UUIDs whatever deviceIDStrategy says; the container gets indices.
    let ids = plugin.ids();
    let doc = list_json(&[]);
    let uuids: Vec<&str> = doc["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, uuids);

    let r = plugin.allocate(&[&ids[3], &ids[6]]).await.unwrap();
    assert_eq!(
        r.envs["NVIDIA_VISIBLE_DEVICES"],
        "/var/run/nvidia-container-devices"
    );
    let mounts: Vec<(&str, &str, bool)> = r
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.host_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/var/run/nvidia-container-devices/3", "/dev/null", true),
            ("/var/run/nvidia-container-devices/6", "/dev/null", true),
        ]
    );
    let specs: Vec<(&str, &str, &str)> = r
        .devices
        .iter()
        .map(|d| {
            (
                d.container_path.as_str(),
                d.host_path.as_str(),
                d.permissions.as_str(),
            )
        })
        .collect();
    assert_eq!(
        specs,
        [
            ("/dev/nvidiactl", "/dev/nvidiactl", "rw"),
            ("/dev/nvidia-uvm", "/dev/nvidia-uvm", "rw"),
            ("/dev/nvidia-uvm-tools", "/dev/nvidia-uvm-tools", "rw"),
            ("/dev/nvidia3", "/dev/nvidia3", "rw"),
            ("/dev/nvidia6", "/dev/nvidia6", "rw"),
        ]
    );
    // No CDI strategy: no spec file.
    assert!(!dir.path().join("cdi").exists());
}
