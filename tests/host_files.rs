//! Files on the host against the real binary, one test per attack of the security review
//! (issue 15) with the bound it proves: symlinks planted in the CDI dir and in NFD's
//! `features.d`, a FIFO or a `/dev/zero` link at the CDI spec's name, documents over the size
//! and nesting limits (config, reloads, the webhook's catalog), and the CDI hook path.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const SPEC: &str = "k8s.gpu-agent.io-gpu.json";
const ONE_GPU: &str = "gpus: [{model: NVIDIA H100 80GB HBM3}]\n";
const TWO_GPUS: &str = "gpus: [{model: NVIDIA H100 80GB HBM3}, {model: NVIDIA H100 80GB HBM3}]\n";

/// How long a start may take where the old agent hung forever (a debug build starts in well
/// under a second).
const START: Duration = Duration::from_secs(10);

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// Victim files (root-owned files the agent's mounts could reach) under `root`, each with its
/// own content; the last one is never created, so a dangling link points at it.
fn victims(root: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let victim = root.join(format!("victim-{i}"));
            if i + 1 < n {
                std::fs::write(&victim, format!("victim {i}")).unwrap();
            }
            victim
        })
        .collect()
}

/// How many devices the CDI spec at `path` names, if it reads as one.
fn spec_devices(path: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let spec: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(spec["devices"].as_array()?.len())
}

fn assert_untouched(victims: &[PathBuf]) {
    let (last, kept) = victims.split_last().unwrap();
    for (i, victim) in kept.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(victim).unwrap(),
            format!("victim {i}"),
            "{} was written through a link",
            victim.display()
        );
    }
    assert!(!last.exists(), "a dangling link's target was created");
}

/// The agent on the mock `fixture`, writing CDI specs (cdi-cri) and the NFD file.
fn spawn_writing(root: &Path, fixture: &Path, nfd: &Path) -> Agent {
    Agent::spawn(
        root,
        &[
            "--mock-fixture",
            arg(fixture),
            "--device-list-strategy",
            "cdi-cri",
            "--nfd-features-file",
            arg(nfd),
        ],
    )
}

#[tokio::test]
async fn symlinks_planted_at_temp_names_redirect_no_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cdi = root.join("cdi");
    let features = root.join("features.d");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::create_dir_all(&features).unwrap();
    let nfd = features.join("gpu-agent");
    let fixture = write_file(root, "node.yaml", ONE_GPU);
    let mut kubelet = TestKubelet::start(root).await;
    let agent = spawn_writing(root, &fixture, &nfd);
    kubelet.next_registration().await;
    eventually("the first spec and labels", || {
        is_regular(&cdi.join(SPEC)) && is_regular(&nfd)
    })
    .await;

    // The names the old writer used (`.<file>.<pid>.tmp`; PID 1 in a pod), for both files, as
    // links to victims, one of them dangling.
    let pid = agent.child.id();
    let planted: Vec<PathBuf> = [(&cdi, SPEC), (&features, "gpu-agent")]
        .iter()
        .flat_map(|(dir, name)| [1, pid].map(|p| dir.join(format!(".{name}.{p}.tmp"))))
        .collect();
    let victims = victims(root, planted.len());
    for (link, victim) in planted.iter().zip(&victims) {
        std::os::unix::fs::symlink(victim, link).unwrap();
    }

    // A second GPU: both files are rewritten.
    replace_file(&fixture, TWO_GPUS);
    eventually("the rewritten labels", || {
        std::fs::read_to_string(&nfd).is_ok_and(|t| t.contains("nvidia.com/gpu.count=2"))
    })
    .await;
    // Each GPU is named twice in the spec: by UUID and by index.
    eventually("the rewritten spec", || {
        spec_devices(&cdi.join(SPEC)) == Some(4)
    })
    .await;
    assert_untouched(&victims);
    assert!(is_regular(&cdi.join(SPEC)) && is_regular(&nfd));
    assert!(planted.iter().all(|p| is_symlink(p)));
    assert!(!agent.logs().contains("cannot write"), "{}", agent.logs());
}

