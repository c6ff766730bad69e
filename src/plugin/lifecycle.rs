//! One resource's plugin from start to stop: serve on its socket, register, and start over
//! whenever the kubelet restarts, our socket is removed, or the kubelet drops our stream.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use super::kubelet_watch::KubeletState;
use super::registration;
use super::server::{PluginService, StreamEvents};
use super::status::StatusBoard;
use crate::proto::v1beta1::{device_plugin_server::DevicePluginServer, KUBELET_SOCKET};
use crate::resources::names;
use crate::snapshot::Snapshot;

/// What every plugin shares.
#[derive(Clone)]
pub struct PluginContext {
    /// The kubelet's device-plugin directory.
    pub dir: PathBuf,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub kubelet: watch::Receiver<KubeletState>,
    pub status: StatusBoard,
}

/// Retry delays while the kubelet is absent: 100 ms doubling to 5 s. A new `kubelet.sock` cuts
/// any wait short.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }
    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    Stop,
    KubeletRestarted,
    SocketRemoved,
    StreamDropped,
    ServerExited,
}

/// A running gRPC server on the plugin socket.
struct Served {
    stopping: watch::Sender<bool>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Served {
    fn start(
        ctx: &PluginContext,
        resource: &str,
        socket: &Path,
        events: StreamEvents,
    ) -> std::io::Result<Self> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(socket)?;
        let (stopping, stop_rx) = watch::channel(false);
        let service = PluginService::new(
            resource.to_string(),
            ctx.snapshots.clone(),
            ctx.status.clone(),
            stop_rx.clone(),
            events,
        );
        let mut shutdown = stop_rx;
        let handle = tokio::spawn(
            Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    crate::sync::until_true(&mut shutdown).await
                }),
        );
        Ok(Self { stopping, handle })
    }

    /// Stop serving: end open streams, then wait (briefly) for the server to finish.
    async fn stop(self) {
        let _ = self.stopping.send(true);
        let mut handle = self.handle;
        if tokio::time::timeout(Duration::from_secs(2), &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
}

/// Run the plugin for `resource` until `stop` turns true; then remove its socket.
pub async fn run(ctx: PluginContext, resource: String, mut stop: watch::Receiver<bool>) {
    let endpoint = names::socket_file(&resource);
    let socket = ctx.dir.join(&endpoint);
    let kubelet_socket = ctx.dir.join(KUBELET_SOCKET);
    let generation = Arc::new(AtomicU64::new(0));
    let (dropped_tx, mut dropped_rx) = mpsc::channel::<u64>(8);
    let mut kubelet = ctx.kubelet.clone();
    let mut backoff = Backoff::new();
    let span = tracing::info_span!("plugin", resource = %resource, socket = %socket.display());
    let _enter = span.enter();
    drop(_enter);

    loop {
        if *stop.borrow() {
            break;
        }
        let events = StreamEvents {
            generation: generation.clone(),
            dropped: dropped_tx.clone(),
        };
        let served = match Served::start(&ctx, &resource, &socket, events) {
            Ok(s) => s,
            Err(error) => {
                let delay = backoff.next();
                tracing::error!(parent: &span, %error, retry_in = ?delay, "cannot serve on the plugin socket");
                if wait(delay, &mut stop, &mut kubelet).await {
                    break;
                }
                continue;
            }
        };
        tracing::info!(parent: &span, "serving");

        // Register, retrying with back-off while the kubelet is absent.
        let kubelet_generation = loop {
            let seen = kubelet.borrow().generation;
            let attempt = generation.fetch_add(1, Ordering::SeqCst) + 1;
            match registration::register(&kubelet_socket, &resource, &endpoint).await {
                Ok(()) => {
                    ctx.status.set_registered(&resource, true);
                    tracing::info!(parent: &span, attempt, "registered with the kubelet");
                    backoff.reset();
                    break Some(seen);
                }
                Err(error) => {
                    let delay = backoff.next();
                    tracing::warn!(
                        parent: &span,
                        kubelet_socket = %kubelet_socket.display(),
                        %error,
                        retry_in = ?delay,
                        "kubelet not reachable; waiting for it"
                    );
                    if wait(delay, &mut stop, &mut kubelet).await {
                        break None;
                    }
                }
            }
        };
        let Some(kubelet_generation) = kubelet_generation else {
            served.stop().await;
            break;
        };

        let mut served = served;
        let current = generation.load(Ordering::SeqCst);
        let reason = tokio::select! {
            _ = crate::sync::until_true(&mut stop) => Restart::Stop,
            _ = crate::sync::until(&mut kubelet, |k| k.generation != kubelet_generation) => Restart::KubeletRestarted,
            _ = socket_removed(&socket) => Restart::SocketRemoved,
            _ = stream_dropped(&mut dropped_rx, &generation, current) => Restart::StreamDropped,
            _ = &mut served.handle => Restart::ServerExited,
        };
        ctx.status.set_registered(&resource, false);
        served.stop().await;
        if reason == Restart::Stop {
            break;
        }
        tracing::warn!(parent: &span, ?reason, "re-serving and re-registering");
        if reason == Restart::ServerExited && wait(backoff.next(), &mut stop, &mut kubelet).await {
            break;
        }
    }

    ctx.status.set_registered(&resource, false);
    match std::fs::remove_file(&socket) {
        Ok(()) => tracing::info!(parent: &span, "stopped; socket removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(parent: &span, %error, "stopped; could not remove socket"),
    }
}

/// Sleep `delay`, cut short by a new kubelet socket. True when the plugin must stop.
async fn wait(
    delay: Duration,
    stop: &mut watch::Receiver<bool>,
    kubelet: &mut watch::Receiver<KubeletState>,
) -> bool {
    let seen = kubelet.borrow().generation;
    tokio::select! {
        _ = crate::sync::until_true(stop) => true,
        _ = tokio::time::sleep(delay) => false,
        _ = crate::sync::until(kubelet, |k| k.present && k.generation != seen) => false,
    }
}

/// Resolves when our socket file disappears (the kubelet wipes the directory when it starts).
async fn socket_removed(socket: &Path) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        ticker.tick().await;
        if std::fs::symlink_metadata(socket).is_err() {
            return;
        }
    }
}

/// Resolves when a stream opened under registration `current` (or later) is dropped by the
/// kubelet. Streams of earlier registrations end when the kubelet replaces its endpoint; those
/// are expected and ignored.
async fn stream_dropped(rx: &mut mpsc::Receiver<u64>, generation: &AtomicU64, current: u64) {
    loop {
        match rx.recv().await {
            Some(g) if g >= current && g == generation.load(Ordering::SeqCst) => return,
            Some(_) => continue,
            None => std::future::pending::<()>().await,
        }
    }
}
