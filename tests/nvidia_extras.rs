//! NVIDIA's extra Allocate effects through the real binary on the mock backend and the test
//! kubelet: `deviceIDStrategy: index` (UUIDs advertised, indices handed over), GDS / MOFED /
//! GDRCopy and IMEX channels.
//!
//! The node's device nodes are faked under `flags.plugin.containerDriverRoot`: a root with a
//! `dev` directory is where the agent reads device nodes (NVIDIA's dev-root rule), and a symlink
//! to `/dev/null` is a character device to `stat`.
//!
//! The features are switched on through NVIDIA's config keys `flags.gdsEnabled`,
//! `flags.mofedEnabled`, `flags.gdrcopyEnabled` and `imex.channelIDs` / `imex.required`.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A fake node root under `dir`, with the character devices `devices` (container paths) and the
/// regular files `files`.
fn node_root(dir: &Path, devices: &[&str], files: &[&str]) -> PathBuf {
    let root = dir.join("node");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    for (paths, device) in [(devices, true), (files, false)] {
        for inner in paths {
            let path = root.join(inner.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            if device {
                symlink("/dev/null", &path).unwrap();
            } else {
                std::fs::write(&path, b"{}").unwrap();
            }
        }
    }
    root
}

fn gpu_uuids(args: &[&str]) -> Vec<String> {
    list_json(args)["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap().to_string())
        .collect()
}

fn cdi_names(r: &gpu_agent::proto::v1beta1::ContainerAllocateResponse) -> Vec<&str> {
    r.cdi_devices.iter().map(|d| d.name.as_str()).collect()
}

fn read_spec(dir: &Path, class: &str) -> serde_json::Value {
    let path = dir
        .join("cdi")
        .join(format!("k8s.gpu-agent.io-{class}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn index_strategy_advertises_uuids_and_hands_the_container_indices() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.yaml",
        "version: v1\nflags:\n  plugin:\n    deviceIDStrategy: index\n    deviceListStrategy: [envvar, cdi-cri]\nsharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: 2}]\n",
    );
    let args = ["--config", arg(&config)];
    let (kubelet, _agent, reg) = start_registered(dir.path(), &args).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;

    // The kubelet sees `<uuid>::<n>`, never an index.
    let uuids = gpu_uuids(&[]);
    let ids = plugin.ids();
    let expected: Vec<String> = uuids
        .iter()
        .flat_map(|u| [format!("{u}::0"), format!("{u}::1")])
        .collect();
    assert_eq!(ids, expected);
    // So does `list --output json` with the same config.
    let doc = list_json(&args);
    let listed: Vec<&str> = doc["resources"][0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids);

    // The container gets indices: replicas of one GPU once, in the kubelet's order.
    let picked = [
        format!("{}::1", uuids[3]),
        format!("{}::0", uuids[1]),
        format!("{}::0", uuids[3]),
    ];
    let r = plugin.allocate(&picked).await.unwrap();
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], "3,1");
    assert_eq!(
        cdi_names(&r),
        ["k8s.gpu-agent.io/gpu=3", "k8s.gpu-agent.io/gpu=1"]
    );
    // The CDI spec defines the index names handed out.
    let spec = read_spec(dir.path(), "gpu");
    let defined: Vec<&str> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(
        defined.contains(&"3") && defined.contains(&"1"),
        "{defined:?}"
    );

    // An index is not an advertised ID.
    let status = plugin.allocate(&["3::0"]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("3::0"), "{}", status.message());
}

#[tokio::test]
async fn gds_mofed_and_gdrcopy_set_their_env_and_cdi_devices() {
    let dir = tempfile::tempdir().unwrap();
    let root = node_root(
        dir.path(),
        &[
            "/dev/nvidia-fs0",
            "/dev/infiniband/uverbs0",
            "/dev/infiniband/rdma_cm",
            "/dev/gdrdrv",
        ],
        &["/etc/cufile.json"],
    );
    let config = write_file(
        dir.path(),
        "config.yaml",
        &format!(
            "version: v1\nflags:\n  gdsEnabled: true\n  mofedEnabled: true\n  gdrcopyEnabled: true\n  plugin:\n    deviceIDStrategy: index\n    deviceListStrategy: [envvar, cdi-cri]\n    containerDriverRoot: {}\n",
            root.display()
        ),
    );
    let (kubelet, _agent, reg) = start_registered(dir.path(), &["--config", arg(&config)]).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    assert!(ids.iter().all(|id| id.starts_with("GPU-")), "{ids:?}");

    let r = plugin.allocate(&ids[..1]).await.unwrap();
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], "0");
    for env in ["NVIDIA_GDS", "NVIDIA_MOFED", "NVIDIA_GDRCOPY"] {
        assert_eq!(r.envs[env], "enabled", "{env}: {:?}", r.envs);
    }
    assert_eq!(
        cdi_names(&r),
        [
            "k8s.gpu-agent.io/gpu=0",
            "k8s.gpu-agent.io/gdrcopy=all",
            "k8s.gpu-agent.io/gds=all",
            "k8s.gpu-agent.io/mofed=all",
        ]
    );
    let gds = read_spec(dir.path(), "gds");
    assert_eq!(gds["kind"], "k8s.gpu-agent.io/gds");
    let edits = &gds["devices"][0]["containerEdits"];
    assert_eq!(gds["devices"][0]["name"], "all");
    assert_eq!(edits["deviceNodes"][0]["path"], "/dev/nvidia-fs0");
    assert_eq!(edits["mounts"][0]["containerPath"], "/etc/cufile.json");
    let mofed = read_spec(dir.path(), "mofed");
    let nodes: Vec<&str> = mofed["devices"][0]["containerEdits"]["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        ["/dev/infiniband/uverbs0", "/dev/infiniband/rdma_cm"]
    );
    assert_eq!(
        read_spec(dir.path(), "gdrcopy")["devices"][0]["containerEdits"]["deviceNodes"][0]["path"],
        "/dev/gdrdrv"
    );
}

