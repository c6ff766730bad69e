//! A kubelet stand-in, written from the kubelet's device manager (k8s.io/kubernetes
//! `pkg/kubelet/cm/devicemanager`, releases 1.30–1.34) and at least as strict as it. Each part
//! names the file and function it mirrors. What it does, as the real kubelet does:
//!
//! - **Start** (`plugin/v1beta1/server.go` `Start`, `CleanupPluginDirectory` in `manager.go`):
//!   create the directory, delete every non-directory entry but `kubelet_internal_checkpoint`
//!   (1.30–1.32; 1.33+ deletes sockets only: [`Wipe`]), then bind a new `kubelet.sock`.
//! - **Exit** (the process dies): every connection drops at once, streams included; the
//!   `kubelet.sock` file stays behind, refusing connections, until the next start deletes it.
//! - **Register** (`server.go` `Register`, `handler.go` `connectClient`, `client.go` `dial`):
//!   version must be `v1beta1`, the name an extended resource name; then, *inside* Register, a
//!   blocking dial of the plugin's socket with a 10 s deadline (retried with gRPC's back-off:
//!   1 s × 1.6ⁿ) and GetDevicePluginOptions; errors carry the kubelet's texts, with gRPC code
//!   Unknown (a Go error returned from a handler). ListAndWatch is started by a goroutine launched
//!   before Register returns.
//! - **Re-registration** (`handler.go` `registerClient`, 1.30–1.34): the new client replaces the
//!   old one in a map keyed by resource; the old connection is *not* closed. When a stream ends
//!   (`runClient`), the kubelet disconnects whatever client is registered under the resource
//!   *now*: an old stream ending after a re-registration takes the new client down
//!   (kubernetes#121994).
//! - **Disconnect** (`client.go` `Disconnect`, `manager.go` `PluginDisconnected`): the connection
//!   is closed, every device of the resource becomes unhealthy, the endpoint is stopped: Allocate
//!   is refused (`endpoint.go`, "has been stopped") and the stream is never reopened.
//! - **Device lists** (`manager.go` `genericDeviceUpdateCallback`): each message replaces the
//!   resource's healthy and unhealthy sets; only exactly `Healthy` is healthy.
//! - **Checkpoint** (`manager.go` `writeCheckpoint`, `pkg/kubelet/util/store` `FileStore`):
//!   rewritten after every ListAndWatch message and every allocation, through a temp file
//!   `.kubelet_internal_checkpoint<random>` renamed over the real one.
//!
//! Stricter than the real kubelet: a message with a duplicate device ID or a health value other
//! than `Healthy`/`Unhealthy` is recorded as a violation, and so is every failed dial of a
//! plugin's socket; tests assert there are none.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpu_agent::proto::v1beta1::{
    device_plugin_client::DevicePluginClient,
    registration_server::{Registration, RegistrationServer},
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, Device, Empty, PreferredAllocationRequest,
    RegisterRequest,
};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

use super::WAIT;

/// The kubelet's checkpoint file (`kubeletDeviceManagerCheckpoint`).
pub const CHECKPOINT: &str = "kubelet_internal_checkpoint";
/// `api.Version`.
const VERSION: &str = "v1beta1";
/// `client.go` `dial`: the deadline of the blocking dial inside Register.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The device-plugin directory under a test's temp root. Kept apart from the root, where tests
/// put fixtures, configs and logs, because a starting kubelet deletes every file in it.
pub fn plugin_dir(root: &Path) -> PathBuf {
    root.join("device-plugins")
}

/// What a starting kubelet deletes from the directory (`CleanupPluginDirectory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wipe {
    /// 1.30–1.32: every entry that is not a directory, but the checkpoint.
    AllFiles,
    /// 1.33 and later: sockets only.
    SocketsOnly,
    /// Not a real kubelet's: a start that deletes nothing, to check that a new `kubelet.sock`
    /// alone makes the agent serve and register again.
    Nothing,
}

