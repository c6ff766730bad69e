//! XID storm soak: memory stays flat and every health change still reaches ListAndWatch fast.
//!
//! ```sh
//! cargo bench --bench health_storm          # full run: 10 000 XIDs per phase, release build
//! cargo test --bench health_storm           # short smoke run of the same code (debug build)
//! ```
//!
//! Two parts:
//! 1. In process, through the library: XIDs go straight into the health mailbox; the real health
//!    task, snapshot assembly, plugin manager and gRPC server carry them to a test kubelet's
//!    ListAndWatch stream. Measures event → published HealthState and event → ListAndWatch
//!    message (the issue's 50 ms budget), and this process's RSS.
//! 2. End to end: the real binary on the mock backend; the XIDs are appended to the fixture file.
//!    Measures fixture write → ListAndWatch (includes the mock's 200 ms poll) and the agent's RSS.
//!
//! Prints figures; fails only when an expected update never comes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use common::{list_and_watch, replace_file, Agent, TestKubelet};
use gpu_agent::agent::assemble;
use gpu_agent::agent::AgentStats;
use gpu_agent::gpu::{GpuBackend, HealthEvent};
use gpu_agent::health::queue::{self, EventSender};
use gpu_agent::health::watcher::{self, XidCounts};
use gpu_agent::health::{HealthPolicy, HealthState, HealthTracker};
use gpu_agent::plugin::{manager, PluginContext, StatusBoard};
use gpu_agent::proto::v1beta1::ListAndWatchResponse;
use gpu_agent::resources::ids;
use gpu_agent::snapshot::Snapshot;
use tokio::sync::watch;
use tonic::Streaming;

const GPUS: usize = 8;
const MODEL: &str = "NVIDIA H100 80GB HBM3";
const IGNORED: [u64; 6] = [13, 31, 43, 45, 68, 109];
const CRITICAL: u64 = 48;
/// Longest wait for one expected update before the run is declared broken.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(20);

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// XIDs per storm phase.
    xids: usize,
    /// XIDs per round (one of them critical).
    per_round: usize,
    /// XIDs in the flood phase.
    flood: usize,
}

const FULL: Sizes = Sizes {
    xids: 10_000,
    per_round: 100,
    flood: 50_000,
};
const SMOKE: Sizes = Sizes {
    xids: 1_000,
    per_round: 100,
    flood: 2_000,
};

fn main() -> Result<()> {
    // `cargo bench` passes --bench to harness-less benches; `cargo test` does not.
    let sizes = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        in_process(sizes).await.context("in-process storm")?;
        end_to_end(sizes).await.context("end-to-end storm")
    })
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// Resident memory of `pid` (this process when `None`), in KiB.
fn rss_kib(pid: Option<u32>) -> Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn summary(&self) -> String {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return "no samples".into();
        }
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        format!(
            "n={} p50={:.2?} p99={:.2?} max={:.2?}",
            v.len(),
            at(0.5),
            at(0.99),
            v[v.len() - 1]
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------------------------

fn fixture_text(xids: &[Vec<u64>]) -> String {
    let mut out = String::from("node: storm\ngpus:\n");
    for list in xids {
        out += &format!("  - model: {MODEL}\n    numaNode: 0\n    xids: {list:?}\n");
    }
    out
}

fn uuids(text: &str) -> Result<Vec<String>> {
    let fixture = gpu_agent::gpu::fixture::parse(text).map_err(|e| anyhow!("fixture: {e:?}"))?;
    Ok(fixture.inventory.gpus.into_iter().map(|g| g.uuid).collect())
}

/// Device IDs the kubelet sees as unhealthy, reduced to their GPU UUIDs.
fn unhealthy_gpus(message: &ListAndWatchResponse) -> BTreeSet<String> {
    message
        .devices
        .iter()
        .filter(|d| d.health != "Healthy")
        .map(|d| ids::base(&d.id).to_string())
        .collect()
}

/// ListAndWatch messages until one has exactly `unhealthy` GPUs unhealthy.
async fn until_unhealthy(
    stream: &mut Streaming<ListAndWatchResponse>,
    unhealthy: &BTreeSet<String>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + UPDATE_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| anyhow!("no ListAndWatch update with {unhealthy:?} unhealthy"))??
            .ok_or_else(|| anyhow!("ListAndWatch ended"))?;
        if unhealthy_gpus(&message) == *unhealthy {
            return Ok(());
        }
    }
}

