//! Device health as the kubelet sees it: faults injected by editing the mock fixture while the
//! real binary runs, observed on ListAndWatch (and checked with Allocate, which refuses
//! unhealthy devices and so reads the agent's current health for any resource).
//!
//! Timings are logged (`--nocapture`), never asserted tightly: the bound below is generous.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Fixture write → ListAndWatch update. The mock polls every 200 ms; the rest is milliseconds.
const UPDATE_BOUND: Duration = Duration::from_secs(5);

const H100: &str = "NVIDIA H100 80GB HBM3";
const GPU: &str = "nvidia.com/gpu";

/// The health task's debug line for every XID it reads (`XID ... xid=N ...`), for tests that must
/// know the agent has read a fixture edit that changes no device's health.
const DEBUG_XIDS: (&str, &str) = ("RUST_LOG", "info,gpu_agent::health::watcher=debug");

/// Wait until the agent (started with [`DEBUG_XIDS`]) has read every XID in `xids`.
async fn wait_for_xids(agent: &Agent, xids: &[u64]) {
    eventually("the agent to read the XIDs", || {
        let logs = agent.logs();
        xids.iter().all(|x| logs.contains(&format!(" xid={x} ")))
    })
    .await;
}

#[derive(Debug, Clone, Default)]
struct GpuSpec {
    mig: Option<Vec<MigSpec>>,
    xids: Vec<u64>,
    lost: bool,
}

#[derive(Debug, Clone)]
struct MigSpec {
    profile: &'static str,
    xids: Vec<u64>,
}

