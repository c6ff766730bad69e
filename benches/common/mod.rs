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

/// Every telemetry key of a GPU (the full field set of dcgm-exporter's default list, GPM
/// profiling included), GPU `i`'s values.
fn gpu_telemetry(i: usize) -> String {
    format!(
        "{{utilizationPercent: {u}, memoryCopyUtilizationPercent: 31, encoderUtilizationPercent: 2, decoderUtilizationPercent: 3, \
         memoryUsedMiB: {m}, memoryReservedMiB: 559, temperatureCelsius: 60, memoryTemperatureCelsius: 68, powerWatts: 400.5, \
         energyMillijoules: 987654321, smClockMhz: 1980, memoryClockMhz: 2619, pcieReplayCount: 1, nvlinkBytesTotal: 123456789012, nvlinkBandwidthMbPerSecond: 4321, \
         eccCorrectedTotal: 4, eccUncorrectedTotal: 0, remappedRowsCorrectable: 1, remappedRowsUncorrectable: 0, rowRemapFailure: false, \
         clockThrottleReasons: 4, vgpuLicenseStatus: 0, profiling: {PROFILING}}}",
        u = 10 + i,
        m = 1000 * (i + 1),
    )
}

/// GPM profiling, every key.
const PROFILING: &str = "{grEngineActive: 0.81, smActive: 0.77, smOccupancy: 0.42, tensorActive: 0.35, fp64Active: 0.01, fp32Active: 0.22, fp16Active: 0.3, dramActive: 0.55, pcieTxBytesPerSecond: 1.2e9, pcieRxBytesPerSecond: 3.4e9, nvlinkTxBytesPerSecond: 5.6e10, nvlinkRxBytesPerSecond: 7.8e10}";

/// The fixture: every telemetry key on the GPUs, memory and profiling on the MIG devices.
pub fn fixture() -> String {
    let mut text = String::from("node: bench-node\ndriverVersion: \"580.95.05\"\ngpus:\n");
    let mig = format!(
        "{{profile: 1g.10gb, telemetry: {{memoryUsedMiB: 512, memoryReservedMiB: 16, profiling: {PROFILING}}}}}"
    );
    for i in 0..GPUS {
        text.push_str(&format!(
            "  - model: NVIDIA H100 80GB HBM3\n    pciBusId: \"0000:{b:02x}:00.0\"\n    telemetry: {t}\n    mig: {{devices: [{d}]}}\n",
            b = 0x18 + i * 0x10,
            t = gpu_telemetry(i),
            d = [mig.as_str(); MIGS_PER_GPU].join(", ")
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
