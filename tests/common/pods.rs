//! A kubelet pod-resources server answering `List` with whatever the test put in. Included with
//! `#[path]` by the metrics tests.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gpu_agent::proto::podresources_v1::{
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
pub struct PodResourcesStub {
    pub answer: Arc<Mutex<ListPodResourcesResponse>>,
    /// Answer RESOURCE_EXHAUSTED, as a kubelet over its rate limit does.
    pub exhausted: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
}

impl PodResourcesStub {
    /// Answer `List` with these pods from now on.
    pub fn set(&self, pods: Vec<PodResources>) {
        *self.answer.lock().unwrap() = ListPodResourcesResponse {
            pod_resources: pods,
        };
    }
}

#[tonic::async_trait]
impl PodResourcesLister for PodResourcesStub {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.exhausted.load(Ordering::SeqCst) {
            return Err(Status::resource_exhausted("rate limit exceeded"));
        }
        Ok(Response::new(self.answer.lock().unwrap().clone()))
    }
    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not in this stub"))
    }
    async fn get(
        &self,
        _: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not in this stub"))
    }
}

/// Serve `stub` on the unix socket `path` (the agent's `--pod-resources-socket`).
pub fn serve_pod_resources(path: &Path, stub: PodResourcesStub) {
    let listener = UnixListener::bind(path).expect("bind pod-resources socket");
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(PodResourcesListerServer::new(stub))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    });
}

/// A pod with `(container, resource, device IDs)` containers.
pub fn pod(namespace: &str, name: &str, containers: &[(&str, &str, &[String])]) -> PodResources {
    PodResources {
        name: name.into(),
        namespace: namespace.into(),
        containers: containers
            .iter()
            .map(|(container, resource, ids)| ContainerResources {
                name: (*container).into(),
                devices: vec![ContainerDevices {
                    resource_name: (*resource).into(),
                    device_ids: ids.to_vec(),
                    topology: None,
                }],
                ..Default::default()
            })
            .collect(),
    }
}
