//! The agent as a DRA driver, timed and counted: the release binary (`gpu-agent run --backend
//! mock --dra`, the built-in node of 8 × H100) against the stand-in kubelet of
//! `tests/common/dra_kubelet.rs` and the test API server of `tests/common/apiserver.rs`.
//!
//! ```sh
//! cargo bench --bench dra               # 200 prepare rounds, 10 s steady state, 7 XID rounds
//! cargo test --release --bench dra      # 10 prepare rounds, 2 s steady state, 2 XID rounds
//! ```
//!
//! (PREPARES, STEADY_S and ROUNDS change those counts.) The figures, one line each:
//!
//! 1. **NodePrepareResources latency**, claims of 1 and of 8 GPUs (goal: p99 ≤ 10 ms, the CDI
//!    spec write included). The agent reads its claims from the test-only claims file
//!    (`--dra-claims-file`, read on every lookup) instead of the API server, so the figure is
//!    the agent's own work: claim lookup, checks, checkpoint, CDI spec, answer. Each round
//!    writes a claims file with two fresh claims (new UIDs, the lower-case UUIDs Kubernetes
//!    gives), then prepares and unprepares the 1-GPU claim, then the 8-GPU one, each call timed
//!    by the client around its round trip; the file write is outside the timing. A few warm-up
//!    rounds are not counted. NodeUnprepareResources (spec removal) is reported beside, with no
//!    goal.
//! 2. **ResourceSlice republish after an XID** (goal: ≤ 1 s, every round). A second agent, with
//!    `--kubeconfig` for the test API server and a copy of the built-in node as its
//!    `--mock-fixture`, publishes its slice; each round then appends XID 48 (a critical one: a
//!    double-bit ECC error) to another GPU's `xids` in the fixture (a rename over the file, as a
//!    ConfigMap update does) and polls the slices the server stores every millisecond until that
//!    GPU's device is gone. The mock re-reads its fixture every 200 ms (a sleep loop), a wait
//!    that NVML's event wait does not have: the rounds' edits are spread evenly over that
//!    period (the moment after the previous round is shifted by `round / ROUNDS` of it), so
//!    p50 and max show the poll's share and min is the agent's own path (fixture read ->
//!    health -> device list -> PUT -> stored) plus at most 200 ms / ROUNDS of it (about
//!    29 ms with 7 rounds). The default health policy never
//!    recovers a device, so each round takes a GPU that is still healthy.
//! 3. **API-server load**, from the server's request log: requests from the agent's start until
//!    its slice is stored, and until its watch is open (the start-up sequence; goal ≤ 5 each);
//!    requests in STEADY_S seconds of steady state after that (goal 0); and, per XID round,
//!    the writes between the fixture edit and one second after the slice changed (goal: exactly
//!    1 in every round).
//! 4. **Memory with DRA on**: VmRSS and VmHWM (peak) of the first agent after its prepare loop,
//!    and of the second after its XID rounds. No goal; printed for BENCHMARKS.md.
//!
//! Fails (non-zero exit) only when a goal is missed, or when the agent answers wrongly (a
//! prepare with an error or the wrong devices, a spec left behind): a broken run measures
//! nothing.

#[path = "../tests/common/apiserver.rs"]
mod apiserver;
#[path = "../tests/common/mod.rs"]
mod harness;
#[path = "../tests/common/limits.rs"]
mod limits;
#[path = "common/mod.rs"]
mod node;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use apiserver::{Logged, TestApiServer};
use harness::dra_kubelet::{DraClient, DraKubelet};
use harness::{arg, eventually, replace_file, Agent};
use limits::{hwm_kib, rss_kib};
use serde_json::{json, Value};

const DRIVER: &str = "gpu.gpu-agent.io";
const NODE: &str = "gpu-node-1";
const NAMESPACE: &str = "bench";
/// GPUs of the built-in mock node.
const GPUS: usize = 8;
/// The built-in mock node, copied into the second agent's fixture so that XIDs can be added.
const DEFAULT_NODE: &str = include_str!("../fixtures/default-h100x8.yaml");
/// A critical XID (double-bit ECC error): takes the GPU out of the slice.
const XID: u64 = 48;

