//! `gpu-agent mps-control` end to end, with the stand-ins from tests/data/mps on PATH (an
//! nvidia-cuda-mps-control written from NVIDIA's documentation, and an nvidia-smi that only
//! records its calls) and MPS_ROOT in a temporary directory. No GPU setting is changed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_gpu-agent");
const RESOURCE: &str = "nvidia.com/gpu";

fn stand_ins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mps")
}

fn path_with_stand_ins() -> String {
    let rest = std::env::var("PATH").unwrap_or_default();
    format!("{}:{rest}", stand_ins().display())
}

/// A running `mps-control` over a temporary MPS root; kills what is left on drop.
struct Control {
    dir: tempfile::TempDir,
    child: Child,
}

impl Control {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = serde_json::json!([{
            "resource": RESOURCE,
            "gpu_uuids": ["GPU-aaaa", "GPU-bbbb"],
            "replicas": 4,
            "memory_limit_mib_per_client": 20000,
            "active_thread_percentage": 25,
        }]);
        let spec_file = dir.path().join("specs.json");
        std::fs::write(&spec_file, spec.to_string()).expect("write specs");
        let root = dir.path().join("mps");
        let child = Command::new(AGENT)
            .args([
                "mps-control",
                "--backend",
                "mock",
                "--probe-interval",
                "500ms",
                "--mps-root",
            ])
            .arg(&root)
            .arg("--mps-spec-file")
            .arg(&spec_file)
            .env("PATH", path_with_stand_ins())
            .env(
                "NVIDIA_SMI_STANDIN_LOG",
                dir.path().join("nvidia-smi.calls"),
            )
            .env_remove("MPS_ROOT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gpu-agent");
        Control { dir, child }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("mps")
    }
    fn marker(&self) -> PathBuf {
        self.root().join(RESOURCE).join(".started")
    }
    fn pipe_dir(&self) -> PathBuf {
        self.root().join(RESOURCE).join("pipe")
    }
    fn log(&self) -> String {
        read(&self.root().join(RESOURCE).join("log/control.log"))
    }
    fn smi_calls(&self) -> String {
        read(&self.dir.path().join("nvidia-smi.calls"))
    }
    fn daemon_pid(&self) -> Option<i32> {
        read(&self.pipe_dir().join("nvidia-cuda-mps-control.pid"))
            .trim()
            .parse()
            .ok()
    }
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.daemon_pid() {
            kill(pid, libc::SIGKILL);
        }
    }
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) on the stand-in daemon this test started (through the agent).
    unsafe { libc::kill(pid, signal) };
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn starts_the_daemon_as_nvidia_does_and_quits_it_on_sigterm() {
    let mut c = Control::start();
    wait_for("the ready marker", Duration::from_secs(10), || {
        c.marker().exists()
    });

    // NVIDIA's env and directories, plus the resource's GPUs.
    let log = c.log();
    let pipe = c.pipe_dir();
    let log_dir = c.root().join(RESOURCE).join("log");
    assert!(
        log.contains(&format!(
            "daemon start CUDA_VISIBLE_DEVICES=GPU-aaaa,GPU-bbbb CUDA_MPS_PIPE_DIRECTORY={} CUDA_MPS_LOG_DIRECTORY={}",
            pipe.display(),
            log_dir.display()
        )),
        "{log}"
    );
    assert!(pipe.join("control").exists(), "the control pipe");
    // The start-up commands, in NVIDIA's order, before the marker.
    let commands: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("[mock] command: "))
        .collect();
    assert_eq!(
        &commands[..4],
        [
            "set_default_device_pinned_mem_limit GPU-aaaa 20000M",
            "set_default_device_pinned_mem_limit GPU-bbbb 20000M",
            "set_default_active_thread_percentage 25",
            "get_server_list",
        ],
        "{log}"
    );
    // EXCLUSIVE_PROCESS on both GPUs, through the stand-in nvidia-smi.
    assert_eq!(
        c.smi_calls(),
        "-i GPU-aaaa -c EXCLUSIVE_PROCESS\n-i GPU-bbbb -c EXCLUSIVE_PROCESS\n"
    );

    c.signal(libc::SIGTERM);
    let status = c
        .wait_exit(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!c.marker().exists(), "marker removed");
    assert!(c.log().contains("[mock] command: quit"), "{}", c.log());
    assert!(c.daemon_pid().is_none(), "the daemon quit");
    assert!(
        c.smi_calls()
            .ends_with("-i GPU-aaaa -c DEFAULT\n-i GPU-bbbb -c DEFAULT\n"),
        "compute mode reset: {}",
        c.smi_calls()
    );
}

#[test]
fn a_dead_daemon_loses_its_marker_and_is_restarted() {
    let mut c = Control::start();
    wait_for("the ready marker", Duration::from_secs(10), || {
        c.marker().exists()
    });
    let first = c.daemon_pid().expect("the daemon's pid file");

    kill(first, libc::SIGKILL);
    let killed = Instant::now();
    wait_for("the marker to go", Duration::from_secs(3), || {
        !c.marker().exists()
    });
    assert!(
        killed.elapsed() <= Duration::from_millis(2500),
        "{:?}",
        killed.elapsed()
    );

    wait_for(
        "the restarted daemon's marker",
        Duration::from_secs(10),
        || c.marker().exists(),
    );
    let second = c.daemon_pid().expect("a new pid file");
    assert_ne!(first, second, "a new daemon");
    let starts = c.log().matches("daemon start").count();
    assert_eq!(starts, 2, "{}", c.log());
    // Configured again before the marker came back.
    let after_restart = c
        .log()
        .rsplit("daemon start")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        after_restart.contains("set_default_active_thread_percentage 25"),
        "{after_restart}"
    );

    c.signal(libc::SIGTERM);
    let status = c
        .wait_exit(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!c.marker().exists());
}

