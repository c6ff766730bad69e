//! The metrics port under a connection flood (issue 15): the release binary on the mock
//! backend, serving the bench node (8 × H100, 7 MIG devices each, time-sliced 4 ways, 200
//! attributed containers, registered with a test kubelet: the soak's setup), against thousands of concurrent connections that never complete a
//! request. Goal: the agent stays ≤ 48 MiB and keeps answering scrapes; RSS returns near its
//! baseline afterwards.
//!
//! ```sh
//! cargo bench --bench http_load    # 3000 connections, 3 rounds of each phase
//! cargo test --bench http_load     # short smoke run of the same code (debug build)
//! ```
//!
//! Each round has two phases, CONNECTIONS (default 3000) attacker connections each:
//! - **hold**: a third send nothing, a third half a request head, a third one complete
//!   `GET /healthz` and then idle; all opened as fast as possible and held for HOLD_MS
//!   (default 5000, under the 10 s header timeout);
//! - **churn**: the same connections, each re-opened as soon as the agent closes it, for
//!   HOLD_MS: the accept loop never rests.
//!
//! Meanwhile a scraper GETs /metrics on a fresh connection every 50 ms; RSS is sampled every
//! 20 ms. Printed per phase: RSS before / peak / after (after: 3 s after every attacker connection
//! is gone and the agent's sockets are back to their baseline), scrape latency p50 / p99 / max and
//! failures, and the most sockets the agent held. Fails only when a scrape fails or the 48 MiB
//! goal is missed. `DEBUG_SCRAPES=1` prints why each failed scrape failed.

#[path = "../tests/common/mod.rs"]
mod harness;
#[path = "../tests/common/limits.rs"]
mod limits;
#[path = "common/mod.rs"]
mod node;
#[path = "../tests/common/pods.rs"]
mod pods;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use harness::{eventually, free_addr, http_get, write_file, Agent};
use limits::{hwm_kib, raise_fd_limit, rss_kib, sockets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GOAL_KIB: u64 = 48 << 10;
const SCRAPE_EVERY: Duration = Duration::from_millis(50);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a flood, longer than the agent's flood-over check (2 s).
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
struct Sizes {
    connections: usize,
    hold: Duration,
    rounds: usize,
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench to harness-less benches; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = Sizes {
        connections: node::env_count("CONNECTIONS", if full { 3000 } else { 300 }),
        hold: Duration::from_millis(
            node::env_count("HOLD_MS", if full { 5000 } else { 2000 }) as u64
        ),
        rounds: node::env_count("ROUNDS", if full { 3 } else { 1 }),
    };
    let fds = raise_fd_limit();
    if (fds as usize) < sizes.connections + 256 {
        bail!(
            "open-file limit {fds} is too low for {} connections",
            sizes.connections
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(sizes))
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    before_kib: u64,
    peak_kib: u64,
    after_kib: u64,
    max_sockets: usize,
    attacker_connects: usize,
    scrapes: Vec<Duration>,
    failures: usize,
}

async fn run(sizes: Sizes) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = write_file(dir.path(), "fixture.yaml", &node::fixture());
    let config = write_file(dir.path(), "config.yaml", node::CONFIG);
    let addr = free_addr();
    // As in the soak: a kubelet the agent registers with, and 200 attributed containers.
    let stub = pods::PodResourcesStub::default();
    *stub.answer.lock().expect("stub") = node::pods(&node::replica_ids());
    pods::serve_pod_resources(&dir.path().join("pod-resources.sock"), stub);
    let mut kubelet = harness::TestKubelet::start(dir.path()).await;
    let agent = Agent::spawn(
        dir.path(),
        &[
            "--mock-fixture",
            harness::arg(&fixture),
            "--config",
            harness::arg(&config),
            "--metrics-addr",
            &addr,
        ],
    );
    kubelet.next_registration().await;
    let pid = agent.child.id();
    eventually("/metrics answers", || {
        http_get(&addr, "/metrics").is_some_and(|(status, _)| status == 200)
    })
    .await;
    // Warm up: the first renders, telemetry collected.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let (took, ok) = scrape(&addr).await;
        if !ok {
            bail!("a scrape failed before the flood");
        }
        idle.push(took);
    }
    let baseline_sockets = sockets(pid);
    let start_kib = rss_kib(pid);
    let body = http_get(&addr, "/metrics").map_or(0, |(_, b)| b.len());
    println!(
        "agent pid {pid}: RSS {:.1} MiB serving, /metrics {body} bytes, {baseline_sockets} sockets idle",
        mib(start_kib)
    );
    println!(
        "scrape on a fresh connection, no load: p50 {} p99 {} max {} ({} scrapes)",
        ms(percentile(&mut idle, 0.50)),
        ms(percentile(&mut idle, 0.99)),
        ms(percentile(&mut idle, 1.0)),
        idle.len()
    );

    let mut phases = Vec::new();
    for round in 1..=sizes.rounds {
        for churn in [false, true] {
            let phase = flood(&addr, pid, baseline_sockets, sizes, churn).await?;
            report(round, &phase, sizes);
            phases.push(phase);
        }
    }
    let peak = phases.iter().map(|p| p.peak_kib).max().unwrap_or(0);
    let failures: usize = phases.iter().map(|p| p.failures).sum();
    let end_kib = rss_kib(pid);
    println!(
        "overall: RSS {:.1} MiB before the first flood, peak {:.1} MiB (VmHWM {:.1} MiB), {:.1} MiB after the last; {failures} failed scrapes",
        mib(start_kib),
        mib(peak),
        mib(hwm_kib(pid)),
        mib(end_kib)
    );
    if failures > 0 {
        bail!("{failures} scrapes failed under load");
    }
    if peak > GOAL_KIB {
        bail!(
            "peak RSS {:.1} MiB is over the {:.0} MiB goal",
            mib(peak),
            mib(GOAL_KIB)
        );
    }
    drop(agent);
    Ok(())
}

