//! What preparing one claim means, as a pure function: the claim as read from the API server and
//! the node as the snapshot shows it in, the per-claim CDI spec and the devices to report out.
//!
//! - The claim read must be the one the kubelet asked for: same UID (a claim deleted and
//!   re-created under the same name is another claim).
//! - Only results of our driver in our pool (the node name) are ours; every other result (other
//!   drivers' devices, in the same claim) is left alone.
//! - Each of ours must name a device of this node ([`super::names`]) on a GPU handed to DRA
//!   ([`super::partition`]), and be healthy.
//! - Each device gets its nodes (the same as the device-plugin CDI spec's: [`crate::cdi::spec`]);
//!   the claim gets the spec-wide edits (control nodes, `NVIDIA_VISIBLE_DEVICES=void`, the
//!   driver's files). An opaque config of ours (vGPU-style limits) adds the HAMi-core env to the
//!   devices of the requests it applies to, as the device plugin's vGPU slices do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cdi;
use super::claims::{Claim, OpaqueConfig};
use super::names;
use super::partition::Partition;
use crate::allocate::Grant;
use crate::cdi::driver::Driver;
use crate::cdi::spec::{self, ContainerEdits, Spec};
use crate::config::PluginSettings;
use crate::gpu::Inventory;
use crate::health::HealthState;

/// The node as prepare sees it.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// Our DRA driver name.
    pub driver_name: &'a str,
    /// Our pool: the node name.
    pub pool: &'a str,
    pub inventory: &'a Inventory,
    pub partition: &'a Partition,
    pub health: &'a HealthState,
    pub plugin: &'a PluginSettings,
    /// The driver's files, when they were found.
    pub driver_files: Option<&'a Driver>,
    /// What the node has for GDS / MOFED / GDRCopy and the IMEX channels, for this config.
    pub extras: &'a crate::extras::NodeExtras,
}

/// One device handed to the kubelet for a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    /// The claim's requests this device was allocated for.
    pub requests: Vec<String>,
    pub pool: String,
    pub device: String,
    pub cdi_ids: Vec<String>,
}

/// A prepared claim: what to tell the kubelet and the spec to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub devices: Vec<PreparedDevice>,
    pub spec: Spec,
}

/// Why a claim cannot be prepared (the kubelet gets the text for that claim, and retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error("claim UID {uid:?} is not a Kubernetes UID")]
    InvalidUid { uid: String },
    #[error("ResourceClaim {namespace}/{name} has UID {found}, not {requested}: the claim was deleted and re-created")]
    UidMismatch {
        namespace: String,
        name: String,
        requested: String,
        found: String,
    },
    #[error("device {device:?} is not a device of this node")]
    UnknownDevice { device: String },
    #[error("device {device} is on a GPU this node advertises through the device plugin, not DRA (--dra-devices)")]
    NotDra { device: String },
    #[error("device {device} is unhealthy: {reason}")]
    Unhealthy { device: String, reason: String },
    #[error("invalid opaque config for driver {driver}: {reason}")]
    BadConfig { driver: String, reason: String },
}

/// Prepare `claim`, read for the kubelet's request of claim `uid`.
pub fn prepare(claim: &Claim, uid: &str, node: &Node) -> Result<Prepared, PrepareError> {
    if !cdi::valid_uid(uid) {
        return Err(PrepareError::InvalidUid {
            uid: crate::resources::ids::shown(uid).into_owned(),
        });
    }
    if claim.uid != uid {
        return Err(PrepareError::UidMismatch {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            requested: uid.to_string(),
            found: claim.uid.clone(),
        });
    }
    // Device name -> the requests it was allocated for, in the order of the results.
    let mut ours: Vec<(String, Vec<String>)> = Vec::new();
    for result in claim.results_for(node.driver_name, node.pool) {
        match ours.iter_mut().find(|(d, _)| *d == result.device) {
            Some((_, requests)) => {
                if !requests.contains(&result.request) {
                    requests.push(result.request.clone())
                }
            }
            None => ours.push((result.device.clone(), vec![result.request.clone()])),
        }
    }
    let limits = limits_by_request(claim, node.driver_name)?;
    let dev_root = node.plugin.nvidia_dev_root.as_str();
    let mut spec_devices = Vec::with_capacity(ours.len());
    let mut devices = Vec::with_capacity(ours.len());
    for (device, requests) in ours {
        let Some((gpu, mig)) = names::resolve(node.inventory, &device) else {
            return Err(PrepareError::UnknownDevice {
                device: crate::resources::ids::shown(&device).into_owned(),
            });
        };
        if !node.partition.owns(gpu) {
            return Err(PrepareError::NotDra { device });
        }
        let unhealthy = match mig {
            None => node.health.gpus.get(&gpu.uuid),
            Some(mig) => node
                .health
                .gpus
                .get(&gpu.uuid)
                .or_else(|| node.health.migs.get(&mig.uuid)),
        };
        if let Some(why) = unhealthy {
            return Err(PrepareError::Unhealthy {
                device,
                reason: why.reason.clone(),
            });
        }
        let mut edits = match mig {
            None => spec::gpu_nodes(gpu, dev_root),
            Some(mig) => spec::mig_nodes(gpu, mig, dev_root),
        };
        edits.env = env_for(&limits, &requests);
        devices.push(PreparedDevice {
            requests,
            pool: node.pool.to_string(),
            cdi_ids: vec![cdi::cdi_id(uid, &device)],
            device: device.clone(),
        });
        spec_devices.push((device, edits));
    }
    let mut common: ContainerEdits = spec::common_edits(node.plugin, node.driver_files);
    add_extras(&mut common, node);
    Ok(Prepared {
        devices,
        spec: cdi::spec(uid, spec_devices, common),
    })
}

