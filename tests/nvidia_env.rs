//! Every env var and flag NVIDIA's device plugin reads (`cmd/nvidia-device-plugin/main.go`), set
//! the way NVIDIA's helm chart and DaemonSets set them, on the real binary: each is accepted, and
//! where the mock backend can show its effect, the effect is NVIDIA's. Also the binary run under
//! NVIDIA's name, `nvidia-device-plugin`.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const TIME_SLICED: &str =
    "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2}\n";

/// Resource name → device count, from `list --backend mock --output json` under `env`.
fn advertised(args: &[&str], env: &[(&str, &str)]) -> Vec<(String, usize)> {
    let (code, out, err) = run_cli_env(
        &[&["list", "--backend", "mock", "--output", "json"], args].concat(),
        env,
    );
    assert_eq!(code, 0, "{env:?}: {err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut v: Vec<(String, usize)> = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["devices"].as_array().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

fn mixed_node() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/mixed-node.yaml")
        .display()
        .to_string()
}

#[test]
fn inventory_env_vars_take_effect_in_list() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "config.yaml", TIME_SLICED);
    let gpu = |n| vec![("nvidia.com/gpu".to_string(), n)];
    assert_eq!(advertised(&[], &[("CONFIG_FILE", arg(&config))]), gpu(16));
    assert_eq!(advertised(&["--config-file", arg(&config)], &[]), gpu(16));
    let mixed = mixed_node();
    assert_eq!(
        advertised(&["--mock-fixture", &mixed], &[("MIG_STRATEGY", "mixed")]),
        [
            ("nvidia.com/gpu".to_string(), 5),
            ("nvidia.com/mig-1g.10gb".to_string(), 2),
            ("nvidia.com/mig-2g.20gb".to_string(), 1),
            ("nvidia.com/mig-3g.40gb".to_string(), 1),
        ]
    );
    // Flag > env > file: the env var wins over the file's migStrategy, the flag over the env.
    let single = write_file(dir.path(), "single.yaml", "flags: {migStrategy: single}\n");
    assert_eq!(
        advertised(
            &["--mock-fixture", &mixed, "--config", arg(&single)],
            &[("MIG_STRATEGY", "none")]
        ),
        gpu(6)
    );
    // DEVICE_ID_STRATEGY=index keeps UUID-based IDs for the kubelet.
    let (_, out, _) = run_cli_env(
        &["list", "--backend", "mock", "--output", "json"],
        &[("DEVICE_ID_STRATEGY", "index")],
    );
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = doc["resources"][0]["devices"][0]["id"].as_str().unwrap();
    assert!(id.starts_with("GPU-"), "{id}");
    // An env var set to "" is unset, not an error.
    assert_eq!(
        advertised(&[], &[("DEVICE_ID_STRATEGY", ""), ("MIG_STRATEGY", "")]),
        gpu(8)
    );
}