/// One device-plugin client of the kubelet (`client.go` `client` + `endpoint.go` `endpointImpl`).
struct Client {
    resource: String,
    socket: PathBuf,
    /// Which kubelet process dialled it.
    instance: u64,
    channel: Channel,
    /// A duplicate of the connection's descriptor: shutting it down closes the connection the
    /// way `grpc.ClientConn.Close` does, whoever else holds the channel.
    conn: Option<OwnedFd>,
    run: Option<JoinHandle<()>>,
    /// `endpointImpl.stopTime` is set.
    stopped: bool,
    /// Every ListAndWatch message, in order.
    messages: Vec<Vec<Device>>,
    /// How the stream ended: `Ok` for a clean end (status OK), else the error.
    ended: Option<Result<(), String>>,
    register_at: Instant,
    first_message_at: Option<Instant>,
}

/// What the stand-in does, for a caller that narrates it (the `test_kubelet` example).
#[derive(Debug, Clone)]
pub enum KubeletEvent {
    /// A Register call arrived (before any check).
    Register {
        resource: String,
        endpoint: String,
        version: String,
    },
    /// Register failed with this error (returned to the plugin).
    RegisterFailed { resource: String, error: String },
    /// A ListAndWatch message on the kubelet's stream.
    List {
        resource: String,
        endpoint: String,
        devices: Vec<Device>,
    },
    /// The kubelet's stream ended: `Ok` cleanly, else the error.
    StreamEnded {
        resource: String,
        result: Result<(), String>,
    },
}

/// The manager's view of one resource, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceView {
    pub healthy: BTreeSet<String>,
    pub unhealthy: BTreeSet<String>,
    /// An endpoint exists for the resource and is not stopped: Allocate would be sent.
    pub live: bool,
}

#[derive(Default)]
struct State {
    /// The running kubelet process (0: none yet); `alive` false after it exited.
    instance: u64,
    alive: bool,
    started_at: Option<Instant>,
    next_client: u64,
    clients: BTreeMap<u64, Client>,
    /// `server.clients` (1.30–1.34): resource → the client registered last.
    registered: BTreeMap<String, u64>,
    /// `manager.endpoints`: resource → the client whose endpoint is current.
    endpoints: BTreeMap<String, u64>,
    healthy: BTreeMap<String, BTreeSet<String>>,
    unhealthy: BTreeMap<String, BTreeSet<String>>,
    allocations: Vec<(String, Vec<String>)>,
    violations: Vec<String>,
    /// Registration server connections of the running process, to drop them when it exits.
    conns: Vec<OwnedFd>,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    /// Bumped on every change, for waiters.
    changed: watch::Sender<u64>,
    registrations: mpsc::UnboundedSender<(u64, RegisterRequest)>,
    observer: Mutex<Option<mpsc::UnboundedSender<KubeletEvent>>>,
    /// How long `runClient` waits before it opens ListAndWatch (a goroutine scheduled late):
    /// zero unless a test widens the gap between Register and the kubelet's stream.
    list_delay: Mutex<Duration>,
}

impl Shared {
    fn emit(&self, event: KubeletEvent) {
        if let Some(tx) = &*self.observer.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(event);
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.send_modify(|n| *n += 1);
        r
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Wait until `pred` holds, or panic after `WAIT`.
    async fn until<R>(&self, what: &str, mut pred: impl FnMut(&State) -> Option<R>) -> R {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            rx.borrow_and_update();
            if let Some(r) = self.read(&mut pred) {
                return r;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!("timed out waiting for {what}");
            }
        }
    }

