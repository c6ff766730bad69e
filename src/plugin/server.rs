//! The DevicePlugin gRPC service for one resource. Handlers read the latest [`Snapshot`]; none
//! of them touches hardware.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::conn::ConnInfo;
use super::response;
use super::status::StatusBoard;
use crate::allocate;
use crate::preferred;
use crate::proto::v1beta1::{
    self, device_plugin_server::DevicePlugin, AllocateRequest, AllocateResponse,
    ContainerPreferredAllocationResponse, DevicePluginOptions, Empty, ListAndWatchResponse,
    NumaNode, PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, TopologyInfo,
};
use crate::resources::{ids, Health, Resource};
use crate::snapshot::Snapshot;

/// Options sent at registration and by GetDevicePluginOptions.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// The kubelet's view of `resource` in `snapshot`: IDs, health, NUMA node. Empty when the
/// resource is gone (it is being removed).
pub fn device_list(resource: Option<&Resource>) -> Vec<v1beta1::Device> {
    let Some(resource) = resource else {
        return Vec::new();
    };
    resource
        .devices
        .iter()
        .map(|d| v1beta1::Device {
            id: d.id.clone(),
            health: d.health.as_str().to_string(),
            topology: d.numa_node.map(|n| TopologyInfo {
                nodes: vec![NumaNode { id: i64::from(n) }],
            }),
        })
        .collect()
}

/// At most this many ListAndWatch streams other than the kubelet's are served at once, per
/// plugin; more are refused with `ResourceExhausted`. The kubelet's own stream is never refused.
pub const MAX_OTHER_STREAMS: usize = 8;

/// At most this many connections are taken as the kubelet's for one registration (normally
/// exactly one: see [`StreamEvents`]).
const MAX_KUBELET_CONNS: usize = 4;

/// Which connections are the kubelet's, for the registration under way or in force.
#[derive(Debug, Default)]
struct Registration {
    /// Bumped before each Register call; the attempt number.
    generation: u64,
    /// While a Register call is in flight: the number the next accepted connection gets. The
    /// kubelet dials us afresh inside Register, so its connection is numbered this or higher.
    open_from: Option<u64>,
    /// Connections that asked for our options while the Register call was in flight, and
    /// whether their first ListAndWatch stream has been opened.
    kubelet_conns: Vec<(u64, bool)>,
}

/// Signals between the streams and the plugin's supervisor, shared by the plugin's successive
/// servers.
///
/// Only the kubelet's stream of the current registration says anything about the registration.
/// Inside Register the kubelet dials our socket (a new connection), calls GetDevicePluginOptions
/// and, before Register returns, ListAndWatch on that same connection (`handler.go`
/// `connectClient` → `client.go` `Connect` → `runClient`). So the kubelet's connection is one
/// that was accepted *after* our Register call started and asked for our options *before* it
/// returned; its first stream is the kubelet's. A stream on any other connection (or a second
/// stream on the kubelet's) is another client's: it is served (up to [`MAX_OTHER_STREAMS`] at
/// once), but its end never re-registers. A client that manages to connect and ask for options
/// inside our Register call's window (milliseconds) is taken as the kubelet's too: its stream's
/// end then costs one re-registration, never the kubelet's own stream going unnoticed.
#[derive(Debug, Clone)]
pub struct StreamEvents {
    registration: Arc<Mutex<Registration>>,
    /// Connections numbered so far (see [`super::conn::incoming`]).
    pub connections: Arc<AtomicU64>,
    /// Other clients' streams open now.
    other_streams: Arc<AtomicUsize>,
    /// Other clients' streams refused so far, for the logs.
    refused: Arc<AtomicU64>,
    /// The kubelet's stream of this generation was dropped by the client.
    pub dropped: mpsc::Sender<u64>,
}

/// An open Register call: connections accepted and asking for options until it is dropped may
/// be the kubelet's.
pub struct RegisterWindow {
    registration: Arc<Mutex<Registration>>,
    pub generation: u64,
}

impl Drop for RegisterWindow {
    fn drop(&mut self) {
        let mut r = lock(&self.registration);
        if r.generation == self.generation {
            r.open_from = None;
        }
    }
}

