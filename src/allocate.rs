//! Device IDs → what the container runtime needs (`ContainerAllocateResponse`). Pure.
//!
//! The request is checked first (every ID known and healthy, replica and vGPU rules), then the
//! underlying devices are handed over with each configured device-list strategy.

use std::collections::HashMap;

use crate::config::{DeviceListStrategy, PluginSettings};
use crate::proto::v1beta1::ContainerAllocateResponse;
use crate::resources::{Device, Health, Resource, Strategy};

/// Env var read by the NVIDIA container runtime.
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
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
    #[error(
        "resource {resource} has failRequestsGreaterThanOne set: a container may request 1 replica, got {count}"
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
                id: id.clone(),
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

/// Build the response for one container.
pub fn container_response(
    resource: &Resource,
    ids: &[String],
    plugin: &PluginSettings,
) -> Result<ContainerAllocateResponse, AllocateError> {
    let devices = resolve(resource, ids)?;
    let visible = visible_ids(&devices);
    let mut response = ContainerAllocateResponse {
        envs: HashMap::new(),
        ..Default::default()
    };
    for strategy in &plugin.device_list_strategies {
        match strategy {
            DeviceListStrategy::Envvar => {
                response
                    .envs
                    .insert(NVIDIA_VISIBLE_DEVICES.into(), visible.join(","));
            }
            DeviceListStrategy::VolumeMounts
            | DeviceListStrategy::CdiAnnotations
            | DeviceListStrategy::CdiCri => {
                // Filled in by the device-list strategies module.
            }
        }
    }
    if let Some(slice) = devices.first().and_then(|d| d.target.vgpu.as_ref()) {
        // Slices of one GPU add up: two 10 GiB slices give the container 20 GiB.
        let memory: u64 = devices
            .iter()
            .filter_map(|d| d.target.vgpu.as_ref())
            .map(|v| v.memory_mib)
            .sum();
        response
            .envs
            .insert(CUDA_DEVICE_MEMORY_LIMIT.into(), format!("{memory}m"));
        if let Some(pct) = slice.compute_percent {
            let total = (pct as usize * devices.len()).min(100);
            response
                .envs
                .insert(CUDA_DEVICE_SM_LIMIT.into(), total.to_string());
        }
    }
    Ok(response)
}