    /// `manager.go` `writeCheckpoint` through `FileStore.Write`: temp file, then rename.
    fn write_checkpoint(&self) {
        let body = self.read(|s| {
            let registered: BTreeMap<&String, Vec<&String>> = s
                .healthy
                .iter()
                .map(|(r, ids)| (r, ids.iter().chain(&s.unhealthy[r]).collect()))
                .collect();
            serde_json::json!({
                "Data": {"PodDeviceEntries": s.allocations, "RegisteredDevices": registered},
                "Checksum": s.allocations.len(),
            })
            .to_string()
        });
        let tmp = self.dir.join(format!(".{CHECKPOINT}{}", rand_suffix()));
        if std::fs::write(&tmp, body).is_ok() {
            let _ = std::fs::rename(&tmp, self.dir.join(CHECKPOINT));
        }
    }

    /// `manager.go` `PluginListAndWatchReceiver` → `genericDeviceUpdateCallback`.
    fn list_received(&self, id: u64, devices: Vec<Device>) {
        let event = self.with(|s| {
            let client = s.clients.get_mut(&id)?;
            let event = KubeletEvent::List {
                resource: client.resource.clone(),
                endpoint: client
                    .socket
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                devices: devices.clone(),
            };
            let resource = client.resource.clone();
            let mut seen = BTreeSet::new();
            for d in &devices {
                if !seen.insert(d.id.clone()) {
                    s.violations
                        .push(format!("{resource}: device {} twice in one message", d.id));
                }
                if d.health != "Healthy" && d.health != "Unhealthy" {
                    s.violations
                        .push(format!("{resource}: device {} health {:?}", d.id, d.health));
                }
            }
            client.first_message_at.get_or_insert_with(Instant::now);
            client.messages.push(devices.clone());
            let healthy = devices
                .iter()
                .filter(|d| d.health == "Healthy")
                .map(|d| d.id.clone())
                .collect();
            let unhealthy = devices
                .iter()
                .filter(|d| d.health != "Healthy")
                .map(|d| d.id.clone())
                .collect();
            s.healthy.insert(resource.clone(), healthy);
            s.unhealthy.insert(resource, unhealthy);
            Some(event)
        });
        self.write_checkpoint();
        if let Some(event) = event {
            self.emit(event);
        }
    }

    /// `handler.go` `runClient`'s tail → `disconnectClient` → `client.go` `Disconnect` →
    /// `manager.go` `PluginDisconnected`, for the client registered under `resource` now.
    fn disconnect_current(&self, resource: &str) {
        self.with(|s| {
            let Some(id) = s.registered.remove(resource) else {
                return;
            };
            if let Some(client) = s.clients.get_mut(&id) {
                if let Some(fd) = client.conn.take() {
                    shutdown(&fd);
                }
            }
            // PluginDisconnected: every device unhealthy, the current endpoint stopped.
            if let Some(&current) = s.endpoints.get(resource) {
                let healthy = s.healthy.entry(resource.to_string()).or_default();
                let moved: Vec<String> = std::mem::take(healthy).into_iter().collect();
                s.unhealthy
                    .entry(resource.to_string())
                    .or_default()
                    .extend(moved);
                if let Some(endpoint) = s.clients.get_mut(&current) {
                    endpoint.stopped = true;
                }
            }
        });
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() % 1_000_000_000
}

/// Close a connection for everyone holding it.
fn shutdown(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on a descriptor we own (a dup of the connection's).
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// `pkg/apis/core/v1/helper` `IsExtendedResourceName`: not in the `kubernetes.io` namespace,
/// not prefixed `requests.`, and a qualified name with a domain prefix.
pub fn is_extended_resource_name(name: &str) -> bool {
    let Some((prefix, rest)) = name.split_once('/') else {
        return false;
    };
    if prefix == "kubernetes.io" || prefix.ends_with(".kubernetes.io") {
        return false;
    }
    if name.starts_with("requests.") {
        return false;
    }
    let dns_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let qualified_name = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && n.as_bytes()[0].is_ascii_alphanumeric()
            && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric()
    };
    prefix.len() <= 253 && prefix.split('.').all(dns_label) && qualified_name(rest)
}

/// `client.go` `dial`: a blocking dial with a 10 s deadline, retried with gRPC's connection
/// back-off (1 s, × 1.6) while the socket is missing or refuses, cut short when the kubelet
/// exits. Returns the channel and a handle on its connection.
async fn dial(
    socket: &Path,
    mut exited: watch::Receiver<bool>,
) -> Result<(Channel, OwnedFd), String> {
    const FAILED: &str = "failed to dial device plugin: context deadline exceeded";
    let deadline = tokio::time::Instant::now() + DIAL_TIMEOUT;
    let mut delay = Duration::from_secs(1);
    let stream = loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => break stream,
            Err(_) => {
                let wake = tokio::time::Instant::now() + delay;
                if wake >= deadline {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = exited.wait_for(|e| *e) => {}
                    }
                    return Err(FAILED.into());
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = exited.wait_for(|e| *e) => return Err(FAILED.into()),
                }
                delay = delay.mul_f64(1.6);
            }
        }
    };
    let fd = stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    // The connection is made once; tonic's reconnects after a close find nothing.
    let slot = Arc::new(Mutex::new(Some(stream)));
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let stream = slot.lock().unwrap().take();
            async move {
                stream.map(TokioIo::new).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the kubelet closed this connection",
                    )
                })
            }
        }))
        .await
        .map_err(|e| format!("failed to dial device plugin: {e}"))?;
    Ok((channel, fd))
}

