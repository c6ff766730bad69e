use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::search::{self, Problem};
use super::*;
use crate::config::{self, Config};
use crate::gpu::ids::mock_gpu_uuid;
use crate::gpu::{fixture, Gpu, Inventory};
use crate::health::{HealthState, Unhealthy};
use crate::resources::{self, ResourceSet};
use crate::snapshot::Snapshot;

/// One GPU of a hand-made node.
fn gpu(index: u32, numa: Option<u32>, bus: Option<&str>) -> Gpu {
    Gpu {
        index,
        uuid: mock_gpu_uuid(index),
        model: "NVIDIA H100 80GB HBM3".into(),
        memory_mib: 81559,
        numa_node: numa,
        pci_bus_id: bus.map(str::to_string),
        minor_number: index,
        mig_enabled: false,
        mig_devices: Vec::new(),
        nvlinks: BTreeMap::new(),
    }
}

/// A node of `gpus` with NVLinks `(a, b, count)` recorded on both sides.
fn node(mut gpus: Vec<Gpu>, links: &[(u32, u32, u32)]) -> Inventory {
    for &(a, b, n) in links {
        for g in gpus.iter_mut() {
            if g.index == a {
                g.nvlinks.insert(b, n);
            }
            if g.index == b {
                g.nvlinks.insert(a, n);
            }
        }
    }
    Inventory {
        gpus,
        ..Inventory::default()
    }
}

/// Every pair of `members` linked with `count` NVLinks.
fn island(members: &[u32], count: u32) -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for (i, &a) in members.iter().enumerate() {
        for &b in &members[i + 1..] {
            out.push((a, b, count));
        }
    }
    out
}

/// 8 GPUs, one NUMA node, two interleaved 4-GPU NVLink islands: {0,2,4,6} and {1,3,5,7}. The
/// lowest indices ({0,1,2,3}) are the worst size-4 answer, so a test cannot pass by accident.
fn two_islands() -> Inventory {
    let gpus = (0..8).map(|i| gpu(i, Some(0), None)).collect();
    let mut links = island(&[0, 2, 4, 6], 12);
    links.extend(island(&[1, 3, 5, 7], 12));
    node(gpus, &links)
}

fn build(inv: &Inventory, config: &str, health: &HealthState) -> ResourceSet {
    resources::build(inv, &config::parse(config).unwrap(), health)
        .unwrap()
        .resources
}

fn all_ids(set: &ResourceSet, name: &str) -> Vec<String> {
    set.get(name)
        .unwrap()
        .devices
        .iter()
        .map(|d| d.id.clone())
        .collect()
}

fn ask(
    set: &ResourceSet,
    name: &str,
    inv: &Inventory,
    placement: SharedPlacement,
    available: &[String],
    must: &[String],
    size: usize,
) -> Vec<String> {
    let request = Request {
        available,
        must_include: must,
        size,
    };
    choose(
        set.get(name).unwrap(),
        &Topology::new(inv),
        placement,
        &request,
    )
}

/// Sorted GPU indices of whole-GPU IDs (UUIDs of the mock).
fn gpu_indices(inv: &Inventory, ids: &[String]) -> Vec<u32> {
    let mut out: Vec<u32> = ids
        .iter()
        .map(|id| inv.gpu_by_uuid(id).unwrap().index)
        .collect();
    out.sort_unstable();
    out
}

fn uuid(i: u32) -> String {
    mock_gpu_uuid(i)
}

const GPU: &str = "nvidia.com/gpu";
const SPREAD: SharedPlacement = SharedPlacement::Spread;
const PACKED: SharedPlacement = SharedPlacement::Packed;

#[test]
fn size_four_takes_one_nvlink_island() {
    let inv = two_islands();
    let set = build(&inv, "version: v1", &HealthState::default());
    let all = all_ids(&set, GPU);
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[], 4);
    assert_eq!(gpu_indices(&inv, &got), [0, 2, 4, 6]);

    // GPU 0 is taken: its island has three left, the other island is whole.
    let rest: Vec<String> = all[1..].to_vec();
    let got = ask(&set, GPU, &inv, SPREAD, &rest, &[], 4);
    assert_eq!(gpu_indices(&inv, &got), [1, 3, 5, 7]);
}

