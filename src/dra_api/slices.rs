//! ResourceSlices for one node's pool, and the writes that take the API server from what it has
//! to what the node has. Pure: the publisher performs the [`Action`]s.
//!
//! The pool is named after the node and holds every device of the node (SPEC §8); a pool of more
//! than [`MAX_DEVICES_PER_SLICE`] devices is split into several slices, `<node>-<driver>-<i>`.
//! As `k8s.io/dynamic-resource-allocation/resourceslice` does, all slices of a pool carry one
//! generation and the slice count, so that the scheduler only trusts a complete, consistent pool;
//! unlike it, every content change bumps the generation (also when one slice write would do), so
//! that a watcher can tell from the generation alone that the devices changed.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, DeviceCapacity, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::devices::{AttributeValue, DraDevice};

/// Most devices in one ResourceSlice (`ResourceSliceMaxDevices` in `pkg/apis/resource/types.go`
/// for resource.k8s.io/v1; 64 when devices have taints or consume counters, which ours do not).
pub const MAX_DEVICES_PER_SLICE: usize = 128;

/// Longest object name (a DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// Whose pool this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTarget {
    /// `spec.driver`, e.g. `gpu.gpu-agent.io`.
    pub driver: String,
    /// `spec.nodeName` and the pool name.
    pub node: String,
    /// The Node's UID, for the owner reference that lets the garbage collector remove the slices
    /// with the Node. `None`: no owner reference (the Node could not be read).
    pub node_uid: Option<String>,
}

impl PoolTarget {
    /// The field selector that lists exactly this node's slices of this driver, as the upstream
    /// controller lists them.
    pub fn field_selector(&self) -> String {
        format!("spec.driver={},spec.nodeName={}", self.driver, self.node)
    }

    fn owner_references(&self) -> Option<Vec<OwnerReference>> {
        let uid = self.node_uid.as_ref()?;
        Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }])
    }
}

/// Name of slice `index` of the pool: `<node>-<driver>-<index>`. A name over the 253-character
/// limit (a very long node name) keeps the node name's start and a hash of all of it.
pub fn slice_name(node: &str, driver: &str, index: usize) -> String {
    let name = format!("{node}-{driver}-{index}");
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    let tail = format!("-{:08x}-{driver}-{index}", fnv1a(node));
    let keep = MAX_NAME_LEN.saturating_sub(tail.len());
    // Node names are ASCII (DNS subdomains); cut on a char boundary anyway, and never leave a
    // trailing dot or dash before the hash.
    let mut head: String = node.chars().take(keep).collect();
    while head.ends_with(['.', '-']) {
        head.pop();
    }
    format!("{head}{tail}")
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One device as the API has it.
pub fn api_device(device: &DraDevice) -> Device {
    let attributes: BTreeMap<String, DeviceAttribute> = device
        .attributes
        .iter()
        .map(|(name, value)| (name.clone(), api_attribute(value)))
        .collect();
    let capacity: BTreeMap<String, DeviceCapacity> = device
        .capacity
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                DeviceCapacity {
                    value: Quantity(value.clone()),
                    request_policy: None,
                },
            )
        })
        .collect();
    Device {
        name: device.name.clone(),
        attributes: (!attributes.is_empty()).then_some(attributes),
        capacity: (!capacity.is_empty()).then_some(capacity),
        ..Device::default()
    }
}

fn api_attribute(value: &AttributeValue) -> DeviceAttribute {
    let mut attribute = DeviceAttribute::default();
    match value {
        AttributeValue::String(s) => attribute.string = Some(s.clone()),
        AttributeValue::Int(i) => attribute.int = Some(*i),
        AttributeValue::Bool(b) => attribute.bool = Some(*b),
        AttributeValue::Version(v) => attribute.version = Some(v.clone()),
    }
    attribute
}

