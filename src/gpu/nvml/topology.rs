//! NVLink topology: which GPUs each GPU reaches over NVLink, and over how many links.
//!
//! On NVSwitch systems (HGX/DGX) every active link of a GPU ends at an NVSwitch, whose PCI bus
//! id is no GPU's, so no GPU-to-GPU link can be read. Such a GPU ("switched": all of its active
//! links lead to non-GPU endpoints) is recorded as NVLink-connected to every other switched GPU,
//! with the link count of the pair = the smaller of the two GPUs' active link counts (18 on
//! H100/H200 HGX, symmetric even when one GPU runs with a link down). A GPU with at least one
//! direct GPU link keeps only its direct links.

use std::collections::{BTreeMap, HashMap};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings::NVML_NVLINK_MAX_LINKS;
use tracing::debug;

use super::enumerate::{normalize_bus_id, GpuProbe};
use crate::gpu::Gpu;

/// Fill each GPU's `nvlinks` from the probes' remote bus ids (see the module doc for NVSwitch).
pub(super) fn with_nvlink_peers(probes: Vec<GpuProbe>) -> Vec<Gpu> {
    let links: Vec<LinkProbe> = probes
        .iter()
        .filter_map(|p| {
            Some(LinkProbe {
                index: p.gpu.index,
                bus_id: p.gpu.pci_bus_id.clone(),
                remotes: p.remote_links.clone()?,
            })
        })
        .collect();
    let carried_bus_ids: Vec<(u32, String)> = probes
        .iter()
        .filter(|p| p.remote_links.is_none())
        .filter_map(|p| Some((p.gpu.index, p.gpu.pci_bus_id.clone()?)))
        .collect();
    let mut peers = nvlink_peers(&links, &carried_bus_ids);
    probes
        .into_iter()
        .map(|probe| {
            let mut gpu = probe.gpu;
            if probe.remote_links.is_some() {
                gpu.nvlinks = peers.remove(&gpu.index).unwrap_or_default();
            }
            gpu
        })
        .collect()
}

/// The normalised remote bus id of each active NVLink (`None` when NVML cannot tell).
pub(super) fn read_nvlink_remotes(device: &Device<'_>, uuid: &str) -> Vec<Option<String>> {
    let mut remotes = Vec::new();
    for link in 0..NVML_NVLINK_MAX_LINKS {
        let nvlink = device.link_wrapper_for(link);
        match nvlink.is_active() {
            Ok(true) => {}
            Ok(false) => continue,
            // No NVLink at all (PCIe card): one answer is enough.
            Err(NvmlError::NotSupported) if link == 0 => break,
            Err(error) => {
                debug!(gpu = %uuid, link, error = %error, "NVLink state unreadable");
                continue;
            }
        }
        let remote = match nvlink.remote_pci_info() {
            Ok(pci) => normalize_bus_id(&pci.bus_id),
            Err(error) => {
                debug!(gpu = %uuid, link, error = %error, "NVLink remote unreadable");
                None
            }
        };
        remotes.push(remote);
    }
    remotes
}

/// The NVLinks of one GPU: its index, its bus id, and the remote bus id of each active link
/// (`None` when unreadable). Bus ids are normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkProbe {
    index: u32,
    bus_id: Option<String>,
    remotes: Vec<Option<String>>,
}

/// Peer GPU index → link count for each probed GPU.
///
/// A link whose remote bus id is another GPU's counts towards that GPU; links to itself are
/// ignored; links to anything else (NVSwitch, unknown) count as switch links. GPUs with switch
/// links and no direct GPU link are connected pairwise with `min` of their switch link counts
/// (see the module doc). `extra_gpus` are (index, bus id) of GPUs that were not probed (lost),
/// so that links to them still count as GPU links rather than switch links.
fn nvlink_peers(
    probes: &[LinkProbe],
    extra_gpus: &[(u32, String)],
) -> BTreeMap<u32, BTreeMap<u32, u32>> {
    let by_bus: HashMap<&str, u32> = probes
        .iter()
        .filter_map(|p| Some((p.bus_id.as_deref()?, p.index)))
        .chain(extra_gpus.iter().map(|(i, b)| (b.as_str(), *i)))
        .collect();
    let mut peers = BTreeMap::new();
    let mut switched = Vec::new();
    for probe in probes {
        let mut direct: BTreeMap<u32, u32> = BTreeMap::new();
        let mut switch_links = 0;
        for remote in &probe.remotes {
            match remote.as_deref().and_then(|b| by_bus.get(b)) {
                Some(&peer) if peer == probe.index => {}
                Some(&peer) => *direct.entry(peer).or_default() += 1,
                None => switch_links += 1,
            }
        }
        if direct.is_empty() && switch_links > 0 {
            switched.push((probe.index, switch_links));
        }
        peers.insert(probe.index, direct);
    }
    for &(a, links_a) in &switched {
        for &(b, links_b) in &switched {
            if a != b {
                peers.entry(a).or_default().insert(b, links_a.min(links_b));
            }
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(index: u32, bus: &str, remotes: &[&str]) -> LinkProbe {
        LinkProbe {
            index,
            bus_id: Some(bus.to_string()),
            remotes: remotes
                .iter()
                .map(|r| (!r.is_empty()).then(|| r.to_string()))
                .collect(),
        }
    }

    #[test]
    fn direct_nvlinks_are_counted_per_peer() {
        // Two H100 NVL pairs over bridges (direct GPU links), one PCIe-only GPU.
        let a = "0000:18:00.0";
        let b = "0000:2a:00.0";
        let c = "0000:3a:00.0";
        let peers = nvlink_peers(
            &[
                probe(0, a, &[b, b, b, b, a]),
                probe(1, b, &[a, a, a, a]),
                probe(2, c, &[]),
            ],
            &[],
        );
        assert_eq!(peers[&0], BTreeMap::from([(1, 4)]));
        assert_eq!(peers[&1], BTreeMap::from([(0, 4)]));
        assert!(peers[&2].is_empty());
    }

    #[test]
    fn nvswitch_gpus_reach_every_other_nvswitch_gpu() {
        let sw = "0000:c1:00.0";
        let peers = nvlink_peers(
            &[
                probe(0, "0000:18:00.0", &[sw, sw, sw]),
                probe(1, "0000:2a:00.0", &[sw, "", sw]),
                probe(2, "0000:3a:00.0", &[sw, sw]),
                probe(3, "0000:4a:00.0", &[]),
            ],
            &[],
        );
        assert_eq!(peers[&0], BTreeMap::from([(1, 3), (2, 2)]));
        assert_eq!(peers[&1], BTreeMap::from([(0, 3), (2, 2)]));
        assert_eq!(peers[&2], BTreeMap::from([(0, 2), (1, 2)]));
        assert!(peers[&3].is_empty());
    }

    #[test]
    fn links_to_an_unprobed_gpu_are_gpu_links() {
        let peers = nvlink_peers(
            &[probe(0, "0000:18:00.0", &["0000:2a:00.0", "0000:2a:00.0"])],
            &[(1, "0000:2a:00.0".to_string())],
        );
        assert_eq!(peers[&0], BTreeMap::from([(1, 2)]));
    }
}
