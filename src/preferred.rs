//! GetPreferredAllocation: which of the available devices the kubelet should pick. Pure.
//!
//! STUB: simple choice (must-include first, then available in order); the topology-aware search
//! is being written.

use crate::gpu::Inventory;
use crate::resources::Resource;

/// Choose `size` devices among `available` (IDs of `resource`), including every `must_include`.
/// Unknown IDs are ignored; the answer never has more than `size` IDs nor IDs outside `available`.
pub fn choose(
    resource: &Resource,
    _inventory: &Inventory,
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(size);
    for id in must_include.iter().chain(available) {
        if out.len() >= size {
            break;
        }
        if resource.device(id).is_some() && available.contains(id) && !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}