/// The Registration service of one kubelet process.
struct Registrar {
    shared: Arc<Shared>,
    instance: u64,
    exited: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Registration for Registrar {
    /// `server.go` `Register` → `handler.go` `connectClient`.
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let _ = self.shared.registrations.send((self.instance, r.clone()));
        self.shared.emit(KubeletEvent::Register {
            resource: r.resource_name.clone(),
            endpoint: r.endpoint.clone(),
            version: r.version.clone(),
        });
        let refuse = |error: String| {
            self.shared.emit(KubeletEvent::RegisterFailed {
                resource: r.resource_name.clone(),
                error: error.clone(),
            });
            Err(Status::unknown(error))
        };
        if r.version != VERSION {
            return refuse(format!(
                "requested API version {:?} is not supported by kubelet. Supported version is [{VERSION:?}]",
                r.version
            ));
        }
        if !is_extended_resource_name(&r.resource_name) {
            return refuse(format!("the ResourceName {:?} is invalid", r.resource_name));
        }
        let socket = self.shared.dir.join(&r.endpoint);
        let resource = r.resource_name.clone();
        // registerClient: replaces the previous client; its connection stays open.
        let id = self.shared.with(|s| {
            s.next_client += 1;
            s.registered.insert(resource.clone(), s.next_client);
            s.next_client
        });
        let register_at = Instant::now();
        let connected = async {
            let (channel, fd) = dial(&socket, self.exited.clone()).await?;
            // PluginConnected: GetDevicePluginOptions, then the endpoint becomes current.
            DevicePluginClient::new(channel.clone())
                .get_device_plugin_options(Empty {})
                .await
                .map_err(|e| format!("failed to get device plugin options: {}", e.message()))?;
            Ok::<_, String>((channel, fd))
        }
        .await;
        let (channel, fd) = match connected {
            Ok(c) => c,
            Err(error) => {
                // deregisterClient (1.30–1.34 deletes the map entry, whichever client it holds).
                self.shared.with(|s| {
                    s.registered.remove(&resource);
                    s.violations.push(format!(
                        "{resource}: Register, but {error} ({})",
                        socket.display()
                    ));
                });
                return Err(Status::unknown(error));
            }
        };
        let instance = self.instance;
        self.shared.with(|s| {
            s.clients.insert(
                id,
                Client {
                    resource: resource.clone(),
                    socket: socket.clone(),
                    instance,
                    channel: channel.clone(),
                    conn: Some(fd),
                    run: None,
                    stopped: false,
                    messages: Vec::new(),
                    ended: None,
                    register_at,
                    first_message_at: None,
                },
            );
            s.endpoints.insert(resource.clone(), id);
        });
        // runClient, started before Register returns.
        let shared = self.shared.clone();
        let delay = *self
            .shared
            .list_delay
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let run = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut client = DevicePluginClient::new(channel);
            let ended = match client.list_and_watch(Empty {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(list)) => shared.list_received(id, list.devices),
                            Ok(None) => break Ok(()),
                            Err(status) => break Err(status.to_string()),
                        }
                    }
                }
                Err(status) => Err(status.to_string()),
            };
            shared.with(|s| {
                if let Some(c) = s.clients.get_mut(&id) {
                    c.ended = Some(ended.clone());
                }
            });
            shared.emit(KubeletEvent::StreamEnded {
                resource: resource.clone(),
                result: ended,
            });
            shared.disconnect_current(&resource);
        });
        self.shared.with(|s| {
            if let Some(c) = s.clients.get_mut(&id) {
                c.run = Some(run);
            }
        });
        Ok(Response::new(Empty {}))
    }
}