#[test]
fn every_nvidia_env_var_is_accepted_and_bad_values_are_refused() {
    let accepted: &[(&str, &str)] = &[
        ("MIG_STRATEGY", "single"),
        ("FAIL_ON_INIT_ERROR", "false"),
        ("NVIDIA_DRIVER_ROOT", "/run/nvidia/driver"),
        ("NVIDIA_DEV_ROOT", "/run/nvidia/driver"),
        ("PASS_DEVICE_SPECS", "true"),
        ("DEVICE_LIST_STRATEGY", "envvar, volume-mounts"),
        ("DEVICE_ID_STRATEGY", "uuid"),
        ("GDRCOPY_ENABLED", "true"),
        ("GDS_ENABLED", "false"),
        ("MOFED_ENABLED", "true"),
        ("CDI_ANNOTATION_PREFIX", "cdi.k8s.io/"),
        (
            "NVIDIA_CDI_HOOK_PATH",
            "/usr/local/nvidia/toolkit/nvidia-cdi-hook",
        ),
        ("NVIDIA_CTK_PATH", "/usr/bin/nvidia-ctk"),
        ("DRIVER_ROOT_CTR_PATH", "/driver-root"),
        ("CONTAINER_DRIVER_ROOT", "/driver-root"),
        ("MPS_ROOT", "/run/nvidia/mps"),
        ("SHARED_DEVICES_ALLOCATION_POLICY", "packed"),
        ("DEVICE_DISCOVERY_STRATEGY", "nvml"),
        ("IMEX_CHANNEL_IDS", "0"),
        ("IMEX_REQUIRED", "false"),
        (
            "KUBELET_SOCKET",
            "/var/lib/kubelet/device-plugins/kubelet.sock",
        ),
        ("CDI_FEATURE_FLAGS", "disable-multiple-csv-devices"),
        ("CDI_DISABLE_HOOKS", "all"),
        ("DP_DISABLE_HEALTHCHECKS", "xids"),
        ("DP_ENABLE_HEALTHCHECKS", "48"),
    ];
    for &(name, value) in accepted {
        let (code, _, err) = run_cli_env(&["list", "--backend", "mock"], &[(name, value)]);
        assert_eq!(code, 0, "{name}={value}: {err}");
    }
    let refused: &[(&str, &str, &str)] = &[
        ("MIG_STRATEGY", "some", "some"),
        ("DEVICE_LIST_STRATEGY", "envvar,cdi", "cdi"),
        ("DEVICE_ID_STRATEGY", "name", "name"),
        (
            "SHARED_DEVICES_ALLOCATION_POLICY",
            "spread",
            "distributed or packed",
        ),
        ("DEVICE_DISCOVERY_STRATEGY", "pci", "pci"),
        ("IMEX_CHANNEL_IDS", "0, 1", "channel IDs must be [] or [0]"),
        ("NVIDIA_DRIVER_ROOT", "run/nvidia/driver", "absolute"),
    ];
    for &(name, value, says) in refused {
        let (code, _, err) = run_cli_env(&["list", "--backend", "mock"], &[(name, value)]);
        assert_eq!(code, 2, "{name}={value} was accepted");
        assert!(err.contains(says), "{name}={value}: {err}");
    }
    // Tegra discovery is not gpu-agent's: accepted, and said so.
    let (code, _, err) = run_cli_env(
        &["list", "--backend", "mock"],
        &[("DEVICE_DISCOVERY_STRATEGY", "tegra")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("NVML only"), "{err}");
}

#[test]
fn fail_on_init_error_false_runs_without_nvml() {
    // This machine has no NVML: with FAIL_ON_INIT_ERROR=false the agent runs with no GPUs.
    let (code, out, err) = run_cli_env(
        &["list", "--backend", "nvml", "--output", "json"],
        &[("FAIL_ON_INIT_ERROR", "false")],
    );
    if code == 0 && out.contains("\"gpus\":[]") {
        assert!(err.contains("failOnInitError is false"), "{err}");
    } else {
        // A machine with a GPU: the flag was still accepted.
        assert_eq!(code, 0, "{err}");
    }
}

/// Start the agent against a test kubelet with `env`, allocate the first device of
/// nvidia.com/gpu: the response.
async fn allocate_with(
    root: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> gpu_agent::proto::v1beta1::ContainerAllocateResponse {
    let mut kubelet = TestKubelet::start(root).await;
    let _agent = Agent::spawn_with_env(root, args, env);
    let reg = kubelet.next_registration().await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    plugin.allocate(&ids[..1]).await.expect("allocate")
}

#[tokio::test]
async fn allocate_env_vars_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let r = allocate_with(
        dir.path(),
        &[],
        &[
            ("DEVICE_LIST_STRATEGY", "envvar, volume-mounts"),
            ("DEVICE_ID_STRATEGY", "index"),
            ("PASS_DEVICE_SPECS", "true"),
            ("NVIDIA_DRIVER_ROOT", "/run/nvidia/driver"),
            ("GDS_ENABLED", "true"),
            ("MOFED_ENABLED", "1"),
            ("GDRCOPY_ENABLED", "true"),
        ],
    )
    .await;
    // volume-mounts wins NVIDIA_VISIBLE_DEVICES, as in NVIDIA's plugin; the mount names the index.
    assert_eq!(
        r.envs["NVIDIA_VISIBLE_DEVICES"],
        "/var/run/nvidia-container-devices"
    );
    assert!(
        r.mounts
            .iter()
            .any(|m| m.container_path == "/var/run/nvidia-container-devices/0"),
        "{:?}",
        r.mounts
    );
    for env in ["NVIDIA_GDS", "NVIDIA_MOFED", "NVIDIA_GDRCOPY"] {
        assert_eq!(r.envs[env], "enabled", "{env}");
    }
    // Device specs: host paths under the driver root (the dev root defaults to it).
    let nvidia0 = r
        .devices
        .iter()
        .find(|d| d.container_path == "/dev/nvidia0")
        .unwrap_or_else(|| panic!("{:?}", r.devices));
    assert_eq!(nvidia0.host_path, "/run/nvidia/driver/dev/nvidia0");

    let dir = tempfile::tempdir().unwrap();
    let r = allocate_with(
        dir.path(),
        &[],
        &[
            ("PASS_DEVICE_SPECS", "true"),
            ("NVIDIA_DRIVER_ROOT", "/run/nvidia/driver"),
            ("NVIDIA_DEV_ROOT", "/"),
            // Not CDI alone: with only CDI strategies NVIDIA hands no device specs.
            ("DEVICE_LIST_STRATEGY", "envvar,cdi-annotations"),
            ("CDI_ANNOTATION_PREFIX", "cdi.example.com/"),
        ],
    )
    .await;
    assert!(
        r.devices.iter().any(|d| d.host_path == "/dev/nvidia0"),
        "NVIDIA_DEV_ROOT wins for device nodes: {:?}",
        r.devices
    );
    assert!(
        r.annotations
            .keys()
            .all(|k| k.starts_with("cdi.example.com/"))
            && !r.annotations.is_empty(),
        "{:?}",
        r.annotations
    );
}

#[tokio::test]
async fn shared_devices_allocation_policy_packed_packs_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "config.yaml", TIME_SLICED);
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let _agent = Agent::spawn_with_env(
        dir.path(),
        &["--config", arg(&config)],
        &[("SHARED_DEVICES_ALLOCATION_POLICY", "packed")],
    );
    let reg = kubelet.next_registration().await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    let chosen = plugin.preferred(&ids, &[], 2).await;
    let gpus: std::collections::BTreeSet<&str> = chosen
        .iter()
        .map(|id| id.split("::").next().unwrap())
        .collect();
    assert_eq!(
        gpus.len(),
        1,
        "packed: both replicas on one GPU, got {chosen:?}"
    );
}