const PREPARE_GOAL: Duration = Duration::from_millis(10);
const REPUBLISH_GOAL: Duration = Duration::from_secs(1);
const START_REQUESTS_GOAL: usize = 5;
/// Prepare rounds run before the counted ones (first connections, first spec written).
const WARM_UP: usize = 3;
/// After a slice change, how long further requests are still counted against that change.
const AFTER_CHANGE: Duration = Duration::from_secs(1);
/// How often the mock backend re-reads its fixture.
const MOCK_POLL: Duration = gpu_agent::gpu::mock::POLL_INTERVAL;
/// How often the slices the server stores are looked at.
const POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy)]
struct Sizes {
    prepares: usize,
    steady: Duration,
    rounds: usize,
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench to harness-less benches; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = Sizes {
        prepares: node::env_count("PREPARES", if full { 200 } else { 10 }).max(1),
        steady: Duration::from_secs(node::env_count("STEADY_S", if full { 10 } else { 2 }) as u64),
        // At most GPUS - 1: one GPU stays healthy, so the slice never empties.
        rounds: node::env_count("ROUNDS", if full { 7 } else { 2 }).clamp(1, GPUS - 1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut missed = Vec::new();
        prepare_latency(sizes, &mut missed).await?;
        slices(sizes, &mut missed).await?;
        if !missed.is_empty() {
            bail!("goals missed:\n  {}", missed.join("\n  "));
        }
        println!("every goal met");
        Ok(())
    })
}

/// Figures 1 and 4: the prepare / unprepare loop on an agent that reads its claims from a file,
/// then that agent's memory.
async fn prepare_latency(sizes: Sizes, missed: &mut Vec<String>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let registry = root.join("plugins_registry");
    let claims_file = root.join("claims.json");
    // The wiring of tests/dra_kubelet.rs: the plugin watcher on the registry directory, the
    // agent registering there, the kubelet's client dialling the endpoint it announced.
    let mut kubelet = DraKubelet::start(&registry);
    let agent = Agent::spawn(
        root,
        &[
            "--dra",
            "--node-name",
            NODE,
            "--kubelet-registry-dir",
            arg(&registry),
            "--kubelet-plugins-dir",
            arg(&root.join("plugins")),
            "--dra-claims-file",
            arg(&claims_file),
        ],
    );
    let plugin = kubelet.next_registration().await;
    let client = DraClient::connect(&plugin).await;
    let cdi = root.join("cdi");

    // [1 GPU, 8 GPUs] × [prepare, unprepare]
    let mut took: [[Vec<Duration>; 2]; 2] = Default::default();
    for round in 0..WARM_UP + sizes.prepares {
        // Two claims new to the agent: a UID never seen, as each pod's claim has.
        let one = claim_uid(1, round);
        let eight = claim_uid(8, round);
        let one_gpu = vec![format!("gpu-{}", round % GPUS)];
        let all_gpus: Vec<String> = (0..GPUS).map(|i| format!("gpu-{i}")).collect();
        replace_file(
            &claims_file,
            &json!([
                claim(&one, "one-gpu", &one_gpu),
                claim(&eight, "eight-gpus", &all_gpus)
            ])
            .to_string(),
        );
        for (size, (uid, name, devices)) in [
            (&one, "one-gpu", &one_gpu),
            (&eight, "eight-gpus", &all_gpus),
        ]
        .into_iter()
        .enumerate()
        {
            let id = [(NAMESPACE, uid.as_str(), name)];
            let spec = cdi.join(format!("k8s.gpu-agent.io-claim_{uid}.json"));

            let started = Instant::now();
            let answer = client.prepare(&id).await;
            let prepared = started.elapsed();
            let result = &answer[uid];
            ensure!(result.error.is_empty(), "prepare {name}: {}", result.error);
            let got: Vec<&str> = result
                .devices
                .iter()
                .map(|d| d.device_name.as_str())
                .collect();
            ensure!(got == *devices, "prepare {name}: devices {got:?}");
            ensure!(spec.is_file(), "no CDI spec {}", spec.display());

            let started = Instant::now();
            let answer = client.unprepare(&id).await;
            let unprepared = started.elapsed();
            ensure!(answer[uid].is_empty(), "unprepare {name}: {}", answer[uid]);
            ensure!(!spec.exists(), "{} left behind", spec.display());

            if round >= WARM_UP {
                took[size][0].push(prepared);
                took[size][1].push(unprepared);
            }
        }
    }

    println!(
        "== NodePrepareResources / NodeUnprepareResources: {} rounds (+{WARM_UP} warm-up), \
         claims from the claims file, mock 8 × H100, v1 service",
        sizes.prepares
    );
    for (size, label) in [(0, "1 device"), (1, "8 devices")] {
        let [prepare, unprepare] = &mut took[size];
        let p99 = percentile(prepare, 0.99);
        println!(
            "prepare   {label:<9} (CDI spec written)  p50 {}  p99 {}  max {}  \
             (goal p99 <= {}: {})",
            ms(percentile(prepare, 0.50)),
            ms(p99),
            ms(percentile(prepare, 1.0)),
            ms(PREPARE_GOAL),
            verdict(p99 <= PREPARE_GOAL),
        );
        if p99 > PREPARE_GOAL {
            missed.push(format!(
                "NodePrepareResources of {label}: p99 {} > {}",
                ms(p99),
                ms(PREPARE_GOAL)
            ));
        }
        println!(
            "unprepare {label:<9} (CDI spec removed)  p50 {}  p99 {}  max {}",
            ms(percentile(unprepare, 0.50)),
            ms(percentile(unprepare, 0.99)),
            ms(percentile(unprepare, 1.0)),
        );
    }
    let pid = agent.child.id();
    println!(
        "agent memory after the prepare loop (DRA on, claims file): VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(rss_kib(pid)),
        mib(hwm_kib(pid)),
    );
    drop(agent);
    Ok(())
}

