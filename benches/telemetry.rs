//! Telemetry collection cost: one `GpuBackend::telemetry` pass (what the collector runs every
//! `--collect-interval`), per pass and per GPU, p50 / p99 / max.
//!
//! - mock backend: the metrics benches' node (8 × H100, 7 MIG devices each), always;
//! - NVML backend: every GPU of this machine, when libnvidia-ml loads (skipped with a message
//!   otherwise). Its first pass (GPM support queries, first GPM samples) is timed on its own;
//!   the following ones include GPM metrics over the gap between passes.
//!
//! `cargo bench --bench telemetry`

mod common;

use std::time::{Duration, Instant};

use criterion::black_box;
use gpu_agent::gpu::mock::MockBackend;
use gpu_agent::gpu::nvml::NvmlBackend;
use gpu_agent::gpu::{GpuBackend, Inventory};

const MOCK_RUNS: usize = 20_000;
const NVML_RUNS: usize = 200;
/// Gap between NVML passes, so that each GPM interval is not empty.
const NVML_GAP: Duration = Duration::from_millis(20);

/// p50, p99 and max of `runs` passes, with `gap` slept between them (not timed).
fn timings(runs: usize, gap: Duration, mut pass: impl FnMut()) -> [Duration; 3] {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            std::thread::sleep(gap);
            let start = Instant::now();
            pass();
            start.elapsed()
        })
        .collect();
    common::plugin::percentiles(&mut times)
}

fn report(what: &str, gpus: usize, [p50, p99, max]: [Duration; 3]) {
    let per_gpu = |d: Duration| common::plugin::micros(d) / gpus.max(1) as f64;
    println!(
        "  {what:<34} per pass p50 {p50:>9.1?} p99 {p99:>9.1?} max {max:>9.1?} | per GPU p50 {:>8.2} µs  p99 {:>8.2} µs",
        per_gpu(p50),
        per_gpu(p99),
    );
}

fn devices(inventory: &Inventory) -> usize {
    inventory.gpus.iter().map(|g| 1 + g.mig_devices.len()).sum()
}

fn mock() {
    let backend = MockBackend::from_text(&common::fixture()).expect("fixture");
    let inventory = backend.inventory().expect("inventory");
    let gpus = inventory.gpus.len();
    println!(
        "telemetry, mock backend: {gpus} GPUs, {} devices sampled per pass",
        devices(&inventory)
    );
    report(
        "mock",
        gpus,
        timings(MOCK_RUNS, Duration::ZERO, || {
            black_box(backend.telemetry(&inventory));
        }),
    );
}

fn nvml() {
    let backend = match NvmlBackend::open() {
        Ok(backend) => backend,
        Err(error) => {
            println!("telemetry, NVML backend: skipped, NVML is not available here ({error})");
            return;
        }
    };
    let inventory = match backend.inventory() {
        Ok(inventory) if !inventory.gpus.is_empty() => inventory,
        Ok(_) => {
            println!("telemetry, NVML backend: skipped, NVML sees no GPU");
            return;
        }
        Err(error) => {
            println!("telemetry, NVML backend: skipped, cannot enumerate ({error})");
            return;
        }
    };
    let gpus = inventory.gpus.len();
    let models: Vec<&str> = inventory.gpus.iter().map(|g| g.model.as_str()).collect();
    println!(
        "telemetry, NVML backend: {gpus} GPUs ({}), {} devices sampled per pass, driver {}",
        models.join(", "),
        devices(&inventory),
        inventory.driver_version.as_deref().unwrap_or("?"),
    );
    let start = Instant::now();
    black_box(backend.telemetry(&inventory));
    let first = start.elapsed();
    report("nvml, first pass", gpus, [first; 3]);
    let mut last = None;
    report(
        &format!("nvml, {} ms apart", NVML_GAP.as_millis()),
        gpus,
        timings(NVML_RUNS, NVML_GAP, || {
            last = Some(backend.telemetry(&inventory));
        }),
    );
    if let Some(sample) = last {
        let profiled = sample.values().filter(|t| t.profiling.is_some()).count();
        let filled = |t: &gpu_agent::gpu::DeviceTelemetry| {
            serde_json::to_value(t)
                .ok()
                .and_then(|v| {
                    v.as_object()
                        .map(|o| o.values().filter(|v| !v.is_null()).count())
                })
                .unwrap_or(0)
        };
        for (uuid, t) in &sample {
            println!("    {uuid}: {} fields set", filled(t));
        }
        println!(
            "    devices with GPM profiling: {profiled} of {}",
            sample.len()
        );
    }
}

fn main() {
    if !common::selected("telemetry") {
        return;
    }
    mock();
    nvml();
}
