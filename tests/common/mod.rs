//! Test harness: a kubelet stand-in (Registration server + DevicePlugin client over real unix
//! sockets in a temp dir) and the agent binary as a child process.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gpu_agent::plugin::uds;
use gpu_agent::proto::v1beta1::{
    device_plugin_client::DevicePluginClient,
    registration_server::{Registration, RegistrationServer},
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, Device, Empty, ListAndWatchResponse,
    PreferredAllocationRequest, RegisterRequest,
};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// Generous bound for things that should take milliseconds; CI machines are slow and noisy.
pub const WAIT: Duration = Duration::from_secs(20);

struct Recorder {
    tx: mpsc::UnboundedSender<(u64, RegisterRequest)>,
    /// Which `serve()` of the kubelet received the request.
    instance: u64,
}

#[tonic::async_trait]
impl Registration for Recorder {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.tx.send((self.instance, request.into_inner()));
        Ok(Response::new(Empty {}))
    }
}

/// A kubelet stand-in: serves Registration on `<dir>/kubelet.sock` and records every request.
pub struct TestKubelet {
    dir: PathBuf,
    registrations: mpsc::UnboundedReceiver<(u64, RegisterRequest)>,
    tx: mpsc::UnboundedSender<(u64, RegisterRequest)>,
    /// Bumped by every `serve()`: a kubelet (re)start.
    instance: u64,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestKubelet {
    /// Start serving in `dir`.
    pub async fn start(dir: &Path) -> Self {
        let mut kubelet = Self::absent(dir);
        kubelet.serve();
        kubelet
    }

    /// A kubelet that has not started yet (call [`Self::serve`] later).
    pub fn absent(dir: &Path) -> Self {
        let (tx, registrations) = mpsc::unbounded_channel();
        Self {
            dir: dir.to_path_buf(),
            registrations,
            tx,
            instance: 0,
            stop: None,
            server: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("kubelet.sock")
    }

    /// Bind kubelet.sock and serve Registration.
    pub fn serve(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let listener = UnixListener::bind(self.socket()).expect("bind kubelet.sock");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        self.instance += 1;
        let recorder = Recorder {
            tx: self.tx.clone(),
            instance: self.instance,
        };
        self.server = Some(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(recorder))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
        }));
        self.stop = Some(stop_tx);
    }

    /// Stop serving and remove kubelet.sock and every plugin socket, as a starting kubelet does.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "sock") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// A kubelet restart: stop, wipe sockets, start again.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.serve();
    }

    /// The next Register call, or panic after `WAIT`.
    pub async fn next_registration(&mut self) -> RegisterRequest {
        tokio::time::timeout(WAIT, self.registrations.recv())
            .await
            .expect("timed out waiting for a Register call")
            .expect("registration channel closed")
            .1
    }

    /// The next Register call received by the kubelet as it runs now (since its last start),
    /// skipping calls an earlier instance received; panic after `WAIT`.
    pub async fn next_registration_from_current(&mut self) -> RegisterRequest {
        let current = self.instance;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (instance, request) = tokio::time::timeout_at(deadline, self.registrations.recv())
                .await
                .expect("timed out waiting for a Register call to the current kubelet")
                .expect("registration channel closed");
            if instance == current {
                return request;
            }
        }
    }

    /// The next Register call within `timeout`, if any.
    pub async fn registration_within(&mut self, timeout: Duration) -> Option<RegisterRequest> {
        tokio::time::timeout(timeout, self.registrations.recv())
            .await
            .ok()
            .flatten()
            .map(|(_, request)| request)
    }

    /// Register calls until every resource in `names` has registered (or panic after `WAIT`
    /// per call); returns all of them, in arrival order.
    pub async fn registrations_until(&mut self, names: &[&str]) -> Vec<RegisterRequest> {
        let mut seen = Vec::new();
        while !names
            .iter()
            .all(|n| seen.iter().any(|r: &RegisterRequest| r.resource_name == *n))
        {
            seen.push(self.next_registration().await);
        }
        seen
    }

    /// Connect to the plugin that registered `endpoint`.
    pub async fn plugin(&self, endpoint: &str) -> DevicePluginClient<Channel> {
        let channel = uds::connect(&self.dir.join(endpoint), Duration::from_secs(5), None)
            .await
            .expect("connect to plugin socket");
        DevicePluginClient::new(channel)
    }
}

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

/// One resource as the test kubelet sees it: a connection to its socket, its ListAndWatch
/// stream held open like a kubelet holds it (a stream the client drops reads as "the kubelet
/// dropped our stream", which makes the agent re-serve and re-register), and the devices of the
/// latest message.
pub struct Plugin {
    pub client: DevicePluginClient<Channel>,
    pub stream: Streaming<ListAndWatchResponse>,
    pub devices: Vec<Device>,
}