fn mig(profiles: &[&'static str]) -> Option<Vec<MigSpec>> {
    Some(
        profiles
            .iter()
            .map(|&profile| MigSpec {
                profile,
                xids: Vec::new(),
            })
            .collect(),
    )
}

/// A mock node whose fixture file the test edits.
struct Node {
    path: PathBuf,
    gpus: Vec<GpuSpec>,
}

impl Node {
    fn new(dir: &Path, gpus: Vec<GpuSpec>) -> Self {
        let node = Self {
            path: dir.join("fixture.yaml"),
            gpus,
        };
        node.write();
        node
    }

    fn yaml(&self) -> String {
        let mut out = String::from("node: health-test\ngpus:\n");
        for gpu in &self.gpus {
            out += &format!("  - model: {H100}\n    numaNode: 0\n");
            if let Some(devices) = &gpu.mig {
                out += "    mig:\n      devices:\n";
                for d in devices {
                    out += &format!("        - {{profile: {}, xids: {:?}}}\n", d.profile, d.xids);
                }
            }
            out += &format!("    xids: {:?}\n    lost: {}\n", gpu.xids, gpu.lost);
        }
        out
    }

    /// Replace the fixture atomically (write + rename), as a ConfigMap update does.
    fn write(&self) -> Instant {
        replace_file(&self.path, &self.yaml());
        Instant::now()
    }

    /// The inventory the agent reads from this fixture (UUIDs are deterministic).
    fn inventory(&self) -> gpu_agent::gpu::Inventory {
        gpu_agent::gpu::fixture::parse(&self.yaml())
            .expect("valid fixture")
            .inventory
    }

    fn gpu_uuid(&self, index: usize) -> String {
        self.inventory().gpus[index].uuid.clone()
    }

    fn mig_uuid(&self, gpu: usize, mig: usize) -> String {
        self.inventory().gpus[gpu].mig_devices[mig].uuid.clone()
    }
}

fn set<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> BTreeSet<String> {
    items.into_iter().map(Into::into).collect()
}

fn report(what: &str, since: Instant) -> Duration {
    let elapsed = since.elapsed();
    eprintln!("latency: fixture write -> ListAndWatch update ({what}): {elapsed:?}");
    assert!(
        elapsed < UPDATE_BOUND,
        "{what}: update took {elapsed:?}, bound {UPDATE_BOUND:?}"
    );
    elapsed
}

/// Start the agent on `node` (with `config` and `env`), wait for every resource in `resources`
/// to register, and open each, in that order.
async fn start(
    dir: &Path,
    node: &Node,
    config: Option<&str>,
    env: &[(&str, &str)],
    resources: &[&str],
) -> (TestKubelet, Agent, Vec<Plugin>) {
    let mut kubelet = TestKubelet::start(dir).await;
    let config = config.map(|text| write_file(dir, "config.yaml", text));
    let mut args = vec!["--mock-fixture", arg(&node.path)];
    if let Some(path) = &config {
        args.extend(["--config", arg(path)]);
    }
    let agent = Agent::spawn_with_env(dir, &args, env);
    let registrations = kubelet.registrations_until(resources).await;
    let mut plugins = Vec::new();
    for name in resources {
        let reg = registrations
            .iter()
            .find(|r| r.resource_name == *name)
            .expect("registered");
        plugins.push(Plugin::open(&kubelet, &reg.endpoint).await);
    }
    (kubelet, agent, plugins)
}

/// [`start`] with one resource, `resource`.
async fn start_one(
    dir: &Path,
    node: &Node,
    config: Option<&str>,
    env: &[(&str, &str)],
    resource: &str,
) -> (TestKubelet, Agent, Plugin) {
    let (kubelet, agent, mut plugins) = start(dir, node, config, env, &[resource]).await;
    (kubelet, agent, plugins.remove(0))
}

fn four_gpus() -> Vec<GpuSpec> {
    vec![GpuSpec::default(); 4]
}

#[tokio::test]
async fn an_xid_on_one_gpu_marks_only_that_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), four_gpus());
    let (_kubelet, agent, mut gpu) = start_one(dir.path(), &node, None, &[], GPU).await;
    assert_eq!(gpu.devices.len(), 4);
    assert!(unhealthy(&gpu.devices).is_empty());

    node.gpus[1].xids.push(48);
    let written = node.write();
    let devices = gpu.next().await;
    report("XID 48 on GPU 1, exclusive", written);
    let expected = set([node.gpu_uuid(1)]);
    assert_eq!(unhealthy(devices), expected);

    let ids = gpu.ids();
    gpu.assert_allocatable(&ids, &expected).await;
    let logs = agent.logs();
    assert!(
        logs.contains("device unhealthy")
            && logs.contains("xid=48")
            && logs.contains("double-bit ECC error"),
        "{logs}"
    );
    assert!(logs.contains("advertised devices unhealthy"), "{logs}");
}

#[tokio::test]
async fn an_xid_marks_every_time_sliced_replica_of_its_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), four_gpus());
    let config = "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 4}\n";
    let (_kubelet, _agent, mut gpu) = start_one(dir.path(), &node, Some(config), &[], GPU).await;
    assert_eq!(gpu.devices.len(), 16);

    node.gpus[2].xids.push(74);
    let written = node.write();
    let devices = gpu.next().await;
    report("XID 74 on GPU 2, 4 replicas", written);
    let uuid = node.gpu_uuid(2);
    let expected = set((0..4).map(|n| format!("{uuid}::{n}")));
    assert_eq!(unhealthy(devices), expected);
    let ids = gpu.ids();
    gpu.assert_allocatable(&ids, &expected).await;
}

#[tokio::test]
async fn an_xid_marks_every_vgpu_slice_of_its_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), four_gpus());
    let config =
        "version: v1\nsharing:\n  vgpu:\n    resources:\n      - {name: nvidia.com/gpu, memoryMiB: 20480}\n";
    let (_kubelet, _agent, mut vgpu) =
        start_one(dir.path(), &node, Some(config), &[], "nvidia.com/gpu.vgpu").await;
    let uuid = node.gpu_uuid(0);
    let slices: BTreeSet<String> = vgpu
        .ids()
        .into_iter()
        .filter(|id| id.starts_with(&uuid))
        .collect();
    assert!(slices.len() >= 2, "{slices:?}");

    node.gpus[0].xids.push(95);
    let written = node.write();
    let devices = vgpu.next().await;
    report("XID 95 on GPU 0, vGPU slices", written);
    assert_eq!(unhealthy(devices), slices);
    let ids = vgpu.ids();
    vgpu.assert_allocatable(&ids, &slices).await;
}