#[tokio::test]
async fn symlinks_planted_at_the_final_names_are_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cdi = root.join("cdi");
    let features = root.join("features.d");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::create_dir_all(&features).unwrap();
    let nfd = features.join("gpu-agent");
    // One link to a file, one dangling (O_CREAT through it would create its target).
    let victims = victims(root, 2);
    std::os::unix::fs::symlink(&victims[0], cdi.join(SPEC)).unwrap();
    std::os::unix::fs::symlink(&victims[1], &nfd).unwrap();
    let fixture = write_file(root, "node.yaml", ONE_GPU);

    let (_kubelet, agent, _) = tokio::time::timeout(
        START,
        start_registered(
            root,
            &[
                "--mock-fixture",
                arg(&fixture),
                "--device-list-strategy",
                "cdi-cri",
                "--nfd-features-file",
                arg(&nfd),
            ],
        ),
    )
    .await
    .expect("the agent registers");
    eventually("both refusals in the log", || {
        let logs = agent.logs();
        logs.contains(&format!(
            "refusing to replace {}: it is a symlink",
            cdi.join(SPEC).display()
        )) && logs.contains(&format!(
            "refusing to replace {}: it is a symlink",
            nfd.display()
        ))
    })
    .await;
    assert_untouched(&victims);
    assert!(is_symlink(&cdi.join(SPEC)) && is_symlink(&nfd));
}

