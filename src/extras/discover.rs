//! The I/O shell of [`super`]: looks on the node for the enabled features' device nodes and the
//! requested IMEX channels. The roots are injectable ([`Roots`], [`Probe::at`]) so tests fake
//! a node in a temp dir.
//!
//! - **Device nodes** are read under the dev root as NVIDIA's `getDevRoot` picks it: the driver
//!   root as the agent can read it (`containerDriverRoot`, else `nvidiaDriverRoot`) when it has a
//!   `dev` directory (a driver container's root), else `/`. A node counts when it is a character
//!   device; symlinks are followed, as `stat` does. Host paths handed to the runtime are under
//!   `nvidiaDevRoot`, as for the GPUs' own nodes.
//! - **Files** (`/etc/cufile.json`) are read under the readable driver root, symlinks resolved
//!   inside it (see `cdi::rootfs`); host paths are under `nvidiaDriverRoot`.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::{imex_channel_path, Feature, FeatureFiles, FileMount, MissingImexChannel, NodeExtras};
use crate::cdi::rootfs::RootFs;
use crate::config::PluginSettings;

/// GDS's config file, mounted with its devices when the driver root has it.
pub const CUFILE_JSON: &str = "/etc/cufile.json";

/// Where the node is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// Device nodes are read at `<dev><container path>`.
    pub dev: PathBuf,
    /// Files are read under this root.
    pub driver: PathBuf,
}

impl Roots {
    /// The roots of a real node for `plugin` (NVIDIA's `getDevRoot` for device nodes).
    pub fn of(plugin: &PluginSettings) -> Self {
        let driver = PathBuf::from(plugin.driver_root_readable_at());
        let dev = if driver.join("dev").is_dir() {
            driver.clone()
        } else {
            PathBuf::from("/")
        };
        Self { dev, driver }
    }
}

/// Runs discovery for the snapshot assembly: on the real node, or under fixed roots in tests.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    roots: Option<Roots>,
}

impl Probe {
    /// Read the node itself, at the roots `plugin` names.
    pub fn host() -> Self {
        Self::default()
    }

    /// Read under `roots` whatever the settings say.
    pub fn at(roots: Roots) -> Self {
        Self { roots: Some(roots) }
    }

    /// Discover for `plugin` and log the IMEX channels selected and skipped (a missing channel
    /// under `imex.required` is not logged here: the snapshot refuses the config with it).
    pub fn discover(&self, plugin: &PluginSettings) -> NodeExtras {
        let roots = self.roots.clone().unwrap_or_else(|| Roots::of(plugin));
        let extras = discover(plugin, &roots);
        for id in &extras.imex_channels {
            tracing::info!(channel = id, path = %imex_channel_path(*id), "IMEX channel selected; every container gets it");
        }
        if !plugin.imex.required {
            for missing in &extras.imex_missing {
                tracing::warn!(channel = missing.id, path = %missing.path, reason = %missing.reason, "ignoring requested IMEX channel: not on this node (set imex.required to refuse to start instead)");
            }
        }
        for (feature, files) in &extras.features {
            if !files.is_empty() {
                tracing::info!(feature = feature.class(), devices = ?files.device_nodes, mounts = files.mounts.len(), "found on this node");
            }
        }
        extras
    }
}

/// What the node has for the features `plugin` enables and the IMEX channels it requests.
/// Nothing enabled or requested: nothing is read.
pub fn discover(plugin: &PluginSettings, roots: &Roots) -> NodeExtras {
    let mut extras = NodeExtras {
        dev_root: roots.dev.display().to_string(),
        ..NodeExtras::default()
    };
    for feature in Feature::enabled_in(plugin) {
        extras
            .features
            .insert(feature, feature_files(feature, roots));
    }
    for &id in &plugin.imex.channel_ids {
        let path = imex_channel_path(id);
        match char_device(&roots.dev, &path) {
            Ok(()) => extras.imex_channels.push(id),
            Err(reason) => extras.imex_missing.push(MissingImexChannel {
                id,
                path: outer(&roots.dev, &path).display().to_string(),
                reason,
            }),
        }
    }
    extras
}

/// The device nodes (and, with them, files) of one feature.
fn feature_files(feature: Feature, roots: &Roots) -> FeatureFiles {
    let dev = roots.dev.as_path();
    let device_nodes = match feature {
        Feature::Gds => char_devices(dev, "/dev", "nvidia-fs"),
        Feature::Mofed => {
            let mut nodes = char_devices(dev, "/dev/infiniband", "uverbs");
            nodes.extend(exact(dev, "/dev/infiniband/rdma_cm"));
            nodes
        }
        Feature::Gdrcopy => exact(dev, "/dev/gdrdrv").into_iter().collect(),
    };
    let mut mounts = Vec::new();
    if feature == Feature::Gds && !device_nodes.is_empty() {
        if let Ok(path) = RootFs::new(&roots.driver).regular_file(CUFILE_JSON) {
            mounts.push(FileMount {
                path,
                container_path: CUFILE_JSON.to_string(),
            });
        }
    }
    FeatureFiles {
        device_nodes,
        mounts,
    }
}

