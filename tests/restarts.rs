//! Kubelet restarts as the real kubelet performs them (see `tests/common/kubelet.rs`: the old
//! process exits and leaves a stale `kubelet.sock`, a gap, then the new one wipes the directory
//! and binds a new socket), and every other way a registration is lost: the kubelet dropping
//! our stream, our socket deleted, the agent killed, a config change in the middle of a restart,
//! checkpoint churn, and random interleavings of all of these. Each must end with every
//! resource registered with the running kubelet, its devices healthy, within one second of the
//! last event.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;

const GPU: &str = "nvidia.com/gpu";
const GPU_ENDPOINT: &str = "gpu-agent-nvidia.com_gpu.sock";
const EIGHT_GPUS: &[(&str, usize)] = &[(GPU, 8)];

/// From the last event to every resource registered with healthy devices (SPEC §4).
const WITHIN: Duration = Duration::from_secs(1);

/// Wait until `expected` is registered and healthy in `kubelet`, and assert it took at most
/// `WITHIN` and that the kubelet saw no protocol violation. The time it took.
async fn assert_recovers(
    kubelet: &TestKubelet,
    expected: &[(&str, usize)],
    what: &str,
) -> Duration {
    let took = kubelet.until_healthy(expected).await;
    assert!(
        took <= WITHIN,
        "{what}: registered and healthy after {took:?}"
    );
    let violations = kubelet.violations();
    assert!(violations.is_empty(), "{what}: {violations:?}");
    took
}

/// No Register call within a second, and the resources stay live and healthy meanwhile.
async fn assert_settled(kubelet: &mut TestKubelet, expected: &[(&str, usize)], what: &str) {
    let extra = kubelet.registration_within(Duration::from_secs(1)).await;
    assert!(extra.is_none(), "{what}: registered again: {extra:?}");
    for (resource, n) in expected {
        let view = kubelet.view(resource);
        assert!(view.live, "{what}: {resource} not live");
        assert_eq!(view.healthy.len(), *n, "{what}: {resource} {view:?}");
    }
}

/// A kubelet (with `wipe` on its starts) and the agent with `args`, registered and healthy.
async fn started(
    root: &Path,
    wipe: Wipe,
    args: &[&str],
    expected: &[(&str, usize)],
) -> (TestKubelet, Agent) {
    let mut kubelet = TestKubelet::absent(root).with_wipe(wipe);
    kubelet.serve();
    let agent = Agent::spawn(root, args);
    kubelet.until_healthy(expected).await;
    kubelet.drain_registrations();
    (kubelet, agent)
}

/// The old kubelet exits, its socket stays stale for `gap`, the new one wipes and binds.
async fn survives_a_restart(gap: Duration, wipe: Wipe) {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, agent) = started(dir.path(), wipe, &[], EIGHT_GPUS).await;
    kubelet.stop().await;
    assert!(
        kubelet.socket().exists(),
        "the exited kubelet leaves its socket behind"
    );
    tokio::time::sleep(gap).await;
    assert!(
        kubelet.drain_registrations().is_empty(),
        "nothing can be registered with a stale socket"
    );
    kubelet.serve();
    let took = assert_recovers(&kubelet, EIGHT_GPUS, &format!("gap {gap:?}, {wipe:?}")).await;
    eprintln!("gap {gap:?}, {wipe:?}: registered and healthy {took:?} after the new kubelet.sock");
    let regs = kubelet.drain_registrations();
    assert_eq!(regs.len(), 1, "one registration per restart: {regs:?}");
    assert_settled(&mut kubelet, EIGHT_GPUS, "after the restart").await;
    let logs = agent.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
    assert!(
        logs.matches("kubelet not reachable").count() <= 1,
        "one line while the kubelet is away:\n{logs}"
    );
}

#[tokio::test]
async fn survives_a_restart_without_a_gap() {
    survives_a_restart(Duration::ZERO, Wipe::AllFiles).await;
    survives_a_restart(Duration::ZERO, Wipe::SocketsOnly).await;
}

#[tokio::test]
async fn survives_a_restart_with_a_half_second_gap() {
    survives_a_restart(Duration::from_millis(500), Wipe::AllFiles).await;
    survives_a_restart(Duration::from_millis(500), Wipe::SocketsOnly).await;
}

