//! One resource's plugin from start to stop, as an explicit state machine.
//!
//! The kubelet's side of a restart (k8s.io/kubernetes `pkg/kubelet/cm/devicemanager`) decides its
//! shape: the old kubelet exits (our ListAndWatch stream drops; its `kubelet.sock` stays behind,
//! refusing connections, often for 10 s or more); the new kubelet deletes every non-directory
//! entry of the device-plugin directory but its checkpoint (`CleanupPluginDirectory`; sockets only
//! from 1.33), our socket included, and microseconds later binds a new `kubelet.sock`. Inside
//! Register the kubelet dials our socket (10 s deadline) and asks for our options; a plugin that
//! registers a socket the wipe deleted is never reached and must notice by itself.
//!
//! | state               | event                                                   | next              |
//! |---------------------|---------------------------------------------------------|-------------------|
//! | `WaitingForDir`     | the device-plugin directory exists                      | `Serve`           |
//! | `Serve`             | (stops the previous server first) bound and serving     | `Register`        |
//! | `Serve`             | the directory is missing                                | `WaitingForDir`   |
//! | `Serve`             | bind failed                                             | `Serve`, back-off |
//! | `Register`          | our socket is not ours any more, or the server exited   | `Serve`           |
//! | `Register`          | no `kubelet.sock`                                       | `WaitingForKubelet` |
//! | `Register`          | accepted                                                | `Registered`      |
//! | `Register`          | `kubelet.sock` refuses connections or is gone           | `WaitingForKubelet` |
//! | `Register`          | during the call: a new `kubelet.sock`, or our socket lost | `Serve`         |
//! | `Register`          | rejected or timed out                                   | `Register`, back-off (`Serve` if our socket went) |
//! | `Registered`        | a new `kubelet.sock`                                    | `Serve`           |
//! | `Registered`        | our socket deleted or replaced, or the server exited    | `Serve`           |
//! | `Registered`        | the kubelet's stream ended, the kubelet still listens   | `Serve`           |
//! | `Registered`        | the kubelet's stream ended, `kubelet.sock` is stale     | `WaitingForKubelet` |
//! | `WaitingForKubelet` | a new `kubelet.sock`, or the old one listens again      | `Serve`           |
//! | any                 | stop                                                    | `Stopped`: socket removed |
//!
//! Invariants, each kept by one place in this file:
//! - Register is only called while our path names the socket our running server listens on
//!   ([`Served::is_ours`], checked right before the call and watched during it).
//! - A new `kubelet.sock` always leads to serve-then-register, whatever state we are in: the
//!   new kubelet has just wiped the directory and knows nothing of us.
//! - `Serve` stops the previous server (ending its stream) before anything else, so the kubelet
//!   never sees an old stream end after a new registration: kubelets up to 1.34 disconnect the
//!   *new* client when that happens (kubernetes#121994).
//! - Waiting (for the directory or for a kubelet) logs one line when it starts, then nothing.
//! - Only the stream the kubelet opened for the current registration counts: the first stream
//!   on the connection it dialled inside our Register call ([`StreamEvents`]). Others (other
//!   clients', or earlier registrations') may come and go.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::kubelet_watch::{self, Probe, SocketIdentity};
use super::registration::{self, REGISTER_TIMEOUT};
use super::served::Served;
use super::server::StreamEvents;
use super::status::StatusBoard;
use crate::resources::names;
use crate::snapshot::Snapshot;

/// What every plugin shares.
#[derive(Clone)]
pub struct PluginContext {
    /// The kubelet's device-plugin directory.
    pub dir: PathBuf,
    /// The kubelet's registration socket; `None`: serve without registering (NVIDIA's empty
    /// `KUBELET_SOCKET`).
    pub kubelet_socket: Option<PathBuf>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub status: StatusBoard,
}

/// Retry delays after a failure that waiting alone will not cure (a rejected Register, a failed
/// bind): 100 ms doubling to 5 s. A new `kubelet.sock` cuts any wait short.
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

/// While waiting for a kubelet whose socket is stale, how often to check whether it listens
/// again after all (it never should: a new kubelet makes a new socket; this only guards against
/// a misread).
const STALE_RECHECK: Duration = Duration::from_secs(1);

/// The plugin's states; see the module documentation for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    WaitingForDir,
    Serve(Why),
    Register,
    Registered {
        kubelet: SocketIdentity,
        generation: u64,
    },
    WaitingForKubelet {
        stale: Option<SocketIdentity>,
    },
    Stopped,
}

