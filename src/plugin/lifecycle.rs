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
use tracing::Instrument;

use super::kubelet_watch::{self, KubeletState, SocketIdentity};
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

impl Restart {
    /// For logs.
    fn as_str(self) -> &'static str {
        match self {
            Restart::Stop => "stop",
            Restart::KubeletRestarted => "kubelet.sock re-created (kubelet restart)",
            Restart::SocketRemoved => "our socket was removed",
            Restart::StreamDropped => "the kubelet dropped the ListAndWatch stream",
            Restart::ServerExited => "the gRPC server exited",
        }
    }
}

/// The kubelet socket the watcher sees now is a new one: not the one we registered with. The
/// generation check keeps a watcher that has not yet caught up with the socket we registered
/// with (it still reports the previous one) from looking like a restart.
fn kubelet_restarted(
    now: &KubeletState,
    generation_at_register: u64,
    registered_with: Option<SocketIdentity>,
) -> bool {
    now.generation != generation_at_register
        && now.identity.is_some()
        && now.identity != registered_with
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

/// Run the plugin for `resource` until `stop` turns true; then remove its socket. Everything it
/// logs carries the `plugin{resource, socket}` span.
pub async fn run(ctx: PluginContext, resource: String, stop: watch::Receiver<bool>) {
    let socket = ctx.dir.join(names::socket_file(&resource));
    let span = tracing::info_span!("plugin", resource = %resource, socket = %socket.display());
    supervise(ctx, resource, stop).instrument(span).await
}

async fn supervise(ctx: PluginContext, resource: String, mut stop: watch::Receiver<bool>) {
    let endpoint = names::socket_file(&resource);
    let socket = ctx.dir.join(&endpoint);
    let kubelet_socket = ctx.dir.join(KUBELET_SOCKET);
    let generation = Arc::new(AtomicU64::new(0));
    let (dropped_tx, mut dropped_rx) = mpsc::channel::<u64>(8);
    let mut kubelet = ctx.kubelet.clone();
    let mut backoff = Backoff::new();

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
                tracing::error!(
                    %error,
                    retry_in = ?delay,
                    "cannot serve on the plugin socket; check that --device-plugin-dir exists and is writable by the agent (in the DaemonSet: the hostPath mount of /var/lib/kubelet/device-plugins)"
                );
                if wait(delay, &mut stop, &mut kubelet).await {
                    break;
                }
                continue;
            }
        };
        tracing::info!("serving");

        // Register, retrying with back-off while the kubelet is absent.
        let registered = loop {
            let seen = kubelet.borrow().generation;
            let identity = kubelet_watch::identity(&kubelet_socket);
            let attempt = generation.fetch_add(1, Ordering::SeqCst) + 1;
            match registration::register(&kubelet_socket, &resource, &endpoint).await {
                Ok(()) => {
                    ctx.status.set_registered(&resource, true);
                    // Integration tests wait for this message and the one below: keep their text.
                    tracing::info!(endpoint = %endpoint, attempt, "registered with the kubelet");
                    backoff.reset();
                    break Some((seen, identity));
                }
                Err(error) => {
                    let delay = backoff.next();
                    tracing::warn!(
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
        let Some((seen, registered_with)) = registered else {
            served.stop().await;
            break;
        };

        let mut served = served;
        let current = generation.load(Ordering::SeqCst);
        let reason = tokio::select! {
            _ = crate::sync::until_true(&mut stop) => Restart::Stop,
            _ = crate::sync::until(&mut kubelet, |k| kubelet_restarted(k, seen, registered_with)) => Restart::KubeletRestarted,
            _ = socket_removed(&socket) => Restart::SocketRemoved,
            _ = stream_dropped(&mut dropped_rx, &generation, current) => Restart::StreamDropped,
            _ = &mut served.handle => Restart::ServerExited,
        };
        ctx.status.set_registered(&resource, false);
        served.stop().await;
        if reason == Restart::Stop {
            break;
        }
        tracing::warn!(reason = reason.as_str(), "re-serving and re-registering");
        if reason == Restart::ServerExited && wait(backoff.next(), &mut stop, &mut kubelet).await {
            break;
        }
    }

    ctx.status.set_registered(&resource, false);
    match std::fs::remove_file(&socket) {
        Ok(()) => tracing::info!("stopped; socket removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(%error, "stopped; could not remove socket"),
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
        _ = crate::sync::until(kubelet, |k| k.present() && k.generation != seen) => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: u64, identity: Option<SocketIdentity>) -> KubeletState {
        KubeletState {
            generation,
            identity,
        }
    }

    #[test]
    fn a_restart_is_a_new_socket_not_a_watcher_catching_up() {
        let old = Some((1, 10, 100, 0));
        let ours = Some((1, 11, 101, 0));
        let newer = Some((1, 12, 102, 0));
        // Registered with `ours` while the watcher still showed `old` at generation 3.
        assert!(!kubelet_restarted(&state(3, old), 3, ours));
        // The watcher catches up: same socket, no restart.
        assert!(!kubelet_restarted(&state(4, ours), 3, ours));
        // The kubelet goes away: nothing to register with yet.
        assert!(!kubelet_restarted(&state(4, None), 3, ours));
        // A newer socket: restart.
        assert!(kubelet_restarted(&state(5, newer), 3, ours));
        // The watcher jumped straight past ours to a newer one: restart.
        assert!(kubelet_restarted(&state(4, newer), 3, ours));
    }
}