#[tokio::test]
async fn survives_a_restart_with_a_three_second_gap() {
    survives_a_restart(Duration::from_secs(3), Wipe::AllFiles).await;
    survives_a_restart(Duration::from_secs(3), Wipe::SocketsOnly).await;
}

#[tokio::test]
async fn survives_a_restart_with_a_fifteen_second_gap_1_30_wipe() {
    survives_a_restart(Duration::from_secs(15), Wipe::AllFiles).await;
}

#[tokio::test]
async fn survives_a_restart_with_a_fifteen_second_gap_1_33_wipe() {
    survives_a_restart(Duration::from_secs(15), Wipe::SocketsOnly).await;
}

/// The case that lost every GPU before: the agent re-serves on the dropped stream, the wipe
/// deletes that socket, and only a re-serve after the new kubelet.sock brings it back.
#[tokio::test]
async fn a_mig_mixed_node_with_four_resources_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(
        dir.path(),
        "fixture.yaml",
        "gpus:\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n  - model: NVIDIA H100 80GB HBM3\n    mig: {devices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}\n",
    );
    let expected: &[(&str, usize)] = &[
        (GPU, 2),
        ("nvidia.com/mig-3g.40gb", 1),
        ("nvidia.com/mig-2g.20gb", 1),
        ("nvidia.com/mig-1g.10gb", 2),
    ];
    let args = ["--mock-fixture", arg(&fixture), "--mig-strategy", "mixed"];
    let (mut kubelet, _agent) = started(dir.path(), Wipe::AllFiles, &args, expected).await;
    for (gap, wipe) in [
        (Duration::from_millis(700), Wipe::AllFiles),
        (Duration::from_millis(1500), Wipe::SocketsOnly),
        (Duration::ZERO, Wipe::AllFiles),
    ] {
        kubelet = kubelet.with_wipe(wipe);
        kubelet.restart_after(gap).await;
        assert_recovers(
            &kubelet,
            expected,
            &format!("MIG node, gap {gap:?}, {wipe:?}"),
        )
        .await;
        let regs = kubelet.drain_registrations();
        assert_eq!(regs.len(), 4, "one registration per resource: {regs:?}");
    }
    assert_settled(&mut kubelet, expected, "MIG node").await;
}

#[tokio::test]
async fn survives_one_hundred_restarts_in_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, _agent) = started(dir.path(), Wipe::AllFiles, &[], EIGHT_GPUS).await;
    let mut rng = proptest::test_runner::TestRng::deterministic_rng(
        proptest::test_runner::RngAlgorithm::ChaCha,
    );
    let mut took = Vec::new();
    for n in 0..100 {
        let gap = Duration::from_millis(rand_below(&mut rng, 300));
        let wipe = if n % 2 == 0 {
            Wipe::AllFiles
        } else {
            Wipe::SocketsOnly
        };
        kubelet = kubelet.with_wipe(wipe);
        kubelet.restart_after(gap).await;
        took.push(
            assert_recovers(&kubelet, EIGHT_GPUS, &format!("restart {n}, gap {gap:?}")).await,
        );
    }
    took.sort();
    eprintln!(
        "100 restarts (gaps 0-300 ms): registered and healthy p50 {:?}, max {:?}",
        took[50], took[99]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let regs = kubelet.drain_registrations();
    assert_eq!(regs.len(), 100, "exactly one registration per restart");
    assert_settled(&mut kubelet, EIGHT_GPUS, "after 100 restarts").await;
}

fn rand_below(rng: &mut proptest::test_runner::TestRng, n: u64) -> u64 {
    rng.next_u64() % n
}