#[tokio::test]
async fn kubelet_socket_moves_or_turns_off_registration() {
    let dir = tempfile::tempdir().unwrap();
    let mut kubelet = TestKubelet::absent(dir.path()).with_socket_name("other-kubelet.sock");
    kubelet.serve();
    let socket = kubelet.socket();
    let _agent = Agent::spawn_with_env(dir.path(), &[], &[("KUBELET_SOCKET", arg(&socket))]);
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    kubelet.until_healthy(&[("nvidia.com/gpu", 8)]).await;

    // Empty: serve, never register (NVIDIA's plugin does the same).
    let dir = tempfile::tempdir().unwrap();
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let agent = Agent::spawn_with_env(dir.path(), &[], &[("KUBELET_SOCKET", "")]);
    let socket = kubelet.dir().join("gpu-agent-nvidia.com_gpu.sock");
    eventually("the plugin socket", || socket.exists()).await;
    assert!(kubelet
        .registration_within(std::time::Duration::from_millis(700))
        .await
        .is_none());
    assert!(
        agent.logs().contains("serving without registering"),
        "{}",
        agent.logs()
    );
}

#[tokio::test]
async fn imex_required_with_no_channel_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let _kubelet = TestKubelet::start(dir.path()).await;
    let node = dir.path().join("node");
    std::fs::create_dir_all(node.join("dev")).unwrap();
    let mut agent = Agent::spawn_with_env(
        dir.path(),
        &[],
        &[
            ("IMEX_CHANNEL_IDS", "0"),
            ("IMEX_REQUIRED", "true"),
            ("CONTAINER_DRIVER_ROOT", arg(&node)),
        ],
    );
    let status = agent.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", agent.logs());
    assert!(agent.logs().contains("channel0"), "{}", agent.logs());
}

/// NVIDIA's image runs `nvidia-device-plugin` from PATH; gpu-agent's image links that name to
/// itself. Under that name the binary is `gpu-agent run`, with NVIDIA's flags.
#[tokio::test]
async fn invoked_as_nvidia_device_plugin_it_is_the_device_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let bin: PathBuf = dir.path().join("nvidia-device-plugin");
    symlink(env!("CARGO_BIN_EXE_gpu-agent"), &bin).unwrap();
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let config = write_file(dir.path(), "config.yaml", TIME_SLICED);
    let log = std::fs::File::create(dir.path().join("ndp.log")).unwrap();
    let mut child = Command::new(&bin)
        .args(["--config-file", arg(&config), "--fail-on-init-error=false"])
        .env("GPU_AGENT_BACKEND", "mock")
        .env("GPU_AGENT_DEVICE_PLUGIN_DIR", kubelet.dir())
        .env("GPU_AGENT_METRICS_ADDR", "")
        .env("GPU_AGENT_NFD_FEATURES_FILE", "")
        .env("GPU_AGENT_CDI_SPEC_DIR", dir.path().join("cdi"))
        .env("GPU_AGENT_POD_RESOURCES_SOCKET", dir.path().join("pr.sock"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    kubelet.until_healthy(&[("nvidia.com/gpu", 16)]).await;
    // SIGHUP (the config-manager sidecar's signal) re-reads the config.
    write_file(dir.path(), "config.yaml", "version: v1\n");
    send_signal(&child, libc::SIGHUP);
    kubelet.until_healthy(&[("nvidia.com/gpu", 8)]).await;
    let log = dir.path().join("ndp.log");
    eventually("the SIGHUP re-read in the log", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("re-reading the config"))
    })
    .await;
    send_signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, WAIT).and_then(|s| s.code()), Some(0));
}