#[tokio::test]
async fn mig_faults_take_the_gpus_instances_or_just_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let layout = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"];
    let mut node = Node::new(
        dir.path(),
        vec![
            GpuSpec {
                mig: mig(&layout),
                ..GpuSpec::default()
            },
            GpuSpec {
                mig: mig(&layout),
                ..GpuSpec::default()
            },
            GpuSpec::default(),
        ],
    );
    let config = "version: v1\nflags: {migStrategy: mixed}\n";
    let names = [
        GPU,
        "nvidia.com/mig-3g.40gb",
        "nvidia.com/mig-2g.20gb",
        "nvidia.com/mig-1g.10gb",
    ];
    let (_kubelet, _agent, mut plugins) = start(dir.path(), &node, Some(config), &[], &names).await;
    let gpu0_migs: BTreeSet<String> = (0..4).map(|m| node.mig_uuid(0, m)).collect();

    // A GPU-level XID on GPU 0: all four of its MIG devices, in three resources.
    node.gpus[0].xids.push(48);
    let written = node.write();
    for plugin in &mut plugins[1..] {
        let expected: BTreeSet<String> = plugin
            .ids()
            .into_iter()
            .filter(|id| gpu0_migs.contains(id))
            .collect();
        let devices = plugin.next().await;
        assert_eq!(unhealthy(devices), expected);
    }
    report("GPU-level XID 48 on MIG GPU 0", written);
    for plugin in &mut plugins {
        let ids = plugin.ids();
        plugin.assert_allocatable(&ids, &gpu0_migs).await;
    }

    // An XID the driver scoped to GPU 1's 2g.20gb instance: only that instance.
    node.gpus[1].mig.as_mut().unwrap()[1].xids.push(94);
    let written = node.write();
    let instance = node.mig_uuid(1, 1);
    let devices = plugins[2].next().await;
    report("MIG-scoped XID 94 on GPU 1's 2g.20gb", written);
    assert_eq!(
        unhealthy(devices),
        set([node.mig_uuid(0, 1), instance.clone()])
    );
    let mut expected = gpu0_migs.clone();
    expected.insert(instance);
    for plugin in &mut plugins {
        let ids = plugin.ids();
        plugin.assert_allocatable(&ids, &expected).await;
    }
}

#[tokio::test]
async fn an_ignored_xid_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), four_gpus());
    let (_kubelet, agent, mut gpu) = start_one(dir.path(), &node, None, &[DEBUG_XIDS], GPU).await;

    // Every default-ignored XID on GPU 0, read by the agent.
    let ignored = [13, 31, 43, 45, 68, 109];
    node.gpus[0].xids.extend(ignored);
    node.write();
    wait_for_xids(&agent, &ignored).await;
    // A critical XID on GPU 3: the first update the kubelet sees is this one, so the ignored
    // XIDs produced none, and GPU 0 is still healthy in it.
    node.gpus[3].xids.push(48);
    let written = node.write();
    let devices = gpu.next().await;
    report("XID 48 after ignored XIDs", written);
    assert_eq!(unhealthy(devices), set([node.gpu_uuid(3)]));
    let logs = agent.logs();
    assert!(
        !logs.contains(&format!("device unhealthy device={}", node.gpu_uuid(0))),
        "{logs}"
    );
}

