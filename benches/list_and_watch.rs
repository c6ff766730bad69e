//! Building the first ListAndWatch messages of a big node: from the snapshot to the encoded
//! `ListAndWatchResponse`s. Target: ≤ 1 ms.
//!
//! The node: 16 × H100. GPUs 0–7 are whole GPUs time-sliced 128 ways (`nvidia.com/gpu`, 1024
//! replicas); GPUs 8–15 are in MIG mode with 7 × 1g.10gb each (`nvidia.com/mig-1g.10gb`, 56 MIG
//! devices, mixed strategy). A GPU is either MIG or not, so "8 GPUs × 128 replicas plus 56 MIG
//! devices" needs the 16 GPUs; the two resources are two plugins, each sending its own first
//! message, and the figure is the two together (1080 devices).
//!
//! Timed, interleaved over RUNS (default 2000) rounds, p50 / p99 / max:
//! - build: `device_list` for both resources (what the stream task derives from the snapshot);
//! - first messages: build + prost encoding (the stream keeps the sent snapshot, an Arc, to skip unchanged lists),
//!   i.e. everything the agent does before tonic frames the bytes;
//! - floor: prost encoding alone of the same two, already built, messages.
//!
//! Then, for the record, the time a client sees from calling ListAndWatch to holding the first
//! message, over a real unix socket to the in-process server (200 streams per resource).
//!
//! `cargo bench --bench list_and_watch` (`-- --quick` shortens the criterion part).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::plugin::{micros, percentiles, runtimes, snapshot, InProcessPlugin};
use criterion::Criterion;
use gpu_agent::plugin::server::device_list;
use gpu_agent::proto::v1beta1::{Empty, ListAndWatchResponse};
use gpu_agent::snapshot::Snapshot;
use prost::Message;

const GPU: &str = "nvidia.com/gpu";
const MIG: &str = "nvidia.com/mig-1g.10gb";
const TARGET: Duration = Duration::from_millis(1);
const CONFIG: &str = "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 128}\n";

fn fixture() -> String {
    let mut text = String::from("node: lw-bench\ngpus:\n");
    for i in 0..16 {
        text += &format!(
            "  - model: NVIDIA H100 80GB HBM3\n    numaNode: {}\n",
            (i % 8) / 4
        );
        if i >= 8 {
            text += "    mig: {devices: [1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb]}\n";
        }
    }
    text
}

/// What a new stream does before its first send, for one resource: the list and the encoded
/// message (the stream keeps the snapshot it sent, an `Arc`, to compare later ones with).
fn first_message(snapshot: &Snapshot, resource: &str) -> Vec<u8> {
    let devices = device_list(snapshot.resources.get(resource));
    ListAndWatchResponse { devices }.encode_to_vec()
}