/// `<root><path>`.
fn outer(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Ok when `<root><path>` is a character device, else why not.
fn char_device(root: &Path, path: &str) -> Result<(), String> {
    match std::fs::metadata(outer(root, path)) {
        Ok(meta) if meta.file_type().is_char_device() => Ok(()),
        Ok(_) => Err("not a character device".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("not found".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `path` when it is a character device under `root`.
fn exact(root: &Path, path: &str) -> Option<String> {
    char_device(root, path).ok().map(|()| path.to_string())
}

/// The character devices `<dir>/<prefix>*` under `root`, as container paths, in numeric order
/// (`uverbs2` before `uverbs10`).
fn char_devices(root: &Path, dir: &str, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(outer(root, dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
    names
        .into_iter()
        .map(|name| format!("{dir}/{name}"))
        .filter(|path| char_device(root, path).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::config::ImexSettings;

    /// A fake node root. Character devices are symlinks to `/dev/null` (a real one, followed the
    /// way `stat` follows them); plain files stand for anything that is not a device.
    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, inner: &str) -> PathBuf {
            let path = outer(self.dir.path(), inner);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            path
        }

        fn device(&self, inner: &str) -> &Self {
            symlink("/dev/null", self.path(inner)).unwrap();
            self
        }

        fn file(&self, inner: &str) -> &Self {
            std::fs::write(self.path(inner), b"{}").unwrap();
            self
        }

        fn roots(&self) -> Roots {
            Roots {
                dev: self.dir.path().into(),
                driver: self.dir.path().into(),
            }
        }
    }

    fn all_on(imex: &[u32]) -> PluginSettings {
        PluginSettings {
            gds_enabled: true,
            mofed_enabled: true,
            gdrcopy_enabled: true,
            imex: ImexSettings {
                channel_ids: imex.to_vec(),
                required: false,
            },
            ..PluginSettings::default()
        }
    }

    #[test]
    fn finds_each_features_character_devices() {
        let node = Node::new();
        node.device("/dev/nvidia-fs10")
            .device("/dev/nvidia-fs2")
            .file("/dev/nvidia-fs-not-a-device")
            .device("/dev/nvidia0")
            .device("/dev/infiniband/uverbs1")
            .device("/dev/infiniband/uverbs0")
            .device("/dev/infiniband/rdma_cm")
            .device("/dev/infiniband/umad0")
            .file("/etc/cufile.json");
        // GDRCopy's node is a plain file here: not a device, so GDRCopy is absent.
        node.file("/dev/gdrdrv");
        let extras = discover(&all_on(&[]), &node.roots());
        let nodes = |f: Feature| extras.features[&f].device_nodes.clone();
        assert_eq!(nodes(Feature::Gds), ["/dev/nvidia-fs2", "/dev/nvidia-fs10"]);
        assert_eq!(
            nodes(Feature::Mofed),
            [
                "/dev/infiniband/uverbs0",
                "/dev/infiniband/uverbs1",
                "/dev/infiniband/rdma_cm"
            ]
        );
        assert!(extras.features[&Feature::Gdrcopy].is_empty());
        assert_eq!(
            extras.features[&Feature::Gds].mounts,
            [FileMount {
                path: "/etc/cufile.json".into(),
                container_path: "/etc/cufile.json".into()
            }]
        );
        assert!(extras.features[&Feature::Mofed].mounts.is_empty());
    }

    #[test]
    fn nothing_enabled_reads_nothing_and_cufile_needs_devices() {
        let node = Node::new();
        node.device("/dev/gdrdrv").file("/etc/cufile.json");
        let extras = discover(&PluginSettings::default(), &node.roots());
        assert!(extras.features.is_empty() && extras.imex_channels.is_empty());
        // GDS on, no nvidia-fs device: empty, and cufile.json alone does not make it present.
        let extras = discover(&all_on(&[]), &node.roots());
        assert_eq!(extras.features[&Feature::Gds], FeatureFiles::default());
        assert_eq!(
            extras.features[&Feature::Gdrcopy].device_nodes,
            ["/dev/gdrdrv"]
        );
    }

    #[test]
    fn imex_channels_present_or_missing_with_why() {
        let node = Node::new();
        node.device("/dev/nvidia-caps-imex-channels/channel0");
        let extras = discover(&all_on(&[0]), &node.roots());
        assert_eq!(extras.imex_channels, [0]);
        assert!(extras.imex_missing.is_empty());

        let node = Node::new();
        let extras = discover(&all_on(&[0]), &node.roots());
        assert!(extras.imex_channels.is_empty());
        let missing = &extras.imex_missing[0];
        assert_eq!(missing.id, 0);
        assert_eq!(missing.reason, "not found");
        assert_eq!(
            missing.path,
            node.dir
                .path()
                .join("dev/nvidia-caps-imex-channels/channel0")
                .display()
                .to_string()
        );

        node.file("/dev/nvidia-caps-imex-channels/channel0");
        let extras = discover(&all_on(&[0]), &node.roots());
        assert_eq!(extras.imex_missing[0].reason, "not a character device");
    }

    #[test]
    fn the_dev_root_is_the_driver_root_only_when_it_has_dev() {
        let node = Node::new();
        let root = node.dir.path().display().to_string();
        let plugin = PluginSettings {
            container_driver_root: Some(root.clone()),
            ..PluginSettings::default()
        };
        assert_eq!(Roots::of(&plugin).dev, PathBuf::from("/"));
        assert_eq!(Roots::of(&plugin).driver, PathBuf::from(&root));
        node.device("/dev/nvidia-caps-imex-channels/channel0");
        assert_eq!(Roots::of(&plugin).dev, PathBuf::from(&root));
        // Without containerDriverRoot the host's driver root is read.
        let host = PluginSettings {
            nvidia_driver_root: root.clone(),
            ..PluginSettings::default()
        };
        assert_eq!(Roots::of(&host).dev, PathBuf::from(&root));
        // The probe at fixed roots finds the channel whatever the settings say.
        let extras = Probe::at(node.roots()).discover(&all_on(&[0]));
        assert_eq!(extras.imex_channels, [0]);
    }
}