#[test]
fn must_include_gets_its_island_partner() {
    let inv = two_islands();
    let set = build(&inv, "version: v1", &HealthState::default());
    let all = all_ids(&set, GPU);
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[uuid(5)], 2);
    assert_eq!(got[0], uuid(5), "must-include comes first");
    assert_eq!(gpu_indices(&inv, &got), [1, 5]);
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[uuid(6)], 3);
    assert_eq!(gpu_indices(&inv, &got), [0, 2, 6]);
}

#[test]
fn numa_breaks_nvlink_ties() {
    // No NVLink at all; NUMA nodes alternate.
    let gpus = (0..4).map(|i| gpu(i, Some(i % 2), None)).collect();
    let inv = node(gpus, &[]);
    let set = build(&inv, "version: v1", &HealthState::default());
    let all = all_ids(&set, GPU);
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[], 2);
    assert_eq!(gpu_indices(&inv, &got), [0, 2]);
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[uuid(1)], 2);
    assert_eq!(gpu_indices(&inv, &got), [1, 3]);
}

#[test]
fn nvlinks_beat_numa_and_pcie_breaks_numa_ties() {
    // 0–3 NVLinked across NUMA nodes beats the same-node pair 0–1 without NVLink.
    let gpus = vec![
        gpu(0, Some(0), Some("0000:18:00.0")),
        gpu(1, Some(0), Some("0000:2a:00.0")),
        gpu(2, Some(1), Some("0000:9a:00.0")),
        gpu(3, Some(1), Some("0000:ab:00.0")),
    ];
    let inv = node(gpus.clone(), &[(0, 3, 2)]);
    let set = build(&inv, "version: v1", &HealthState::default());
    let all = all_ids(&set, GPU);
    assert_eq!(
        gpu_indices(&inv, &ask(&set, GPU, &inv, SPREAD, &all, &[], 2)),
        [0, 3]
    );

    // Without NVLink and on one NUMA node, the closer buses win: 0x9a–0xab (17) beats
    // 0x18–0x2a (18), although {0, 1} has the lower indices.
    let one_node: Vec<Gpu> = gpus
        .into_iter()
        .map(|mut g| {
            g.numa_node = Some(0);
            g
        })
        .collect();
    let inv = node(one_node, &[]);
    let set = build(&inv, "version: v1", &HealthState::default());
    assert_eq!(
        gpu_indices(&inv, &ask(&set, GPU, &inv, SPREAD, &all, &[], 2)),
        [2, 3]
    );
}

#[test]
fn answers_hold_must_include_exactly_size_and_only_available_ids() {
    let inv = two_islands();
    let set = build(&inv, "version: v1", &HealthState::default());
    let all = all_ids(&set, GPU);
    let available: Vec<String> = vec![uuid(1), uuid(2), uuid(3), uuid(4), uuid(6)];
    for size in 0..=7 {
        let got = ask(&set, GPU, &inv, SPREAD, &available, &[uuid(3)], size);
        assert_eq!(got.len(), size.min(available.len()), "size {size}: {got:?}");
        assert!(got.iter().all(|id| available.contains(id)), "{got:?}");
        let unique: BTreeSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "duplicates in {got:?}");
        if size > 0 {
            assert_eq!(got[0], uuid(3));
        }
    }
    // More must-include IDs than `size`: the first `size` of them.
    let got = ask(
        &set,
        GPU,
        &inv,
        SPREAD,
        &all,
        &[uuid(7), uuid(0), uuid(1)],
        2,
    );
    assert_eq!(got, [uuid(7), uuid(0)]);
    // A must-include ID that is not available is not returned.
    let got = ask(&set, GPU, &inv, SPREAD, &available, &[uuid(0)], 1);
    assert_ne!(got, [uuid(0)]);
    assert_eq!(got.len(), 1);
}

