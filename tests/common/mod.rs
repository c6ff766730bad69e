//! Test harness: a kubelet stand-in (Registration server + DevicePlugin client over real unix
//! sockets in a temp dir) and the agent binary as a child process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpu_agent::plugin::uds;
use gpu_agent::proto::v1beta1::{
    device_plugin_client::DevicePluginClient,
    registration_server::{Registration, RegistrationServer},
    Empty, ListAndWatchResponse, RegisterRequest,
};
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
    pub dir: PathBuf,
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
        let (tx, registrations) = mpsc::unbounded_channel();
        let mut kubelet = Self {
            dir: dir.to_path_buf(),
            registrations,
            tx,
            instance: 0,
            stop: None,
            server: None,
        };
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Wait for exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
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

/// Replace `path` with `text` the way a ConfigMap update does: write a sibling, rename over.
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

/// A shared string log for tests that need one.
pub type Shared<T> = Arc<Mutex<T>>;

/// A free TCP port on 127.0.0.1 (bound then released; the agent binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
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