fn main() {
    if !common::selected("list_and_watch") {
        return;
    }
    let runs = common::env_count("RUNS", 2000);
    let snapshot = snapshot(&fixture(), CONFIG);
    let gpu_devices = snapshot.resources.get(GPU).map_or(0, |r| r.devices.len());
    let mig_devices = snapshot.resources.get(MIG).map_or(0, |r| r.devices.len());
    assert_eq!(
        (gpu_devices, mig_devices),
        (1024, 56),
        "the bench node must advertise 8 x 128 replicas and 56 MIG devices"
    );
    let built = [
        ListAndWatchResponse {
            devices: device_list(snapshot.resources.get(GPU)),
        },
        ListAndWatchResponse {
            devices: device_list(snapshot.resources.get(MIG)),
        },
    ];
    let sizes = [built[0].encoded_len(), built[1].encoded_len()];

    let mut build = Vec::with_capacity(runs);
    let mut full = Vec::with_capacity(runs);
    let mut full_gpu = Vec::with_capacity(runs);
    let mut full_mig = Vec::with_capacity(runs);
    let mut floor = Vec::with_capacity(runs);
    for _ in 0..100 {
        black_box(first_message(&snapshot, GPU));
        black_box(first_message(&snapshot, MIG));
    }
    for _ in 0..runs {
        let start = Instant::now();
        black_box(device_list(snapshot.resources.get(GPU)));
        black_box(device_list(snapshot.resources.get(MIG)));
        build.push(start.elapsed());

        let start = Instant::now();
        black_box(first_message(&snapshot, GPU));
        let mid = Instant::now();
        black_box(first_message(&snapshot, MIG));
        let end = Instant::now();
        full.push(end - start);
        full_gpu.push(mid - start);
        full_mig.push(end - mid);

        let start = Instant::now();
        black_box(built[0].encode_to_vec());
        black_box(built[1].encode_to_vec());
        floor.push(start.elapsed());
    }

    println!(
        "first ListAndWatch messages: {GPU} {gpu_devices} replicas ({} bytes) + {MIG} {mig_devices} MIG devices ({} bytes); {runs} interleaved runs (target: <= {TARGET:?})",
        sizes[0], sizes[1]
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9}",
        "stage", "p50 µs", "p99 µs", "max µs"
    );
    let row = |what: &str, samples: &mut Vec<Duration>| {
        let [p50, p99, max] = percentiles(samples);
        println!(
            "{what:<44} {:>9.1} {:>9.1} {:>9.1}",
            micros(p50),
            micros(p99),
            micros(max)
        );
        [p50, p99, max]
    };
    let [floor50, ..] = row("floor: encode only (both, prebuilt)", &mut floor);
    row("build: device_list (both)", &mut build);
    row(&format!("first message {GPU} (1024)"), &mut full_gpu);
    row(&format!("first message {MIG} (56)"), &mut full_mig);
    let [full50, full99, _] = row("first messages, both (build + encode)", &mut full);
    println!(
        "both first messages: p50 {:.1} µs, p99 {:.1} µs = {:.2}x the encode-only floor; target <= {TARGET:?}: {}",
        micros(full50),
        micros(full99),
        full50.as_secs_f64() / floor50.as_secs_f64(),
        if full99 <= TARGET { "met (p99)" } else if full50 <= TARGET { "met (p50), MISSED at p99" } else { "MISSED" }
    );

    over_the_socket(&snapshot);

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    c.bench_function(
        "first ListAndWatch messages (1024 replicas + 56 MIG)",
        |b| {
            b.iter(|| {
                black_box(first_message(&snapshot, GPU));
                black_box(first_message(&snapshot, MIG));
            })
        },
    );
    c.bench_function("floor: encode only (1024 replicas + 56 MIG)", |b| {
        b.iter(|| {
            black_box(built[0].encode_to_vec());
            black_box(built[1].encode_to_vec());
        })
    });
    c.final_summary();
}

/// ListAndWatch call → first message in hand, over a unix socket to the in-process server.
fn over_the_socket(snapshot: &Snapshot) {
    const STREAMS: usize = 200;
    let (server, client) = runtimes(2);
    for (resource, expected) in [(GPU, 1024), (MIG, 56)] {
        let plugin = InProcessPlugin::start(&server, &client, snapshot.clone(), resource);
        let mut c = plugin.client.clone();
        let mut times = Vec::with_capacity(STREAMS);
        client.block_on(async {
            for _ in 0..STREAMS + 20 {
                let start = Instant::now();
                let mut stream = c
                    .list_and_watch(Empty {})
                    .await
                    .expect("ListAndWatch")
                    .into_inner();
                let first = stream
                    .message()
                    .await
                    .expect("first message")
                    .expect("a message");
                times.push(start.elapsed());
                assert_eq!(first.devices.len(), expected);
            }
        });
        let mut times = times.split_off(20);
        let [p50, p99, max] = percentiles(&mut times);
        println!(
            "over the socket, {resource}: ListAndWatch call -> first message p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({STREAMS} streams)",
            micros(p50),
            micros(p99),
            micros(max)
        );
    }
}