fn one(uuid: &str) -> BTreeSet<String> {
    BTreeSet::from([uuid.to_string()])
}

// ---------------------------------------------------------------------------------------------
// Part 1: in process
// ---------------------------------------------------------------------------------------------

/// What the in-process pipeline hands the driver.
struct Pipeline {
    events: EventSender,
    health: watch::Receiver<Arc<HealthState>>,
    stream: Streaming<ListAndWatchResponse>,
    uuids: Vec<String>,
    _kubelet: TestKubelet,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn pipeline() -> Result<Pipeline> {
    let text = fixture_text(&vec![Vec::new(); GPUS]);
    let backend = gpu_agent::gpu::mock::MockBackend::from_text(&text)?;
    let inventory = Arc::new(backend.inventory()?);
    let config = gpu_agent::config::parse(
        "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}\nhealth: {recoverAfter: 20ms}\n",
    )
    .map_err(|e| anyhow!("config: {e:?}"))?;
    let config = Arc::new(config);
    let policy = HealthPolicy::new(&config.health, None, None);
    let tracker = HealthTracker::new(policy.clone());
    let health = Arc::new(tracker.state());
    let snapshot = Snapshot::build(inventory.clone(), config.clone(), health.clone())
        .map_err(|e| anyhow!("build: {e:?}"))?;

    let (events, event_rx) = queue::channel();
    let (health_tx, health_rx) = watch::channel(health);
    let (policy_tx, policy_rx) = watch::channel(policy);
    let (_inventory_tx, inventory_rx) = watch::channel(inventory.clone());
    let (_config_tx, config_rx) = watch::channel(config);
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snapshot));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(watcher::run(
        tracker,
        event_rx,
        policy_rx,
        health_tx,
        XidCounts::default(),
    ));
    tokio::spawn(async move {
        // Keep the inventory and config senders alive for the assembler.
        let _keep = (_inventory_tx, _config_tx);
        std::future::pending::<()>().await
    });
    tokio::spawn(assemble::run(
        assemble::Inputs {
            inventory: inventory_rx,
            config: config_rx,
            health: health_rx.clone(),
            mps: tokio::sync::watch::channel(Default::default()).1,
            probe: gpu_agent::extras::discover::Probe::host(),
            dra: Default::default(),
        },
        snapshot_tx,
        policy_tx,
        gpu_agent::health::HealthEnv::default(),
        Arc::new(AgentStats::default()),
        shutdown_rx.clone(),
    ));

    let dir = tempfile::tempdir()?;
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let ctx = PluginContext {
        dir: kubelet.dir().to_path_buf(),
        kubelet_socket: Some(kubelet.socket()),
        snapshots: snapshot_rx,
        status: StatusBoard::default(),
    };
    tokio::spawn(manager::run(ctx, shutdown_rx));
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.plugin(&registration.endpoint).await;
    let mut stream = list_and_watch(&mut client).await;
    until_unhealthy(&mut stream, &BTreeSet::new()).await?;
    Ok(Pipeline {
        events,
        health: health_rx,
        stream,
        uuids: inventory.gpus.iter().map(|g| g.uuid.clone()).collect(),
        _kubelet: kubelet,
        _shutdown: shutdown_tx,
        _dir: dir,
    })
}

fn xid(gpu: &str, xid: u64) -> HealthEvent {
    HealthEvent::Xid {
        gpu_uuid: gpu.to_string(),
        mig_uuid: None,
        xid,
    }
}

