//! MPS sharing through a test kubelet against the real binary (mock backend): NVIDIA's
//! replicas, Allocate's pipe directory and mounts, and readiness: replicas are Unhealthy while
//! the resource's daemon marker (`<MPS_ROOT>/<resource>/.started`) is missing, Healthy while it
//! is there.

mod common;

use common::*;

#[tokio::test]
async fn mps_replicas_follow_their_daemons_readiness_and_carry_the_pipe_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mps_root = dir.path().join("mps");
    let config = write_file(
        dir.path(),
        "config.yaml",
        "version: v1\nsharing:\n  mps:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2}\n",
    );
    let mut kubelet = TestKubelet::start(dir.path()).await;
    // MPS_ROOT from the environment, as NVIDIA's DaemonSet sets it.
    let _agent = Agent::spawn_with_env(
        dir.path(),
        &["--config", arg(&config)],
        &[("MPS_ROOT", arg(&mps_root))],
    );
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;

    // No daemon yet: every replica is advertised, none is usable.
    let ids = plugin.ids();
    assert_eq!(ids.len(), 16);
    let doc = list_json(&[]);
    let uuid0 = doc["gpus"][0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(ids[1], format!("{uuid0}::1"));
    plugin
        .until("every replica Unhealthy", |d| unhealthy(d).len() == 16)
        .await;
    let refused = plugin.allocate(&ids[0..1]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // The daemon is up: replicas Healthy, Allocate hands out NVIDIA's env and mounts.
    let resource_dir = mps_root.join("nvidia.com").join("gpu");
    std::fs::create_dir_all(&resource_dir).unwrap();
    std::fs::write(resource_dir.join(".started"), "").unwrap();
    plugin
        .until("every replica Healthy", |d| unhealthy(d).is_empty())
        .await;
    let r = plugin.allocate(&ids[1..2]).await.unwrap();
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], uuid0);
    assert_eq!(
        r.envs["CUDA_MPS_PIPE_DIRECTORY"],
        "/mps/nvidia.com/gpu/pipe"
    );
    let mounts: Vec<(String, String)> = r
        .mounts
        .iter()
        .map(|m| (m.container_path.clone(), m.host_path.clone()))
        .collect();
    assert_eq!(
        mounts,
        [
            (
                "/mps/nvidia.com/gpu/pipe".to_string(),
                resource_dir.join("pipe").display().to_string()
            ),
            (
                "/dev/shm".to_string(),
                mps_root.join("shm").display().to_string()
            ),
        ]
    );
    // failRequestsGreaterThanOne is on for MPS unless the config turns it off.
    let two = plugin.allocate(&ids[2..4]).await.unwrap_err();
    assert!(
        two.message().contains("failRequestsGreaterThanOne"),
        "{}",
        two.message()
    );

    // The daemon goes away: Unhealthy again, then Healthy when it is back.
    std::fs::remove_file(resource_dir.join(".started")).unwrap();
    plugin
        .until("every replica Unhealthy again", |d| {
            unhealthy(d).len() == 16
        })
        .await;
    std::fs::write(resource_dir.join(".started"), "").unwrap();
    plugin
        .until("every replica Healthy again", |d| unhealthy(d).is_empty())
        .await;
}

#[tokio::test]
async fn mps_added_by_a_reload_is_unhealthy_until_its_daemon_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mps_root = dir.path().join("mps");
    let config = write_file(dir.path(), "config.yaml", "version: v1\n");
    let (kubelet, _agent, reg) = start_registered(
        dir.path(),
        &["--config", arg(&config), "--mps-root", arg(&mps_root)],
    )
    .await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    assert_eq!(plugin.ids().len(), 8);

    write_file(
        dir.path(),
        "config.yaml",
        "version: v1\nsharing:\n  mps:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2}\n",
    );
    // Never advertised Healthy before the daemon is seen.
    let devices = plugin
        .until("the replicas", |d| d.len() == 16)
        .await
        .to_vec();
    assert_eq!(unhealthy(&devices).len(), 16);

    let resource_dir = mps_root.join("nvidia.com").join("gpu");
    std::fs::create_dir_all(&resource_dir).unwrap();
    std::fs::write(resource_dir.join(".started"), "").unwrap();
    plugin
        .until("every replica Healthy", |d| {
            d.len() == 16 && unhealthy(d).is_empty()
        })
        .await;
}
