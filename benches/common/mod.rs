//! The node the metrics benchmarks describe: 8 × H100, each cut into 7 × 1g.10gb MIG devices
//! (mixed strategy), every MIG device time-sliced 4 ways, and 200 containers holding replicas.

#![allow(dead_code)]

pub mod plugin;

use gpu_agent::proto::podresources_v1::{
    ContainerDevices, ContainerResources, ListPodResourcesResponse, PodResources,
};

pub const GPUS: usize = 8;
pub const MIGS_PER_GPU: usize = 7;
pub const CONTAINERS: usize = 200;
pub const RESOURCE: &str = "nvidia.com/mig-1g.10gb";

/// The fixture: full telemetry on the GPUs, memory on the MIG devices.
pub fn fixture() -> String {
    let mut text = String::from("node: bench-node\ndriverVersion: \"580.95.05\"\ngpus:\n");
    for i in 0..GPUS {
        text.push_str(&format!(
            "  - model: NVIDIA H100 80GB HBM3\n    telemetry: {{utilizationPercent: {u}, memoryUsedMiB: {m}, temperatureCelsius: 60, powerWatts: 400.5, smClockMhz: 1980, memoryClockMhz: 2619}}\n    mig: {{devices: [{d}]}}\n",
            u = 10 + i,
            m = 1000 * (i + 1),
            d = ["{profile: 1g.10gb, memoryUsedMiB: 512}"; MIGS_PER_GPU].join(", ")
        ));
    }
    text
}

/// The config: mixed MIG strategy, 4 replicas per MIG device.
pub const CONFIG: &str = "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/mig-1g.10gb, replicas: 4}\n";

/// What the kubelet reports: `CONTAINERS` containers (2 per pod), each on one replica.
pub fn pods(replica_ids: &[String]) -> ListPodResourcesResponse {
    let mut pods = Vec::new();
    for p in 0..CONTAINERS / 2 {
        let containers = (0..2)
            .map(|c| ContainerResources {
                name: format!("container-{c}"),
                devices: vec![ContainerDevices {
                    resource_name: RESOURCE.into(),
                    device_ids: vec![replica_ids[(p * 2 + c) % replica_ids.len()].clone()],
                    topology: None,
                }],
                ..Default::default()
            })
            .collect();
        pods.push(PodResources {
            name: format!("inference-{p:04}-7d9f8c6b5-x2x4z"),
            namespace: format!("team-{}", p % 7),
            containers,
        });
    }
    ListPodResourcesResponse {
        pod_resources: pods,
    }
}

/// The advertised replica IDs of the MIG resource, as the agent builds them from the fixture.
pub fn replica_ids() -> Vec<String> {
    plugin::snapshot(&fixture(), CONFIG)
        .resources
        .get(RESOURCE)
        .expect("MIG resource")
        .devices
        .iter()
        .map(|d| d.id.clone())
        .collect()
}

/// False when this bench was not asked for: `cargo bench` passes `--bench` (and criterion's own
/// `--` options) to every bench, plus the filter, if any, that picks the bench to run.
pub fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// A count from the environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
