//! The kubelet's DRA side, as a test stand-in written from the kubelet's source
//! (k8s.io/kubernetes, 1.34+):
//!
//! - discovery — `pkg/kubelet/pluginmanager/pluginwatcher/plugin_watcher.go`: the registry dir is
//!   created (`init`, MkdirAll), existing entries are walked (`traversePluginDir`) and fsnotify
//!   events followed; a *create* of a unix socket whose name does not start with `.` is a plugin
//!   to register (`handleCreateEvent`), a *remove* one to deregister (`handleDeleteEvent`);
//! - registration — `pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go`
//!   `GenerateRegisterPluginFunc`: dial the socket (10 s, `dialTimeoutDuration`), GetInfo (1 s),
//!   look up the handler by `PluginInfo.type` (only `DRAPlugin` here; any other type is refused
//!   with NotifyRegistrationStatus(false)), an empty endpoint means the registration socket
//!   itself, `ValidatePlugin`, `RegisterPlugin`, then NotifyRegistrationStatus(true) (5 s,
//!   `notifyTimeoutDuration`); a refusal is notified with the error text;
//! - validation — `pkg/kubelet/cm/dra/plugin/dra_plugin_manager.go`
//!   `validateSupportedServices`: an empty list is refused; the first entry of the plugin's list
//!   that the kubelet supports (`servicesSupportedByKubelet` in `dra_plugin.go`:
//!   `v1.DRAPlugin`, `v1beta1.DRAPlugin`) is chosen; none: refused. `add` refuses a second
//!   registration of the same endpoint for the same driver;
//! - calls — `dra_plugin.go` `NodePrepareResources` / `NodeUnprepareResources`: a gRPC client on
//!   `unix://<endpoint>`, the chosen service's client, each call bounded by
//!   `defaultClientCallTimeout` (45 s);
//! - what is sent and checked — `pkg/kubelet/cm/dra/manager.go` `prepareResources` /
//!   `unprepareResources`: one request per driver listing each claim's namespace, UID and name;
//!   a response entry for a UID not in the request is an error, a non-empty `error` fails that
//!   claim, and fewer entries than claims is "NodePrepareResources left out N claims".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpu_agent::proto::dra_v1 as v1;
use gpu_agent::proto::dra_v1beta1 as v1beta1;
use gpu_agent::proto::pluginregistration::{
    registration_client::RegistrationClient, InfoRequest, PluginInfo, RegistrationStatus,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::WAIT;

/// `dialTimeoutDuration`.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// GetInfo's deadline in `GenerateRegisterPluginFunc`.
const GET_INFO_TIMEOUT: Duration = Duration::from_secs(1);
/// `notifyTimeoutDuration`.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// `defaultClientCallTimeout`.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);
/// `servicesSupportedByKubelet`, most recent first.
pub const SUPPORTED_SERVICES: [&str; 2] = ["v1.DRAPlugin", "v1beta1.DRAPlugin"];
/// The one handler type this stand-in has.
pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";

/// What the plugin watcher saw happen.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A socket was registered: its info and the service chosen.
    Registered(RegisteredPlugin),
    /// Registration was refused (and the plugin told so): the socket and the error.
    Refused { socket: PathBuf, error: String },
    /// A registration socket was removed.
    Removed(PathBuf),
}

/// A registered DRA plugin.
#[derive(Debug, Clone)]
pub struct RegisteredPlugin {
    pub socket: PathBuf,
    pub info: PluginInfo,
    pub chosen_service: String,
}

/// The plugin watcher and DRA registration handler over one registry directory.
pub struct DraKubelet {
    events: mpsc::UnboundedReceiver<WatchEvent>,
    _watcher: notify::RecommendedWatcher,
    /// Per driver name, the endpoints registered (`DRAPluginManager.store`).
    _store: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>,
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

impl DraKubelet {
    /// Start watching `registry` (created if missing), registering what is already there.
    pub fn start(registry: &Path) -> Self {
        use notify::Watcher;
        std::fs::create_dir_all(registry).expect("create registry dir");
        let (tx, events) = mpsc::unbounded_channel();
        let (sockets_tx, mut sockets) = mpsc::unbounded_channel::<(bool, PathBuf)>();
        let watch_tx = sockets_tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let created = match event.kind {
                notify::EventKind::Create(_) => true,
                notify::EventKind::Remove(_) => false,
                _ => return,
            };
            for path in event.paths {
                let _ = watch_tx.send((created, path));
            }
        })
        .expect("fsnotify watcher");
        watcher
            .watch(registry, notify::RecursiveMode::NonRecursive)
            .expect("watch registry dir");
        // traversePluginDir: existing sockets count as created.
        for entry in std::fs::read_dir(registry)
            .expect("read registry dir")
            .flatten()
        {
            let _ = sockets_tx.send((true, entry.path()));
        }
        let store: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>> =
            std::sync::Arc::default();
        let reconcile_store = store.clone();
        tokio::spawn(async move {
            // The desired/actual state of world reduced to socket path -> driver name.
            let mut registered: BTreeMap<PathBuf, String> = BTreeMap::new();
            while let Some((created, path)) = sockets.recv().await {
                if !created {
                    if let Some(name) = registered.remove(&path) {
                        // DeRegisterPlugin
                        if let Some(eps) = reconcile_store.lock().unwrap().get_mut(&name) {
                            eps.clear();
                        }
                    }
                    let _ = tx.send(WatchEvent::Removed(path));
                    continue;
                }
                // handleCreateEvent: no hidden files, sockets only.
                if hidden(&path) || !is_socket(&path) {
                    continue;
                }
                let event = match register(&path, &reconcile_store).await {
                    Ok(plugin) => {
                        registered.insert(path.clone(), plugin.info.name.clone());
                        WatchEvent::Registered(plugin)
                    }
                    Err(error) => WatchEvent::Refused {
                        socket: path.clone(),
                        error,
                    },
                };
                let _ = tx.send(event);
            }
        });
        Self {
            events,
            _watcher: watcher,
            _store: store,
        }
    }

    /// The next event, or panic after `WAIT`.
    pub async fn next_event(&mut self) -> WatchEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for the plugin watcher")
            .expect("plugin watcher ended")
    }

    /// The next successful registration (refusals panic, removals are skipped).
    pub async fn next_registration(&mut self) -> RegisteredPlugin {
        loop {
            match self.next_event().await {
                WatchEvent::Registered(p) => return p,
                WatchEvent::Refused { socket, error } => {
                    panic!("registration of {} refused: {error}", socket.display())
                }
                WatchEvent::Removed(_) => {}
            }
        }
    }
}