/// Why a plugin (re)serves: logged, and the integration tests read these texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Start,
    DirCreated,
    KubeletRestarted,
    SocketRemoved,
    StreamDropped,
    ServerExited,
    BindFailed,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Start => "start",
            Why::DirCreated => "the device-plugin directory appeared",
            Why::KubeletRestarted => "kubelet.sock re-created (kubelet restart)",
            Why::SocketRemoved => "our socket was removed",
            Why::StreamDropped => "the kubelet dropped the ListAndWatch stream",
            Why::ServerExited => "the gRPC server exited",
            Why::BindFailed => "retrying after a failed bind",
        }
    }
}

/// What ended a pause.
enum Woken {
    Stop,
    Elapsed,
    NewKubelet,
}

/// Run the plugin for `resource` until `stop` turns true; then remove its socket. Everything it
/// logs carries the `plugin{resource, socket}` span.
pub async fn run(ctx: PluginContext, resource: String, stop: watch::Receiver<bool>) {
    let socket = ctx.dir.join(names::socket_file(&resource));
    let span = tracing::info_span!("plugin", resource = %resource, socket = %socket.display());
    let (dropped_tx, dropped) = mpsc::channel(8);
    let mut plugin = Plugin {
        endpoint: names::socket_file(&resource),
        kubelet_socket: ctx.kubelet_socket.clone(),
        events: StreamEvents::new(dropped_tx),
        served: None,
        backoff: Backoff::new(),
        dropped,
        stop,
        socket,
        resource,
        ctx,
    };
    plugin.run().instrument(span).await
}

struct Plugin {
    ctx: PluginContext,
    resource: String,
    /// Our socket's file name, as Register sends it.
    endpoint: String,
    socket: PathBuf,
    kubelet_socket: Option<PathBuf>,
    events: StreamEvents,
    dropped: mpsc::Receiver<u64>,
    served: Option<Served>,
    backoff: Backoff,
    stop: watch::Receiver<bool>,
}

impl Plugin {
    async fn run(&mut self) {
        let mut state = State::Serve(Why::Start);
        loop {
            if *self.stop.borrow() {
                state = State::Stopped;
            }
            tracing::debug!(?state, "plugin state");
            state = match state {
                State::WaitingForDir => self.wait_for_dir().await,
                State::Serve(why) => self.serve(why).await,
                State::Register => self.register().await,
                State::Registered {
                    kubelet,
                    generation,
                } => self.registered(kubelet, generation).await,
                State::WaitingForKubelet { stale } => self.wait_for_kubelet(stale).await,
                State::Stopped => break,
            };
        }
        self.ctx.status.set_registered(&self.resource, false);
        if let Some(served) = self.served.take() {
            served.stop().await;
        }
        match std::fs::remove_file(&self.socket) {
            Ok(()) => tracing::info!("stopped; socket removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(%error, "stopped; could not remove socket"),
        }
    }

    /// Nowhere to serve until the kubelet creates the directory (logged once, for all plugins,
    /// by [`kubelet_watch::log_changes`]).
    async fn wait_for_dir(&mut self) -> State {
        self.ctx.status.set_registered(&self.resource, false);
        let mut ticker = tokio::time::interval(kubelet_watch::POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = crate::sync::until_true(&mut self.stop) => return State::Stopped,
                _ = ticker.tick() => if self.ctx.dir.is_dir() {
                    return State::Serve(Why::DirCreated);
                },
            }
        }
    }

    /// Stop the previous server, then bind and serve afresh.
    async fn serve(&mut self, why: Why) -> State {
        self.ctx.status.set_registered(&self.resource, false);
        if let Some(old) = self.served.take() {
            old.stop().await;
        }
        match why {
            Why::Start | Why::BindFailed => {}
            // What a kubelet does when it starts: expected, not worth a warning.
            Why::DirCreated | Why::KubeletRestarted => {
                tracing::info!(reason = why.as_str(), "serving and registering afresh")
            }
            Why::SocketRemoved | Why::StreamDropped | Why::ServerExited => {
                tracing::warn!(reason = why.as_str(), "re-serving and re-registering")
            }
        }
        if !self.ctx.dir.is_dir() {
            return State::WaitingForDir;
        }
        match Served::start(&self.ctx, &self.resource, &self.socket, self.events.clone()) {
            Ok(served) => {
                self.served = Some(served);
                tracing::info!("serving");
                State::Register
            }
            Err(error) if !self.ctx.dir.is_dir() => {
                tracing::debug!(%error, "the device-plugin directory went away while binding");
                State::WaitingForDir
            }
            Err(error) => {
                let delay = self.backoff.next();
                tracing::error!(
                    %error,
                    retry_in = ?delay,
                    "cannot serve on the plugin socket; check that --device-plugin-dir is writable by the agent (in the DaemonSet: the hostPath mount of /var/lib/kubelet/device-plugins)"
                );
                match self.pause(delay).await {
                    Woken::Stop => State::Stopped,
                    Woken::Elapsed => State::Serve(Why::BindFailed),
                    Woken::NewKubelet => State::Serve(Why::KubeletRestarted),
                }
            }
        }
    }

