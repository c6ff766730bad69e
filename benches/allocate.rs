//! Allocate round trip over a real unix socket, against an empty unary RPC on the same socket.
//! Target: Allocate ≤ 1.5 × the empty RPC.
//!
//! The agent's own DevicePlugin server runs in this process (same service, tonic server and
//! socket kind as `gpu-agent run`), on the built-in 8 × H100 node, once per device-list setup
//! that changes what Allocate builds: `envvar` (the default), `envvar` + `passDeviceSpecs` (adds
//! device nodes) and `cdi-cri` (CDI device names instead of env). A tonic client, as the kubelet
//! has, asks for 1 and 8 whole GPUs.
//!
//! The floor is GetDevicePluginOptions on the same connection: an `Empty` request, a 2-byte
//! constant answer, no snapshot read. It crosses exactly what Allocate crosses (socket, HTTP/2,
//! tonic, prost, the same service) and nothing else, so the ratio is the cost of Allocate's own
//! work. A separate trivial service would need a second generated service for no difference in
//! path. Calls are interleaved round by round (floor, then every case) so that the machine's
//! noise falls on all of them alike.
//!
//! `cargo bench --bench allocate` (ROUNDS=n to change the 5000 rounds; `-- --quick` shortens
//! the criterion part).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::plugin::{micros, percentiles, runtimes, snapshot, InProcessPlugin};
use criterion::{BenchmarkId, Criterion};
use gpu_agent::gpu::fixture::DEFAULT_FIXTURE;
use gpu_agent::proto::v1beta1::{AllocateRequest, ContainerAllocateRequest, Empty};
use prost::Message;

const RESOURCE: &str = "nvidia.com/gpu";
const TARGET_RATIO: f64 = 1.5;

/// Device-list setups whose Allocate responses differ.
const SETUPS: [(&str, &str); 3] = [
    ("envvar", "version: v1\n"),
    (
        "envvar+passDeviceSpecs",
        "version: v1\nflags: {plugin: {passDeviceSpecs: true}}\n",
    ),
    (
        "cdi-cri",
        "version: v1\nflags: {plugin: {deviceListStrategy: cdi-cri}}\n",
    ),
];

struct Case {
    name: String,
    plugin: usize,
    request: AllocateRequest,
}

fn main() {
    if !common::selected("allocate") {
        return;
    }
    let rounds = common::env_count("ROUNDS", 5000);

    // The agent's runtime: two workers (`gpu-agent run`); the client on its own thread.
    let (server, client) = runtimes(2);

    let mut plugins = Vec::new();
    let mut cases = Vec::new();
    for (i, (setup, config)) in SETUPS.iter().enumerate() {
        let snapshot = snapshot(DEFAULT_FIXTURE, config);
        let ids: Vec<String> = snapshot
            .resources
            .get(RESOURCE)
            .expect("whole GPUs")
            .devices
            .iter()
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(ids.len(), 8, "the built-in node has 8 GPUs");
        plugins.push(InProcessPlugin::start(&server, &client, snapshot, RESOURCE));
        for count in [1, 8] {
            cases.push(Case {
                name: format!("{setup}/{count}dev"),
                plugin: i,
                request: AllocateRequest {
                    container_requests: vec![ContainerAllocateRequest {
                        devices_ids: ids[..count].to_vec(),
                    }],
                },
            });
        }
    }

    // Every case answers what its setup says, before anything is timed.
    for case in &cases {
        let mut c = plugins[case.plugin].client.clone();
        let response = client
            .block_on(c.allocate(case.request.clone()))
            .unwrap_or_else(|s| panic!("{}: {s}", case.name))
            .into_inner();
        let container = &response.container_responses[0];
        let count = case.request.container_requests[0].devices_ids.len();
        let ok = if case.name.starts_with("cdi-cri") {
            container.cdi_devices.len() == count && container.envs.is_empty()
        } else if case.name.contains("passDeviceSpecs") {
            // /dev/nvidiactl, -uvm, -uvm-tools and one node per GPU.
            container.envs.contains_key("NVIDIA_VISIBLE_DEVICES")
                && container.devices.len() == 3 + count
        } else {
            container.envs.contains_key("NVIDIA_VISIBLE_DEVICES") && container.devices.is_empty()
        };
        assert!(ok, "{}: unexpected response {container:?}", case.name);
    }

    // Interleaved per-call timings.
    let mut floor_client = plugins[0].client.clone();
    let mut clients: Vec<_> = cases
        .iter()
        .map(|c| plugins[c.plugin].client.clone())
        .collect();
    let mut floor = Vec::with_capacity(rounds);
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); cases.len()];
    client.block_on(async {
        // Warm-up: connections, allocator, caches.
        for _ in 0..200 {
            let _ = floor_client.get_device_plugin_options(Empty {}).await;
            for (case, c) in cases.iter().zip(clients.iter_mut()) {
                let _ = c.allocate(case.request.clone()).await;
            }
        }
        for _ in 0..rounds {
            let start = Instant::now();
            black_box(floor_client.get_device_plugin_options(Empty {}).await.ok());
            floor.push(start.elapsed());
            for ((case, c), t) in cases.iter().zip(clients.iter_mut()).zip(times.iter_mut()) {
                let request = case.request.clone();
                let start = Instant::now();
                black_box(c.allocate(request).await.ok());
                t.push(start.elapsed());
            }
        }
    });

    let [f50, f99, fmax] = percentiles(&mut floor);
    println!(
        "Allocate round trip over a unix socket, in-process server (2 workers), {rounds} interleaved rounds (target: p50 <= {TARGET_RATIO}x the empty RPC)"
    );
    println!(
        "{:<38} {:>9} {:>9} {:>9} {:>10} {:>9}  target",
        "case", "p50 µs", "p99 µs", "max µs", "resp bytes", "p50 ratio"
    );
    println!(
        "{:<38} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>8.2}x",
        "GetDevicePluginOptions (floor)",
        micros(f50),
        micros(f99),
        micros(fmax),
        gpu_agent::plugin::server::options().encoded_len(),
        1.0
    );
    let mut worst: f64 = 0.0;
    for ((case, t), c) in cases.iter().zip(times.iter_mut()).zip(clients.iter_mut()) {
        let [p50, p99, max] = percentiles(t);
        let ratio = p50.as_secs_f64() / f50.as_secs_f64();
        worst = worst.max(ratio);
        let bytes = client
            .block_on(c.allocate(case.request.clone()))
            .map(|r| r.into_inner().encoded_len())
            .unwrap_or(0);
        println!(
            "{:<38} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>8.2}x  {}",
            format!("Allocate {}", case.name),
            micros(p50),
            micros(p99),
            micros(max),
            bytes,
            ratio,
            if ratio <= TARGET_RATIO {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    println!("worst p50 ratio {worst:.2}x (target <= {TARGET_RATIO}x)");

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut group = c.benchmark_group("allocate_round_trip");
    group.bench_function("GetDevicePluginOptions (floor)", |b| {
        b.iter(|| client.block_on(floor_client.get_device_plugin_options(Empty {})))
    });
    for (case, cl) in cases.iter().zip(clients.iter_mut()) {
        group.bench_function(BenchmarkId::new("Allocate", &case.name), |b| {
            b.iter(|| client.block_on(cl.allocate(case.request.clone())))
        });
    }
    group.finish();
    c.final_summary();
    drop(plugins);
}
