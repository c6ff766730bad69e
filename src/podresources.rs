//! Pod attribution: which container holds which of our devices, from the kubelet's
//! pod-resources API v1 (`List` over its unix socket).
//!
//! Polled on the collect interval into a cache that `/metrics` reads, so a scrape never calls the
//! kubelet. The kubelet rate-limits this API (100 QPS, answering `RESOURCE_EXHAUSTED`): we back
//! off exponentially then. When the socket is absent the agent keeps serving device metrics
//! without attribution and says so once, not every interval.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Code;

use crate::plugin::uds;
use crate::proto::podresources_v1::{
    pod_resources_lister_client::PodResourcesListerClient, ListPodResourcesRequest,
    ListPodResourcesResponse,
};
use crate::snapshot::Snapshot;

/// Largest `List` answer we accept. The kubelet's own client allows 16 MiB; a busy node with
/// thousands of pods exceeds tonic's 4 MiB default.
pub const MAX_DECODE_BYTES: usize = 16 * 1024 * 1024;
/// Longest wait between polls while the kubelet keeps answering `RESOURCE_EXHAUSTED`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Consecutive failed polls after which the last answer is dropped as stale.
pub const STALE_AFTER_FAILURES: u32 = 3;

/// One device held by one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerDevice {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub resource: String,
    /// The device ID as advertised (a GPU UUID, a replica `<id>::<n>`, a vGPU slice …).
    pub device_id: String,
}

/// The cached answer: every device of ours held by a container, sorted and de-duplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAllocations {
    pub devices: Vec<ContainerDevice>,
    /// The last poll succeeded (false before the first answer and after failures).
    pub up: bool,
}

/// Where scrapes read the latest attribution from.
pub type PodCache = watch::Receiver<Arc<PodAllocations>>;

/// An empty cache and the sender the poller publishes into.
pub fn cache() -> (watch::Sender<Arc<PodAllocations>>, PodCache) {
    watch::channel(Arc::new(PodAllocations::default()))
}

/// Our DRA driver's devices in the pod-resources answer: the driver's name and our pool (the
/// node's name). The kubelet reports DRA claims under `dynamic_resources` since 1.28.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraIdentity {
    pub driver: String,
    pub pool: String,
}

/// Keep the containers' devices of the resources we advertise, and with `dra` the devices of
/// our driver's pool in their DRA claims (resource: the driver's name; device ID: the DRA device
/// name, `gpu-0` or `gpu-0-mig-1-0`). Pure.
pub fn ours(
    response: &ListPodResourcesResponse,
    resources: &BTreeSet<&str>,
    dra: Option<&DraIdentity>,
) -> Vec<ContainerDevice> {
    let mut out = BTreeSet::new();
    for pod in &response.pod_resources {
        for container in &pod.containers {
            if let Some(dra) = dra {
                for claim in &container.dynamic_resources {
                    for device in &claim.claim_resources {
                        if device.driver_name == dra.driver && device.pool_name == dra.pool {
                            out.insert(ContainerDevice {
                                namespace: pod.namespace.clone(),
                                pod: pod.name.clone(),
                                container: container.name.clone(),
                                resource: dra.driver.clone(),
                                device_id: device.device_name.clone(),
                            });
                        }
                    }
                }
            }
            for devices in &container.devices {
                if !resources.contains(devices.resource_name.as_str()) {
                    continue;
                }
                for id in &devices.device_ids {
                    out.insert(ContainerDevice {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        container: container.name.clone(),
                        resource: devices.resource_name.clone(),
                        device_id: id.clone(),
                    });
                }
            }
        }
    }
    out.into_iter().collect()
}

/// How the last poll went, to log only changes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Start,
    Ok,
    Absent,
    Failed(String),
}

