//! The DevicePlugin gRPC service for one resource. Handlers read the latest [`Snapshot`]; none
//! of them touches hardware.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::status::StatusBoard;
use crate::allocate;
use crate::preferred;
use crate::proto::v1beta1::{
    self, device_plugin_server::DevicePlugin, AllocateRequest, AllocateResponse,
    ContainerPreferredAllocationResponse, DevicePluginOptions, Empty, ListAndWatchResponse,
    NumaNode, PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, TopologyInfo,
};
use crate::resources::{Health, Resource};
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

/// Signals from the streams to the plugin's supervisor.
#[derive(Debug, Clone)]
pub struct StreamEvents {
    /// Registration generation; bumped before each Register call.
    pub generation: Arc<AtomicU64>,
    /// The newest generation whose stream has been opened. The kubelet opens exactly one stream
    /// per registration, from inside Register (`connectClient` → `runClient`), so the first
    /// stream of a generation is the kubelet's; later ones come from other clients, and their
    /// coming and going says nothing about our registration.
    pub claimed: Arc<AtomicU64>,
    /// The kubelet's stream of this generation was dropped by the client.
    pub dropped: mpsc::Sender<u64>,
}

impl StreamEvents {
    pub fn new(dropped: mpsc::Sender<u64>) -> Self {
        Self {
            generation: Arc::new(AtomicU64::new(0)),
            claimed: Arc::new(AtomicU64::new(0)),
            dropped,
        }
    }

    /// Called when a stream opens under `generation`: true when it is that registration's
    /// first stream, i.e. the kubelet's.
    fn claim(&self, generation: u64) -> bool {
        generation > 0 && self.claimed.fetch_max(generation, Ordering::SeqCst) < generation
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

type ListAndWatchStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListAndWatchStream;

    async fn list_and_watch(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut snapshots = self.snapshots.clone();
        let mut stopping = self.stopping.clone();
        let resource = self.resource.clone();
        let status = self.status.clone();
        let events = self.events.clone();
        let generation = events.generation.load(Ordering::SeqCst);
        let kubelets = events.claim(generation);
        status.stream_opened(&resource);
        tracing::info!(resource = %resource, generation, kubelets, "ListAndWatch stream opened");
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
                        tracing::info!(resource = %resource, generation, devices = devices.len(), unhealthy, "ListAndWatch: sending the device list");
                        if tx.send(Ok(ListAndWatchResponse { devices })).await.is_err() {
                            break true;
                        }
                        last_sent = Some(snapshot);
                    }
                }
            };
            status.stream_closed(&resource);
            tracing::info!(resource = %resource, generation, kubelets, dropped_by_kubelet, "ListAndWatch stream closed");
            if dropped_by_kubelet && kubelets {
                let _ = events.dropped.try_send(generation);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
            match allocate::container_response(
                resource,
                &container.devices_ids,
                &snapshot.config.plugin,
                &snapshot.extras,
            ) {
                Ok(response) => {
                    self.status.allocation(&self.resource, true);
                    tracing::info!(resource = %self.resource, devices = ?container.devices_ids, "allocated");
                    container_responses.push(response);
                }
                Err(error) => {
                    self.status.allocation(&self.resource, false);
                    tracing::warn!(resource = %self.resource, devices = ?container.devices_ids, %error, "allocation refused");
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