/// Figures 2, 3 and 4: the agent publishing to the test API server; its start-up and steady
/// state requests, then XIDs injected one GPU at a time.
async fn slices(sizes: Sizes, missed: &mut Vec<String>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    // The wiring of tests/deploy/dra.rs (the shipped selectors end-to-end test).
    let server = TestApiServer::start().await;
    server.add_node(NODE);
    let kubeconfig = server.kubeconfig(root);
    let fixture = root.join("fixture.yaml");
    let mut xids = [false; GPUS];
    replace_file(&fixture, &node_with_xids(&xids));
    let registry = root.join("plugins_registry");
    let _kubelet = DraKubelet::start(&registry);

    let before = server.requests().len();
    let spawned = Instant::now();
    let agent = Agent::spawn(
        root,
        &[
            "--mock-fixture",
            arg(&fixture),
            "--dra",
            "--node-name",
            NODE,
            "--kubeconfig",
            arg(&kubeconfig),
            "--kubelet-registry-dir",
            arg(&registry),
            "--kubelet-plugins-dir",
            arg(&root.join("plugins")),
        ],
    );

    // Start-up: until the slice is stored (polled every millisecond), then until the agent's
    // watch on its slices is open, which ends its start-up sequence.
    let published = until(&server, "the agent to publish its ResourceSlice", |s| {
        device_names(s).len() == GPUS
    })
    .await?;
    let to_publish = spawned.elapsed();
    let at_publish = server.requests()[before..].to_vec();
    eventually("the agent to watch its ResourceSlices", || {
        server.requests()[before..].iter().any(Logged::is_watch)
    })
    .await;
    let start_up = server.requests()[before..].to_vec();
    ensure!(
        published.len() == 1,
        "{} slices for one node",
        published.len()
    );

    println!(
        "== ResourceSlices: test API server, mock 8 × H100 (fixture), XID {XID} injected by \
         fixture edits"
    );
    for (what, requests, list) in [
        ("start -> slice stored", &at_publish, false),
        ("start -> watching (start-up done)", &start_up, true),
    ] {
        let ok = requests.len() <= START_REQUESTS_GOAL;
        let listed = if list {
            format!(" [{}]", describe(requests))
        } else {
            String::new()
        };
        println!(
            "API requests {what:<34} {}{listed}  (goal <= {START_REQUESTS_GOAL}: {})",
            requests.len(),
            verdict(ok),
        );
        if !ok {
            missed.push(format!(
                "{what}: {} requests > {START_REQUESTS_GOAL}",
                requests.len()
            ));
        }
    }
    println!(
        "{:<47} {}",
        "time from start to the slice stored",
        ms(to_publish)
    );

    // Steady state: nothing changes, so nothing should be asked.
    let mark = server.requests().len();
    tokio::time::sleep(sizes.steady).await;
    let steady = server.requests()[mark..].to_vec();
    println!(
        "API requests {:<34} {} [{}]  (goal 0: {})",
        format!("in {:?} of steady state", sizes.steady),
        steady.len(),
        describe(&steady),
        verdict(steady.is_empty()),
    );
    if !steady.is_empty() {
        missed.push(format!(
            "steady state: {} requests in {:?}",
            steady.len(),
            sizes.steady
        ));
    }

    // The XID rounds: GPU `round` gets a critical XID; time until its device leaves the stored
    // slice; the writes it cost.
    let (mut republish, mut writes, mut requests) = (Vec::new(), Vec::new(), Vec::new());
    for gpu in 0..sizes.rounds {
        // Each round ends a fixed time after a poll of the mock noticed the last edit: shift
        // this edit by a different fraction of the poll period each round.
        tokio::time::sleep(MOCK_POLL * gpu as u32 / sizes.rounds as u32).await;
        let gone = format!("gpu-{gpu}");
        xids[gpu] = true;
        let text = node_with_xids(&xids);
        let mark = server.requests().len();
        let edited = Instant::now();
        replace_file(&fixture, &text);
        let after = until(&server, "the XID's device to leave the slice", |s| {
            !device_names(s).contains(&gone)
        })
        .await?;
        republish.push(edited.elapsed());
        let left = device_names(&after);
        ensure!(
            left.len() == GPUS - gpu - 1,
            "round {gpu}: devices left {left:?}"
        );
        // Anything the change still causes comes within this.
        tokio::time::sleep(AFTER_CHANGE).await;
        let caused = server.requests()[mark..].to_vec();
        writes.push(caused.iter().filter(|r| r.is_write()).count());
        requests.push(caused.len());
    }
    let max = percentile(&mut republish, 1.0);
    println!(
        "fixture edit (XID {XID}) -> device gone from the stored slice  p50 {}  max {}  \
         (min {}; {} rounds, mock poll {}; goal <= {}: {})",
        ms(percentile(&mut republish, 0.5)),
        ms(max),
        ms(republish[0]),
        republish.len(),
        ms(MOCK_POLL),
        ms(REPUBLISH_GOAL),
        verdict(max <= REPUBLISH_GOAL),
    );
    if max > REPUBLISH_GOAL {
        missed.push(format!(
            "XID -> slice republished: max {} > {}",
            ms(max),
            ms(REPUBLISH_GOAL)
        ));
    }
    let all_one = writes.iter().all(|&w| w == 1);
    println!(
        "API writes per health change {writes:?}, all requests {requests:?}  (goal 1 write each: {})",
        verdict(all_one),
    );
    if !all_one {
        missed.push(format!("writes per health change {writes:?}, not 1 each"));
    }
    let pid = agent.child.id();
    println!(
        "agent memory after the XID rounds (DRA on, publishing): VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(rss_kib(pid)),
        mib(hwm_kib(pid)),
    );
    drop(agent);
    Ok(())
}