#[test]
fn unknown_duplicate_and_empty_input_never_fails() {
    let inv = two_islands();
    let set = build(&inv, "version: v1", &HealthState::default());
    let mut available = vec!["GPU-gone".to_string(), "".to_string(), uuid(0), uuid(0)];
    available.push(uuid(2));
    let must = vec!["nonsense::7".to_string(), uuid(0), uuid(0)];
    let got = ask(&set, GPU, &inv, SPREAD, &available, &must, 5);
    assert_eq!(got, [uuid(0), uuid(2)]);
    assert!(ask(&set, GPU, &inv, SPREAD, &[], &[], 3).is_empty());
    assert!(ask(&set, GPU, &inv, SPREAD, &available, &must, 0).is_empty());
    assert!(ask(&set, GPU, &inv, SPREAD, &[], &must, 2).is_empty());
    let got = ask(&set, GPU, &inv, SPREAD, &available, &[], usize::MAX);
    assert_eq!(got.len(), 2);
    // An empty topology (e.g. a snapshot built before the inventory) still answers.
    let request = Request {
        available: &available,
        must_include: &[],
        size: 1,
    };
    let got = choose(
        set.get(GPU).unwrap(),
        &Topology::default(),
        SPREAD,
        &request,
    );
    assert_eq!(got, [uuid(0)]);
}

#[test]
fn index_strategy_answers_in_uuids() {
    let inv = two_islands();
    let set = build(
        &inv,
        "flags: {plugin: {deviceIDStrategy: index}}",
        &HealthState::default(),
    );
    // Advertised IDs stay UUIDs under the index strategy; the answer is the same as with uuid.
    let all = all_ids(&set, GPU);
    assert_eq!(all[7], uuid(7));
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[uuid(7)], 2);
    assert_eq!(got, [uuid(7), uuid(1)]);
}

#[test]
fn unhealthy_and_lost_gpus_are_not_picked() {
    let inv = two_islands();
    let mut health = HealthState::default();
    health.gpus.insert(
        uuid(2),
        Unhealthy {
            reason: "XID 79".into(),
        },
    );
    let set = build(&inv, "version: v1", &health);
    // The kubelet has not seen the ListAndWatch update yet and still offers GPU 2.
    let all = all_ids(&set, GPU);
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[], 4);
    assert_eq!(gpu_indices(&inv, &got), [1, 3, 5, 7]);
    // With one island broken and the other partly taken, the rest still makes an answer.
    let offered = vec![uuid(0), uuid(2), uuid(4), uuid(6), uuid(1), uuid(3)];
    let got = ask(&set, GPU, &inv, SPREAD, &offered, &[], 4);
    assert_eq!(gpu_indices(&inv, &got), [0, 1, 4, 6]);

    // A GPU that vanished from the inventory (NVML no longer lists it): its ID is unknown and
    // links to it are dropped from the topology.
    let mut gone = inv.clone();
    gone.gpus.retain(|g| g.index != 4);
    let set = build(&gone, "version: v1", &HealthState::default());
    let got = ask(&set, GPU, &gone, SPREAD, &all, &[], 4);
    assert_eq!(gpu_indices(&gone, &got), [1, 3, 5, 7]);
    let got = ask(&set, GPU, &gone, SPREAD, &all, &[uuid(4), uuid(0)], 3);
    assert_eq!(gpu_indices(&gone, &got), [0, 2, 6]);
}

const FOUR_GPUS: &str = r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3, numaNode: 0}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 0}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 1}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 1}
"#;

const REPLICAS: &str = "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}";
const REPLICAS_PACKED: &str =
    "sharing: {placement: packed, timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}";

/// GPU index of each chosen device of `name`, in answer order.
fn gpus_of(set: &ResourceSet, name: &str, ids: &[String]) -> Vec<u32> {
    let resource = set.get(name).unwrap();
    ids.iter()
        .map(|id| resource.device(id).unwrap().target.gpu_index)
        .collect()
}

fn distinct(gpus: &[u32]) -> usize {
    gpus.iter().collect::<BTreeSet<_>>().len()
}

