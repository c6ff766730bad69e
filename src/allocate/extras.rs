//! What every container gets besides its GPUs (see [`crate::extras`]), per device-list strategy:
//!
//! | | every strategy | `envvar` | `volume-mounts` | `passDeviceSpecs` | `cdi-*` |
//! | --- | --- | --- | --- | --- | --- |
//! | GDS / MOFED / GDRCopy on | `NVIDIA_GDS=enabled` … | | | | `k8s.gpu-agent.io/gds=all` … when found |
//! | IMEX channel `N` present | | `NVIDIA_IMEX_CHANNELS=N,…` | `/dev/null` at `/var/run/nvidia-container-devices/imex/N` | `/dev/nvidia-caps-imex-channels/channelN` | `k8s.gpu-agent.io/imex-channel=N` |
//!
//! The feature env vars are set under pure CDI too, as NVIDIA's plugin does (it sets them before
//! its all-CDI early return); the CDI names come from [`crate::cdi::extras::allocate_names`].

use std::collections::BTreeMap;

use super::device_specs::PERMISSIONS;
use super::grant::{DeviceNode, Mount};
use super::strategies::{VOLUME_MOUNTS_HOST_PATH, VOLUME_MOUNTS_ROOT};
use crate::config::PluginSettings;
use crate::device_nodes::host_path;
use crate::extras::{imex_channel_path, Feature, NodeExtras, ENABLED};

/// Env var listing the IMEX channels under the `envvar` strategy.
pub const NVIDIA_IMEX_CHANNELS: &str = "NVIDIA_IMEX_CHANNELS";

/// `NVIDIA_<FEATURE>=enabled` for every feature `plugin` switches on, found on the node or not
/// (the runtime hook acts on the variable).
pub fn feature_envs(envs: &mut BTreeMap<String, String>, plugin: &PluginSettings) {
    for feature in Feature::enabled_in(plugin) {
        envs.insert(feature.env().to_string(), ENABLED.to_string());
    }
}

/// The IMEX channels handed to every container: requested and present.
pub fn imex_channels(plugin: &PluginSettings, extras: &NodeExtras) -> Vec<u32> {
    extras.imex_channels(plugin).collect()
}

/// `NVIDIA_IMEX_CHANNELS` value: the channel IDs, comma-joined.
pub fn imex_env(channels: &[u32]) -> String {
    channels
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `volume-mounts`: one read-only `/dev/null` at `/var/run/nvidia-container-devices/imex/<N>`
/// per channel.
pub fn imex_mounts(channels: &[u32]) -> impl Iterator<Item = Mount> + '_ {
    channels.iter().map(|id| Mount {
        container_path: format!("{VOLUME_MOUNTS_ROOT}/imex/{id}"),
        host_path: VOLUME_MOUNTS_HOST_PATH.into(),
        read_only: true,
    })
}

/// `passDeviceSpecs`: each channel's node, its host path under `nvidiaDevRoot`.
pub fn imex_specs<'a>(
    channels: &'a [u32],
    dev_root: &'a str,
) -> impl Iterator<Item = DeviceNode> + 'a {
    channels.iter().map(move |&id| {
        let path = imex_channel_path(id);
        DeviceNode {
            host_path: host_path(dev_root, &path),
            container_path: path,
            permissions: PERMISSIONS.into(),
        }
    })
}

#[cfg(test)]
mod tests;