/// `GenerateRegisterPluginFunc` with the DRA handler.
async fn register(
    socket: &Path,
    store: &std::sync::Mutex<BTreeMap<String, Vec<String>>>,
) -> Result<RegisteredPlugin, String> {
    let channel = dial_blocking(socket).await.map_err(|e| {
        format!(
            "RegisterPlugin error -- dial failed at socket {}, err: {e}",
            socket.display()
        )
    })?;
    let mut client = RegistrationClient::new(channel);
    let info = tokio::time::timeout(GET_INFO_TIMEOUT, client.get_info(InfoRequest {}))
        .await
        .map_err(|_| "GetInfo timed out".to_string())?
        .map_err(|e| {
            format!("RegisterPlugin error -- failed to get plugin info using RPC GetInfo: {e}")
        })?
        .into_inner();
    let refuse = |client: RegistrationClient<Channel>, error: String| async move {
        notify(client, false, &error).await;
        Err::<RegisteredPlugin, String>(error)
    };
    if info.r#type != DRA_PLUGIN_TYPE {
        return refuse(
            client,
            format!(
                "RegisterPlugin error -- no handler registered for plugin type: {} at socket {}",
                info.r#type,
                socket.display()
            ),
        )
        .await;
    }
    let mut info = info;
    if info.endpoint.is_empty() {
        info.endpoint = socket.to_string_lossy().into_owned();
    }
    let chosen = match validate_supported_services(&info.supported_versions) {
        Ok(chosen) => chosen,
        Err(e) => {
            return refuse(
                client,
                format!(
                    "RegisterPlugin error -- plugin validation failed with err: invalid supported gRPC versions of DRA driver plugin {} at endpoint {}: {e}",
                    info.name, info.endpoint
                ),
            )
            .await
        }
    };
    // RegisterPlugin -> add: one plugin instance cannot hijack another's endpoint.
    let taken = {
        let mut store = store.lock().unwrap();
        let endpoints = store.entry(info.name.clone()).or_default();
        let taken = endpoints.contains(&info.endpoint);
        if !taken {
            endpoints.push(info.endpoint.clone());
        }
        taken
    };
    if taken {
        return refuse(
            client,
            format!(
                "RegisterPlugin error -- plugin registration failed with err: endpoint {} already registered for DRA driver plugin {}",
                info.endpoint, info.name
            ),
        )
        .await;
    }
    notify(client, true, "").await;
    Ok(RegisteredPlugin {
        socket: socket.to_path_buf(),
        info,
        chosen_service: chosen,
    })
}

