//! The node's GPU interconnect as dense pairwise tables, built once per [`Snapshot`] so that
//! GetPreferredAllocation never reads hardware (NVIDIA's plugin re-reads NVML topology on every
//! call, which takes seconds on an 8-GPU node).
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

use crate::gpu::Inventory;

/// PCIe distance of a pair in different PCI domains or with an unknown bus id: further than any
/// two buses of one domain (0..=255 apart).
pub const PCIE_FAR: u32 = 512;

/// Pairwise NVLink counts, PCIe distances and NUMA nodes of the node's GPUs, by GPU index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// GPU index of each slot, ascending (a GPU's slot is found by binary search).
    gpus: Vec<u32>,
    /// `links[a * n + b]`: NVLinks between slots a and b (symmetric, 0 on the diagonal).
    links: Vec<u32>,
    /// `pcie[a * n + b]`: PCIe distance between slots a and b (symmetric).
    pcie: Vec<u32>,
    numa: Vec<Option<u32>>,
}

impl Topology {
    /// Tables for `inventory`. NVLink counts are taken as the larger of the two directions (a
    /// backend may report a link on one side only); links to GPUs not in the inventory (lost
    /// ones) are dropped.
    pub fn new(inventory: &Inventory) -> Self {
        let mut gpus: Vec<u32> = inventory.gpus.iter().map(|g| g.index).collect();
        gpus.sort_unstable();
        gpus.dedup();
        let n = gpus.len();
        let slot = |gpu: u32| gpus.binary_search(&gpu).ok();
        let mut links = vec![0u32; n * n];
        let mut pcie = vec![PCIE_FAR; n * n];
        let mut numa = vec![None; n];
        let mut bus = vec![None; n];
        for gpu in &inventory.gpus {
            let Some(a) = slot(gpu.index) else {
                continue;
            };
            numa[a] = gpu.numa_node;
            bus[a] = gpu.pci_bus_id.as_deref().and_then(parse_bus);
            for (peer, &count) in &gpu.nvlinks {
                if let Some(b) = slot(*peer) {
                    if a != b {
                        links[a * n + b] = links[a * n + b].max(count);
                        links[b * n + a] = links[a * n + b];
                    }
                }
            }
        }
        for a in 0..n {
            for b in 0..n {
                pcie[a * n + b] = match (bus[a], bus[b]) {
                    _ if a == b => 0,
                    (Some((da, ba)), Some((db, bb))) if da == db => ba.abs_diff(bb),
                    _ => PCIE_FAR,
                };
            }
        }
        Self {
            gpus,
            links,
            pcie,
            numa,
        }
    }

    /// Number of GPUs.
    pub fn len(&self) -> usize {
        self.gpus.len()
    }

    /// True for a node without GPUs.
    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    /// NVLinks between GPUs `a` and `b` (by index); 0 over PCIe or when either is unknown.
    pub fn links(&self, a: u32, b: u32) -> u32 {
        self.pair(a, b, &self.links, 0)
    }

    /// PCIe distance between GPUs `a` and `b`: bus-number distance inside one PCI domain,
    /// [`PCIE_FAR`] across domains or when a bus id is unknown. Buses are numbered depth-first,
    /// so GPUs behind one switch or root port get neighbouring numbers: a cheap proxy for
    /// "shares a PCIe path", used only as a tie-breaker.
    pub fn pcie_distance(&self, a: u32, b: u32) -> u32 {
        self.pair(a, b, &self.pcie, PCIE_FAR)
    }

    /// NUMA node of GPU `gpu`, when known.
    pub fn numa_node(&self, gpu: u32) -> Option<u32> {
        self.slot(gpu).and_then(|s| self.numa[s])
    }

    /// How good the set `gpus` (indices) is for one container; see [`Score`]. Duplicates and
    /// unknown indices count as GPUs without links.
    pub fn score(&self, gpus: &[u32]) -> Score {
        let mut score = Score {
            links: 0,
            numa_nodes: 0,
            pcie_distance: 0,
        };
        let mut nodes: Vec<u32> = gpus.iter().filter_map(|&g| self.numa_node(g)).collect();
        nodes.sort_unstable();
        nodes.dedup();
        score.numa_nodes = nodes.len() as u32;
        for (i, &a) in gpus.iter().enumerate() {
            for &b in &gpus[i + 1..] {
                score.links += u64::from(self.links(a, b));
                score.pcie_distance += u64::from(self.pcie_distance(a, b));
            }
        }
        score
    }