/// A claim UID in Kubernetes' form (a lower-case UUID), distinct per claim size and round.
fn claim_uid(size: usize, round: usize) -> String {
    format!("d7a0{size:04x}-0000-4000-8000-{round:012x}")
}

/// A claim of the claims file (the shape tests/dra_kubelet.rs writes): allocated to `devices`
/// of this driver on this node's pool, one request.
fn claim(uid: &str, name: &str, devices: &[String]) -> Value {
    let results: Vec<Value> = devices
        .iter()
        .map(|d| json!({"request": "gpus", "driver": DRIVER, "pool": NODE, "device": d}))
        .collect();
    json!({"uid": uid, "namespace": NAMESPACE, "name": name, "results": results})
}

/// The built-in node with `xids: [48]` on the GPUs marked: each GPU there is one line of flow
/// mapping (`  - {model: …}`), closed by its last character.
fn node_with_xids(xids: &[bool; GPUS]) -> String {
    let mut gpu = 0;
    let mut out = String::new();
    for line in DEFAULT_NODE.lines() {
        if line.starts_with("  - {") && line.ends_with('}') {
            if xids[gpu] {
                out += &line[..line.len() - 1];
                out += &format!(", xids: [{XID}]}}");
            } else {
                out += line;
            }
            gpu += 1;
        } else {
            out += line;
        }
        out.push('\n');
    }
    assert_eq!(gpu, GPUS, "the built-in node is one line per GPU");
    out
}

/// The device names in `slices`.
fn device_names(slices: &[Value]) -> Vec<String> {
    slices
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d["name"].as_str().map(String::from))
        .collect()
}

/// Poll the stored slices every [`POLL`] until `done` holds: the slices then.
async fn until(
    server: &TestApiServer,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let slices = server.slices();
        if done(&slices) {
            return Ok(slices);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}: {slices:#?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The requests, shortened: `METHOD path`, and `(watch)` for a watch.
fn describe(requests: &[Logged]) -> String {
    requests
        .iter()
        .map(|r| {
            let watch = if r.is_watch() { " (watch)" } else { "" };
            format!("{} {}{watch}", r.method, r.path)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The nearest-rank percentile `p` (0..=1) of `values`, sorting them.
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