/// `dial`: `grpc.DialContext` with `WithBlock` under a 10 s deadline, which keeps reconnecting
/// (a socket file appears at bind, a moment before its listener accepts) until connected or
/// out of time.
async fn dial_blocking(socket: &Path) -> Result<Channel, String> {
    let deadline = tokio::time::Instant::now() + DIAL_TIMEOUT;
    loop {
        match gpu_agent::plugin::uds::connect(socket, DIAL_TIMEOUT, None).await {
            Ok(channel) => return Ok(channel),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `validateSupportedServices`.
pub fn validate_supported_services(services: &[String]) -> Result<String, String> {
    if services.is_empty() {
        return Err("empty list of supported gRPC services (aka supported versions)".into());
    }
    services
        .iter()
        .find(|s| SUPPORTED_SERVICES.contains(&s.as_str()))
        .cloned()
        .ok_or_else(|| {
            format!(
                "none of services supported by the plugin ({services:?}) are supported by the kubelet ({SUPPORTED_SERVICES:?})"
            )
        })
}

/// `notifyPlugin`.
async fn notify(mut client: RegistrationClient<Channel>, registered: bool, error: &str) {
    let status = RegistrationStatus {
        plugin_registered: registered,
        error: error.to_string(),
    };
    let _ = tokio::time::timeout(NOTIFY_TIMEOUT, client.notify_registration_status(status)).await;
}

/// A claim as the kubelet names it: (namespace, uid, name).
pub type ClaimId<'a> = (&'a str, &'a str, &'a str);

/// The kubelet's gRPC client of one DRA plugin, speaking the service chosen at registration.
pub struct DraClient {
    service: String,
    channel: Channel,
}

impl DraClient {
    /// Dial the plugin's endpoint.
    pub async fn connect(plugin: &RegisteredPlugin) -> Self {
        Self::connect_as(plugin, &plugin.chosen_service).await
    }

    /// Dial the endpoint and speak `service` (one of [`SUPPORTED_SERVICES`]).
    pub async fn connect_as(plugin: &RegisteredPlugin, service: &str) -> Self {
        let channel = gpu_agent::plugin::uds::connect(
            Path::new(&plugin.info.endpoint),
            Duration::from_secs(1),
            Some(CALL_TIMEOUT),
        )
        .await
        .expect("dial the DRA endpoint");
        Self {
            service: service.to_string(),
            channel,
        }
    }

    /// NodePrepareResources for `claims`, checked as `prepareResources` checks it; the answer
    /// per claim UID (v1 types whichever service was used: the two are wire-identical).
    pub async fn prepare(
        &self,
        claims: &[ClaimId<'_>],
    ) -> BTreeMap<String, v1::NodePrepareResourceResponse> {
        let response = match self.service.as_str() {
            "v1.DRAPlugin" => {
                let mut c = v1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let request = v1::NodePrepareResourcesRequest {
                    claims: claims.iter().map(|&(n, u, m)| v1_claim(n, u, m)).collect(),
                };
                c.node_prepare_resources(request)
                    .await
                    .expect("NodePrepareResources")
                    .into_inner()
            }
            "v1beta1.DRAPlugin" => {
                let mut c = v1beta1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let request = v1beta1::NodePrepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|&(n, u, m)| v1beta1::Claim {
                            namespace: n.into(),
                            uid: u.into(),
                            name: m.into(),
                        })
                        .collect(),
                };
                let r = c
                    .node_prepare_resources(request)
                    .await
                    .expect("NodePrepareResources")
                    .into_inner();
                convert(&r)
            }
            other => panic!("unsupported service {other}"),
        };
        check_uids(claims, response.claims.keys(), "NodePrepareResources");
        response.claims.into_iter().collect()
    }

    /// NodeUnprepareResources for `claims`, checked as `unprepareResources` checks it: the
    /// error text per claim UID (empty: done).
    pub async fn unprepare(&self, claims: &[ClaimId<'_>]) -> BTreeMap<String, String> {
        let response = match self.service.as_str() {
            "v1.DRAPlugin" => {
                let mut c = v1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let request = v1::NodeUnprepareResourcesRequest {
                    claims: claims.iter().map(|&(n, u, m)| v1_claim(n, u, m)).collect(),
                };
                c.node_unprepare_resources(request)
                    .await
                    .expect("NodeUnprepareResources")
                    .into_inner()
            }
            "v1beta1.DRAPlugin" => {
                let mut c = v1beta1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let request = v1beta1::NodeUnprepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|&(n, u, m)| v1beta1::Claim {
                            namespace: n.into(),
                            uid: u.into(),
                            name: m.into(),
                        })
                        .collect(),
                };
                let r = c
                    .node_unprepare_resources(request)
                    .await
                    .expect("NodeUnprepareResources")
                    .into_inner();
                convert(&r)
            }
            other => panic!("unsupported service {other}"),
        };
        check_uids(claims, response.claims.keys(), "NodeUnprepareResources");
        response
            .claims
            .into_iter()
            .map(|(uid, r)| (uid, r.error))
            .collect()
    }
}

fn v1_claim(namespace: &str, uid: &str, name: &str) -> v1::Claim {
    v1::Claim {
        namespace: namespace.into(),
        uid: uid.into(),
        name: name.into(),
    }
}

/// A v1beta1 message as its v1 twin: the same bytes on the wire.
fn convert<A: prost::Message, B: prost::Message + Default>(a: &A) -> B {
    B::decode(a.encode_to_vec().as_slice()).expect("v1beta1 and v1 are wire-identical")
}

/// The kubelet's checks: no result for an unknown UID, none left out.
fn check_uids<'a>(claims: &[ClaimId<'_>], got: impl Iterator<Item = &'a String>, call: &str) {
    let mut n = 0;
    for uid in got {
        assert!(
            claims.iter().any(|c| c.1 == uid),
            "{call} returned result for unknown claim UID {uid}"
        );
        n += 1;
    }
    let wanted: std::collections::BTreeSet<&str> = claims.iter().map(|c| c.1).collect();
    assert_eq!(
        wanted.len() - n,
        0,
        "{call} left out {} claims",
        wanted.len() - n
    );
}
