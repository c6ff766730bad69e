//! One resource's DevicePlugin gRPC server running in this process on a real unix socket, as the
//! agent serves it (same service, same tonic server, same socket kind), and a client connected to
//! it the way the kubelet connects. For benches that time RPCs without a second process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpu_agent::config;
use gpu_agent::gpu::fixture;
use gpu_agent::health::HealthState;
use gpu_agent::plugin::server::{PluginService, StreamEvents};
use gpu_agent::plugin::{uds, StatusBoard};
use gpu_agent::proto::v1beta1::device_plugin_client::DevicePluginClient;
use gpu_agent::proto::v1beta1::device_plugin_server::DevicePluginServer;
use gpu_agent::snapshot::Snapshot;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Server};

/// The snapshot the agent would build from this fixture and config, all devices healthy.
pub fn snapshot(fixture_text: &str, config_text: &str) -> Snapshot {
    let inventory = fixture::parse(fixture_text)
        .unwrap_or_else(|e| panic!("bench fixture: {e:?}"))
        .inventory;
    let config = config::parse(config_text).unwrap_or_else(|e| panic!("bench config: {e:?}"));
    Snapshot::build(
        Arc::new(inventory),
        Arc::new(config),
        Arc::new(HealthState::default()),
    )
    .unwrap_or_else(|e| panic!("bench snapshot: {e:?}"))
}

/// A multi-threaded runtime with `workers` workers for the servers (the agent runs on two), and
/// a current-thread one for the client side, as the kubelet is another process.
pub fn runtimes(workers: usize) -> (Runtime, Runtime) {
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("server runtime");
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    (server, client)
}

/// A served plugin and a client of it. Dropping it stops the server.
pub struct InProcessPlugin {
    pub client: DevicePluginClient<Channel>,
    pub socket: PathBuf,
    /// Keeps the snapshot channel open (the server reads the latest value).
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    stopping: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl InProcessPlugin {
    /// Serve `resource` of `snapshot` on `server` (a multi-threaded runtime, as the agent's), and
    /// connect a client whose connection task runs on `client`.
    pub fn start(server: &Runtime, client: &Runtime, snapshot: Snapshot, resource: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("plugin.sock");
        let (snapshots, snapshot_rx) = watch::channel(Arc::new(snapshot));
        let (stopping, stop_rx) = watch::channel(false);
        // Nobody listens for dropped streams here; `try_send` on a closed channel is a no-op.
        let (dropped, _) = mpsc::channel(1);
        let service = PluginService::new(
            resource.to_string(),
            snapshot_rx,
            StatusBoard::default(),
            stop_rx.clone(),
            StreamEvents::new(dropped),
        );
        let listener = {
            let _guard = server.enter();
            tokio::net::UnixListener::bind(&socket).expect("bind plugin socket")
        };
        let mut shutdown = stop_rx;
        server.spawn(
            Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    gpu_agent::sync::until_true(&mut shutdown).await
                }),
        );
        let channel = client
            .block_on(uds::connect(&socket, Duration::from_secs(5), None))
            .expect("connect to the plugin socket");
        Self {
            client: DevicePluginClient::new(channel),
            socket,
            snapshots,
            stopping,
            _dir: dir,
        }
    }
}

impl Drop for InProcessPlugin {
    fn drop(&mut self) {
        let _ = self.stopping.send(true);
    }
}

/// p50, p99 and max of `samples` (sorted in place).
pub fn percentiles(samples: &mut [Duration]) -> [Duration; 3] {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    [at(0.50), at(0.99), samples[samples.len() - 1]]
}

/// Microseconds, for tables.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