#[test]
fn replicas_spread_over_gpus_by_default() {
    let inv = fixture::parse(FOUR_GPUS).unwrap().inventory;
    let config = config::parse(REPLICAS).unwrap();
    assert_eq!(config.shared_placement, SPREAD);
    let set = build(&inv, REPLICAS, &HealthState::default());
    let all = all_ids(&set, GPU);
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[], 4);
    assert_eq!(gpus_of(&set, GPU, &got), [0, 1, 2, 3]);

    // A must-include replica on GPU 0 counts as using GPU 0.
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[all[1].clone()], 3);
    assert_eq!(gpus_of(&set, GPU, &got), [0, 1, 2]);

    // Six replicas over four GPUs: no GPU gets a third before every GPU has two.
    let got = ask(&set, GPU, &inv, SPREAD, &all, &[], 6);
    let per_gpu = gpus_of(&set, GPU, &got);
    assert_eq!(distinct(&per_gpu), 4);
    assert!((0..4).all(|g| per_gpu.iter().filter(|&&x| x == g).count() <= 2));

    // GPUs 0 and 1 have replicas in use by other pods: a single replica goes to a GPU nobody uses.
    let available: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 0 | 1 | 4))
        .map(|(_, id)| id.clone())
        .collect();
    let got = ask(&set, GPU, &inv, SPREAD, &available, &[], 1);
    assert_eq!(gpus_of(&set, GPU, &got), [2]);
}

#[test]
fn replicas_pack_when_configured() {
    let inv = fixture::parse(FOUR_GPUS).unwrap().inventory;
    assert_eq!(
        config::parse(REPLICAS_PACKED).unwrap().shared_placement,
        PACKED
    );
    let set = build(&inv, REPLICAS_PACKED, &HealthState::default());
    let all = all_ids(&set, GPU);
    let got = ask(&set, GPU, &inv, PACKED, &all, &[], 3);
    assert_eq!(distinct(&gpus_of(&set, GPU, &got)), 1);

    // Best fit: GPU 1 has exactly 3 free replicas (one is used), the others 4.
    let available: Vec<String> = all.iter().filter(|id| **id != all[4]).cloned().collect();
    let got = ask(&set, GPU, &inv, PACKED, &available, &[], 3);
    assert_eq!(gpus_of(&set, GPU, &got), [1, 1, 1]);

    // Six replicas: two GPUs, not three.
    let got = ask(&set, GPU, &inv, PACKED, &all, &[], 6);
    assert_eq!(got.len(), 6);
    assert_eq!(distinct(&gpus_of(&set, GPU, &got)), 2);

    // A must-include replica pulls the rest onto its GPU.
    let got = ask(&set, GPU, &inv, PACKED, &all, &[all[9].clone()], 3);
    assert_eq!(gpus_of(&set, GPU, &got), [2, 2, 2]);
}

#[test]
fn mig_backed_replicas_spread_over_physical_gpus() {
    let inv = fixture::parse(
        r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [1g.10gb, 1g.10gb]}}
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [1g.10gb, 1g.10gb]}}
"#,
    )
    .unwrap()
    .inventory;
    let cfg = "flags: {migStrategy: mixed}\nsharing: {timeSlicing: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]}}";
    let set = build(&inv, cfg, &HealthState::default());
    let name = "nvidia.com/mig-1g.10gb";
    let all = all_ids(&set, name);
    let got = ask(&set, name, &inv, SPREAD, &all, &[], 2);
    assert_eq!(gpus_of(&set, name, &got), [0, 1]);
    let got = ask(&set, name, &inv, SPREAD, &all, &[], 4);
    let resource = set.get(name).unwrap();
    let migs: BTreeSet<&str> = got
        .iter()
        .map(|id| resource.device(id).unwrap().target.device_uuid())
        .collect();
    assert_eq!(migs.len(), 4, "one replica per MIG device: {got:?}");
}

#[test]
fn mig_devices_pack_onto_the_best_fitting_gpu() {
    let inv = fixture::parse(
        r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [1g.10gb, 1g.10gb, 1g.10gb]}}
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [1g.10gb, 1g.10gb]}}
"#,
    )
    .unwrap()
    .inventory;
    let set = build(&inv, "flags: {migStrategy: mixed}", &HealthState::default());
    let name = "nvidia.com/mig-1g.10gb";
    let all = all_ids(&set, name);
    assert_eq!(all.len(), 5);
    let got = ask(&set, name, &inv, SPREAD, &all, &[], 2);
    assert_eq!(gpus_of(&set, name, &got), [1, 1]);
    let got = ask(&set, name, &inv, SPREAD, &all, &[], 3);
    assert_eq!(gpus_of(&set, name, &got), [0, 0, 0]);
    let got = ask(&set, name, &inv, SPREAD, &all, &[all[4].clone()], 2);
    assert_eq!(gpus_of(&set, name, &got), [1, 1]);
}

