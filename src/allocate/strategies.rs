//! The device-list strategies (`flags.plugin.deviceListStrategy`): how the allocated devices are
//! named to the container runtime. Any combination may be configured; each adds its part.
//!
//! | strategy | response |
//! | --- | --- |
//! | `envvar` | `NVIDIA_VISIBLE_DEVICES=<id>,<id>` |
//! | `volume-mounts` | `NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices` and one read-only mount of `/dev/null` at `/var/run/nvidia-container-devices/<id>` per device (wins over `envvar`'s value, as in NVIDIA's plugin) |
//! | `cdi-annotations` | annotation [`cdi::annotation_key`] = `k8s.gpu-agent.io/gpu=<id>,…` |
//! | `cdi-cri` | `cdi_devices` = `k8s.gpu-agent.io/gpu=<id>`, … |
//!
//! `<id>` is the device's visible ID: GPU UUID or index, MIG UUID or `<gpu>:<mig>`; replicas and
//! vGPU slices name their underlying device, once.

use crate::cdi;
use crate::config::{DeviceListStrategy, PluginSettings};
use crate::proto::v1beta1::{CdiDevice, ContainerAllocateResponse, Mount};

/// Env var read by the NVIDIA container runtime.
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
/// Directory the NVIDIA runtime hook lists to find the devices under `volume-mounts`.
pub const VOLUME_MOUNTS_ROOT: &str = "/var/run/nvidia-container-devices";
/// What is mounted at each device path under `volume-mounts`: only the file name matters.
pub const VOLUME_MOUNTS_HOST_PATH: &str = "/dev/null";

/// Add every configured strategy's part for the devices `visible` (de-duplicated visible IDs)
/// of `resource` to `response`.
pub fn apply(
    response: &mut ContainerAllocateResponse,
    resource: &str,
    visible: &[String],
    plugin: &PluginSettings,
) {
    let has = |s: DeviceListStrategy| plugin.device_list_strategies.contains(&s);
    if has(DeviceListStrategy::Envvar) {
        response
            .envs
            .insert(NVIDIA_VISIBLE_DEVICES.into(), visible.join(","));
    }
    if has(DeviceListStrategy::VolumeMounts) {
        response
            .envs
            .insert(NVIDIA_VISIBLE_DEVICES.into(), VOLUME_MOUNTS_ROOT.into());
        response.mounts = visible
            .iter()
            .map(|id| Mount {
                container_path: format!("{VOLUME_MOUNTS_ROOT}/{id}"),
                host_path: VOLUME_MOUNTS_HOST_PATH.into(),
                read_only: true,
            })
            .collect();
    }
    let cdi_names = || visible.iter().map(|id| cdi::device_name(id));
    if has(DeviceListStrategy::CdiAnnotations) {
        response.annotations.insert(
            cdi::annotation_key(&plugin.cdi_annotation_prefix, resource),
            cdi_names().collect::<Vec<_>>().join(","),
        );
    }
    if has(DeviceListStrategy::CdiCri) {
        response.cdi_devices = cdi_names().map(|name| CdiDevice { name }).collect();
    }
}