/// What every container gets besides its GPUs on the device-plugin side, in the claim's own spec:
/// the node extras' device nodes and mounts (IMEX channels, GDS / MOFED / GDRCopy, from the same
/// builder as their CDI specs there) and the `NVIDIA_GDS=enabled`-style env (through a Grant, as
/// Allocate sets it). In the claim's spec rather than by naming the extras' own spec files, which
/// exist only where a CDI device-list strategy is configured.
fn add_extras(common: &mut ContainerEdits, node: &Node) {
    for (_, extra) in crate::cdi::extras::specs(node.plugin, node.extras) {
        for device in extra.devices {
            let edits = device.container_edits;
            for n in edits.device_nodes {
                if !common.device_nodes.iter().any(|c| c.path == n.path) {
                    common.device_nodes.push(n);
                }
            }
            for m in edits.mounts {
                if !common
                    .mounts
                    .iter()
                    .any(|c| c.container_path == m.container_path)
                {
                    common.mounts.push(m);
                }
            }
        }
    }
    let mut grant = Grant::default();
    crate::allocate::extras::feature_envs(&mut grant.envs, node.plugin);
    for env in ContainerEdits::from_grant(&grant).env {
        if !common.env.contains(&env) {
            common.env.push(env);
        }
    }
}

/// vGPU-style limits of an opaque config of ours: `{"memory": "<quantity>", "computePercent":
/// <1-100>}` (plus the usual `apiVersion` / `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Limits {
    memory_mib: Option<u64>,
    compute_percent: Option<u32>,
}

/// The opaque parameters we accept.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Parameters {
    #[serde(default, rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(default, rename = "kind")]
    _kind: Option<String>,
    memory: Option<String>,
    compute_percent: Option<u32>,
}

/// Limits per request name (`""`: configs for every request), later configs winning field by
/// field, as the API orders them (class configs first, then the claim's).
fn limits_by_request(
    claim: &Claim,
    driver: &str,
) -> Result<BTreeMap<String, Limits>, PrepareError> {
    let mut out: BTreeMap<String, Limits> = BTreeMap::new();
    for config in claim.configs.iter().filter(|c| c.driver == driver) {
        let limits = parse_limits(config, driver)?;
        let keys: Vec<String> = if config.requests.is_empty() {
            vec![String::new()]
        } else {
            config.requests.clone()
        };
        for key in keys {
            let entry = out.entry(key).or_default();
            entry.memory_mib = limits.memory_mib.or(entry.memory_mib);
            entry.compute_percent = limits.compute_percent.or(entry.compute_percent);
        }
    }
    Ok(out)
}

fn parse_limits(config: &OpaqueConfig, driver: &str) -> Result<Limits, PrepareError> {
    let bad = |reason: String| PrepareError::BadConfig {
        driver: driver.to_string(),
        reason,
    };
    if config.parameters.is_null() {
        return Ok(Limits::default());
    }
    let p: Parameters =
        serde_json::from_value(config.parameters.clone()).map_err(|e| bad(e.to_string()))?;
    let memory_mib = match &p.memory {
        None => None,
        Some(q) => {
            let bytes = crate::units::parse_quantity(q).map_err(|e| bad(format!("memory: {e}")))?;
            let mib = bytes.div_ceil(1 << 20);
            if mib == 0 {
                return Err(bad("memory: must be at least 1Mi".into()));
            }
            Some(mib)
        }
    };
    if let Some(pct) = p.compute_percent {
        if !(1..=100).contains(&pct) {
            return Err(bad(format!("computePercent: must be 1-100, got {pct}")));
        }
    }
    Ok(Limits {
        memory_mib,
        compute_percent: p.compute_percent,
    })
}

/// The HAMi-core env of a device allocated for `requests`: configs for all requests, then those
/// naming one of its requests (`request/subrequest` results match configs of `request` too).
fn env_for(limits: &BTreeMap<String, Limits>, requests: &[String]) -> Vec<String> {
    let mut merged = limits.get("").copied().unwrap_or_default();
    for request in requests {
        let parent = request.split('/').next().unwrap_or(request);
        for key in [parent, request.as_str()] {
            if let Some(l) = limits.get(key) {
                merged.memory_mib = l.memory_mib.or(merged.memory_mib);
                merged.compute_percent = l.compute_percent.or(merged.compute_percent);
            }
        }
    }
    // Through a grant, as the device plugin's Allocate: the same env, spelled in one place.
    let mut grant = Grant::default();
    crate::allocate::hami_limits(&mut grant.envs, merged.memory_mib, merged.compute_percent);
    ContainerEdits::from_grant(&grant).env
}

#[cfg(test)]
mod tests;