#[tokio::test]
async fn the_agent_killed_and_started_again_while_the_kubelet_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, mut agent) = started(dir.path(), Wipe::AllFiles, &[], EIGHT_GPUS).await;
    agent.signal(libc::SIGKILL);
    agent.wait_exit(WAIT).expect("killed");
    kubelet
        .wait_for("the kubelet to mark the dead plugin's devices", |get| {
            let v = get(GPU);
            !v.live && v.healthy.is_empty() && v.unhealthy.len() == 8
        })
        .await;
    assert!(
        kubelet.dir().join(GPU_ENDPOINT).exists(),
        "a killed agent leaves its socket"
    );
    let _agent = Agent::spawn(dir.path(), &[]);
    kubelet.until_healthy(EIGHT_GPUS).await;
    assert_eq!(kubelet.drain_registrations().len(), 1);
    assert_settled(&mut kubelet, EIGHT_GPUS, "after the agent's restart").await;
    assert!(
        kubelet.violations().is_empty(),
        "{:?}",
        kubelet.violations()
    );
}

#[tokio::test]
async fn a_stream_dropped_by_the_kubelet_re_registers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, agent) = started(dir.path(), Wipe::AllFiles, &[], EIGHT_GPUS).await;
    kubelet.drop_stream(GPU);
    let view = kubelet.view(GPU);
    assert!(!view.live && view.unhealthy.len() == 8, "{view:?}");
    assert_recovers(&kubelet, EIGHT_GPUS, "stream dropped").await;
    assert_eq!(kubelet.drain_registrations().len(), 1);
    assert_settled(&mut kubelet, EIGHT_GPUS, "after the dropped stream").await;
    assert!(agent
        .logs()
        .contains("the kubelet dropped the ListAndWatch stream"));
}

/// Our socket deleted under a running kubelet: the agent must end its old stream *before* it
/// registers again, or the kubelet (up to 1.34) disconnects the new client when the old stream
/// ends; the stand-in does exactly that, so the resource staying live proves the order.
#[tokio::test]
async fn our_socket_removed_re_registers_and_stays_registered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, agent) = started(dir.path(), Wipe::AllFiles, &[], EIGHT_GPUS).await;
    std::fs::remove_file(kubelet.dir().join(GPU_ENDPOINT)).unwrap();
    kubelet
        .wait_for("the old endpoint to stop", |get| !get(GPU).live)
        .await;
    assert_recovers(&kubelet, EIGHT_GPUS, "socket removed").await;
    assert_eq!(kubelet.drain_registrations().len(), 1);
    assert_settled(&mut kubelet, EIGHT_GPUS, "after the socket was removed").await;
    assert!(agent.logs().contains("our socket was removed"));
}

/// Not a real kubelet's start (it always wipes): a new kubelet.sock alone must be enough.
#[tokio::test]
async fn a_new_kubelet_sock_alone_re_registers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, agent) = started(dir.path(), Wipe::Nothing, &[], EIGHT_GPUS).await;
    kubelet.restart().await;
    assert!(kubelet.dir().join(GPU_ENDPOINT).exists());
    assert_recovers(&kubelet, EIGHT_GPUS, "new kubelet.sock, no wipe").await;
    assert_eq!(kubelet.drain_registrations().len(), 1);
    assert_settled(&mut kubelet, EIGHT_GPUS, "after the restart").await;
    assert!(agent
        .logs()
        .contains("kubelet.sock re-created (kubelet restart)"));
}

const SHARED_4_7: &str = "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 2, devices: [4, 5, 6, 7]}\n";
const SHARED: &[(&str, usize)] = &[(GPU, 4), ("nvidia.com/gpu.shared", 8)];

#[tokio::test]
async fn a_config_change_during_a_restart_adds_and_removes_resources() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "config.yaml", "version: v1\n");
    let (mut kubelet, _agent) = started(
        dir.path(),
        Wipe::AllFiles,
        &["--config", arg(&config)],
        EIGHT_GPUS,
    )
    .await;

    kubelet.stop().await;
    replace_file(&config, SHARED_4_7);
    tokio::time::sleep(Duration::from_millis(600)).await;
    kubelet.serve();
    assert_recovers(&kubelet, SHARED, "config added a resource during a restart").await;

    kubelet.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kubelet.serve();
    // The config changes back right after the new kubelet started.
    replace_file(&config, "version: v1\n");
    kubelet
        .wait_for("nvidia.com/gpu back to 8, gpu.shared gone", |get| {
            let gpu = get(GPU);
            gpu.live && gpu.healthy.len() == 8 && !get("nvidia.com/gpu.shared").live
        })
        .await;
    assert!(
        kubelet.violations().is_empty(),
        "{:?}",
        kubelet.violations()
    );
    let shared_socket = kubelet.dir().join("gpu-agent-nvidia.com_gpu.shared.sock");
    eventually("the removed resource's socket to go", || {
        !shared_socket.exists()
    })
    .await;
}

