//! GetPreferredAllocation: which of the available devices the kubelet should give a container.
//! Pure: the answer depends only on the resource, the cached [`Topology`], the placement setting
//! and the request.
//!
//! - Whole GPUs: the set with the most NVLinks between its members, then the fewest NUMA nodes,
//!   then the shortest PCIe distances, then the lowest GPU indices ([`Score`]). Exact (every
//!   combination) while that is cheap, which covers every request with 8 candidate GPUs or
//!   fewer; a greedy + swap local search above that ([`search`]).
//! - Time-sliced replicas: spread over physical GPUs (default) or packed onto as few as
//!   possible (`sharing.placement: packed`).
//! - vGPU slices: always from one GPU (Allocate refuses slices of two GPUs).
//! - MIG devices: packed onto as few GPUs as possible (they are isolated, so there is no
//!   contention to spread away from, and emptier GPUs stay free to be re-partitioned).
//!
//! The answer never fails: unknown IDs are ignored, unhealthy devices are not picked (the
//! kubelet filters them too, but a lost GPU may race with its ListAndWatch update), and when
//! the best devices are gone the rest are used.

pub mod search;
mod shared;
mod topology;

use std::collections::HashSet;

pub use topology::{Score, Topology, PCIE_FAR};

use crate::config::SharedPlacement;
use crate::resources::{Device, Health, Resource, Strategy};

/// One container's request, as the kubelet sends it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Devices the kubelet may give (`available_deviceIDs`).
    pub available: &'a [String],
    /// Devices the answer must hold (`must_include_deviceIDs`), already allocated.
    pub must_include: &'a [String],
    /// How many devices to return (`allocation_size`).
    pub size: usize,
}

/// Which search picks whole GPUs. The RPC uses [`Search::Auto`]; the others let benchmarks and
/// tests compare the two searches on the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Search {
    /// Exhaustive when cheap, local search above ([`search::best`]).
    #[default]
    Auto,
    /// Always every combination ([`search::exhaustive`]).
    Exhaustive,
    /// Always the local search ([`search::local_search`]).
    LocalSearch,
}

/// The preferred devices for `request`: every must-include ID that is available and known
/// (at most `size` of them), then devices picked by the resource's rule, up to `size` in all.
/// Never an ID outside `available`, never a duplicate, never more than `size`.
pub fn choose(
    resource: &Resource,
    topology: &Topology,
    placement: SharedPlacement,
    request: &Request<'_>,
) -> Vec<String> {
    choose_with(resource, topology, placement, request, Search::Auto)
}

/// [`choose`] with an explicit whole-GPU search.
pub fn choose_with(
    resource: &Resource,
    topology: &Topology,
    placement: SharedPlacement,
    request: &Request<'_>,
    search: Search,
) -> Vec<String> {
    let size = request.size;
    let available: HashSet<&str> = request.available.iter().map(String::as_str).collect();
    let mut must: Vec<&Device> = Vec::new();
    for id in request.must_include {
        if must.len() >= size {
            break;
        }
        if let Some(device) = resource.device(id) {
            if available.contains(id.as_str()) && !must.iter().any(|m| m.id == device.id) {
                must.push(device);
            }
        }
    }
    let must_ids: HashSet<&str> = must.iter().map(|d| d.id.as_str()).collect();
    // Resource order (GPU index, MIG index, replica), whatever order the kubelet sent.
    let free: Vec<&Device> = resource
        .devices
        .iter()
        .filter(|d| {
            d.health == Health::Healthy
                && available.contains(d.id.as_str())
                && !must_ids.contains(d.id.as_str())
        })
        .collect();
    let want = size - must.len();
    let picked = if want == 0 || free.is_empty() {
        Vec::new()
    } else {
        let packed = placement == SharedPlacement::Packed;
        match resource.strategy {
            Strategy::Exclusive => whole_gpus(topology, &must, &free, size, search),
            Strategy::Mig => shared::packed(&must, &free, shared::by_gpu, want),
            Strategy::TimeSliced | Strategy::Mps if packed => {
                shared::packed(&must, &free, shared::by_device, want)
            }
            Strategy::TimeSliced | Strategy::Mps => {
                shared::spread(&must, &free, shared::by_device, want)
            }
            Strategy::Vgpu => shared::vgpu(&must, &free, want, packed),
        }
    };
    must.iter()
        .chain(picked.iter().take(want))
        .map(|d| d.id.clone())
        .collect()
}

/// Whole GPUs: the best-scoring set of `size` GPUs holding every must-include one. Returns the
/// picked free devices only.
fn whole_gpus<'a>(
    topology: &Topology,
    must: &[&'a Device],
    free: &[&'a Device],
    size: usize,
    search: Search,
) -> Vec<&'a Device> {
    let mut candidates: Vec<(&'a Device, bool)> = must
        .iter()
        .map(|&d| (d, true))
        .chain(free.iter().map(|&d| (d, false)))
        .collect();
    candidates.sort_by_key(|(d, _)| d.target.gpu_index);
    if candidates.len() > search::MAX_CANDIDATES {
        // More GPUs than one node has: GPU-index order is a sane answer.
        return free.to_vec();
    }
    let gpus: Vec<u32> = candidates.iter().map(|(d, _)| d.target.gpu_index).collect();
    let flags: Vec<bool> = candidates.iter().map(|&(_, m)| m).collect();
    let problem = search::Problem::new(topology, &gpus, &flags);
    let set = match search {
        Search::Auto => search::best(&problem, size),
        Search::Exhaustive => search::exhaustive(&problem, size),
        Search::LocalSearch => search::local_search(&problem, size),
    };
    search::bits(set & !problem.must())
        .filter_map(|i| candidates.get(i).map(|&(d, _)| d))
        .collect()
}

#[cfg(test)]
mod tests;
