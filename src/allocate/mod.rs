//! Device IDs → what the container gets (a [`Grant`]). Pure: no wire type of any consumer.
//!
//! The request is checked first (every ID known and healthy, replica and vGPU rules), then the
//! underlying devices are handed over with each configured device-list strategy
//! ([`strategies`]), plus device nodes ([`device_specs`]), vGPU limits, and what every container
//! gets: GDS / MOFED / GDRCopy and IMEX channels ([`extras`]). The device-plugin shell and the
//! DRA side each convert the one [`Grant`] into their own format (see [`grant`](mod@grant)).

pub mod device_specs;
pub mod extras;
pub mod grant;
pub mod mps;
pub mod strategies;

use std::collections::BTreeMap;

use crate::config::PluginSettings;
use crate::extras::NodeExtras;
use crate::resources::{Device, Health, Resource, Strategy, VgpuSlice};

pub use grant::{DeviceNode, Grant, Mount};
pub use strategies::{NVIDIA_VISIBLE_DEVICES, VOLUME_MOUNTS_HOST_PATH, VOLUME_MOUNTS_ROOT};

/// vGPU memory limit, in the HAMi-core interception library's format (`<n>m` = MiB).
pub const CUDA_DEVICE_MEMORY_LIMIT: &str = "CUDA_DEVICE_MEMORY_LIMIT";
/// vGPU SM share in percent (HAMi-core).
pub const CUDA_DEVICE_SM_LIMIT: &str = "CUDA_DEVICE_SM_LIMIT";

/// Why an Allocate request is refused. Each maps to gRPC `InvalidArgument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error("unknown device ID {id:?} for resource {resource}")]
    UnknownDevice { resource: String, id: String },
    #[error("device {id:?} of resource {resource} is unhealthy")]
    UnhealthyDevice { resource: String, id: String },
    #[error("empty device list for resource {resource}")]
    Empty { resource: String },
    /// NVIDIA's text word for word (scripts and alerts match on it), then which setting says so.
    #[error(
        "invalid allocation request for {resource:?}: invalid request: maximum request size for shared resources is 1; found {count} (failRequestsGreaterThanOne is set for this resource)"
    )]
    TooManyReplicas { resource: String, count: usize },
    #[error("vGPU slices of resource {resource} come from different GPUs ({gpus}); a container may use slices of one GPU only")]
    VgpuAcrossGpus { resource: String, gpus: String },
}

/// The devices of `resource` named by `ids`, checked for Allocate.
pub fn resolve<'a>(
    resource: &'a Resource,
    ids: &[String],
) -> Result<Vec<&'a Device>, AllocateError> {
    if ids.is_empty() {
        return Err(AllocateError::Empty {
            resource: resource.name.clone(),
        });
    }
    let mut devices = Vec::with_capacity(ids.len());
    for id in ids {
        let device = resource
            .device(id)
            .ok_or_else(|| AllocateError::UnknownDevice {
                resource: resource.name.clone(),
                // Any string a client sent: cut to a bounded length.
                id: crate::resources::ids::shown(id).into_owned(),
            })?;
        if device.health != Health::Healthy {
            return Err(AllocateError::UnhealthyDevice {
                resource: resource.name.clone(),
                id: id.clone(),
            });
        }
        devices.push(device);
    }
    if resource.fail_requests_greater_than_one && ids.len() > 1 {
        return Err(AllocateError::TooManyReplicas {
            resource: resource.name.clone(),
            count: ids.len(),
        });
    }
    if resource.strategy == Strategy::Vgpu {
        let first = &devices[0].target.gpu_uuid;
        if devices.iter().any(|d| &d.target.gpu_uuid != first) {
            let mut gpus: Vec<&str> = devices.iter().map(|d| d.target.gpu_uuid.as_str()).collect();
            gpus.sort_unstable();
            gpus.dedup();
            return Err(AllocateError::VgpuAcrossGpus {
                resource: resource.name.clone(),
                gpus: gpus.join(", "),
            });
        }
    }
    Ok(devices)
}

/// Underlying device IDs (`visible_id`), de-duplicated, in request order.
pub fn visible_ids(devices: &[&Device]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(devices.len());
    for d in devices {
        if !out.contains(&d.visible_id) {
            out.push(d.visible_id.clone());
        }
    }
    out
}

/// What one container gets: the request is checked ([`resolve`]), the devices are handed over
/// with every configured device-list strategy ([`strategies`]), device nodes are added under
/// `passDeviceSpecs` ([`device_specs`]), vGPU limits as env ([`vgpu_limits`]), and the node's
/// extras found for this config (`extras`: IMEX channels, GDS / MOFED / GDRCopy).
///
/// Like NVIDIA's plugin, device nodes are only passed when at least one non-CDI strategy is
/// configured: with CDI alone the spec file already gives the container its nodes.
pub fn grant(
    resource: &Resource,
    ids: &[String],
    plugin: &PluginSettings,
    extras: &NodeExtras,
) -> Result<Grant, AllocateError> {
    let devices = resolve(resource, ids)?;
    let visible = visible_ids(&devices);
    let channels = extras::imex_channels(plugin, extras);
    let mut grant = Grant::default();
    extras::feature_envs(&mut grant.envs, plugin);
    strategies::apply(
        &mut grant,
        &resource.name,
        &visible,
        &channels,
        plugin,
        extras,
    );
    let any_legacy = plugin.device_list_strategies.iter().any(|s| !s.uses_cdi());
    if plugin.pass_device_specs && any_legacy {
        let dev_root = plugin.nvidia_dev_root.as_str();
        grant.device_nodes = device_specs::for_devices(&devices, dev_root);
        grant
            .device_nodes
            .extend(extras::imex_specs(&channels, dev_root));
    }
    vgpu_limits(&mut grant.envs, &devices);
    if resource.strategy == Strategy::Mps {
        mps::apply(&mut grant, &resource.name, plugin.mps_root());
    }
    Ok(grant)
}

/// vGPU slices: `CUDA_DEVICE_MEMORY_LIMIT=<sum of slices>m` and, when the slices carry a
/// compute share, `CUDA_DEVICE_SM_LIMIT=<sum of shares, at most 100>`. Set whatever the
/// device-list strategy: the interception library reads them from the container's env.
pub fn vgpu_limits(envs: &mut BTreeMap<String, String>, devices: &[&Device]) {
    let slices: Vec<&VgpuSlice> = devices
        .iter()
        .filter_map(|d| d.target.vgpu.as_ref())
        .collect();
    let Some(first) = slices.first() else {
        return;
    };
    // Slices of one GPU add up: two 10 GiB slices give the container 20 GiB.
    let memory: u64 = slices.iter().map(|v| v.memory_mib).sum();
    let compute = first
        .compute_percent
        .map(|pct| (u64::from(pct) * slices.len() as u64).min(100) as u32);
    hami_limits(envs, Some(memory), compute);
}

/// The HAMi-core env for a memory limit (MiB) and an SM share (percent): the one place both
/// sides spell it, the device plugin's vGPU slices ([`vgpu_limits`]) and a DRA claim's opaque
/// config (`dra::prepare`).
pub fn hami_limits(
    envs: &mut BTreeMap<String, String>,
    memory_mib: Option<u64>,
    compute_percent: Option<u32>,
) {
    if let Some(memory) = memory_mib {
        envs.insert(CUDA_DEVICE_MEMORY_LIMIT.into(), format!("{memory}m"));
    }
    if let Some(pct) = compute_percent {
        envs.insert(CUDA_DEVICE_SM_LIMIT.into(), pct.to_string());
    }
}

#[cfg(test)]
mod tests;