/// The kubelet rewrites its checkpoint after every message and allocation (temp file + rename
/// in the same directory). 30 s of that, with allocations, must not cost a registration.
#[tokio::test]
async fn thirty_seconds_of_checkpoint_churn_cause_no_registration() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, agent) = started(dir.path(), Wipe::AllFiles, &[], EIGHT_GPUS).await;
    let mut plugin = Plugin::open(&kubelet, GPU_ENDPOINT).await;
    let ids = plugin.ids();
    let end = Instant::now() + Duration::from_secs(30);
    let mut rewrites = 0u64;
    while Instant::now() < end {
        for _ in 0..20 {
            kubelet.write_checkpoint();
            rewrites += 1;
        }
        plugin
            .allocate(&[&ids[(rewrites as usize / 20) % 8]])
            .await
            .expect("allocate");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{rewrites} checkpoint rewrites in 30 s");
    assert!(
        kubelet.drain_registrations().is_empty(),
        "churn caused a registration"
    );
    assert_settled(&mut kubelet, EIGHT_GPUS, "after the churn").await;
    assert!(kubelet.dir().join(CHECKPOINT).exists());
    assert!(!agent.logs().contains("re-serving"), "{}", agent.logs());
}

/// One thing that happens to the node.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// The kubelet process exits (stale socket left).
    KubeletExits,
    /// The first step of a kubelet start: the old process is gone (if it was not already) and
    /// the new one wipes the directory, its old socket included; nothing listens yet.
    Wipe,
    /// A new kubelet binds a new kubelet.sock (no wipe).
    NewKubeletSock,
    /// The kubelet drops our stream.
    StreamDropped,
    /// Someone deletes our socket.
    SocketDeleted,
    /// The config switches between all-exclusive and SHARED_4_7.
    ConfigChange,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::KubeletExits),
        Just(Event::Wipe),
        Just(Event::NewKubeletSock),
        Just(Event::StreamDropped),
        Just(Event::SocketDeleted),
        Just(Event::ConfigChange),
    ]
}

/// Play `events` (each after its delay); end with a kubelet start if none is listening; then
/// every resource of the config in force must be registered and healthy within 1 s.
async fn interleaving(events: Vec<(Event, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "config.yaml", "version: v1\n");
    let (mut kubelet, agent) = started(
        dir.path(),
        Wipe::AllFiles,
        &["--config", arg(&config)],
        EIGHT_GPUS,
    )
    .await;
    let mut shared = false;
    for (event, delay) in &events {
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        match event {
            Event::KubeletExits => kubelet.stop().await,
            Event::Wipe => {
                kubelet.stop().await;
                kubelet.wipe();
            }
            Event::NewKubeletSock => kubelet.bind(),
            Event::StreamDropped => {
                kubelet.drop_stream(GPU);
                kubelet.drop_stream("nvidia.com/gpu.shared");
            }
            Event::SocketDeleted => {
                let _ = std::fs::remove_file(kubelet.dir().join(GPU_ENDPOINT));
            }
            Event::ConfigChange => {
                shared = !shared;
                replace_file(&config, if shared { SHARED_4_7 } else { "version: v1\n" });
            }
        }
    }
    if !kubelet.running() || !kubelet.socket().exists() {
        kubelet.serve();
    }
    let expected = if shared { SHARED } else { EIGHT_GPUS };
    let what = format!("after {events:?}");
    let took = kubelet.until_healthy(expected).await;
    assert!(
        took <= WITHIN,
        "{what}: healthy after {took:?}\n{}",
        agent.logs()
    );
    let violations = kubelet.violations();
    assert!(violations.is_empty(), "{what}: {violations:?}");
    if !shared {
        kubelet
            .wait_for("the shared resource to be gone", |get| {
                !get("nvidia.com/gpu.shared").live
            })
            .await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 16, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_ends_registered_and_healthy(
        events in proptest::collection::vec((event(), 0u64..400), 1..7)
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(interleaving(events));
    }
}
