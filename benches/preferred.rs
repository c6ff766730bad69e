//! GetPreferredAllocation for whole GPUs on nodes with NVLink islands: 8 GPUs (two 4-GPU
//! islands) and 16 GPUs (four 4-GPU islands with a few links between islands), sizes 2/4/8.
//!
//! First a side-by-side table measured in this run: `choose` (what the RPC does), the local
//! search alone and the exhaustive search, each in microseconds per call, the ratio
//! `choose / exhaustive`, and whether `choose` returned the exhaustive optimum (on 8 GPUs it
//! must: the run fails otherwise). Then the criterion measurements of the same calls.
//!
//! `cargo bench --bench preferred -- --quick` runs in well under a minute.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use gpu_agent::config::{Config, SharedPlacement};
use gpu_agent::gpu::ids::mock_gpu_uuid;
use gpu_agent::gpu::{Gpu, Inventory};
use gpu_agent::health::HealthState;
use gpu_agent::preferred::{choose_with, Request, Search, Topology};
use gpu_agent::resources::{self, Resource};

const RESOURCE: &str = "nvidia.com/gpu";
/// Target from the issue: a call at 16 GPUs takes at most this.
const TARGET_16: Duration = Duration::from_millis(1);

/// A node of `n` GPUs in 4-GPU NVLink islands (12 links per pair), two NUMA nodes (the first
/// half of the islands on node 0), DGX-like bus numbers, and on 16 GPUs 2 links between
/// neighbouring islands so that the best 8 are not simply two islands in index order.
fn node(n: u32) -> Inventory {
    let buses = [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb];
    let mut gpus: Vec<Gpu> = (0..n)
        .map(|i| Gpu {
            index: i,
            uuid: mock_gpu_uuid(i),
            model: "NVIDIA H100 80GB HBM3".into(),
            memory_mib: 81559,
            numa_node: Some(u32::from(i >= n / 2)),
            pci_bus_id: Some(format!(
                "{:04x}:{:02x}:00.0",
                i / 8,
                buses[(i % 8) as usize]
            )),
            minor_number: i,
            mig_enabled: false,
            mig_devices: Vec::new(),
            nvlinks: BTreeMap::new(),
        })
        .collect();
    let mut link = |a: u32, b: u32, count: u32| {
        gpus[a as usize].nvlinks.insert(b, count);
        gpus[b as usize].nvlinks.insert(a, count);
    };
    for a in 0..n {
        for b in a + 1..n {
            if a / 4 == b / 4 {
                link(a, b, 12);
            } else if n > 8 && b / 4 == a / 4 + 1 && a % 4 == 3 && b % 4 == 0 {
                link(a, b, 2);
            }
        }
    }
    Inventory {
        gpus,
        ..Inventory::default()
    }
}

struct Case {
    gpus: u32,
    size: usize,
    resource: Resource,
    topology: Topology,
    available: Vec<String>,
}

impl Case {
    fn new(gpus: u32, size: usize) -> Self {
        let inventory = node(gpus);
        let mut built = resources::build(&inventory, &Config::default(), &HealthState::default())
            .unwrap_or_else(|e| panic!("bench node does not build: {e:?}"));
        let resource = built
            .resources
            .resources
            .remove(RESOURCE)
            .unwrap_or_else(|| panic!("no {RESOURCE} on the bench node"));
        let available = resource.devices.iter().map(|d| d.id.clone()).collect();
        Self {
            gpus,
            size,
            resource,
            topology: Topology::new(&inventory),
            available,
        }
    }

    fn run(&self, search: Search) -> Vec<String> {
        let request = Request {
            available: &self.available,
            must_include: &[],
            size: self.size,
        };
        choose_with(
            &self.resource,
            &self.topology,
            SharedPlacement::Spread,
            &request,
            search,
        )
    }

    fn name(&self) -> String {
        format!("{}gpus/size{}", self.gpus, self.size)
    }

    fn score(&self, ids: &[String]) -> gpu_agent::preferred::Score {
        let indices: Vec<u32> = ids
            .iter()
            .filter_map(|id| self.resource.device(id).map(|d| d.target.gpu_index))
            .collect();
        self.topology.score(&indices)
    }
}

/// Median time per call over 11 batches of about 20 ms each.
fn time(f: impl Fn() -> Vec<String>) -> Duration {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < Duration::from_millis(20) {
        black_box(f());
        calls += 1;
    }
    let mut samples: Vec<Duration> = (0..11)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                black_box(f());
            }
            start.elapsed() / calls
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for gpus in [8, 16] {
        for size in [2, 4, 8] {
            out.push(Case::new(gpus, size));
        }
    }
    out
}

/// The side-by-side table. Panics when `choose` misses the optimum on 8 GPUs or takes longer
/// than the target at 16.
fn summary(cases: &[Case]) {
    println!(
        "{:<16} {:>11} {:>11} {:>13} {:>8} {:>9}  chosen GPUs",
        "case", "choose µs", "local µs", "exhaustive µs", "ratio", "optimum"
    );
    let mut failures = Vec::new();
    for case in cases {
        let auto = case.run(Search::Auto);
        let exact = case.run(Search::Exhaustive);
        let t_auto = time(|| case.run(Search::Auto));
        let t_local = time(|| case.run(Search::LocalSearch));
        let t_exact = time(|| case.run(Search::Exhaustive));
        let optimum = case.score(&auto) == case.score(&exact);
        let gpus: Vec<u32> = auto
            .iter()
            .filter_map(|id| case.resource.device(id).map(|d| d.target.gpu_index))
            .collect();
        println!(
            "{:<16} {:>11.2} {:>11.2} {:>13.2} {:>7.2}x {:>9}  {:?}",
            case.name(),
            micros(t_auto),
            micros(t_local),
            micros(t_exact),
            t_auto.as_secs_f64() / t_exact.as_secs_f64(),
            if auto == exact {
                "same set"
            } else if optimum {
                "same score"
            } else {
                "NO"
            },
            gpus,
        );
        if case.gpus <= 8 && auto != exact {
            failures.push(format!("{}: not the exhaustive optimum", case.name()));
        }
        if case.gpus == 16 && t_auto > TARGET_16 {
            failures.push(format!("{}: {t_auto:?} > {TARGET_16:?}", case.name()));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

fn main() {
    let cases = cases();
    summary(&cases);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut group = c.benchmark_group("preferred");
    for case in &cases {
        for (label, search) in [("choose", Search::Auto), ("exhaustive", Search::Exhaustive)] {
            group.bench_with_input(BenchmarkId::new(label, case.name()), case, |b, case| {
                b.iter(|| case.run(search))
            });
        }
    }
    group.finish();
    c.final_summary();
}