/// `sizes.xids` XIDs in rounds: `sizes.per_round - 1` ignored ones spread over every GPU, then a
/// critical one on the next GPU, timed until it is published and until the kubelet sees it; then
/// wait for the recovery (recoverAfter 20 ms) so that the next round starts healthy.
async fn rounds(
    p: &mut Pipeline,
    sizes: Sizes,
    to_state: &mut Latencies,
    to_stream: &mut Latencies,
) -> Result<()> {
    let per_round = sizes.per_round;
    for round in 0..sizes.xids / per_round {
        for i in 0..per_round - 1 {
            let gpu = &p.uuids[(round + i) % GPUS];
            p.events.send(xid(gpu, IGNORED[i % IGNORED.len()]))?;
        }
        let gpu = p.uuids[round % GPUS].clone();
        let sent = Instant::now();
        p.events.send(xid(&gpu, CRITICAL))?;
        tokio::time::timeout(UPDATE_TIMEOUT, p.health.wait_for(|s| !s.gpu_healthy(&gpu)))
            .await
            .map_err(|_| anyhow!("round {round}: state never published"))??;
        to_state.push(sent.elapsed());
        until_unhealthy(&mut p.stream, &one(&gpu)).await?;
        to_stream.push(sent.elapsed());
        until_unhealthy(&mut p.stream, &BTreeSet::new()).await?;
    }
    Ok(())
}