const VGPU: &str = "sharing: {vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 20000}]}}";
const VGPU_PACKED: &str =
    "sharing: {placement: packed, vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 20000}]}}";
const SLICES: &str = "nvidia.com/gpu.vgpu";

#[test]
fn vgpu_slices_come_from_one_gpu() {
    let inv = fixture::parse(FOUR_GPUS).unwrap().inventory;
    let set = build(&inv, VGPU, &HealthState::default());
    let all = all_ids(&set, SLICES);
    assert_eq!(all.len(), 16, "4 slices of 20000 MiB per 80 GiB GPU");
    // GPU 0 has one slice in use and GPU 1 two: spreading picks the least used GPU that fits.
    let available: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 0 | 4 | 5))
        .map(|(_, id)| id.clone())
        .collect();
    let got = ask(&set, SLICES, &inv, SPREAD, &available, &[], 2);
    assert_eq!(gpus_of(&set, SLICES, &got), [2, 2]);
    // Packing picks the fullest GPU that still fits.
    let got = ask(&set, SLICES, &inv, PACKED, &available, &[], 2);
    assert_eq!(gpus_of(&set, SLICES, &got), [1, 1]);
    let got = ask(&set, SLICES, &inv, PACKED, &available, &[], 3);
    assert_eq!(gpus_of(&set, SLICES, &got), [0, 0, 0]);
    // A must-include slice fixes the GPU, even when that GPU cannot fill the request.
    let got = ask(&set, SLICES, &inv, SPREAD, &available, &[all[6].clone()], 2);
    assert_eq!(gpus_of(&set, SLICES, &got), [1, 1]);
    let got = ask(&set, SLICES, &inv, SPREAD, &available, &[all[6].clone()], 3);
    assert_eq!(gpus_of(&set, SLICES, &got), [1, 1]);
    // No GPU has 5 free slices: the answer stays on one GPU (Allocate refuses two).
    let got = ask(&set, SLICES, &inv, SPREAD, &available, &[], 5);
    assert_eq!(gpus_of(&set, SLICES, &got), [2, 2, 2, 2]);
    // The answer is one Allocate accepts.
    let got = ask(&set, SLICES, &inv, SPREAD, &all, &[], 3);
    let plugin = config::PluginSettings::default();
    assert!(
        crate::allocate::grant(set.get(SLICES).unwrap(), &got, &plugin, &Default::default())
            .is_ok()
    );
    assert_eq!(config::parse(VGPU_PACKED).unwrap().shared_placement, PACKED);
}

#[test]
fn shared_devices_of_an_unhealthy_gpu_are_not_picked() {
    let inv = fixture::parse(FOUR_GPUS).unwrap().inventory;
    let health = HealthState::default().with_lost([uuid(0), uuid(2)]);
    for (cfg, name) in [(REPLICAS, GPU), (VGPU, SLICES)] {
        let set = build(&inv, cfg, &health);
        let all = all_ids(&set, name);
        for placement in [SPREAD, PACKED] {
            let got = ask(&set, name, &inv, placement, &all, &[], 2);
            assert_eq!(got.len(), 2, "{name} {placement:?}");
            assert!(
                gpus_of(&set, name, &got).iter().all(|g| [1, 3].contains(g)),
                "{name} {placement:?}: {got:?}"
            );
        }
    }
}

#[test]
fn the_snapshot_caches_the_topology() {
    let inv = two_islands();
    let snapshot = Snapshot::build(
        Arc::new(inv.clone()),
        Arc::new(Config::default()),
        Arc::new(HealthState::default()),
    )
    .unwrap();
    assert_eq!(*snapshot.topology, Topology::new(&inv));
    assert_eq!(snapshot.topology.links(1, 7), 12);
    assert_eq!(snapshot.topology.links(0, 7), 0);
}

