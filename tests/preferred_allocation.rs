//! GetPreferredAllocation through the real binary: NVLink islands from a fixture, packed
//! replicas from the config, and a GPU lost while the kubelet still offers it.

mod common;

use std::path::Path;

use common::*;
use gpu_agent::proto::v1beta1::{
    device_plugin_client::DevicePluginClient, ContainerPreferredAllocationRequest,
    PreferredAllocationRequest,
};
use tonic::transport::Channel;

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

async fn preferred(
    plugin: &mut DevicePluginClient<Channel>,
    available: &[String],
    must: &[String],
    size: i32,
) -> Vec<String> {
    let response = plugin
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: available.to_vec(),
                must_include_device_i_ds: must.to_vec(),
                allocation_size: size,
            }],
        })
        .await
        .expect("GetPreferredAllocation never fails")
        .into_inner();
    response.container_responses[0].device_i_ds.clone()
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn whole_gpus_follow_nvlink_islands_and_survive_a_lost_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let fixture_path = dir.path().join("node.yaml");
    write(&fixture_path, &fixture(false));
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let fixture_arg = fixture_path.to_string_lossy().into_owned();
    let _agent = Agent::spawn(
        dir.path(),
        &[
            "--mock-fixture",
            &fixture_arg,
            "--device-id-strategy",
            "index",
        ],
    );
    let reg = kubelet.next_registration().await;
    let mut plugin = kubelet.plugin(&reg.endpoint).await;
    let mut stream = list_and_watch(&mut plugin).await;
    let ids: Vec<String> = next_list(&mut stream)
        .await
        .devices
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "7"]);

    let mut got = preferred(&mut plugin, &ids, &[], 4).await;
    got.sort();
    assert_eq!(got, ["0", "2", "4", "6"]);
    let got = preferred(&mut plugin, &ids, &["5".to_string()], 2).await;
    assert_eq!(got, ["5", "1"]);

    // GPU 4 falls off the bus. Once the agent has seen it, it is not picked even though this
    // kubelet still offers it, and the call still answers from the remaining GPUs.
    write(&fixture_path, &fixture(true));
    loop {
        let list = next_list(&mut stream).await;
        if list
            .devices
            .iter()
            .any(|d| d.id == "4" && d.health == "Unhealthy")
        {
            break;
        }
    }
    let mut got = preferred(&mut plugin, &ids, &[], 4).await;
    got.sort();
    assert_eq!(got, ["1", "3", "5", "7"]);
    let got = preferred(&mut plugin, &ids, &["6".to_string()], 3).await;
    assert_eq!(got, ["6", "0", "2"]);
}

#[tokio::test]
async fn replicas_pack_when_the_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    write(
        &config,
        "version: v1\nsharing:\n  placement: packed\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: 4}]\n",
    );
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let config_arg = config.to_string_lossy().into_owned();
    let _agent = Agent::spawn(dir.path(), &["--config", &config_arg]);
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    let mut plugin = kubelet.plugin(&reg.endpoint).await;
    let mut stream = list_and_watch(&mut plugin).await;
    let ids: Vec<String> = next_list(&mut stream)
        .await
        .devices
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids.len(), 32);

    let got = preferred(&mut plugin, &ids, &[], 3).await;
    assert_eq!(got.len(), 3);
    let gpus: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|id| id.split("::").next().unwrap())
        .collect();
    assert_eq!(gpus.len(), 1, "packed onto one GPU: {got:?}");
}
