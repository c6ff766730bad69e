//! GetPreferredAllocation through the real binary: NVLink islands from a fixture, packed
//! replicas from the config, and a GPU lost while the kubelet still offers it.

mod common;

use common::*;

/// 8 GPUs in two interleaved NVLink islands, {0,2,4,6} and {1,3,5,7}, on one NUMA node; GPU 4
/// is lost when `lost4` is set.
fn fixture(lost4: bool) -> String {
    let mut out = String::from("gpus:\n");
    for i in 0..8u32 {
        let peers: Vec<String> = (0..8u32)
            .filter(|&p| p != i && p % 2 == i % 2)
            .map(|p| format!("{p}: 12"))
            .collect();
        let lost = if lost4 && i == 4 { ", lost: true" } else { "" };
        out.push_str(&format!(
            "  - {{model: NVIDIA H100 80GB HBM3, numaNode: 0, nvlink: {{{}}}{lost}}}\n",
            peers.join(", ")
        ));
    }
    out
}

#[tokio::test]
async fn whole_gpus_follow_nvlink_islands_and_survive_a_lost_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let fixture_path = write_file(dir.path(), "node.yaml", &fixture(false));
    let args = [
        "--mock-fixture",
        arg(&fixture_path),
        "--device-id-strategy",
        "index",
    ];
    let (kubelet, _agent, reg) = start_registered(dir.path(), &args).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    // deviceIDStrategy index: the kubelet still sees UUIDs, in GPU index order.
    let ids = plugin.ids();
    assert_eq!(ids.len(), 8);
    assert!(ids.iter().all(|id| id.starts_with("GPU-")), "{ids:?}");
    let index = |got: &[String]| -> Vec<usize> {
        got.iter()
            .map(|id| ids.iter().position(|i| i == id).unwrap())
            .collect()
    };
    let sorted = |got: &[String]| {
        let mut v = index(got);
        v.sort_unstable();
        v
    };

    let got = plugin.preferred(&ids, &[], 4).await;
    assert_eq!(sorted(&got), [0, 2, 4, 6]);
    let got = plugin.preferred(&ids, &[ids[5].clone()], 2).await;
    assert_eq!(index(&got), [5, 1]);

    // GPU 4 falls off the bus. Once the agent has seen it, it is not picked even though this
    // kubelet still offers it, and the call still answers from the remaining GPUs.
    replace_file(&fixture_path, &fixture(true));
    let gpu4 = ids[4].clone();
    plugin
        .until("GPU 4 unhealthy", |devices| {
            devices
                .iter()
                .any(|d| d.id == gpu4 && d.health == "Unhealthy")
        })
        .await;
    let got = plugin.preferred(&ids, &[], 4).await;
    assert_eq!(sorted(&got), [1, 3, 5, 7]);
    let got = plugin.preferred(&ids, &[ids[6].clone()], 3).await;
    assert_eq!(index(&got), [6, 0, 2]);
}

#[tokio::test]
async fn replicas_pack_when_the_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "config.yaml",
        "version: v1\nsharing:\n  placement: packed\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: 4}]\n",
    );
    let (kubelet, _agent, reg) = start_registered(dir.path(), &["--config", arg(&config)]).await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    assert_eq!(ids.len(), 32);

    let got = plugin.preferred(&ids, &[], 3).await;
    assert_eq!(got.len(), 3);
    let gpus: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|id| id.split("::").next().unwrap())
        .collect();
    assert_eq!(gpus.len(), 1, "packed onto one GPU: {got:?}");
}