/// The device lists of the pool's slices: at least one (an empty pool is still published, so
/// that the scheduler sees a driver that runs and has nothing, rather than no driver).
pub fn partition(devices: &[DraDevice]) -> Vec<Vec<Device>> {
    if devices.is_empty() {
        return vec![Vec::new()];
    }
    devices
        .chunks(MAX_DEVICES_PER_SLICE)
        .map(|chunk| chunk.iter().map(api_device).collect())
        .collect()
}

/// The slice at `index` of a pool of `count` slices at `generation`.
fn slice(
    target: &PoolTarget,
    index: usize,
    count: usize,
    generation: i64,
    devices: Vec<Device>,
) -> ResourceSlice {
    ResourceSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(&target.node, &target.driver, index)),
            owner_references: target.owner_references(),
            ..ObjectMeta::default()
        },
        spec: ResourceSliceSpec {
            driver: target.driver.clone(),
            node_name: Some(target.node.clone()),
            pool: pool(target, count, generation),
            devices: Some(devices),
            ..ResourceSliceSpec::default()
        },
    }
}

fn pool(target: &PoolTarget, count: usize, generation: i64) -> ResourcePool {
    ResourcePool {
        name: target.node.clone(),
        generation,
        resource_slice_count: i64::try_from(count).unwrap_or(i64::MAX),
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// POST this slice.
    Create(ResourceSlice),
    /// PUT this slice (its metadata carries the resourceVersion it replaces).
    Update(ResourceSlice),
    /// DELETE the slice with this name, on condition that it is still this uid and version.
    Delete {
        name: String,
        uid: Option<String>,
        resource_version: Option<String>,
    },
}

/// The generation of a listed slice.
pub fn generation(slice: &ResourceSlice) -> i64 {
    slice.spec.pool.generation
}

/// The writes that make `current` (this node's slices of this driver, as listed) hold exactly
/// `devices`: none when they already do. Obsolete slices are deleted first (better to withdraw
/// devices the node no longer has even if the new ones cannot be written), then existing ones
/// updated, then missing ones created; a content change bumps the generation of every slice.
pub fn plan(target: &PoolTarget, devices: &[DraDevice], current: &[ResourceSlice]) -> Vec<Action> {
    let wanted = partition(devices);
    let count = wanted.len();
    let top = current.iter().map(generation).max().unwrap_or(0);
    let mut matched: BTreeMap<usize, &ResourceSlice> = BTreeMap::new();
    let mut obsolete: Vec<&ResourceSlice> = Vec::new();
    for existing in current {
        let name = existing.metadata.name.as_deref().unwrap_or_default();
        let index = (0..count).find(|i| slice_name(&target.node, &target.driver, *i) == name);
        match index {
            Some(i) if existing.spec.pool.name == target.node && !matched.contains_key(&i) => {
                matched.insert(i, existing);
            }
            _ => obsolete.push(existing),
        }
    }
    let up_to_date = obsolete.is_empty()
        && matched.len() == count
        && matched.iter().all(|(i, existing)| {
            existing.spec.pool == pool(target, count, top)
                && existing.spec.devices.as_deref().unwrap_or_default() == wanted[*i].as_slice()
                && (target.node_uid.is_none()
                    || existing.metadata.owner_references == target.owner_references())
        });
    if up_to_date {
        return Vec::new();
    }
    let next = top + 1;
    let mut actions: Vec<Action> = obsolete
        .into_iter()
        .map(|s| Action::Delete {
            name: s.metadata.name.clone().unwrap_or_default(),
            uid: s.metadata.uid.clone(),
            resource_version: s.metadata.resource_version.clone(),
        })
        .collect();
    let mut creates = Vec::new();
    for (i, devices) in wanted.into_iter().enumerate() {
        let mut desired = slice(target, i, count, next, devices);
        match matched.get(&i) {
            Some(existing) => {
                let mut metadata = existing.metadata.clone();
                if target.node_uid.is_some() {
                    metadata.owner_references = desired.metadata.owner_references.take();
                }
                desired.metadata = metadata;
                actions.push(Action::Update(desired));
            }
            None => creates.push(Action::Create(desired)),
        }
    }
    actions.extend(creates);
    actions
}

#[cfg(test)]
mod tests;