/// SplitMix64: a tiny deterministic generator, so random cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random node of `n` GPUs: NVLink islands with uneven link counts, a few links across
/// islands, one to three NUMA nodes, buses on one or two PCI domains, sometimes unknown.
fn random_node(rng: &mut Rng, n: u32) -> Inventory {
    let islands = 1 + rng.below(u64::from(n).div_ceil(2)) as u32;
    let numa_nodes = 1 + rng.below(3) as u32;
    let gpus = (0..n)
        .map(|i| {
            let numa = (!rng.chance(10)).then(|| rng.below(u64::from(numa_nodes)) as u32);
            let bus = (!rng.chance(10))
                .then(|| format!("{:04x}:{:02x}:00.0", rng.below(2), rng.below(256)));
            gpu(i, numa, bus.as_deref())
        })
        .collect();
    let island_of: Vec<u32> = (0..n)
        .map(|_| rng.below(u64::from(islands)) as u32)
        .collect();
    let mut links = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            let same = island_of[a as usize] == island_of[b as usize];
            if (same && rng.chance(85)) || rng.chance(10) {
                links.push((a, b, 1 + rng.below(18) as u32));
            }
        }
    }
    node(gpus, &links)
}

/// A random request on `n` GPUs: must-include mask and size.
fn random_problem(rng: &mut Rng, inv: &Inventory) -> (Problem, usize) {
    let n = inv.gpus.len();
    let gpus: Vec<u32> = inv.gpus.iter().map(|g| g.index).collect();
    let size = 1 + rng.below(n as u64) as usize;
    let mut must = vec![false; n];
    let musts = if rng.chance(40) {
        rng.below(size as u64) as usize
    } else {
        0
    };
    for _ in 0..musts {
        must[rng.below(n as u64) as usize] = true;
    }
    (Problem::new(&Topology::new(inv), &gpus, &must), size)
}

/// Every combination scored by [`Topology::score`] (no running totals): the reference optimum.
fn brute_force_score(inv: &Inventory, problem: &Problem, size: usize) -> Score {
    let topology = Topology::new(inv);
    let n = problem.len();
    let must = problem.must();
    let want = size.min(n).max(must.count_ones() as usize);
    let mut best: Option<Score> = None;
    for set in 0u64..1 << n {
        if set.count_ones() as usize != want || set & must != must {
            continue;
        }
        let gpus: Vec<u32> = search::bits(set).map(|i| i as u32).collect();
        let s = topology.score(&gpus);
        best = Some(best.map_or(s, |b| b.max(s)));
    }
    best.unwrap()
}

#[test]
fn exhaustive_search_matches_brute_force_scoring() {
    let mut rng = Rng(0x5EED_0001);
    for case in 0..300 {
        let n = 1 + rng.below(9) as u32;
        let inv = random_node(&mut rng, n);
        let (problem, size) = random_problem(&mut rng, &inv);
        let set = search::exhaustive(&problem, size);
        assert_eq!(set & problem.must(), problem.must(), "case {case}");
        assert_eq!(
            problem.score(set),
            brute_force_score(&inv, &problem, size),
            "case {case}: n={n} size={size}"
        );
    }
}

#[test]
fn up_to_eight_gpus_the_answer_is_the_exhaustive_optimum() {
    let mut rng = Rng(0x5EED_0002);
    for case in 0..500 {
        let n = 1 + rng.below(8) as u32;
        let inv = random_node(&mut rng, n);
        let set = build(&inv, "version: v1", &HealthState::default());
        let all = all_ids(&set, GPU);
        let available: Vec<String> = all.iter().filter(|_| rng.chance(80)).cloned().collect();
        let must: Vec<String> = available
            .iter()
            .filter(|_| rng.chance(15))
            .cloned()
            .collect();
        let size = rng.below(n as u64 + 2) as usize;
        let request = Request {
            available: &available,
            must_include: &must,
            size,
        };
        let resource = set.get(GPU).unwrap();
        let topology = Topology::new(&inv);
        let auto = choose(resource, &topology, SPREAD, &request);
        let exact = choose_with(resource, &topology, SPREAD, &request, Search::Exhaustive);
        assert_eq!(auto, exact, "case {case}");
    }
}