/// A slot among the [`MAX_OTHER_STREAMS`]; freed when dropped.
struct OtherStream(Arc<AtomicUsize>);

/// A response stream that holds its slot: the slot is free the moment the server drops the
/// stream (the client went away, or the stream ended), not when the sending task notices.
struct Holding<S> {
    stream: S,
    _slot: Option<OtherStream>,
}

impl<S: Stream + Unpin> Stream for Holding<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl Drop for OtherStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock(m: &Mutex<Registration>) -> std::sync::MutexGuard<'_, Registration> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StreamEvents {
    pub fn new(dropped: mpsc::Sender<u64>) -> Self {
        Self {
            registration: Arc::default(),
            connections: Arc::default(),
            other_streams: Arc::default(),
            refused: Arc::default(),
            dropped,
        }
    }

    /// A Register call is about to be made: a new generation, whose kubelet connection is yet
    /// to come. The window closes when the returned value is dropped (after the call).
    pub fn registering(&self) -> RegisterWindow {
        let mut r = lock(&self.registration);
        r.generation += 1;
        r.open_from = Some(self.connections.load(Ordering::SeqCst) + 1);
        r.kubelet_conns.clear();
        RegisterWindow {
            registration: self.registration.clone(),
            generation: r.generation,
        }
    }

    /// GetDevicePluginOptions on connection `conn`: true when it is taken as the kubelet's.
    fn options_asked(&self, conn: u64) -> bool {
        let mut r = lock(&self.registration);
        let in_window = r.open_from.is_some_and(|first| conn >= first);
        if !in_window || r.kubelet_conns.len() >= MAX_KUBELET_CONNS {
            return false;
        }
        if !r.kubelet_conns.iter().any(|(c, _)| *c == conn) {
            r.kubelet_conns.push((conn, false));
        }
        true
    }

    /// A ListAndWatch stream opens on connection `conn`: the generation when it is the kubelet's
    /// stream of the current registration.
    fn claim(&self, conn: u64) -> Option<u64> {
        let mut r = lock(&self.registration);
        let generation = r.generation;
        let (_, claimed) = r
            .kubelet_conns
            .iter_mut()
            .find(|(c, claimed)| *c == conn && !*claimed)?;
        *claimed = true;
        Some(generation)
    }

    /// A slot for another client's stream, unless [`MAX_OTHER_STREAMS`] are open; else the number
    /// of refusals so far, this one included.
    fn other_stream(&self) -> Result<OtherStream, u64> {
        let open = self.other_streams.fetch_add(1, Ordering::SeqCst);
        let slot = OtherStream(self.other_streams.clone());
        if open >= MAX_OTHER_STREAMS {
            drop(slot);
            return Err(self.refused.fetch_add(1, Ordering::SeqCst) + 1);
        }
        Ok(slot)
    }
}

/// DevicePlugin service of one resource.
pub struct PluginService {
    resource: String,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: StatusBoard,
    /// Flips to true when the server is being stopped: open streams end.
    stopping: watch::Receiver<bool>,
    events: StreamEvents,
}

impl PluginService {
    pub fn new(
        resource: String,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        status: StatusBoard,
        stopping: watch::Receiver<bool>,
        events: StreamEvents,
    ) -> Self {
        Self {
            resource,
            snapshots,
            status,
            stopping,
            events,
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Our resource in `snapshot`; gone only while a config change is removing this plugin.
    fn advertised<'s>(&self, snapshot: &'s Snapshot) -> Result<&'s Resource, Status> {
        snapshot.resources.get(&self.resource).ok_or_else(|| {
            Status::unavailable(format!(
                "resource {} is not advertised any more",
                self.resource
            ))
        })
    }
}

/// The connection `request` came on (always there on a plugin socket; absent in unit tests that
/// call the service directly).
fn connection<T>(request: &Request<T>) -> Option<ConnInfo> {
    request.extensions().get::<ConnInfo>().copied()
}

type ListAndWatchStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        if let Some(conn) = connection(&request) {
            if self.events.options_asked(conn.id) {
                tracing::debug!(resource = %self.resource, connection = conn.id, "options asked on the kubelet's connection");
            }
        }
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListAndWatchStream;

    async fn list_and_watch(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let conn = connection(&request);
        let connection_id = conn.map_or(0, |c| c.id);
        let peer_pid = conn.and_then(|c| c.peer).and_then(|p| p.pid());
        let peer_uid = conn.and_then(|c| c.peer).map(|p| p.uid());
        let events = self.events.clone();
        let claimed = conn.and_then(|c| events.claim(c.id));
        let kubelets = claimed.is_some();
        let generation = claimed.unwrap_or(0);
        // Another client's stream holds one of MAX_OTHER_STREAMS slots while it is open.
        let slot = if kubelets {
            None
        } else {
            match events.other_stream() {
                Ok(slot) => Some(slot),
                Err(refused) => {
                    // 1, 2, 4, 8, ... refusals: a client retrying in a loop cannot flood the log.
                    if refused.is_power_of_two() {
                        tracing::warn!(resource = %self.resource, connection = connection_id, ?peer_pid, ?peer_uid, refused, limit = MAX_OTHER_STREAMS, "ListAndWatch refused: too many streams from clients other than the kubelet");
                    }
                    return Err(Status::resource_exhausted(format!(
                        "at most {MAX_OTHER_STREAMS} ListAndWatch streams besides the kubelet's"
                    )));
                }
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let mut snapshots = self.snapshots.clone();
        let mut stopping = self.stopping.clone();
        let resource = self.resource.clone();
        let status = self.status.clone();
        if kubelets {
            status.stream_opened(&resource);
            tracing::info!(resource = %resource, generation, kubelets, connection = connection_id, "ListAndWatch stream opened");
        } else {
            tracing::debug!(resource = %resource, kubelets, connection = connection_id, ?peer_pid, ?peer_uid, "ListAndWatch stream opened");
        }
        tokio::spawn(async move {
            snapshots.mark_changed();
            // The resource as last sent: compared before any message is built, so a snapshot
            // change that leaves this resource alone (another resource's health, a config change
            // elsewhere) costs a comparison, not a rebuilt and re-encoded list.
            let mut last_sent: Option<Arc<Snapshot>> = None;
            let dropped_by_kubelet = loop {
                tokio::select! {
                    biased;
                    _ = crate::sync::until_true(&mut stopping) => break false,
                    _ = tx.closed() => break true,
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            break false;
                        }
                        let snapshot = snapshots.borrow_and_update().clone();
                        let current = snapshot.resources.get(&resource);
                        let unchanged = last_sent.as_ref().is_some_and(|last| {
                            last.resources.get(&resource).map(|r| &r.devices) == current.map(|r| &r.devices)
                        });
                        if unchanged {
                            continue;
                        }
                        let devices = device_list(current);
                        let unhealthy = current.map_or(0, |r| r.count(Health::Unhealthy));
                        if kubelets {
                            tracing::info!(resource = %resource, generation, devices = devices.len(), unhealthy, "ListAndWatch: sending the device list");
                        } else {
                            tracing::debug!(resource = %resource, connection = connection_id, devices = devices.len(), unhealthy, "ListAndWatch: sending the device list");
                        }
                        if tx.send(Ok(ListAndWatchResponse { devices })).await.is_err() {
                            break true;
                        }
                        last_sent = Some(snapshot);
                    }
                }
            };
            if kubelets {
                status.stream_closed(&resource);
                tracing::info!(resource = %resource, generation, kubelets, dropped_by_kubelet, "ListAndWatch stream closed");
                if dropped_by_kubelet {
                    let _ = events.dropped.try_send(generation);
                }
            } else {
                tracing::debug!(resource = %resource, kubelets, connection = connection_id, dropped_by_kubelet, "ListAndWatch stream closed");
            }
        });
        Ok(Response::new(Box::pin(Holding {
            stream: ReceiverStream::new(rx),
            _slot: slot,
        })))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let snapshot = self.current();
        let resource = self.advertised(&snapshot)?;
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|r| {
                let request = preferred::Request {
                    available: &r.available_device_i_ds,
                    must_include: &r.must_include_device_i_ds,
                    size: usize::try_from(r.allocation_size).unwrap_or(0),
                };
                let device_i_ds = preferred::choose(
                    resource,
                    &snapshot.topology,
                    snapshot.config.shared_placement,
                    &request,
                );
                tracing::debug!(resource = %self.resource, size = request.size, chosen = ?device_i_ds, "preferred allocation");
                ContainerPreferredAllocationResponse { device_i_ds }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let snapshot = self.current();
        let resource = self.advertised(&snapshot)?;
        let mut container_responses = Vec::new();
        for container in request.into_inner().container_requests {
            match allocate::grant(
                resource,
                &container.devices_ids,
                &snapshot.config.plugin,
                &snapshot.extras,
            ) {
                Ok(grant) => {
                    self.status.allocation(&self.resource, true);
                    tracing::info!(resource = %self.resource, devices = ?ids::Shown(&container.devices_ids), "allocated");
                    container_responses.push(response::container_allocate_response(grant));
                }
                Err(error) => {
                    self.status.allocation(&self.resource, false);
                    // The error names the one ID at fault, shortened: a client's ID is never
                    // repeated in full, nor twice.
                    tracing::warn!(resource = %self.resource, requested = container.devices_ids.len(), %error, "allocation refused");
                    return Err(Status::invalid_argument(error.to_string()));
                }
            }
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _request: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> StreamEvents {
        StreamEvents::new(mpsc::channel(1).0)
    }

    /// Connection numbers as `conn::incoming` hands them out.
    fn accept(events: &StreamEvents) -> u64 {
        events.connections.fetch_add(1, Ordering::SeqCst) + 1
    }

    #[test]
    fn only_the_first_stream_of_a_connection_dialled_during_register_is_the_kubelets() {
        let e = events();
        let before = accept(&e);
        let window = e.registering();
        assert_eq!(window.generation, 1);
        // Connected before the call: never the kubelet's, options or not.
        assert!(!e.options_asked(before));
        let kubelet = accept(&e);
        let other = accept(&e);
        assert!(e.options_asked(kubelet));
        drop(window);
        // Options asked after Register returned: another client.
        assert!(!e.options_asked(other));
        assert_eq!(e.claim(other), None);
        assert_eq!(e.claim(before), None);
        assert_eq!(e.claim(kubelet), Some(1));
        assert_eq!(
            e.claim(kubelet),
            None,
            "a second stream is another client's"
        );

        // The next registration forgets the last one's connection.
        let window = e.registering();
        assert_eq!(window.generation, 2);
        let kubelet2 = accept(&e);
        assert!(e.options_asked(kubelet2));
        assert_eq!(e.claim(kubelet), None);
        assert_eq!(e.claim(kubelet2), Some(2));
    }

    #[test]
    fn a_closed_window_of_an_older_call_does_not_close_the_current_one() {
        let e = events();
        let old = e.registering();
        let current = e.registering();
        drop(old);
        let kubelet = accept(&e);
        assert!(e.options_asked(kubelet));
        assert_eq!(e.claim(kubelet), Some(current.generation));
    }

    #[test]
    fn at_most_a_few_connections_are_taken_for_the_kubelets_per_registration() {
        let e = events();
        let _window = e.registering();
        let taken = (0..10)
            .map(|_| accept(&e))
            .filter(|c| e.options_asked(*c))
            .count();
        assert_eq!(taken, MAX_KUBELET_CONNS);
    }

    #[test]
    fn other_streams_are_limited_and_their_slots_freed() {
        let e = events();
        let slots: Vec<OtherStream> = (0..MAX_OTHER_STREAMS)
            .map(|_| e.other_stream().expect("a slot"))
            .collect();
        assert_eq!(e.other_stream().err(), Some(1));
        assert_eq!(e.other_stream().err(), Some(2));
        drop(slots);
        assert!(e.other_stream().is_ok());
        assert_eq!(e.other_streams.load(Ordering::SeqCst), 0);
    }
}