#[tokio::test]
async fn devices_recover_after_recover_after_but_lost_gpus_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), four_gpus());
    let config = "version: v1\nhealth: {recoverAfter: 1s}\n";
    let (_kubelet, agent, mut gpu) = start_one(dir.path(), &node, Some(config), &[], GPU).await;

    node.gpus[0].xids.push(48);
    node.gpus[1].xids.push(79);
    let written = node.write();
    let both = set([node.gpu_uuid(0), node.gpu_uuid(1)]);
    gpu.until("GPUs 0 and 1 unhealthy", |d| unhealthy(d) == both)
        .await;
    report("XID 48 + XID 79", written);
    // GPU 0 comes back after 1 s without a new XID; GPU 1 fell off the bus and stays out.
    let devices = gpu.next().await;
    let recovered = written.elapsed();
    eprintln!("recovery observed {recovered:?} after the write (recoverAfter 1s)");
    assert_eq!(unhealthy(devices), set([node.gpu_uuid(1)]));
    assert!(
        recovered >= Duration::from_secs(1),
        "recovered after {recovered:?}, before recoverAfter"
    );
    let logs = agent.logs();
    assert!(logs.contains("device healthy"), "{logs}");
    assert!(logs.contains("GPU has fallen off the bus"), "{logs}");
}

#[tokio::test]
async fn a_lost_gpu_is_unhealthy_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut gpus = four_gpus();
    gpus[3].lost = true; // lost before the agent starts
    let mut node = Node::new(dir.path(), gpus);
    let (_kubelet, _agent, mut gpu) = start_one(dir.path(), &node, None, &[], GPU).await;
    assert_eq!(unhealthy(&gpu.devices), set([node.gpu_uuid(3)]));

    node.gpus[1].lost = true;
    let written = node.write();
    let devices = gpu.next().await;
    report("lost: true on GPU 1", written);
    let lost = set([node.gpu_uuid(1), node.gpu_uuid(3)]);
    assert_eq!(unhealthy(devices), lost);

    // Preferred allocation keeps answering, from what the kubelet offers (the healthy ones).
    let available: Vec<String> = gpu
        .ids()
        .into_iter()
        .filter(|id| !lost.contains(id))
        .collect();
    let chosen = gpu.preferred(&available, &[], 2).await;
    assert_eq!(chosen.len(), 2);
    assert!(chosen.iter().all(|id| available.contains(id)), "{chosen:?}");
    // Allocate works for the healthy GPUs and refuses the lost ones.
    let ids = gpu.ids();
    gpu.assert_allocatable(&ids, &lost).await;

    // The GPU comes back.
    node.gpus[1].lost = false;
    node.write();
    let devices = gpu.next().await;
    assert_eq!(unhealthy(devices), set([node.gpu_uuid(3)]));
}

#[tokio::test]
async fn dp_disable_healthchecks_all_makes_xids_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), four_gpus());
    let env = [("DP_DISABLE_HEALTHCHECKS", "all"), DEBUG_XIDS];
    let (_kubelet, agent, mut gpu) = start_one(dir.path(), &node, None, &env, GPU).await;

    node.gpus[0].xids.push(48);
    node.gpus[1].xids.push(79);
    node.gpus[2].lost = true;
    node.write();
    wait_for_xids(&agent, &[48, 79]).await;
    // A layout change (a fifth GPU) forces an update: the first one the kubelet sees, with
    // every device healthy.
    node.gpus.push(GpuSpec::default());
    node.write();
    let devices = gpu.next().await;
    assert_eq!(devices.len(), 5);
    assert!(unhealthy(devices).is_empty(), "{devices:?}");
    assert!(agent.logs().contains("health checks disabled"));
}

#[tokio::test]
async fn dp_enable_healthchecks_makes_an_ignored_xid_critical() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), four_gpus());
    let env = [("DP_ENABLE_HEALTHCHECKS", "13")];
    let (_kubelet, _agent, mut gpu) = start_one(dir.path(), &node, None, &env, GPU).await;

    node.gpus[2].xids.push(13);
    let written = node.write();
    let devices = gpu.next().await;
    report("XID 13 with DP_ENABLE_HEALTHCHECKS=13", written);
    assert_eq!(unhealthy(devices), set([node.gpu_uuid(2)]));
}