async fn in_process(sizes: Sizes) -> Result<()> {
    println!("== in process: mailbox -> health task -> snapshot -> plugin server -> ListAndWatch");
    println!("   8 GPUs x 4 time-sliced replicas, recoverAfter 20ms");
    let mut p = pipeline().await?;
    let rss_start = rss_kib(None)?;

    let mut to_state = Latencies::default();
    let mut to_stream = Latencies::default();
    let started = Instant::now();
    rounds(&mut p, sizes, &mut to_state, &mut to_stream).await?;
    let first = started.elapsed();
    let rss_first = rss_kib(None)?;
    rounds(&mut p, sizes, &mut to_state, &mut to_stream).await?;
    let rss_second = rss_kib(None)?;

    // Flood: everything at once, then one critical XID behind it.
    let flood_started = Instant::now();
    for i in 0..sizes.flood {
        p.events
            .send(xid(&p.uuids[i % GPUS], IGNORED[i % IGNORED.len()]))?;
    }
    let send_time = flood_started.elapsed();
    let gpu = p.uuids[3].clone();
    let sent = Instant::now();
    p.events.send(xid(&gpu, CRITICAL))?;
    until_unhealthy(&mut p.stream, &one(&gpu)).await?;
    let behind_flood = sent.elapsed();
    let rss_flood = rss_kib(None)?;

    println!(
        "   storm: {} XIDs in rounds of {} (1 critical each), twice; first {} took {first:.2?}",
        sizes.xids, sizes.per_round, sizes.xids
    );
    println!("   event -> HealthState published: {}", to_state.summary());
    println!("   event -> ListAndWatch message:  {}", to_stream.summary());
    println!(
        "   flood: {} XIDs sent in {send_time:.2?} ({:.0} events/s, never blocking); critical XID behind it -> ListAndWatch {behind_flood:.2?}",
        sizes.flood,
        sizes.flood as f64 / send_time.as_secs_f64()
    );
    println!(
        "   RSS (this process): start {rss_start} KiB, after {} XIDs {rss_first} KiB, after {} {rss_second} KiB, after flood of {} {rss_flood} KiB",
        sizes.xids,
        2 * sizes.xids,
        sizes.flood
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Part 2: end to end
// ---------------------------------------------------------------------------------------------

/// One storm write: every GPU's `xids` list replaced by `per_gpu` ignored XIDs (starting with
/// a different XID than the previous write, so the whole list is new to the agent), plus one
/// critical XID at the end of `critical_gpu`'s list. The fixture keeps its size, so what the
/// agent's memory does is the storm's doing, not the fixture's.
fn storm_lists(round: usize, per_gpu: usize, critical_gpu: usize) -> Vec<Vec<u64>> {
    (0..GPUS)
        .map(|gpu| {
            let mut list: Vec<u64> = (0..per_gpu)
                .map(|i| IGNORED[(round + gpu + i) % IGNORED.len()])
                .collect();
            if gpu == critical_gpu {
                list.push(CRITICAL);
            }
            list
        })
        .collect()
}

async fn end_to_end(sizes: Sizes) -> Result<()> {
    println!("== end to end: fixture file -> gpu-agent (mock backend) -> ListAndWatch");
    println!("   8 GPUs exclusive, recoverAfter 300ms");
    let dir = tempfile::tempdir()?;
    let fixture = dir.path().join("fixture.yaml");
    let config = dir.path().join("config.yaml");
    let text = fixture_text(&vec![Vec::new(); GPUS]);
    let uuids = uuids(&text)?;
    replace_file(&fixture, &text);
    std::fs::write(&config, "version: v1\nhealth: {recoverAfter: 300ms}\n")?;

    let mut kubelet = TestKubelet::start(dir.path()).await;
    let fixture_arg = fixture.display().to_string();
    let config_arg = config.display().to_string();
    let mut agent = Agent::spawn_with_env(
        dir.path(),
        &["--mock-fixture", &fixture_arg, "--config", &config_arg],
        &[("RUST_LOG", "warn")],
    );
    let registration = kubelet.next_registration().await;
    let mut client = kubelet.plugin(&registration.endpoint).await;
    let mut stream = list_and_watch(&mut client).await;
    until_unhealthy(&mut stream, &BTreeSet::new()).await?;
    let pid = agent.child.id();
    let mut rss = vec![(0, rss_kib(Some(pid))?)];

    // Storm: writes of ~500 XIDs (62 per GPU, one of them critical), 2 x `sizes.xids` in all.
    let per_gpu = 62;
    let per_write = per_gpu * GPUS + 1;
    let writes = (sizes.xids / per_write).max(1);
    let mut latency = Latencies::default();
    let mut delivered = 0;
    for round in 0..2 * writes {
        let gpu = round % GPUS;
        let lists = storm_lists(round, per_gpu, gpu);
        replace_file(&fixture, &fixture_text(&lists));
        let written = Instant::now();
        until_unhealthy(&mut stream, &one(&uuids[gpu])).await?;
        latency.push(written.elapsed());
        until_unhealthy(&mut stream, &BTreeSet::new()).await?;
        delivered += per_write;
        if (round + 1) % (writes / 2).max(1) == 0 {
            rss.push((delivered, rss_kib(Some(pid))?));
        }
    }

    // History: the lists grow instead (appended XIDs), one write of `sizes.xids` more.
    let mut lists = storm_lists(2 * writes, per_gpu, usize::MAX);
    replace_file(&fixture, &fixture_text(&lists));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..sizes.xids {
        lists[i % GPUS].push(IGNORED[i % IGNORED.len()]);
    }
    lists[5].push(CRITICAL);
    let text = fixture_text(&lists);
    replace_file(&fixture, &text);
    let written = Instant::now();
    until_unhealthy(&mut stream, &one(&uuids[5])).await?;
    let bulk = written.elapsed();
    let rss_bulk = rss_kib(Some(pid))?;
    if let Ok(Some(status)) = agent.child.try_wait() {
        bail!("the agent exited: {status}");
    }

    println!(
        "   storm: {delivered} XIDs in {} fixture writes of {per_write} ({} critical), fixture size constant",
        2 * writes,
        2 * writes
    );
    println!(
        "   fixture write -> ListAndWatch (200 ms poll included): {}",
        latency.summary()
    );
    let rss: Vec<String> = rss
        .iter()
        .map(|(n, kib)| format!("{kib} KiB after {n}"))
        .collect();
    println!("   RSS (agent): {}", rss.join(", "));
    println!(
        "   appended: {} more XIDs in one write (fixture now {} KiB of XID history) -> ListAndWatch {bulk:.2?}, RSS {rss_bulk} KiB",
        sizes.xids,
        text.len() / 1024
    );
    Ok(())
}