fn report(round: usize, phase: &Phase, sizes: Sizes) {
    let mut scrapes = phase.scrapes.clone();
    println!(
        "round {round} {:<5} {} connections for {:?} ({} attacker connects): RSS before {:.1} peak {:.1} after {:.1} MiB; \
         agent sockets max {}; scrapes p50 {} p99 {} max {} ({} ok, {} failed)",
        phase.name,
        sizes.connections,
        sizes.hold,
        phase.attacker_connects,
        mib(phase.before_kib),
        mib(phase.peak_kib),
        mib(phase.after_kib),
        phase.max_sockets,
        ms(percentile(&mut scrapes, 0.50)),
        ms(percentile(&mut scrapes, 0.99)),
        ms(percentile(&mut scrapes, 1.0)),
        phase.scrapes.len(),
        phase.failures
    );
}

/// One flood: attackers, a scraper and an RSS sampler for `sizes.hold`, then wait for the agent
/// to be rid of every attacker connection and take the RSS after.
async fn flood(
    addr: &str,
    pid: u32,
    baseline_sockets: usize,
    sizes: Sizes,
    churn: bool,
) -> Result<Phase> {
    let before_kib = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicUsize::new(0));

    let mut attackers = Vec::with_capacity(sizes.connections);
    for i in 0..sizes.connections {
        let (addr, stop, connects) = (addr.to_string(), stop.clone(), connects.clone());
        attackers.push(tokio::spawn(async move {
            attack(&addr, i % 3, churn, &stop, &connects).await
        }));
    }
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut peak, mut max_sockets) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                max_sockets = max_sockets.max(sockets(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (peak, max_sockets)
        })
    };
    let scraper = {
        let (addr, stop) = (addr.to_string(), stop.clone());
        tokio::spawn(async move {
            let (mut took, mut failures) = (Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                let (t, ok) = scrape(&addr).await;
                if ok {
                    took.push(t);
                } else {
                    failures += 1;
                }
                tokio::time::sleep(SCRAPE_EVERY.saturating_sub(t)).await;
            }
            (took, failures)
        })
    };
    tokio::time::sleep(sizes.hold).await;
    stop.store(true, Ordering::Relaxed);
    let (scrapes, failures) = scraper.await?;
    let (peak_kib, max_sockets) = sampler.await?;
    for attacker in attackers {
        attacker.await?;
    }
    // Every attacker connection is closed on our side; wait until the agent has closed its ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sockets(pid) > baseline_sockets {
        if Instant::now() > deadline {
            bail!(
                "the agent still holds {} sockets (baseline {baseline_sockets})",
                sockets(pid)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the allocator settle (a scrape or two frees the per-connection state of the last ones)
    // and the agent notice the flood is over (it returns free memory then: src/serve/trim.rs).
    for _ in 0..5 {
        let _ = scrape(addr).await;
    }
    tokio::time::sleep(SETTLE).await;
    let after_kib = rss_kib(pid);
    Ok(Phase {
        name: if churn { "churn" } else { "hold" },
        before_kib,
        peak_kib: peak_kib.max(after_kib),
        after_kib,
        max_sockets,
        attacker_connects: connects.load(Ordering::Relaxed),
        scrapes,
        failures,
    })
}

/// One attacker: connect, send its pattern (0: nothing, 1: half a head, 2: a complete
/// `GET /healthz` whose answer it reads), then hold the connection until `stop`; with `churn`,
/// re-open it whenever the agent closes it.
async fn attack(addr: &str, kind: usize, churn: bool, stop: &AtomicBool, connects: &AtomicUsize) {
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        connects.fetch_add(1, Ordering::Relaxed);
        let sent = match kind {
            0 => Ok(()),
            1 => {
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Ag")
                    .await
            }
            _ => {
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
            }
        };
        if sent.is_err() && !churn {
            return;
        }
        // Hold: read (the /healthz answer, then nothing) until the agent closes or we stop.
        loop {
            let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf));
            match read.await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) | Err(_) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
        if !churn {
            // Closed by the agent; a holding attacker waits out the phase.
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return;
        }
    }
}

/// `GET /metrics` on a fresh connection: how long until the whole answer arrived, and whether
/// it was a 200 with a body.
async fn scrape(addr: &str) -> (Duration, bool) {
    let started = Instant::now();
    let result = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await;
    let ok = matches!(&result, Ok(Ok(answer)) if answer.starts_with(b"HTTP/1.1 200") && answer.len() > 1000);
    if !ok && std::env::var_os("DEBUG_SCRAPES").is_some() {
        match &result {
            Err(_) => eprintln!("scrape timed out after {:?}", started.elapsed()),
            Ok(Err(e)) => eprintln!("scrape failed after {:?}: {e}", started.elapsed()),
            Ok(Ok(a)) => eprintln!(
                "scrape answered {} bytes after {:?}",
                a.len(),
                started.elapsed()
            ),
        }
    }
    (started.elapsed(), ok)
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let index = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