/// A FIFO or a `/dev/zero` link at the spec's name: the agent starts and registers within
/// [`START`], serves /metrics, says what it found, and exits 0 on SIGTERM.
async fn start_despite(plant: impl FnOnce(&Path), what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cdi = root.join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    plant(&cdi.join(SPEC));
    let addr = free_addr();
    let started = Instant::now();
    let (_kubelet, mut agent, registration) = tokio::time::timeout(
        START,
        start_registered(
            root,
            &["--device-list-strategy", "cdi-cri", "--metrics-addr", &addr],
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: no registration within {START:?}"));
    assert_eq!(registration.resource_name, "nvidia.com/gpu");
    assert!(started.elapsed() < START);
    eventually("/metrics", || scrape(&addr).is_some()).await;
    eventually("the warning", || {
        let logs = agent.logs();
        logs.contains("the CDI spec on disk is not read") && logs.contains(what)
    })
    .await;
    agent.signal(libc::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("exit on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", agent.logs());
}

#[tokio::test]
async fn a_fifo_at_the_cdi_spec_path_does_not_hang_start() {
    start_despite(mkfifo, "is a FIFO, not a regular file").await;
}

#[tokio::test]
async fn a_dev_zero_link_at_the_cdi_spec_path_does_not_hang_start() {
    start_despite(
        |path| std::os::unix::fs::symlink("/dev/zero", path).unwrap(),
        "is a symlink, not a regular file",
    )
    .await;
}

/// 200 KB of nested `[`: 19 s in serde_yaml_ng before the limits.
fn deep_config() -> String {
    format!("version: v1\nflags: {}\n", "[".repeat(200_000))
}

/// 300 KiB, mostly a comment.
fn large_config() -> String {
    let mut text = String::from("version: v1\n# ");
    text.push_str(&"x".repeat(300 * 1024 - text.len() - 1));
    text.push('\n');
    text
}

#[test]
fn a_deep_or_large_config_is_refused_within_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let deep = write_file(dir.path(), "deep.yaml", &deep_config());
    let large = write_file(dir.path(), "large.yaml", &large_config());
    for (path, message) in [
        (
            &deep,
            "config: nested 65 levels deep at line 2; the limit is 64",
        ),
        (&large, "config: the file is 300 KiB; the limit is 256 KiB"),
    ] {
        for args in [
            vec!["check-config", arg(path)],
            vec!["list", "--backend", "mock", "--config", arg(path)],
        ] {
            let started = Instant::now();
            let (code, _, err) = run_cli(&args);
            // Process start included; the parse alone took 19 s.
            assert!(started.elapsed() < Duration::from_secs(2), "{args:?}");
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(err.contains(message), "{args:?}: {err}");
        }
    }
    // A FIFO as the config is not opened for a blocking read.
    let fifo = dir.path().join("fifo.yaml");
    mkfifo(&fifo);
    let (code, _, err) = run_cli(&["check-config", arg(&fifo)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
}

#[tokio::test]
async fn a_reload_over_the_limits_keeps_the_last_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let shared = |rename: &str| {
        format!(
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {{name: nvidia.com/gpu, \
             rename: {rename}, replicas: 2, devices: [6, 7]}}\n"
        )
    };
    let config = write_file(dir.path(), "config.yaml", &shared("nvidia.com/gpu.shared"));
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let agent = Agent::spawn(dir.path(), &["--config", arg(&config)]);
    kubelet
        .registrations_until(&["nvidia.com/gpu", "nvidia.com/gpu.shared"])
        .await;
    let shared_socket = plugin_dir(dir.path()).join("gpu-agent-nvidia.com_gpu.shared.sock");

    for (text, message) in [
        (
            large_config(),
            "config: the file is 300 KiB; the limit is 256 KiB",
        ),
        (
            deep_config(),
            "config: nested 65 levels deep at line 2; the limit is 64",
        ),
    ] {
        let started = Instant::now();
        replace_file(&config, &text);
        eventually(message, || {
            let logs = agent.logs();
            logs.contains(message) && logs.contains("invalid config rejected")
        })
        .await;
        // The watcher polls every 200 ms; the parse that took 19 s is not attempted.
        assert!(started.elapsed() < Duration::from_secs(5), "{message}");
    }
    assert!(
        kubelet
            .registration_within(Duration::from_secs(1))
            .await
            .is_none(),
        "a rejected config changed the resources"
    );
    assert!(
        shared_socket.exists(),
        "the last good config's resource is gone"
    );

    // The watcher still works: a valid edit applies.
    replace_file(&config, &shared("nvidia.com/gpu.other"));
    kubelet.registrations_until(&["nvidia.com/gpu.other"]).await;
}

#[test]
fn a_deep_webhook_catalog_is_refused_within_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = write_file(
        dir.path(),
        "catalog.yaml",
        &format!("resources: {}", "{a: ".repeat(50_000)),
    );
    let started = Instant::now();
    let (code, _, err) = run_cli(&[
        "webhook",
        "--tls-cert-file",
        "/nonexistent/cert.pem",
        "--tls-key-file",
        "/nonexistent/key.pem",
        "--catalog",
        arg(&catalog),
    ]);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("catalog: nested 65 levels deep at line 1; the limit is 64"),
        "{err}"
    );
}

#[test]
fn the_cdi_hook_path_is_limited_to_the_driver_root_and_the_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let list = |args: &[&str], env: &[(&str, &str)]| {
        run_cli_env(&[&["list", "--backend", "mock"], args].concat(), env)
    };
    // From the command line and the environment: exit 2, naming the flag and the places.
    for (args, env) in [
        (vec!["--nvidia-cdi-hook-path", "/tmp/payload"], vec![]),
        (vec![], vec![("NVIDIA_CDI_HOOK_PATH", "/tmp/payload")]),
        (vec![], vec![("NVIDIA_CTK_PATH", "/tmp/payload")]),
    ] {
        let (code, _, err) = list(&args, &env);
        assert_eq!(code, 2, "{args:?} {env:?}: {err}");
        assert!(
            err.contains("--nvidia-cdi-hook-path (NVIDIA_CDI_HOOK_PATH, NVIDIA_CTK_PATH)")
                && err.contains("/usr/local/nvidia/toolkit/nvidia-cdi-hook")
                && err.contains("got \"/tmp/payload\""),
            "{err}"
        );
    }
    // From the file: the field.
    let config = write_file(
        dir.path(),
        "config.yaml",
        "flags: {plugin: {nvidiaCTKPath: /tmp/payload}}\n",
    );
    let (code, _, err) = run_cli(&["check-config", arg(&config)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("flags.plugin.nvidiaCTKPath: the CDI hook runs as root on the host"),
        "{err}"
    );
    // Allowed: the toolkit's places, and under a driver root given by flag.
    for (args, env) in [
        (
            vec!["--nvidia-cdi-hook-path", "/usr/bin/nvidia-cdi-hook"],
            vec![],
        ),
        (
            vec![],
            vec![(
                "NVIDIA_CDI_HOOK_PATH",
                "/usr/local/nvidia/toolkit/nvidia-cdi-hook",
            )],
        ),
        (
            vec![
                "--driver-root",
                "/run/nvidia/driver",
                "--nvidia-cdi-hook-path",
                "/run/nvidia/driver/usr/bin/nvidia-ctk",
            ],
            vec![],
        ),
    ] {
        let (code, _, err) = list(&args, &env);
        assert_eq!(code, 0, "{args:?} {env:?}: {err}");
    }
}
