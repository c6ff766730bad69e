//! The optional features NVIDIA's plugin hands to every container besides its GPUs: GPUDirect
//! Storage, Mellanox OFED, GDRCopy ([`Feature`]) and IMEX channels. Pure: what was found on the
//! node ([`NodeExtras`], filled by [`discover`]) in, names and checks out.
//!
//! - A feature switched on (`flags.gdsEnabled`, …) sets `NVIDIA_<FEATURE>=enabled` in every
//!   Allocate response, found or not (the NVIDIA runtime hook acts on it); with a CDI strategy the
//!   container also gets our CDI device `<feature>=all`, but only when the node has the feature's
//!   device nodes: a CDI device with no edits is invalid, and naming an undefined one fails the
//!   container.
//! - An IMEX channel (`imex.channelIDs`, only `0` is valid) is handed over when its device node
//!   exists; a missing one is skipped, or with `imex.required` refuses the config
//!   ([`NodeExtras::required_imex`]).
//!
//! Discovery runs when the snapshot is assembled (at start and on every config change), so the
//! Allocate path and the CDI spec read the same answer and never touch the filesystem.

pub mod discover;

use std::collections::BTreeMap;

use crate::config::PluginSettings;

/// Value of the `NVIDIA_GDS` / `NVIDIA_MOFED` / `NVIDIA_GDRCOPY` env vars.
pub const ENABLED: &str = "enabled";

/// Where the IMEX channel device nodes live.
pub const IMEX_CHANNEL_DIR: &str = "/dev/nvidia-caps-imex-channels";

/// `/dev/nvidia-caps-imex-channels/channel<id>`.
pub fn imex_channel_path(id: u32) -> String {
    format!("{IMEX_CHANNEL_DIR}/channel{id}")
}

/// A node feature switched on by a flag. Declared in NVIDIA's order of its extra CDI devices
/// (`gdrcopy`, `gds`, `mofed`), so that iteration gives that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// GDRCopy: `/dev/gdrdrv`.
    Gdrcopy,
    /// GPUDirect Storage: `/dev/nvidia-fs*`, plus `/etc/cufile.json`.
    Gds,
    /// Mellanox OFED: `/dev/infiniband/uverbs*`, `/dev/infiniband/rdma_cm`.
    Mofed,
}

impl Feature {
    /// Every feature, in NVIDIA's order.
    pub const ALL: [Feature; 3] = [Feature::Gdrcopy, Feature::Gds, Feature::Mofed];

    /// CDI class of its device (`k8s.gpu-agent.io/<class>=all`), NVIDIA's mode name.
    pub fn class(self) -> &'static str {
        match self {
            Feature::Gdrcopy => "gdrcopy",
            Feature::Gds => "gds",
            Feature::Mofed => "mofed",
        }
    }

    /// Env var set to [`ENABLED`] in every container while the feature is on.
    pub fn env(self) -> &'static str {
        match self {
            Feature::Gdrcopy => "NVIDIA_GDRCOPY",
            Feature::Gds => "NVIDIA_GDS",
            Feature::Mofed => "NVIDIA_MOFED",
        }
    }

    /// The config key that switches it on, for messages.
    pub fn setting(self) -> &'static str {
        match self {
            Feature::Gdrcopy => "flags.gdrcopyEnabled",
            Feature::Gds => "flags.gdsEnabled",
            Feature::Mofed => "flags.mofedEnabled",
        }
    }

    /// Whether `plugin` switches it on.
    pub fn enabled(self, plugin: &PluginSettings) -> bool {
        match self {
            Feature::Gdrcopy => plugin.gdrcopy_enabled,
            Feature::Gds => plugin.gds_enabled,
            Feature::Mofed => plugin.mofed_enabled,
        }
    }

    /// The features `plugin` switches on, in NVIDIA's order.
    pub fn enabled_in(plugin: &PluginSettings) -> impl Iterator<Item = Feature> + '_ {
        Self::ALL.into_iter().filter(|f| f.enabled(plugin))
    }
}

/// A file of the host's driver root to bind-mount into the container (read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// The real file, symlinks resolved, as a path under the driver root.
    pub path: String,
    /// Where the container sees it.
    pub container_path: String,
}

/// What the node has for one feature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureFiles {
    /// Character devices found, as container paths (`/dev/nvidia-fs0`); host paths are under
    /// `nvidiaDevRoot`.
    pub device_nodes: Vec<String>,
    /// Files that go with the devices (only looked for when there are devices, as NVIDIA does).
    pub mounts: Vec<FileMount>,
}

impl FeatureFiles {
    /// No device nodes: the feature is absent and has no CDI device.
    pub fn is_empty(&self) -> bool {
        self.device_nodes.is_empty()
    }
}

/// A requested IMEX channel that is not on the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "requested IMEX channel channel{id} does not exist: {path}: {reason} (imex.required is set)"
)]
pub struct MissingImexChannel {
    pub id: u32,
    /// The path looked at, as the agent sees it (under the dev root it read).
    pub path: String,
    /// `not found`, `not a character device`, or the I/O error.
    pub reason: String,
}

/// What discovery found on the node for the enabled features and requested IMEX channels.
/// `Default`: nothing looked for, nothing found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeExtras {
    /// Where device nodes were read (the agent's view of the dev root), for messages.
    pub dev_root: String,
    /// Each enabled feature with what was found for it (possibly nothing).
    pub features: BTreeMap<Feature, FeatureFiles>,
    /// Requested IMEX channels present as character devices, in config order.
    pub imex_channels: Vec<u32>,
    /// Requested IMEX channels not present, with why.
    pub imex_missing: Vec<MissingImexChannel>,
}

