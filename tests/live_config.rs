//! Live reconfiguration through a test kubelet against the real binary: config file edits
//! (resources added, removed, kept with their sockets and streams), invalid edits, SIGHUP, and a
//! MIG re-partition on the mock fixture — all without a restart.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use gpu_agent::proto::v1beta1::RegisterRequest;

const GPU_SOCK: &str = "gpu-agent-nvidia.com_gpu.sock";
const SHARED_SOCK: &str = "gpu-agent-nvidia.com_gpu.shared.sock";

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

/// Registrations that arrive within `window` (none expected to be for `resource`).
async fn assert_no_registration_of(
    kubelet: &mut TestKubelet,
    resource: &str,
    seen: &[RegisterRequest],
) {
    assert!(
        seen.iter().all(|r| r.resource_name != resource),
        "{resource} registered again: {seen:?}"
    );
    while let Some(reg) = kubelet.registration_within(Duration::from_secs(1)).await {
        assert_ne!(reg.resource_name, resource, "{resource} registered again");
    }
}

const SHARED_6_7: &str = "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 2, devices: [6, 7]}\n";

/// The agent on SHARED_6_7 (the config file's path returned, to edit), once nvidia.com/gpu and
/// nvidia.com/gpu.shared have registered.
async fn start_shared(dir: &Path) -> (PathBuf, TestKubelet, Agent) {
    let config = write_file(dir, "config.yaml", SHARED_6_7);
    let mut kubelet = TestKubelet::start(dir).await;
    let agent = Agent::spawn(dir, &["--config", arg(&config)]);
    kubelet
        .registrations_until(&["nvidia.com/gpu", "nvidia.com/gpu.shared"])
        .await;
    (config, kubelet, agent)
}

#[tokio::test]
async fn config_edits_add_and_remove_resources_and_keep_unchanged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mut kubelet, agent) = start_shared(dir.path()).await;
    let gpu_socket = plugin_dir(dir.path()).join(GPU_SOCK);
    let shared_socket = plugin_dir(dir.path()).join(SHARED_SOCK);
    let gpu_inode = inode(&gpu_socket);
    let mut gpu = Plugin::open(&kubelet, GPU_SOCK).await;
    assert_eq!(gpu.devices.len(), 6);

    // The same two GPUs move from time-slicing to vGPU: nvidia.com/gpu keeps its six GPUs.
    replace_file(
        &config,
        "version: v1\nsharing:\n  vgpu:\n    resources:\n      - {name: nvidia.com/gpu, rename: nvidia.com/vgpu, memoryMiB: 40000, devices: [6, 7]}\n",
    );
    let seen = kubelet.registrations_until(&["nvidia.com/vgpu"]).await;
    eventually("the removed resource's socket to go", || {
        !shared_socket.exists()
    })
    .await;
    assert_no_registration_of(&mut kubelet, "nvidia.com/gpu", &seen).await;
    assert_eq!(
        inode(&gpu_socket),
        gpu_inode,
        "nvidia.com/gpu was re-served"
    );
    let mut vgpu = Plugin::open(&kubelet, "gpu-agent-nvidia.com_vgpu.sock").await;
    assert_eq!(vgpu.devices.len(), 4);

    // A change that does touch nvidia.com/gpu arrives on the stream opened before the edits.
    replace_file(
        &config,
        "version: v1\nsharing:\n  vgpu:\n    resources:\n      - {name: nvidia.com/gpu, rename: nvidia.com/vgpu, memoryMiB: 40000, devices: [5, 6, 7]}\n",
    );
    assert_eq!(gpu.next().await.len(), 5);
    assert_eq!(vgpu.next().await.len(), 6);
    assert_no_registration_of(&mut kubelet, "nvidia.com/gpu", &[]).await;
    assert_eq!(inode(&gpu_socket), gpu_inode);
    assert!(agent.logs().contains("config applied"), "{}", agent.logs());
}