#[tokio::test]
async fn a_feature_without_devices_sets_its_env_but_names_no_cdi_device() {
    let dir = tempfile::tempdir().unwrap();
    let root = node_root(dir.path(), &[], &["/etc/cufile.json"]);
    let config = write_file(
        dir.path(),
        "config.yaml",
        &format!(
            "version: v1\nflags:\n  gdsEnabled: true\n  plugin:\n    deviceListStrategy: cdi-cri\n    containerDriverRoot: {}\n",
            root.display()
        ),
    );
    let (kubelet, agent, reg) = start_registered(dir.path(), &["--config", arg(&config)]).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    let r = plugin.allocate(&ids[..1]).await.unwrap();
    // Pure CDI still carries the switch, as NVIDIA's plugin does.
    assert_eq!(r.envs["NVIDIA_GDS"], "enabled");
    assert_eq!(cdi_names(&r), [format!("k8s.gpu-agent.io/gpu={}", ids[0])]);
    assert!(!dir.path().join("cdi/k8s.gpu-agent.io-gds.json").exists());
    eventually("the absence to be logged", || {
        agent
            .logs()
            .contains("none of its device nodes is on this node")
    })
    .await;
}

#[tokio::test]
async fn an_imex_channel_is_handed_to_every_container() {
    let dir = tempfile::tempdir().unwrap();
    let root = node_root(
        dir.path(),
        &["/dev/nvidia-caps-imex-channels/channel0"],
        &[],
    );
    let config = write_file(
        dir.path(),
        "config.yaml",
        &format!(
            "version: v1\nflags:\n  plugin:\n    passDeviceSpecs: true\n    deviceListStrategy: [envvar, volume-mounts, cdi-annotations]\n    containerDriverRoot: {}\nimex:\n  channelIDs: [0]\n  required: true\n",
            root.display()
        ),
    );
    let (kubelet, _agent, reg) = start_registered(dir.path(), &["--config", arg(&config)]).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    let r = plugin.allocate(&ids[..1]).await.unwrap();
    assert_eq!(r.envs["NVIDIA_IMEX_CHANNELS"], "0");
    assert!(
        r.mounts.iter().any(
            |m| m.container_path == "/var/run/nvidia-container-devices/imex/0"
                && m.host_path == "/dev/null"
                && m.read_only
        ),
        "{:?}",
        r.mounts
    );
    let spec = r
        .devices
        .iter()
        .find(|d| d.container_path == "/dev/nvidia-caps-imex-channels/channel0")
        .expect("IMEX device spec");
    assert_eq!(spec.host_path, "/dev/nvidia-caps-imex-channels/channel0");
    assert_eq!(spec.permissions, "rw");
    assert_eq!(
        r.annotations["cdi.k8s.io/gpu-agent_nvidia.com_gpu"],
        format!(
            "k8s.gpu-agent.io/gpu={},k8s.gpu-agent.io/imex-channel=0",
            ids[0]
        )
    );
    let imex = read_spec(dir.path(), "imex-channel");
    assert_eq!(imex["devices"][0]["name"], "0");
    assert_eq!(
        imex["devices"][0]["containerEdits"]["deviceNodes"][0]["path"],
        "/dev/nvidia-caps-imex-channels/channel0"
    );
}

#[test]

fn a_missing_required_imex_channel_stops_the_agent_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = node_root(dir.path(), &[], &[]);
    let config = write_file(
        dir.path(),
        "config.yaml",
        &format!(
            "version: v1\nflags:\n  plugin:\n    containerDriverRoot: {}\nimex:\n  channelIDs: [0]\n  required: true\n",
            root.display()
        ),
    );
    let mut agent = Agent::spawn(dir.path(), &["--config", arg(&config)]);
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .expect("the agent should refuse to start");
    assert_eq!(status.code(), Some(1), "{}", agent.logs());
    let logs = agent.logs();
    assert!(
        logs.contains("requested IMEX channel channel0 does not exist")
            && logs.contains("dev/nvidia-caps-imex-channels/channel0"),
        "{logs}"
    );
}