/// The wait before the next poll: the interval, doubled per consecutive `RESOURCE_EXHAUSTED`
/// answer up to [`MAX_BACKOFF`] (never below the interval).
pub fn next_delay(interval: Duration, exhausted_in_a_row: u32) -> Duration {
    let factor = 1u32 << exhausted_in_a_row.min(16);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

/// Poll `socket` every `interval` until `shutdown` turns true.
pub async fn run(
    socket: PathBuf,
    interval: Duration,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    dra: Option<DraIdentity>,
    out: watch::Sender<Arc<PodAllocations>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client: Option<PodResourcesListerClient<Channel>> = None;
    let mut state = State::Start;
    let mut failures = 0u32;
    let mut exhausted = 0u32;
    let request_timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        let result = poll(&socket, &mut client, request_timeout).await;
        let new_state = match result {
            Ok(response) => {
                failures = 0;
                exhausted = 0;
                let snapshot = snapshots.borrow().clone();
                let names: BTreeSet<&str> = snapshot.resources.names().collect();
                let devices = ours(&response, &names, dra.as_ref());
                let next = PodAllocations { devices, up: true };
                if **out.borrow() != next {
                    out.send_replace(Arc::new(next));
                }
                State::Ok
            }
            Err(e) => {
                failures += 1;
                let absent = matches!(e, PollError::Absent);
                let rate_limited =
                    matches!(&e, PollError::Status(s) if s.code() == Code::ResourceExhausted);
                if rate_limited {
                    // The connection is fine; the kubelet wants fewer calls.
                    exhausted += 1;
                } else {
                    exhausted = 0;
                    client = None;
                }
                // Keep the last answer through a short outage (a kubelet restart); drop it when
                // the failure lasts, so a dashboard never shows long-gone pods as current.
                let devices = if failures >= STALE_AFTER_FAILURES {
                    Vec::new()
                } else {
                    out.borrow().devices.clone()
                };
                let next = PodAllocations { devices, up: false };
                if **out.borrow() != next {
                    out.send_replace(Arc::new(next));
                }
                if absent {
                    State::Absent
                } else {
                    State::Failed(e.to_string())
                }
            }
        };
        if new_state != state {
            match &new_state {
                State::Ok => {
                    tracing::info!(socket = %socket.display(), "pod-resources API answering; attributing devices to containers")
                }
                State::Absent => {
                    tracing::warn!(socket = %socket.display(), "pod-resources socket absent; serving device metrics without pod attribution until it appears")
                }
                State::Failed(reason) => {
                    tracing::warn!(socket = %socket.display(), reason = %reason, "pod-resources List failed; serving device metrics without fresh pod attribution")
                }
                State::Start => {}
            }
            state = new_state;
        }
        let delay = next_delay(interval, exhausted);
        if exhausted > 0 {
            tracing::debug!(delay = ?delay, "pod-resources API rate-limited us; backing off");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("socket absent")]
    Absent,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
}

async fn poll(
    socket: &Path,
    client: &mut Option<PodResourcesListerClient<Channel>>,
    timeout: Duration,
) -> Result<ListPodResourcesResponse, PollError> {
    if client.is_none() {
        if !socket.exists() {
            return Err(PollError::Absent);
        }
        let channel = uds::connect(socket, Duration::from_secs(1), Some(timeout))
            .await
            .map_err(|e| PollError::Connect(e.to_string()))?;
        *client = Some(
            PodResourcesListerClient::new(channel).max_decoding_message_size(MAX_DECODE_BYTES),
        );
    }
    let Some(c) = client.as_mut() else {
        return Err(PollError::Absent);
    };
    c.list(ListPodResourcesRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(PollError::Status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::podresources_v1::{ContainerDevices, ContainerResources, PodResources};

    fn pod(ns: &str, name: &str, containers: &[(&str, &str, &[&str])]) -> PodResources {
        PodResources {
            name: name.into(),
            namespace: ns.into(),
            containers: containers
                .iter()
                .map(|(c, resource, ids)| ContainerResources {
                    name: (*c).into(),
                    devices: vec![ContainerDevices {
                        resource_name: (*resource).into(),
                        device_ids: ids.iter().map(|s| s.to_string()).collect(),
                        topology: None,
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn keeps_only_our_resources_sorted_and_deduplicated() {
        let response = ListPodResourcesResponse {
            pod_resources: vec![
                pod(
                    "b",
                    "p2",
                    &[("c", "nvidia.com/gpu", &["GPU-1::1", "GPU-1::1"])],
                ),
                pod(
                    "a",
                    "p1",
                    &[
                        ("c", "nvidia.com/gpu", &["GPU-1::0"]),
                        ("sidecar", "example.com/fpga", &["F-0"]),
                    ],
                ),
            ],
        };
        let names: BTreeSet<&str> = ["nvidia.com/gpu"].into_iter().collect();
        let got = ours(&response, &names, None);
        let ids: Vec<(&str, &str)> = got
            .iter()
            .map(|d| (d.pod.as_str(), d.device_id.as_str()))
            .collect();
        assert_eq!(ids, [("p1", "GPU-1::0"), ("p2", "GPU-1::1")]);
    }

    #[test]
    fn dra_claims_of_our_driver_and_pool_are_kept_by_device_name() {
        use crate::proto::podresources_v1::{ClaimResource, DynamicResource};
        let claim = |driver: &str, pool: &str, device: &str| ClaimResource {
            cdi_devices: vec![],
            driver_name: driver.into(),
            pool_name: pool.into(),
            device_name: device.into(),
        };
        let mut p = pod("ml", "trainer", &[("main", "nvidia.com/gpu", &["GPU-1"])]);
        p.containers[0].dynamic_resources = vec![DynamicResource {
            claim_name: "trainer-gpu".into(),
            claim_namespace: "ml".into(),
            claim_resources: vec![
                claim("gpu.gpu-agent.io", "node-a", "gpu-3"),
                claim("gpu.gpu-agent.io", "node-a", "gpu-0-mig-1-0"),
                // Another driver's device, and our driver's name in another pool.
                claim("gpu.nvidia.com", "node-a", "gpu-4"),
                claim("gpu.gpu-agent.io", "node-b", "gpu-5"),
            ],
        }];
        let response = ListPodResourcesResponse {
            pod_resources: vec![p],
        };
        let names: BTreeSet<&str> = ["nvidia.com/gpu"].into_iter().collect();
        let dra = DraIdentity {
            driver: "gpu.gpu-agent.io".into(),
            pool: "node-a".into(),
        };
        let got = ours(&response, &names, Some(&dra));
        let held: Vec<(&str, &str)> = got
            .iter()
            .map(|d| (d.resource.as_str(), d.device_id.as_str()))
            .collect();
        assert_eq!(
            held,
            [
                ("gpu.gpu-agent.io", "gpu-0-mig-1-0"),
                ("gpu.gpu-agent.io", "gpu-3"),
                ("nvidia.com/gpu", "GPU-1"),
            ]
        );
        // Without DRA the claims are not ours.
        assert_eq!(ours(&response, &names, None).len(), 1);
    }

    #[test]
    fn backoff_doubles_on_rate_limiting_and_is_capped() {
        let i = Duration::from_secs(10);
        assert_eq!(next_delay(i, 0), i);
        assert_eq!(next_delay(i, 1), Duration::from_secs(20));
        assert_eq!(next_delay(i, 3), Duration::from_secs(80));
        assert_eq!(next_delay(i, 30), MAX_BACKOFF);
        // An interval longer than the cap is never shortened.
        assert_eq!(
            next_delay(Duration::from_secs(600), 2),
            Duration::from_secs(600)
        );
    }
}
