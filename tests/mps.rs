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

/// The whole flow with both binaries: `gpu-agent mps-control` (stand-ins for
/// nvidia-cuda-mps-control and nvidia-smi on PATH) runs the daemon the config asks for, and the
/// agent's replicas follow it: Healthy once it is up, Unhealthy when it dies, Healthy again
/// once mps-control has restarted it.
#[tokio::test]
async fn replicas_follow_the_daemon_mps_control_runs_through_death_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mps_root = dir.path().join("mps");
    let config = write_file(
        dir.path(),
        "config.yaml",
        "version: v1\nsharing:\n  mps:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2}\n",
    );
    let stand_ins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mps");
    let path = format!(
        "{}:{}",
        stand_ins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let control = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
        .args([
            "mps-control",
            "--backend",
            "mock",
            "--probe-interval",
            "300ms",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--mps-root")
        .arg(&mps_root)
        .env("PATH", &path)
        .env(
            "NVIDIA_SMI_STANDIN_LOG",
            dir.path().join("nvidia-smi.calls"),
        )
        .env_remove("MPS_ROOT")
        .env_remove("CONFIG_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn mps-control");
    struct Stop(std::process::Child, std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let pid = std::fs::read_to_string(&self.1).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill(2) on the stand-in daemon this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let pid_file = mps_root.join("nvidia.com/gpu/pipe/nvidia-cuda-mps-control.pid");
    let _control = Stop(control, pid_file.clone());
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let _agent = Agent::spawn(
        dir.path(),
        &["--config", arg(&config), "--mps-root", arg(&mps_root)],
    );
    let reg = kubelet.next_registration().await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    plugin
        .until("every replica Healthy once the daemon is up", |d| {
            d.len() == 16 && unhealthy(d).is_empty()
        })
        .await;
    let first: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the stand-in daemon.
    unsafe { libc::kill(first, libc::SIGKILL) };
    plugin
        .until("every replica Unhealthy while the daemon is down", |d| {
            unhealthy(d).len() == 16
        })
        .await;
    plugin
        .until("Healthy again once mps-control restarted it", |d| {
            unhealthy(d).is_empty()
        })
        .await;
    let second: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(first, second, "a new daemon");
}