impl Plugin {
    /// Connect to the plugin that registered `endpoint`, open ListAndWatch and take its first
    /// message.
    pub async fn open(kubelet: &TestKubelet, endpoint: &str) -> Self {
        let mut client = kubelet.plugin(endpoint).await;
        let mut stream = list_and_watch(&mut client).await;
        let devices = next_list(&mut stream).await.devices;
        Self {
            client,
            stream,
            devices,
        }
    }

    /// The next ListAndWatch message.
    pub async fn next(&mut self) -> &[Device] {
        self.devices = next_list(&mut self.stream).await.devices;
        &self.devices
    }

    /// Messages until `pred` holds for one (the latest included), or panic after `WAIT`.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&[Device]) -> bool) -> &[Device] {
        let deadline = Instant::now() + WAIT;
        while !pred(&self.devices) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.next().await;
        }
        &self.devices
    }

    /// Device IDs of the latest message, in its order.
    pub fn ids(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.id.clone()).collect()
    }

    /// Allocate `ids` for one container.
    pub async fn allocate(
        &mut self,
        ids: &[impl AsRef<str>],
    ) -> Result<ContainerAllocateResponse, Status> {
        allocate(&mut self.client, ids).await
    }

    /// GetPreferredAllocation for one container; panics if the call fails (it never should).
    pub async fn preferred(
        &mut self,
        available: &[String],
        must: &[String],
        size: i32,
    ) -> Vec<String> {
        preferred(&mut self.client, available, must, size).await
    }

    /// Allocate, one at a time, succeeds exactly for the IDs among `ids` not in `unhealthy`; the
    /// others are refused with InvalidArgument naming the ID as unhealthy.
    pub async fn assert_allocatable(&mut self, ids: &[String], unhealthy: &BTreeSet<String>) {
        for id in ids {
            let result = self.allocate(&[id]).await;
            if unhealthy.contains(id) {
                let status = result.expect_err("an unhealthy device was allocated");
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{id}");
                assert!(
                    status.message().contains("unhealthy")
                        && status.message().contains(id.as_str()),
                    "{}",
                    status.message()
                );
            } else {
                result.unwrap_or_else(|s| panic!("healthy {id} refused: {s}"));
            }
        }
    }
}

/// Allocate `ids` for one container on `client`: that container's response.
pub async fn allocate(
    client: &mut DevicePluginClient<Channel>,
    ids: &[impl AsRef<str>],
) -> Result<ContainerAllocateResponse, Status> {
    let request = AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: ids.iter().map(|id| id.as_ref().to_string()).collect(),
        }],
    };
    let mut response = client.allocate(request).await?.into_inner();
    assert_eq!(response.container_responses.len(), 1, "{response:?}");
    Ok(response.container_responses.remove(0))
}

/// GetPreferredAllocation for one container on `client`: the IDs it picks. Panics if the call
/// fails: the agent answers it whatever the kubelet offers.
pub async fn preferred(
    client: &mut DevicePluginClient<Channel>,
    available: &[String],
    must: &[String],
    size: i32,
) -> Vec<String> {
    let request = PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: available.to_vec(),
            must_include_device_i_ds: must.to_vec(),
            allocation_size: size,
        }],
    };
    let mut response = client
        .get_preferred_allocation(request)
        .await
        .unwrap_or_else(|s| panic!("GetPreferredAllocation of {size} from {available:?}: {s}"))
        .into_inner();
    assert_eq!(response.container_responses.len(), 1, "{response:?}");
    response.container_responses.remove(0).device_i_ds
}

/// IDs of the devices not reported Healthy.
pub fn unhealthy(devices: &[Device]) -> BTreeSet<String> {
    devices
        .iter()
        .filter(|d| d.health != "Healthy")
        .map(|d| d.id.clone())
        .collect()
}

/// A test kubelet serving in `dir`, the agent spawned against it with `args`, and the agent's
/// first registration.
pub async fn start_registered(dir: &Path, args: &[&str]) -> (TestKubelet, Agent, RegisterRequest) {
    let mut kubelet = TestKubelet::start(dir).await;
    let agent = Agent::spawn(dir, args);
    let registration = kubelet.next_registration().await;
    (kubelet, agent, registration)
}

/// The agent binary, running.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// Spawn `gpu-agent run` on the mock backend with `extra` arguments, HTTP and labels off
    /// unless `extra` turns them on.
    pub fn spawn(dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_with_env(dir, extra, &[])
    }

    pub fn spawn_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("agent-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create agent log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gpu-agent"));
        command
            .arg("run")
            .arg("--backend")
            .arg("mock")
            .arg("--device-plugin-dir")
            .arg(dir)
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
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
        .args(args)
        .env_remove("CONFIG_FILE")
        .env_remove("NODE_NAME")
        .env_remove("GPU_AGENT_BACKEND")
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