impl NodeExtras {
    /// The feature's files when it is enabled in `plugin` and the node has its devices: only then
    /// does our CDI spec define `<class>=all`.
    pub fn found(&self, feature: Feature, plugin: &PluginSettings) -> Option<&FeatureFiles> {
        if !feature.enabled(plugin) {
            return None;
        }
        self.features.get(&feature).filter(|f| !f.is_empty())
    }

    /// The enabled features whose devices are on the node, in NVIDIA's order.
    pub fn found_features<'a>(
        &'a self,
        plugin: &'a PluginSettings,
    ) -> impl Iterator<Item = (Feature, &'a FeatureFiles)> + 'a {
        Feature::ALL
            .into_iter()
            .filter_map(|f| self.found(f, plugin).map(|files| (f, files)))
    }

    /// The enabled features with no device on the node.
    pub fn absent_features(&self, plugin: &PluginSettings) -> Vec<Feature> {
        Feature::enabled_in(plugin)
            .filter(|&f| self.found(f, plugin).is_none())
            .collect()
    }

    /// The IMEX channels handed to containers: requested by `plugin` and present.
    pub fn imex_channels<'a>(
        &'a self,
        plugin: &'a PluginSettings,
    ) -> impl Iterator<Item = u32> + 'a {
        self.imex_channels
            .iter()
            .copied()
            .filter(|id| plugin.imex.channel_ids.contains(id))
    }

    /// With `imex.required`, every requested channel that is not present (none without it).
    /// A channel that was never looked for counts as missing: the config cannot be trusted to
    /// work on this node.
    pub fn required_imex(&self, plugin: &PluginSettings) -> Vec<MissingImexChannel> {
        if !plugin.imex.required {
            return Vec::new();
        }
        plugin
            .imex
            .channel_ids
            .iter()
            .filter(|id| !self.imex_channels.contains(id))
            .map(|&id| {
                self.imex_missing
                    .iter()
                    .find(|m| m.id == id)
                    .cloned()
                    .unwrap_or_else(|| MissingImexChannel {
                        id,
                        path: imex_channel_path(id),
                        reason: "not looked for on this node".into(),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImexSettings;

    fn plugin(
        gds: bool,
        mofed: bool,
        gdrcopy: bool,
        imex: &[u32],
        required: bool,
    ) -> PluginSettings {
        PluginSettings {
            gds_enabled: gds,
            mofed_enabled: mofed,
            gdrcopy_enabled: gdrcopy,
            imex: ImexSettings {
                channel_ids: imex.to_vec(),
                required,
            },
            ..PluginSettings::default()
        }
    }

    fn files(nodes: &[&str]) -> FeatureFiles {
        FeatureFiles {
            device_nodes: nodes.iter().map(|n| n.to_string()).collect(),
            mounts: Vec::new(),
        }
    }

    #[test]
    fn features_in_nvidia_order_with_their_names() {
        assert_eq!(
            Feature::ALL.map(Feature::class),
            ["gdrcopy", "gds", "mofed"]
        );
        assert_eq!(
            Feature::ALL.map(Feature::env),
            ["NVIDIA_GDRCOPY", "NVIDIA_GDS", "NVIDIA_MOFED"]
        );
        let p = plugin(true, false, true, &[], false);
        assert_eq!(
            Feature::enabled_in(&p).collect::<Vec<_>>(),
            [Feature::Gdrcopy, Feature::Gds]
        );
        assert_eq!(
            imex_channel_path(0),
            "/dev/nvidia-caps-imex-channels/channel0"
        );
    }

    #[test]
    fn only_enabled_features_with_devices_are_found() {
        let extras = NodeExtras {
            features: BTreeMap::from([
                (Feature::Gds, files(&["/dev/nvidia-fs0"])),
                (Feature::Mofed, files(&[])),
                (Feature::Gdrcopy, files(&["/dev/gdrdrv"])),
            ]),
            ..NodeExtras::default()
        };
        let p = plugin(true, true, false, &[], false);
        let found: Vec<Feature> = extras.found_features(&p).map(|(f, _)| f).collect();
        // GDRCopy has devices but is off; MOFED is on but empty.
        assert_eq!(found, [Feature::Gds]);
        assert_eq!(extras.absent_features(&p), [Feature::Mofed]);
        assert!(NodeExtras::default().found(Feature::Gds, &p).is_none());
    }

    #[test]
    fn imex_channels_and_the_required_check() {
        let extras = NodeExtras {
            imex_channels: vec![0],
            ..NodeExtras::default()
        };
        let p = plugin(false, false, false, &[0], true);
        assert_eq!(extras.imex_channels(&p).collect::<Vec<_>>(), [0]);
        assert!(extras.required_imex(&p).is_empty());
        // Channels found for an earlier config are not handed out under one that drops them.
        let none = plugin(false, false, false, &[], false);
        assert_eq!(extras.imex_channels(&none).count(), 0);

        let missing = NodeExtras {
            dev_root: "/driver-root".into(),
            imex_missing: vec![MissingImexChannel {
                id: 0,
                path: "/driver-root/dev/nvidia-caps-imex-channels/channel0".into(),
                reason: "not found".into(),
            }],
            ..NodeExtras::default()
        };
        let errors = missing.required_imex(&p);
        assert_eq!(
            errors[0].to_string(),
            "requested IMEX channel channel0 does not exist: /driver-root/dev/nvidia-caps-imex-channels/channel0: not found (imex.required is set)"
        );
        // Not required: skipped, no error.
        assert!(missing
            .required_imex(&plugin(false, false, false, &[0], false))
            .is_empty());
        // Never looked for (nothing discovered): still an error when required.
        let errors = NodeExtras::default().required_imex(&p);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("channel0"), "{}", errors[0]);
    }
}