/// A running kubelet process.
struct Process {
    exited: watch::Sender<bool>,
    server: JoinHandle<()>,
}

/// A kubelet stand-in in `<root>/device-plugins` (see the module documentation).
pub struct TestKubelet {
    shared: Arc<Shared>,
    registrations: mpsc::UnboundedReceiver<(u64, RegisterRequest)>,
    process: Option<Process>,
    wipe: Wipe,
    /// `kubelet.sock`, unless the test moves it (`KUBELET_SOCKET`).
    socket_name: String,
}

impl TestKubelet {
    /// A kubelet started in `<root>/device-plugins`.
    pub async fn start(root: &Path) -> Self {
        let mut kubelet = Self::absent(root);
        kubelet.serve();
        kubelet
    }

    /// A kubelet that has not started yet (call [`Self::serve`] later); the directory does not
    /// exist until it does.
    pub fn absent(root: &Path) -> Self {
        Self::at(&plugin_dir(root))
    }

    /// A kubelet that has not started yet, whose device-plugin directory is `dir` itself.
    pub fn at(dir: &Path) -> Self {
        let (tx, registrations) = mpsc::unbounded_channel();
        Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                state: Mutex::new(State::default()),
                changed: watch::channel(0).0,
                registrations: tx,
                observer: Mutex::new(None),
                list_delay: Mutex::new(Duration::ZERO),
            }),
            registrations,
            process: None,
            wipe: Wipe::AllFiles,
            socket_name: "kubelet.sock".into(),
        }
    }

    /// Every event from now on (one receiver at a time).
    pub fn observe(&self) -> mpsc::UnboundedReceiver<KubeletEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self
            .shared
            .observer
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// What later starts delete from the directory.
    pub fn with_wipe(mut self, wipe: Wipe) -> Self {
        self.wipe = wipe;
        self
    }

    /// Open ListAndWatch `delay` after each successful Register (on the same connection, as
    /// always), as when the kubelet's `runClient` goroutine is scheduled late: room for another
    /// client to get in first.
    pub fn with_list_delay(self, delay: Duration) -> Self {
        *self
            .shared
            .list_delay
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = delay;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Bind the registration socket under another name (a kubelet started with a non-default
    /// `--device-plugin` socket, for agents told so through `KUBELET_SOCKET`).
    pub fn with_socket_name(mut self, name: &str) -> Self {
        self.socket_name = name.into();
        self
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join(&self.socket_name)
    }

    /// A kubelet process starts (`server.go` `Start`): directory, wipe, a new `kubelet.sock`.
    /// Exits the running one first, if any.
    pub fn serve(&mut self) {
        self.exit();
        std::fs::create_dir_all(self.dir()).expect("create the device-plugin directory");
        self.wipe();
        self.bind();
    }

    /// Only the wipe of a kubelet start (`CleanupPluginDirectory`), on its own: for tests that
    /// take a start apart into its steps.
    pub fn wipe(&self) {
        cleanup_plugin_directory(self.dir(), self.wipe);
    }

    /// Only the last step of a kubelet start, on its own: a new process binds a new
    /// `kubelet.sock` (exiting the running one first), without a wipe.
    pub fn bind(&mut self) {
        self.exit();
        std::fs::create_dir_all(self.dir()).expect("create the device-plugin directory");
        // listen(): cleanupSocket, then bind.
        let _ = std::fs::remove_file(self.socket());
        let listener = UnixListener::bind(self.socket()).expect("bind kubelet.sock");
        let (exited, exited_rx) = watch::channel(false);
        let instance = self.shared.with(|s| {
            s.instance += 1;
            s.alive = true;
            s.started_at = Some(Instant::now());
            s.registered.clear();
            s.endpoints.clear();
            s.healthy.clear();
            s.unhealthy.clear();
            s.instance
        });
        let registrar = Registrar {
            shared: self.shared.clone(),
            instance,
            exited: exited_rx,
        };
        let shared = self.shared.clone();
        let incoming = UnixListenerStream::new(listener).map(move |conn| {
            if let Ok(stream) = &conn {
                if let Ok(fd) = stream.as_fd().try_clone_to_owned() {
                    shared.with(|s| s.conns.push(fd));
                }
            }
            conn
        });
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(registrar))
                .serve_with_incoming(incoming)
                .await;
        });
        self.process = Some(Process { exited, server });
    }

    /// The kubelet process exits: every connection and stream drops; `kubelet.sock` stays
    /// behind as a stale socket that refuses connections.
    fn exit(&mut self) {
        let Some(process) = self.process.take() else {
            return;
        };
        let _ = process.exited.send(true);
        process.server.abort();
        self.shared.with(|s| {
            s.alive = false;
            for fd in s.conns.drain(..) {
                shutdown(&fd);
            }
            let instance = s.instance;
            for client in s.clients.values_mut().filter(|c| c.instance == instance) {
                if let Some(run) = client.run.take() {
                    run.abort();
                }
                if let Some(fd) = client.conn.take() {
                    shutdown(&fd);
                }
                client.stopped = true;
                client.ended.get_or_insert(Err("the kubelet exited".into()));
            }
            s.registered.clear();
            s.endpoints.clear();
        });
    }

    /// The kubelet exits (see [`Self::exit`]); start it again with [`Self::serve`].
    pub async fn stop(&mut self) {
        self.exit();
        tokio::task::yield_now().await;
    }

    /// A kubelet restart with no gap: exit, then start.
    pub async fn restart(&mut self) {
        self.restart_after(Duration::ZERO).await;
    }

    /// A kubelet restart: exit, `gap` with the stale socket, then start.
    pub async fn restart_after(&mut self, gap: Duration) {
        self.stop().await;
        tokio::time::sleep(gap).await;
        self.serve();
    }

    /// When the running kubelet bound its socket.
    pub fn started_at(&self) -> Instant {
        self.shared
            .read(|s| s.started_at)
            .expect("the kubelet has started")
    }

    /// The kubelet drops the connection of `resource`'s current client, as when its stream
    /// fails: devices unhealthy, endpoint stopped, never reopened.
    pub fn drop_stream(&self, resource: &str) {
        let run = self.shared.with(|s| {
            let id = *s.registered.get(resource)?;
            let client = s.clients.get_mut(&id)?;
            client.ended = Some(Err("dropped by the kubelet".into()));
            client.run.take()
        });
        if let Some(run) = run {
            run.abort();
        }
        self.shared.disconnect_current(resource);
    }

    /// The kubelet is running (started and not exited).
    pub fn running(&self) -> bool {
        self.shared.read(|s| s.alive)
    }

    /// A checkpoint rewrite, as after every ListAndWatch message and allocation.
    pub fn write_checkpoint(&self) {
        self.shared.write_checkpoint();
    }

    /// The manager's view of `resource` in the running kubelet.
    pub fn view(&self, resource: &str) -> ResourceView {
        self.shared.read(|s| view(s, resource))
    }

    /// Wait until `pred` holds for the views of the running kubelet; panic after `WAIT`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&dyn Fn(&str) -> ResourceView) -> bool) {
        self.shared
            .until(what, |s| {
                let get = |r: &str| view(s, r);
                pred(&get).then_some(())
            })
            .await
    }

    /// Wait until every resource in `expected` has a live endpoint in the running kubelet with
    /// exactly that many devices, all healthy; the time it took.
    pub async fn until_healthy(&self, expected: &[(&str, usize)]) -> Duration {
        let start = Instant::now();
        self.wait_for(&format!("{expected:?} registered and healthy"), |get| {
            expected.iter().all(|(r, n)| {
                let v = get(r);
                v.live && v.healthy.len() == *n && v.unhealthy.is_empty()
            })
        })
        .await;
        start.elapsed()
    }

    /// Protocol violations seen so far (see the module documentation).
    pub fn violations(&self) -> Vec<String> {
        self.shared.read(|s| s.violations.clone())
    }

    /// For the current client of `resource`: (Register received, first ListAndWatch message),
    /// measured from the running kubelet's start.
    pub fn timeline(&self, resource: &str) -> Option<(Duration, Duration)> {
        self.shared.read(|s| {
            let started = s.started_at?;
            let client = &s.clients[s.endpoints.get(resource)?];
            Some((
                client.register_at.saturating_duration_since(started),
                client.first_message_at?.saturating_duration_since(started),
            ))
        })
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
    /// skipping calls an earlier process received; panic after `WAIT`.
    pub async fn next_registration_from_current(&mut self) -> RegisterRequest {
        let current = self.shared.read(|s| s.instance);
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

    /// Every Register call received so far and not yet taken.
    pub fn drain_registrations(&mut self) -> Vec<RegisterRequest> {
        let mut out = Vec::new();
        while let Ok((_, r)) = self.registrations.try_recv() {
            out.push(r);
        }
        out
    }

    /// The running kubelet's live client for `endpoint`, once it has received its first list:
    /// (client id, resource).
    async fn live_client(&self, endpoint: &str) -> (u64, String) {
        let socket = self.dir().join(endpoint);
        self.shared
            .until(&format!("the kubelet to list {endpoint}"), |s| {
                s.endpoints.values().find_map(|id| {
                    let c = &s.clients[id];
                    (c.socket == socket
                        && c.instance == s.instance
                        && s.alive
                        && !c.stopped
                        && !c.messages.is_empty())
                    .then(|| (*id, c.resource.clone()))
                })
            })
            .await
    }

    /// A DevicePlugin client on the kubelet's own connection to the plugin at `endpoint`, for
    /// unary calls (Allocate, GetPreferredAllocation, ...), once the kubelet lists it.
    pub async fn plugin(&self, endpoint: &str) -> DevicePluginClient<Channel> {
        let (id, _) = self.live_client(endpoint).await;
        let channel = self.shared.read(|s| s.clients[&id].channel.clone());
        DevicePluginClient::new(channel)
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        self.exit();
    }
}

fn view(s: &State, resource: &str) -> ResourceView {
    if !s.alive {
        return ResourceView::default();
    }
    ResourceView {
        healthy: s.healthy.get(resource).cloned().unwrap_or_default(),
        unhealthy: s.unhealthy.get(resource).cloned().unwrap_or_default(),
        live: s
            .endpoints
            .get(resource)
            .is_some_and(|id| !s.clients[id].stopped),
    }
}

/// `CleanupPluginDirectory`: delete every non-directory entry (1.33+: every socket) but the
/// checkpoint.
fn cleanup_plugin_directory(dir: &Path, wipe: Wipe) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if wipe == Wipe::Nothing || entry.file_name() == CHECKPOINT {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() || (wipe == Wipe::SocketsOnly && !meta.file_type().is_socket()) {
            continue;
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

/// One resource as the kubelet sees it: the kubelet's connection to the plugin, the
/// ListAndWatch messages the kubelet receives on its own stream (read from a cursor), and the
/// devices of the latest one read.
pub struct Plugin {
    shared: Arc<Shared>,
    id: u64,
    resource: String,
    cursor: usize,
    pub client: DevicePluginClient<Channel>,
    pub devices: Vec<Device>,
}

impl Plugin {
    /// The kubelet's live client of the plugin at `endpoint`, positioned after the latest
    /// message it received.
    pub async fn open(kubelet: &TestKubelet, endpoint: &str) -> Self {
        let (id, resource) = kubelet.live_client(endpoint).await;
        let (channel, devices, cursor) = kubelet.shared.read(|s| {
            let c = &s.clients[&id];
            (
                c.channel.clone(),
                c.messages.last().cloned().unwrap_or_default(),
                c.messages.len(),
            )
        });
        Self {
            shared: kubelet.shared.clone(),
            id,
            resource,
            cursor,
            client: DevicePluginClient::new(channel),
            devices,
        }
    }

    /// The next ListAndWatch message the kubelet receives (panic if the stream ends first).
    pub async fn next(&mut self) -> &[Device] {
        let (id, cursor) = (self.id, self.cursor);
        let next = self
            .shared
            .until("a ListAndWatch message", |s| {
                let c = &s.clients[&id];
                match (c.messages.get(cursor), &c.ended) {
                    (Some(m), _) => Some(m.clone()),
                    (None, Some(end)) => panic!("ListAndWatch ended: {end:?}"),
                    (None, None) => None,
                }
            })
            .await;
        self.cursor += 1;
        self.devices = next;
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

    /// No message arrives for `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration, what: &str) {
        tokio::time::sleep(quiet).await;
        let (id, cursor) = (self.id, self.cursor);
        let (extra, ended) = self.shared.read(|s| {
            let c = &s.clients[&id];
            (c.messages.len() - cursor, c.ended.clone())
        });
        assert_eq!(
            extra, 0,
            "{what}: {extra} unexpected ListAndWatch message(s)"
        );
        assert!(
            ended.is_none(),
            "{what}: the ListAndWatch stream ended: {ended:?}"
        );
    }

    /// How the kubelet's stream ended: `Ok` for a clean end; waits up to `WAIT`.
    pub async fn ended(&self) -> Result<(), String> {
        let id = self.id;
        self.shared
            .until("the ListAndWatch stream to end", |s| {
                s.clients[&id].ended.clone()
            })
            .await
    }

    /// Device IDs of the latest message, in its order.
    pub fn ids(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.id.clone()).collect()
    }

    /// Allocate `ids` for one container, as the kubelet sends it (`endpoint.go` `allocate`):
    /// refused without a call when the endpoint is stopped; the checkpoint is rewritten after.
    pub async fn allocate(
        &mut self,
        ids: &[impl AsRef<str>],
    ) -> Result<ContainerAllocateResponse, Status> {
        let id = self.id;
        let stopped = self.shared.read(|s| s.clients[&id].stopped);
        if stopped {
            return Err(Status::unknown(format!(
                "endpoint {} has been stopped",
                self.resource
            )));
        }
        let ids: Vec<String> = ids.iter().map(|i| i.as_ref().to_string()).collect();
        let result = allocate(&mut self.client, &ids).await;
        if result.is_ok() {
            let resource = self.resource.clone();
            self.shared.with(|s| s.allocations.push((resource, ids)));
            self.shared.write_checkpoint();
        }
        result
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