    fn slot(&self, gpu: u32) -> Option<usize> {
        self.gpus.binary_search(&gpu).ok()
    }

    fn pair(&self, a: u32, b: u32, table: &[u32], missing: u32) -> u32 {
        match (self.slot(a), self.slot(b)) {
            (Some(a), Some(b)) => table[a * self.gpus.len() + b],
            _ => missing,
        }
    }
}

/// Quality of a GPU set: more NVLinks between its members (summed over pairs), then fewer
/// distinct NUMA nodes, then a shorter summed PCIe distance. `a > b` means `a` is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Score {
    /// Sum of NVLink counts over every pair of the set.
    pub links: u64,
    /// Distinct NUMA nodes the set spans (GPUs without affinity not counted).
    pub numa_nodes: u32,
    /// Sum of [`Topology::pcie_distance`] over every pair of the set.
    pub pcie_distance: u64,
}

impl Score {
    fn key(&self) -> (u64, std::cmp::Reverse<u32>, std::cmp::Reverse<u64>) {
        (
            self.links,
            std::cmp::Reverse(self.numa_nodes),
            std::cmp::Reverse(self.pcie_distance),
        )
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `(domain, bus)` of a PCI bus id like `0000:18:00.0` or NVML's `00000000:18:00.0`.
fn parse_bus(id: &str) -> Option<(u32, u32)> {
    let mut parts = id.trim().split(':');
    let domain = u32::from_str_radix(parts.next()?, 16).ok()?;
    let bus = u32::from_str_radix(parts.next()?, 16).ok()?;
    parts.next()?;
    Some((domain, bus))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fixture;

    #[test]
    fn bus_ids_parse_in_both_spellings() {
        assert_eq!(parse_bus("0000:18:00.0"), Some((0, 0x18)));
        assert_eq!(parse_bus("00000001:DB:00.0"), Some((1, 0xdb)));
        assert_eq!(parse_bus("garbage"), None);
        assert_eq!(parse_bus("0000:zz:00.0"), None);
        assert_eq!(parse_bus("0000:18"), None);
    }

    #[test]
    fn tables_are_symmetric_and_drop_unknown_peers() {
        let inv = fixture::parse(
            r#"
gpus:
  - {model: X, memoryMiB: 1, numaNode: 0, pciBusId: "0000:18:00.0", nvlink: {1: 4}}
  - {model: X, memoryMiB: 1, numaNode: 1, pciBusId: "0000:2a:00.0"}
  - {model: X, memoryMiB: 1, pciBusId: "0001:2a:00.0", nvlink: {1: 2}}
"#,
        )
        .unwrap()
        .inventory;
        let mut inv = inv;
        // A peer that is not in the inventory (NVML lost it after reading the links).
        inv.gpus[0].nvlinks.insert(9, 12);
        let t = Topology::new(&inv);
        assert_eq!(t.len(), 3);
        assert_eq!((t.links(0, 1), t.links(1, 0)), (4, 4));
        assert_eq!((t.links(1, 2), t.links(2, 1)), (2, 2));
        assert_eq!(t.links(0, 9), 0);
        assert_eq!(t.pcie_distance(0, 1), 0x2a - 0x18);
        assert_eq!(t.pcie_distance(1, 2), PCIE_FAR);
        assert_eq!(t.pcie_distance(0, 0), 0);
        assert_eq!(t.numa_node(2), None);
        let s = t.score(&[0, 1, 2]);
        assert_eq!(s.links, 6);
        assert_eq!(s.numa_nodes, 2);
        assert_eq!(s.pcie_distance, u64::from(0x12 + 2 * PCIE_FAR));
    }

    #[test]
    fn more_links_beat_fewer_numa_nodes_beat_shorter_pcie() {
        let s = |links, numa_nodes, pcie_distance| Score {
            links,
            numa_nodes,
            pcie_distance,
        };
        assert!(s(2, 2, 900) > s(1, 1, 0));
        assert!(s(1, 1, 900) > s(1, 2, 0));
        assert!(s(1, 1, 10) > s(1, 1, 20));
    }
}