    /// One Register call, made only while our socket is ours, and abandoned when the socket goes
    /// or a new kubelet appears during it.
    async fn register(&mut self) -> State {
        let Some(kubelet_socket) = self.kubelet_socket.clone() else {
            return self.serve_only().await;
        };
        let Some(served) = self.served.as_ref() else {
            return State::Serve(Why::ServerExited);
        };
        if !served.is_ours() {
            return State::Serve(if served.exited() {
                Why::ServerExited
            } else {
                Why::SocketRemoved
            });
        }
        let Some(kubelet) = kubelet_watch::identity(&kubelet_socket) else {
            return State::WaitingForKubelet { stale: None };
        };
        // Until `window` is dropped (this call's outcome is known), a connection that asks for our
        // options may be the kubelet's: the only connection whose stream counts.
        let window = self.events.registering();
        let attempt = window.generation;
        let call = tokio::time::timeout(
            REGISTER_TIMEOUT,
            registration::register(&kubelet_socket, &self.resource, &self.endpoint),
        );
        let outcome = tokio::select! {
            _ = crate::sync::until_true(&mut self.stop) => return State::Stopped,
            _ = served.lost() => return State::Serve(Why::SocketRemoved),
            _ = kubelet_replaced(Some(&kubelet_socket), Some(kubelet)) => {
                return State::Serve(Why::KubeletRestarted)
            }
            outcome = call => outcome,
        };
        drop(window);
        let error = match outcome {
            Ok(Ok(())) => {
                self.ctx.status.set_registered(&self.resource, true);
                // Integration tests wait for this message: keep its text.
                tracing::info!(endpoint = %self.endpoint, attempt, "registered with the kubelet");
                self.backoff.reset();
                return State::Registered {
                    kubelet,
                    generation: attempt,
                };
            }
            Ok(Err(error)) if error.kubelet_unreachable() => {
                tracing::debug!(%error, "kubelet.sock does not answer");
                return State::WaitingForKubelet {
                    stale: Some(kubelet),
                };
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {REGISTER_TIMEOUT:?}"),
        };
        if !served.is_ours() {
            return State::Serve(Why::SocketRemoved);
        }
        let delay = self.backoff.next();
        tracing::warn!(
            kubelet_socket = %kubelet_socket.display(),
            %error,
            retry_in = ?delay,
            "registration failed; retrying"
        );
        match self.pause(delay).await {
            Woken::Stop => State::Stopped,
            Woken::Elapsed => State::Register,
            Woken::NewKubelet => State::Serve(Why::KubeletRestarted),
        }
    }

    /// No kubelet socket to register with (NVIDIA's empty `KUBELET_SOCKET`): serve until stopped,
    /// and serve afresh if our socket is lost.
    async fn serve_only(&mut self) -> State {
        let Some(served) = self.served.as_ref() else {
            return State::Serve(Why::ServerExited);
        };
        tracing::info!(
            "no kubelet socket configured (KUBELET_SOCKET is empty): serving without registering"
        );
        tokio::select! {
            _ = crate::sync::until_true(&mut self.stop) => State::Stopped,
            _ = served.lost() => State::Serve(if served.exited() { Why::ServerExited } else { Why::SocketRemoved }),
        }
    }

    /// Registered with the kubelet whose socket is `kubelet`, under registration `generation`:
    /// wait for whatever ends it.
    async fn registered(&mut self, kubelet: SocketIdentity, generation: u64) -> State {
        let Some(served) = self.served.as_ref() else {
            return State::Serve(Why::ServerExited);
        };
        let why = tokio::select! {
            _ = crate::sync::until_true(&mut self.stop) => return State::Stopped,
            _ = kubelet_replaced(self.kubelet_socket.as_deref(), Some(kubelet)) => Why::KubeletRestarted,
            _ = served.lost() => if served.exited() { Why::ServerExited } else { Why::SocketRemoved },
            _ = stream_dropped(&mut self.dropped, generation) => Why::StreamDropped,
        };
        self.ctx.status.set_registered(&self.resource, false);
        match why {
            Why::StreamDropped => match probe(self.kubelet_socket.as_deref()).await {
                // The kubelet is there and dropped us: register again.
                Probe::Listening => State::Serve(why),
                // The kubelet exited (its stream went with it): the next one will wipe the
                // directory, so serving now would be wasted; wait for its socket.
                _ => State::WaitingForKubelet {
                    stale: identity(self.kubelet_socket.as_deref()),
                },
            },
            Why::ServerExited => {
                let delay = self.backoff.next();
                match self.pause(delay).await {
                    Woken::Stop => State::Stopped,
                    _ => State::Serve(why),
                }
            }
            _ => State::Serve(why),
        }
    }

    /// No kubelet answers: log once, then wait quietly for a new `kubelet.sock`.
    async fn wait_for_kubelet(&mut self, stale: Option<SocketIdentity>) -> State {
        self.ctx.status.set_registered(&self.resource, false);
        // Integration tests wait for this message: keep its text.
        tracing::warn!(
            kubelet_socket = ?self.kubelet_socket,
            stale = stale.is_some(),
            "kubelet not reachable; waiting for it (a new kubelet.sock)"
        );
        loop {
            tokio::select! {
                _ = crate::sync::until_true(&mut self.stop) => return State::Stopped,
                _ = kubelet_replaced(self.kubelet_socket.as_deref(), stale) => {
                    return State::Serve(Why::KubeletRestarted)
                }
                _ = tokio::time::sleep(STALE_RECHECK), if stale.is_some() => {
                    if identity(self.kubelet_socket.as_deref()) == stale
                        && probe(self.kubelet_socket.as_deref()).await == Probe::Listening
                    {
                        return State::Serve(Why::KubeletRestarted);
                    }
                }
            }
        }
    }

    /// Sleep `delay`, cut short by stop or a new kubelet socket.
    async fn pause(&mut self, delay: Duration) -> Woken {
        let seen = identity(self.kubelet_socket.as_deref());
        tokio::select! {
            _ = crate::sync::until_true(&mut self.stop) => Woken::Stop,
            _ = tokio::time::sleep(delay) => Woken::Elapsed,
            _ = kubelet_replaced(self.kubelet_socket.as_deref(), seen) => Woken::NewKubelet,
        }
    }
}

/// Resolves when `kubelet.sock` is a socket other than `seen`: a kubelet started since `seen` was
/// read. Reads the file itself (every [`kubelet_watch::POLL_INTERVAL`]) rather than the shared
/// watcher, so that it compares like with like: an identity read a moment ago against the file
/// now, never against a watcher that has not caught up yet.
async fn kubelet_replaced(path: Option<&Path>, seen: Option<SocketIdentity>) {
    let Some(path) = path else {
        return std::future::pending().await;
    };
    let mut ticker = tokio::time::interval(kubelet_watch::POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = kubelet_watch::identity(path);
        if now.is_some() && now != seen {
            return;
        }
    }
}

/// [`kubelet_watch::identity`] of the kubelet socket, if there is one to register with.
fn identity(path: Option<&Path>) -> Option<SocketIdentity> {
    path.and_then(kubelet_watch::identity)
}

/// [`kubelet_watch::probe`] of the kubelet socket, if there is one to register with.
async fn probe(path: Option<&Path>) -> Probe {
    match path {
        Some(path) => kubelet_watch::probe(path).await,
        None => Probe::Absent,
    }
}

/// Resolves when the kubelet's stream of registration `generation` is dropped. Streams of earlier
/// registrations end when the kubelet replaces its endpoint; those are expected and ignored.
async fn stream_dropped(rx: &mut mpsc::Receiver<u64>, generation: u64) {
    loop {
        match rx.recv().await {
            Some(g) if g == generation => return,
            Some(_) => continue,
            None => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn only_the_current_registrations_stream_counts() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(3).await.unwrap();
        tx.send(4).await.unwrap();
        // A drop from registration 3 is history once 4 is current.
        tokio::time::timeout(Duration::from_secs(1), stream_dropped(&mut rx, 4))
            .await
            .expect("generation 4's drop is seen");
        tx.send(3).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), stream_dropped(&mut rx, 4))
                .await
                .is_err(),
            "an older stream's end must not count"
        );
    }
}