#[tokio::test]
async fn invalid_edits_change_nothing_and_sighup_re_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mut kubelet, agent) = start_shared(dir.path()).await;
    let shared_socket = plugin_dir(dir.path()).join(SHARED_SOCK);
    let inodes = (
        inode(&plugin_dir(dir.path()).join(GPU_SOCK)),
        inode(&shared_socket),
    );
    let mut shared = Plugin::open(&kubelet, SHARED_SOCK).await;
    assert_eq!(shared.devices.len(), 4);

    // An error (and an unknown field, which alone would only be a warning): nothing changes.
    replace_file(
        &config,
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 1, colour: red, devices: [6, 7]}\n",
    );
    eventually("the rejection in the log", || {
        let logs = agent.logs();
        logs.contains("invalid config rejected")
            && logs.contains(
                "sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2, got 1",
            )
    })
    .await;
    assert_no_registration_of(&mut kubelet, "nvidia.com/gpu.shared", &[]).await;
    assert_eq!(
        (
            inode(&plugin_dir(dir.path()).join(GPU_SOCK)),
            inode(&shared_socket)
        ),
        inodes
    );

    // A config that parses but cannot be built on this node (the first 7 GPUs and GPU 6 overlap
    // only once the node's GPUs are known) is refused too.
    replace_file(
        &config,
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 2, devices: 7}\n      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.other, replicas: 2, devices: [6]}\n",
    );
    eventually("the node-level rejection in the log", || {
        agent
            .logs()
            .contains("config cannot be applied on this node")
    })
    .await;

    // Back to the running config (applied again, resources unchanged). Then SIGHUP forces a
    // re-read of the same file, which says so.
    let applied = |logs: &str| logs.matches("config applied").count();
    let before = applied(&agent.logs());
    replace_file(&config, SHARED_6_7);
    eventually("the restored config to be applied", || {
        applied(&agent.logs()) > before
    })
    .await;
    assert!(!agent.logs().contains("config unchanged"));
    agent.signal(libc::SIGHUP);
    eventually("the SIGHUP re-read", || {
        let logs = agent.logs();
        logs.contains("re-reading the config") && logs.contains("config unchanged")
    })
    .await;
    assert_eq!(
        (
            inode(&plugin_dir(dir.path()).join(GPU_SOCK)),
            inode(&shared_socket)
        ),
        inodes
    );

    // The stream opened at the start is still served: a valid edit reaches it.
    replace_file(
        &config,
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 3, devices: [6, 7]}\n",
    );
    assert_eq!(shared.next().await.len(), 6);
}

fn mig_fixture(profiles: &str) -> String {
    format!(
        "gpus:\n  - {{model: NVIDIA H100 80GB HBM3}}\n  - {{model: NVIDIA H100 80GB HBM3, mig: {{devices: [{profiles}]}}}}\n"
    )
}

#[tokio::test]
async fn mig_repartition_is_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(dir.path(), "node.yaml", &mig_fixture("3g.40gb, 3g.40gb"));
    let config = write_file(
        dir.path(),
        "config.yaml",
        "flags: {migStrategy: mixed, plugin: {deviceListStrategy: [envvar, cdi-cri]}}\n",
    );
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let _agent = Agent::spawn(
        dir.path(),
        &["--mock-fixture", arg(&fixture), "--config", arg(&config)],
    );
    kubelet
        .registrations_until(&["nvidia.com/gpu", "nvidia.com/mig-3g.40gb"])
        .await;
    let gpu_inode = inode(&plugin_dir(dir.path()).join(GPU_SOCK));
    let big_socket = plugin_dir(dir.path()).join("gpu-agent-nvidia.com_mig-3g.40gb.sock");
    assert!(big_socket.exists());

    replace_file(
        &fixture,
        &mig_fixture("1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb"),
    );
    let seen = kubelet
        .registrations_until(&["nvidia.com/mig-1g.10gb"])
        .await;
    eventually("the old profile's socket to go", || !big_socket.exists()).await;
    assert_no_registration_of(&mut kubelet, "nvidia.com/gpu", &seen).await;
    assert_eq!(inode(&plugin_dir(dir.path()).join(GPU_SOCK)), gpu_inode);

    let small = Plugin::open(&kubelet, "gpu-agent-nvidia.com_mig-1g.10gb.sock").await;
    let migs = small.ids();
    assert_eq!(migs.len(), 7);

    // The CDI spec follows the new layout.
    let spec_path = dir.path().join("cdi").join("k8s.gpu-agent.io-gpu.json");
    eventually("the CDI spec to name the new MIG devices", || {
        let Ok(bytes) = std::fs::read(&spec_path) else {
            return false;
        };
        let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return false;
        };
        let names: Vec<&str> = spec["devices"]
            .as_array()
            .map(|d| d.iter().filter_map(|d| d["name"].as_str()).collect())
            .unwrap_or_default();
        migs.iter().all(|m| names.contains(&m.as_str()))
    })
    .await;
}
