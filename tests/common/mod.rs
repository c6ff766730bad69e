//! Test harness: a kubelet stand-in (Registration server + DevicePlugin client over real unix
//! sockets in a temp dir) and the agent binary as a child process.

#![allow(dead_code)]

pub mod dra_kubelet;
mod kubelet;
pub use kubelet::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gpu_agent::proto::v1beta1::{
    device_plugin_client::DevicePluginClient, Device, Empty, ListAndWatchResponse, RegisterRequest,
};
use serde::Deserialize;
use tonic::transport::Channel;
use tonic::Streaming;

/// Generous bound for things that should take milliseconds; CI machines are slow and noisy.
pub const WAIT: Duration = Duration::from_secs(20);

/// Open ListAndWatch and return the stream.
pub async fn list_and_watch(
    client: &mut DevicePluginClient<Channel>,
) -> Streaming<ListAndWatchResponse> {
    client
        .list_and_watch(Empty {})
        .await
        .expect("ListAndWatch")
        .into_inner()
}

/// The next ListAndWatch message, or panic after `WAIT`.
pub async fn next_list(stream: &mut Streaming<ListAndWatchResponse>) -> ListAndWatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("timed out waiting for ListAndWatch")
        .expect("ListAndWatch error")
        .expect("ListAndWatch ended")
}

/// IDs of the devices not reported Healthy.
pub fn unhealthy(devices: &[Device]) -> BTreeSet<String> {
    devices
        .iter()
        .filter(|d| d.health != "Healthy")
        .map(|d| d.id.clone())
        .collect()
}

/// A test kubelet started under `root`, the agent spawned against it with `args`, and the
/// agent's first registration.
pub async fn start_registered(root: &Path, args: &[&str]) -> (TestKubelet, Agent, RegisterRequest) {
    let mut kubelet = TestKubelet::start(root).await;
    let agent = Agent::spawn(root, args);
    let registration = kubelet.next_registration().await;
    (kubelet, agent, registration)
}

/// A number for each agent log of this test process (tests may run several agents).
fn next_log() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The agent binary, running.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// Spawn `gpu-agent run` on the mock backend with `extra` arguments, HTTP and labels off
    /// unless `extra` turns them on. Its device-plugin directory is [`plugin_dir`]`(root)`, where
    /// a [`TestKubelet`] started under the same `root` works; everything else lives in `root`.
    pub fn spawn(root: &Path, extra: &[&str]) -> Self {
        Self::spawn_with_env(root, extra, &[])
    }

    pub fn spawn_with_env(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = root;
        let log = dir.join(format!("agent-{}-{}.log", std::process::id(), next_log()));
        let log_file = std::fs::File::create(&log).expect("create agent log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gpu-agent"));
        command
            .arg("run")
            .arg("--backend")
            .arg("mock")
            .arg("--device-plugin-dir")
            .arg(plugin_dir(root))
            .arg("--pod-resources-socket")
            .arg(dir.join("pod-resources.sock"))
            .arg("--cdi-spec-dir")
            .arg(dir.join("cdi"));
        if !extra.contains(&"--metrics-addr") {
            command.args(["--metrics-addr", ""]);
        }
        if !extra.contains(&"--nfd-features-file") {
            command.args(["--nfd-features-file", ""]);
        }
        command
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("CONFIG_FILE")
            .env_remove("NODE_NAME")
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command.spawn().expect("spawn gpu-agent");
        Self { child, log }
    }

    pub fn signal(&self, signal: i32) {
        send_signal(&self.child, signal);
    }

    /// Wait for exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.logs());
        }
    }
}

/// Send `signal` to our own child process.
pub fn send_signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) with the pid of a child we own.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// Wait for `child` to exit, up to `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Run `gpu-agent <args>` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    run_cli_env(args, &[])
}

/// [`run_cli`] with `env` set.
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
        .args(args)
        .env_remove("CONFIG_FILE")
        .env_remove("NODE_NAME")
        .env_remove("GPU_AGENT_BACKEND")
        .envs(env.iter().copied())
        .output()
        .expect("run gpu-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gpu-agent list --backend mock <args>`: (exit code, stdout, stderr).
pub fn list_mock(args: &[&str]) -> (i32, String, String) {
    run_cli(&[&["list", "--backend", "mock"], args].concat())
}

/// `gpu-agent list --backend mock --output json <args>`, which must succeed: its stdout.
pub fn list_json_text(args: &[&str]) -> String {
    let (code, stdout, stderr) = list_mock(&[&["--output", "json"], args].concat());
    assert_eq!(code, 0, "{stderr}");
    stdout
}

/// The same, parsed.
pub fn list_json(args: &[&str]) -> serde_json::Value {
    let text = list_json_text(args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Write `text` to `<dir>/<name>`; the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// `path` as a command-line argument (temp dir paths are UTF-8).
pub fn arg(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

/// Replace `path` with `text` the way a ConfigMap or Secret update does: write a sibling,
/// rename over, so a watcher never reads half a file.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-replace");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over file");
}

/// Poll `f` until it returns true or `WAIT` passes.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A free TCP address on 127.0.0.1 (bound then released; the agent binds it right after).
pub fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .expect("free port")
}

/// `GET path` on `addr` over plain HTTP/1.1: (status, body). `None` when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The body of a `/metrics` scrape of `addr` that answered 200.
pub fn scrape(addr: &str) -> Option<String> {
    match http_get(addr, "/metrics") {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// `kubectl` from PATH; `None`, with the reason printed, where it is not installed.
pub fn kubectl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        eprintln!("skipping: kubectl is not on PATH, so the manifests cannot be rendered");
    }
    found
}

/// `kubectl kustomize <dir>`, which must succeed: the YAML text and its (non-null) objects.
pub fn kustomize(kubectl: &Path, dir: &Path) -> (String, Vec<serde_yaml_ng::Value>) {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kustomize output is UTF-8");
    let objects = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).expect("kustomize output parses"))
        .filter(|v| !v.is_null())
        .collect();
    (text, objects)
}

/// The repository as a relative path from `dir` (kustomize refuses absolute paths): `../..`
/// up to the root, then down.
pub fn repository_from(dir: &Path) -> PathBuf {
    let up: PathBuf = dir.components().skip(1).map(|_| "..").collect();
    up.join(env!("CARGO_MANIFEST_DIR").trim_start_matches('/'))
}

/// `kubectl kustomize` of a kustomization made in a temp dir that lists `resources` and
/// `components` (paths under `daemonset/`, e.g. `base`, `components/servicemonitor`), as a
/// user's own kustomization combines them: the YAML text and its objects.
pub fn kustomize_with_components(
    kubectl: &Path,
    resources: &[&str],
    components: &[&str],
) -> (String, Vec<serde_yaml_ng::Value>) {
    kustomize_with(kubectl, resources, components, "")
}

/// [`kustomize_with_components`] with `more` (further top-level fields of the kustomization:
/// `images:`, `patches:`, …) appended.
pub fn kustomize_with(
    kubectl: &Path,
    resources: &[&str],
    components: &[&str],
    more: &str,
) -> (String, Vec<serde_yaml_ng::Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemonset = repository_from(dir.path()).join("daemonset");
    let list = |paths: &[&str]| -> String {
        paths
            .iter()
            .map(|p| format!("  - {}\n", daemonset.join(p).display()))
            .collect()
    };
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n{}components:{}\n{more}",
            list(resources),
            if components.is_empty() {
                " []\n".to_string()
            } else {
                format!("\n{}", list(components))
            }
        ),
    )
    .expect("write kustomization");
    kustomize(kubectl, dir.path())
}