#[test]
fn local_search_finds_the_optimum_on_nine_to_twelve_gpus() {
    let mut rng = Rng(0x5EED_0003);
    let cases = 400;
    let (mut same_score, mut same_set) = (0, 0);
    for case in 0..cases {
        let n = 9 + rng.below(4) as u32;
        let inv = random_node(&mut rng, n);
        let (problem, size) = random_problem(&mut rng, &inv);
        let fast = search::local_search(&problem, size);
        let exact = search::exhaustive(&problem, size);
        assert_eq!(fast & problem.must(), problem.must(), "case {case}");
        assert_eq!(fast.count_ones(), exact.count_ones(), "case {case}");
        assert!(problem.score(fast) <= problem.score(exact), "case {case}");
        same_score += usize::from(problem.score(fast) == problem.score(exact));
        same_set += usize::from(fast == exact);
    }
    println!("local search on 9-12 GPUs: optimal score in {same_score}/{cases}, same set in {same_set}/{cases}");
    assert!(
        same_score * 100 >= cases * 95,
        "optimal in only {same_score}/{cases}"
    );
}

#[test]
fn random_requests_keep_the_contract_for_every_strategy() {
    let inv = fixture::parse(
        r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3, numaNode: 0, nvlink: {1: 18}}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 0, nvlink: {0: 18}}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 1, mig: {devices: [1g.10gb, 1g.10gb, 2g.20gb]}}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 1, mig: {devices: [1g.10gb, 3g.40gb]}}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 1, nvlink: {5: 18}}
  - {model: NVIDIA H100 80GB HBM3, numaNode: 0}
"#,
    )
    .unwrap()
    .inventory;
    let cfg = r#"
flags: {migStrategy: mixed}
sharing:
  timeSlicing: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 3}, {name: nvidia.com/gpu, replicas: 2, devices: [0], rename: nvidia.com/gpu.shared}]}
  vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 30000, devices: [1]}]}
"#;
    let health = HealthState::default().with_lost([uuid(1)]);
    let set = build(&inv, cfg, &health);
    let topology = Topology::new(&inv);
    let mut rng = Rng(0x5EED_0004);
    for name in set.names() {
        let resource = set.get(name).unwrap();
        let all = all_ids(&set, name);
        for case in 0..200 {
            let mut available: Vec<String> =
                all.iter().filter(|_| rng.chance(70)).cloned().collect();
            if rng.chance(20) {
                available.push("GPU-unknown".into());
            }
            let must: Vec<String> = available
                .iter()
                .filter(|_| rng.chance(20))
                .cloned()
                .collect();
            let size = rng.below(all.len() as u64 + 2) as usize;
            for placement in [SPREAD, PACKED] {
                let request = Request {
                    available: &available,
                    must_include: &must,
                    size,
                };
                let got = choose(resource, &topology, placement, &request);
                let context = format!("{name} case {case} size {size}: {got:?}");
                assert!(got.len() <= size, "{context}");
                assert!(got.iter().all(|id| available.contains(id)), "{context}");
                assert_eq!(
                    got.iter().collect::<BTreeSet<_>>().len(),
                    got.len(),
                    "{context}"
                );
                let known_must: Vec<&String> = must
                    .iter()
                    .filter(|id| resource.device(id).is_some())
                    .take(size)
                    .collect();
                assert!(known_must.iter().all(|id| got.contains(id)), "{context}");
                for id in got.iter().filter(|id| !must.contains(id)) {
                    assert_eq!(
                        resource.device(id).unwrap().health,
                        crate::resources::Health::Healthy,
                        "{context}"
                    );
                }
                if resource.strategy != Strategy::Vgpu {
                    let healthy = available
                        .iter()
                        .filter(|id| {
                            resource
                                .device(id)
                                .is_some_and(|d| d.health == crate::resources::Health::Healthy)
                                && !must.contains(id)
                        })
                        .count();
                    assert_eq!(
                        got.len(),
                        size.min(known_must.len() + healthy).max(known_must.len()),
                        "{context}"
                    );
                }
            }
        }
    }
}