#[test]
fn a_missing_control_binary_is_named_and_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("specs.json");
    std::fs::write(
        &spec,
        r#"[{"resource":"nvidia.com/gpu","gpu_uuids":["GPU-a"],"replicas":2,"active_thread_percentage":50}]"#,
    )
    .expect("write");
    let root = dir.path().join("mps");
    let run = |extra: &[&str], path: &str| {
        Command::new(AGENT)
            .args(["mps-control", "--backend", "mock", "--mps-root"])
            .arg(&root)
            .arg("--mps-spec-file")
            .arg(&spec)
            .args(extra)
            .env("PATH", path)
            .output()
            .expect("run gpu-agent")
    };
    // Named by flag, absent.
    let out = run(
        &[
            "--mps-control-binary",
            "/nonexistent/nvidia-cuda-mps-control",
        ],
        &path_with_stand_ins(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("nvidia-cuda-mps-control not found")
            && stderr.contains("/nonexistent/nvidia-cuda-mps-control"),
        "{stderr}"
    );
    // Not on PATH.
    let out = run(&[], "/nonexistent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("nvidia-cuda-mps-control not found (looked on PATH)"),
        "{stderr}"
    );
    assert!(!root.join("nvidia.com/gpu/.started").exists());
}

#[test]
fn a_spec_that_would_leave_the_mps_root_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("specs.json");
    std::fs::write(
        &spec,
        r#"[{"resource":"../../etc","gpu_uuids":["GPU-a"],"replicas":2,"active_thread_percentage":50}]"#,
    )
    .expect("write");
    let out = Command::new(AGENT)
        .args(["mps-control", "--backend", "mock", "--mps-root"])
        .arg(dir.path().join("mps"))
        .arg("--mps-spec-file")
        .arg(&spec)
        .env("PATH", path_with_stand_ins())
        .output()
        .expect("run gpu-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("../../etc"), "{stderr}");
    assert!(!dir.path().join("etc").exists());
}

/// Without a spec file the daemons come from the node's config, as the agent reads it: NVIDIA's
/// README MPS example (every GPU of the mock node shared 2 ways) gives one daemon over the 8 GPUs,
/// each client limited to 100/2 % of the SMs and half a GPU's memory.
#[test]
fn the_daemons_come_from_the_config_as_the_agent_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "version: v1\nsharing:\n  mps:\n    resources:\n      - name: nvidia.com/gpu\n        replicas: 2\n",
    )
    .expect("write config");
    let root = dir.path().join("mps");
    let mut child = Command::new(AGENT)
        .args([
            "mps-control",
            "--backend",
            "mock",
            "--probe-interval",
            "500ms",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--mps-root")
        .arg(&root)
        .env("PATH", path_with_stand_ins())
        .env(
            "NVIDIA_SMI_STANDIN_LOG",
            dir.path().join("nvidia-smi.calls"),
        )
        .env_remove("MPS_ROOT")
        .env_remove("CONFIG_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gpu-agent mps-control");
    let marker = root.join("nvidia.com/gpu/.started");
    let ready = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        marker.exists()
    });
    let log = read(&root.join("nvidia.com/gpu/log/control.log"));
    let pid: Option<i32> = read(&root.join("nvidia.com/gpu/pipe/nvidia-cuda-mps-control.pid"))
        .trim()
        .parse()
        .ok();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    if let Some(pid) = pid {
        kill(pid, libc::SIGKILL);
    }
    assert!(ready, "the ready marker: {log}");
    let start = log
        .lines()
        .find(|l| l.contains("daemon start"))
        .unwrap_or_else(|| panic!("{log}"));
    // The mock node's 8 GPUs, by UUID.
    let visible = start
        .split_whitespace()
        .find_map(|w| w.strip_prefix("CUDA_VISIBLE_DEVICES="))
        .unwrap_or_else(|| panic!("{start}"));
    assert_eq!(visible.split(',').count(), 8, "{start}");
    assert!(visible.split(',').all(|u| u.starts_with("GPU-")), "{start}");
    assert!(
        log.contains("[mock] command: set_default_active_thread_percentage 50"),
        "{log}"
    );
    // H100 80GB: 81559 MiB / 2.
    assert!(log.contains(" 40779M"), "{log}");
}

/// A daemon that is alive but stuck (its control pipe never answers `get_server_list`) is
/// treated as dead: the probe gives up after its command timeout (10 s), the marker goes, and
/// once the daemon answers again it is restarted and the marker comes back.
#[test]
fn a_stuck_daemon_loses_its_marker_and_is_restarted_once_it_answers() {
    let mut c = Control::start();
    wait_for("the ready marker", Duration::from_secs(10), || {
        c.marker().exists()
    });
    let hang = c.pipe_dir().join(".mock-hang");
    std::fs::write(&hang, "").expect("hang the stand-in");
    let started = Instant::now();
    wait_for("the marker to go", Duration::from_secs(20), || {
        !c.marker().exists()
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "the probe waits its timeout: {took:?}"
    );
    std::fs::remove_file(&hang).expect("unhang");
    wait_for("the marker to come back", Duration::from_secs(30), || {
        c.marker().exists()
    });
    assert!(
        c.log().matches("[mock] daemon start").count() >= 2,
        "{}",
        c.log()
    );
    c.signal(libc::SIGTERM);
    assert!(c.wait_exit(Duration::from_secs(15)).is_some());
}
