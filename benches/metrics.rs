//! `/metrics` render time on a big node: 8 GPUs × 7 MIG devices, 200 attributed containers,
//! every telemetry field (dcgm-exporter's default list and GPM profiling) on every device.
//! Target: p99 ≤ 1 ms. For each naming (`gpu-agent`, `dcgm`, `both`), prints p50 / p99 / max
//! over 5 000 runs of: a render from scratch (after a snapshot or attribution change), the usual
//! scrape (a new telemetry sample: values written into the last template), and a scrape with
//! unchanged inputs; then runs criterion on the first two.
//!
//! `cargo bench --bench metrics`

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use gpu_agent::agent::{AgentStats, Handles};
use gpu_agent::gpu::mock::MockBackend;
use gpu_agent::gpu::GpuBackend;
use gpu_agent::health::watcher::XidCounts;
use gpu_agent::metrics::{Metrics, Naming, Sources};
use gpu_agent::plugin::StatusBoard;
use gpu_agent::podresources::{self, PodAllocations};
use gpu_agent::telemetry::TelemetrySample;
use tokio::sync::watch;

fn sources() -> (Sources, watch::Sender<Arc<TelemetrySample>>) {
    let fixture = common::fixture();
    let snapshot = common::plugin::snapshot(&fixture, common::CONFIG);
    let inventory = snapshot.inventory.clone();
    let devices = MockBackend::from_text(&fixture)
        .expect("fixture")
        .telemetry(&inventory);
    let replicas = common::replica_ids();
    let names: BTreeSet<&str> = snapshot.resources.names().collect();
    let held = podresources::ours(&common::pods(&replicas), &names, None);
    assert_eq!(held.len(), common::CONTAINERS);

    let status = StatusBoard::default();
    for name in snapshot.resources.names() {
        status.set_active(name, true);
        status.set_registered(name, true);
        status.stream_opened(name);
        status.allocation(name, true);
    }
    let (_, snapshots) = watch::channel(Arc::new(snapshot));
    let (telemetry_tx, telemetry) =
        watch::channel(Arc::new(TelemetrySample { inventory, devices }));
    let (_, pods) = watch::channel(Arc::new(PodAllocations {
        devices: held,
        up: true,
    }));
    let sources = Sources {
        handles: Handles {
            node: "bench-node".into(),
            snapshots,
            status,
            stats: Arc::new(AgentStats::default()),
            xid_counts: XidCounts::default(),
        },
        telemetry,
        pods,
    };
    (sources, telemetry_tx)
}

/// p50, p99 and max of `runs` timings of `f`.
fn timings(runs: usize, mut f: impl FnMut()) -> [Duration; 3] {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    common::plugin::percentiles(&mut times)
}

fn report(what: &str, [p50, p99, max]: [Duration; 3]) {
    println!("  {what:<44} p50 {p50:>10.1?}  p99 {p99:>10.1?}  max {max:>10.1?}");
}

fn percentiles(metrics: &Metrics, telemetry: &watch::Sender<Arc<TelemetrySample>>) {
    let text = metrics.render().expect("render");
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "/metrics --metrics-names {:?}, {} GPUs x {} MIG devices, {} containers: {} series, {} bytes (target: p99 <= 1ms)",
        metrics.naming(),
        common::GPUS,
        common::MIGS_PER_GPU,
        common::CONTAINERS,
        series,
        text.len(),
    );
    const RUNS: usize = 5000;
    report(
        "from scratch (every label built + encode)",
        timings(RUNS, || {
            black_box(metrics.render().expect("render"));
        }),
    );
    // The usual scrape: a new telemetry sample since the last one, same devices and pods.
    let sample = telemetry.borrow().clone();
    let samples: Vec<Arc<TelemetrySample>> = (0..RUNS)
        .map(|_| Arc::new(TelemetrySample::clone(&sample)))
        .collect();
    let mut next = samples.into_iter();
    metrics.scrape().expect("scrape");
    report(
        "new sample (values refreshed + encode)",
        timings(RUNS, || {
            if let Some(s) = next.next() {
                telemetry.send_replace(s);
            }
            black_box(metrics.scrape().expect("scrape"));
        }),
    );
    report(
        "unchanged inputs (last text again)",
        timings(RUNS, || {
            black_box(metrics.scrape().expect("scrape"));
        }),
    );
}

fn main() {
    let namings = [Naming::GpuAgent, Naming::Dcgm, Naming::Both];
    let mut c = Criterion::default().configure_from_args();
    for naming in namings {
        let (sources, telemetry) = sources();
        let metrics = Metrics::with_naming(sources, naming).expect("metrics");
        percentiles(&metrics, &telemetry);
        c.bench_function(
            &format!("/metrics {naming:?} from scratch (8 GPUs x 7 MIG, 200 containers)"),
            |b| b.iter(|| black_box(metrics.render().expect("render"))),
        );
        let sample = telemetry.borrow().clone();
        c.bench_function(
            &format!("/metrics {naming:?} after a new sample (8 GPUs x 7 MIG, 200 containers)"),
            |b| {
                b.iter(|| {
                    telemetry.send_replace(Arc::new(TelemetrySample::clone(&sample)));
                    black_box(metrics.scrape().expect("scrape"))
                })
            },
        );
    }
    c.final_summary();
}
