//! The device-list strategies (`flags.plugin.deviceListStrategy`): how the allocated devices are
//! named to the container runtime. Any combination may be configured; each adds its part.
//!
//! | strategy | grant |
//! | --- | --- |
//! | `envvar` | `NVIDIA_VISIBLE_DEVICES=<id>,<id>` |
//! | `volume-mounts` | `NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices` and one read-only mount of `/dev/null` at `/var/run/nvidia-container-devices/<id>` per device (wins over `envvar`'s value, as in NVIDIA's plugin) |
//! | `cdi-annotations` | annotation [`cdi::annotation_key`] = `k8s.gpu-agent.io/gpu=<id>,…` |
//! | `cdi-cri` | `cdi_devices` = `k8s.gpu-agent.io/gpu=<id>`, … |
//!
//! `<id>` is the device's visible ID: GPU UUID or index, MIG UUID or `<gpu>:<mig>`; replicas and
//! vGPU slices name their underlying device, once, in request order. Each strategy also hands over
//! the IMEX channels, and the CDI ones the features found (see [`super::extras`]).

use super::extras::{imex_env, imex_mounts, NVIDIA_IMEX_CHANNELS};
use super::grant::{Grant, Mount};
use crate::cdi;
use crate::config::{DeviceListStrategy, PluginSettings};
use crate::extras::NodeExtras;

/// Env var read by the NVIDIA container runtime.
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
/// Directory the NVIDIA runtime hook lists to find the devices under `volume-mounts`.
pub const VOLUME_MOUNTS_ROOT: &str = "/var/run/nvidia-container-devices";
/// What is mounted at each device path under `volume-mounts`: only the file name matters.
pub const VOLUME_MOUNTS_HOST_PATH: &str = "/dev/null";

/// Add every configured strategy's part for the devices `visible` (de-duplicated visible IDs)
/// of `resource`, and for the IMEX `channels` and the features found on the node (`extras`), to
/// `grant`.
pub fn apply(
    grant: &mut Grant,
    resource: &str,
    visible: &[String],
    channels: &[u32],
    plugin: &PluginSettings,
    extras: &NodeExtras,
) {
    let has = |s: DeviceListStrategy| plugin.device_list_strategies.contains(&s);
    if has(DeviceListStrategy::Envvar) {
        grant
            .envs
            .insert(NVIDIA_VISIBLE_DEVICES.into(), visible.join(","));
        if !channels.is_empty() {
            grant
                .envs
                .insert(NVIDIA_IMEX_CHANNELS.into(), imex_env(channels));
        }
    }
    if has(DeviceListStrategy::VolumeMounts) {
        grant
            .envs
            .insert(NVIDIA_VISIBLE_DEVICES.into(), VOLUME_MOUNTS_ROOT.into());
        grant.mounts = visible
            .iter()
            .map(|id| Mount {
                container_path: format!("{VOLUME_MOUNTS_ROOT}/{id}"),
                host_path: VOLUME_MOUNTS_HOST_PATH.into(),
                read_only: true,
            })
            .chain(imex_mounts(channels))
            .collect();
    }
    if !(has(DeviceListStrategy::CdiAnnotations) || has(DeviceListStrategy::CdiCri)) {
        return;
    }
    // NVIDIA's order: the GPUs, then the IMEX channels, then gdrcopy, gds, mofed.
    let mut cdi_names: Vec<String> = visible.iter().map(|id| cdi::device_name(id)).collect();
    cdi_names.extend(cdi::extras::allocate_names(plugin, extras));
    if has(DeviceListStrategy::CdiAnnotations) {
        grant.annotations.insert(
            cdi::annotation_key(&plugin.cdi_annotation_prefix, resource),
            cdi_names.join(","),
        );
    }
    if has(DeviceListStrategy::CdiCri) {
        grant.cdi_devices = cdi_names;
    }
}
