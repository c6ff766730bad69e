//! The CDI specs of the node extras, and the names Allocate gives for them. Pure: plugin settings
//! and what discovery found ([`NodeExtras`]) in.
//!
//! One spec per class, each its own file (a spec has one `kind`):
//!
//! | class | devices | edits |
//! | --- | --- | --- |
//! | `gdrcopy` | `all` | `/dev/gdrdrv` |
//! | `gds` | `all` | `/dev/nvidia-fs*`, plus `/etc/cufile.json` mounted read-only when the driver root has it |
//! | `mofed` | `all` | `/dev/infiniband/uverbs*`, `/dev/infiniband/rdma_cm` |
//! | `imex-channel` | `<id>` per selected channel | `/dev/nvidia-caps-imex-channels/channel<id>` |
//!
//! A feature that is off, or on with no device node on the node, has no spec and is never named:
//! a device without edits is invalid CDI (NVIDIA drops such specs the same way), and naming a
//! device no spec defines fails the container. [`allocate_names`] and [`specs`] are built from the
//! same data, so every name handed out is defined.

use super::layout::MOUNT_OPTIONS;
use super::spec::{ContainerEdits, Device, DeviceNode, Mount, Spec};
use super::{kind, qualified_name, CDI_VERSION, IMEX_CLASS};
use crate::config::PluginSettings;
use crate::device_nodes::host_path;
use crate::extras::{imex_channel_path, NodeExtras};

/// The one device of a feature's spec.
pub const ALL: &str = "all";

/// The specs to write besides the GPU spec, with their class, in [`allocate_names`]' order.
pub fn specs(plugin: &PluginSettings, extras: &NodeExtras) -> Vec<(&'static str, Spec)> {
    let dev_root = plugin.nvidia_dev_root.as_str();
    let nodes = |paths: &[String]| -> Vec<DeviceNode> {
        paths
            .iter()
            .map(|p| DeviceNode::new(p.clone(), dev_root))
            .collect()
    };
    let spec = |class: &str, devices: Vec<Device>| Spec {
        cdi_version: CDI_VERSION.to_string(),
        kind: kind(class),
        devices,
        container_edits: ContainerEdits::default(),
    };
    let mut out = Vec::new();
    let channels: Vec<Device> = extras
        .imex_channels(plugin)
        .map(|id| Device {
            name: id.to_string(),
            container_edits: ContainerEdits {
                device_nodes: nodes(&[imex_channel_path(id)]),
                ..ContainerEdits::default()
            },
        })
        .collect();
    if !channels.is_empty() {
        out.push((IMEX_CLASS, spec(IMEX_CLASS, channels)));
    }
    for (feature, files) in extras.found_features(plugin) {
        let edits = ContainerEdits {
            device_nodes: nodes(&files.device_nodes),
            mounts: files
                .mounts
                .iter()
                .map(|m| Mount {
                    host_path: host_path(&plugin.nvidia_driver_root, &m.path),
                    container_path: m.container_path.clone(),
                    options: MOUNT_OPTIONS.iter().map(|o| o.to_string()).collect(),
                })
                .collect(),
            ..ContainerEdits::default()
        };
        let device = Device {
            name: ALL.to_string(),
            container_edits: edits,
        };
        out.push((feature.class(), spec(feature.class(), vec![device])));
    }
    out
}

/// The CDI devices every container gets besides its GPUs, in NVIDIA's order: the IMEX channels,
/// then `gdrcopy`, `gds`, `mofed` (those found).
pub fn allocate_names(plugin: &PluginSettings, extras: &NodeExtras) -> Vec<String> {
    let mut names: Vec<String> = extras
        .imex_channels(plugin)
        .map(|id| qualified_name(IMEX_CLASS, &id.to_string()))
        .collect();
    names.extend(
        extras
            .found_features(plugin)
            .map(|(feature, _)| qualified_name(feature.class(), ALL)),
    );
    names
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::ImexSettings;
    use crate::extras::{Feature, FeatureFiles, FileMount};

    fn node() -> NodeExtras {
        let files = |nodes: &[&str]| FeatureFiles {
            device_nodes: nodes.iter().map(|n| n.to_string()).collect(),
            mounts: Vec::new(),
        };
        let mut gds = files(&["/dev/nvidia-fs0", "/dev/nvidia-fs1"]);
        gds.mounts.push(FileMount {
            path: "/etc/cufile.json".into(),
            container_path: "/etc/cufile.json".into(),
        });
        NodeExtras {
            dev_root: "/".into(),
            features: BTreeMap::from([
                (Feature::Gds, gds),
                (
                    Feature::Mofed,
                    files(&["/dev/infiniband/uverbs0", "/dev/infiniband/rdma_cm"]),
                ),
                (Feature::Gdrcopy, files(&[])),
            ]),
            imex_channels: vec![0],
            imex_missing: Vec::new(),
        }
    }

    fn all_on() -> PluginSettings {
        PluginSettings {
            gds_enabled: true,
            mofed_enabled: true,
            gdrcopy_enabled: true,
            imex: ImexSettings {
                channel_ids: vec![0],
                required: false,
            },
            nvidia_driver_root: "/run/nvidia/driver".into(),
            nvidia_dev_root: "/run/nvidia/driver".into(),
            ..PluginSettings::default()
        }
    }

    #[test]
    fn one_spec_per_found_class_with_its_nodes_under_the_roots() {
        let plugin = all_on();
        let specs = specs(&plugin, &node());
        let classes: Vec<&str> = specs.iter().map(|(c, _)| *c).collect();
        // GDRCopy is on but has no device: no spec.
        assert_eq!(classes, ["imex-channel", "gds", "mofed"]);
        let json: serde_json::Value = serde_json::from_slice(&specs[1].1.to_bytes()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cdiVersion": "0.6.0",
                "kind": "k8s.gpu-agent.io/gds",
                "devices": [{
                    "name": "all",
                    "containerEdits": {
                        "deviceNodes": [
                            {"path": "/dev/nvidia-fs0", "hostPath": "/run/nvidia/driver/dev/nvidia-fs0"},
                            {"path": "/dev/nvidia-fs1", "hostPath": "/run/nvidia/driver/dev/nvidia-fs1"},
                        ],
                        "mounts": [{
                            "hostPath": "/run/nvidia/driver/etc/cufile.json",
                            "containerPath": "/etc/cufile.json",
                            "options": ["ro", "nosuid", "nodev", "bind"],
                        }],
                    },
                }],
                "containerEdits": {},
            })
        );
        let imex = &specs[0].1;
        assert_eq!(imex.kind, "k8s.gpu-agent.io/imex-channel");
        let channel = imex.device("0").unwrap();
        assert_eq!(
            channel.container_edits.device_nodes,
            [DeviceNode {
                path: "/dev/nvidia-caps-imex-channels/channel0".into(),
                host_path: Some("/run/nvidia/driver/dev/nvidia-caps-imex-channels/channel0".into()),
                permissions: None,
            }]
        );
    }

    #[test]
    fn every_name_handed_out_is_defined_and_nothing_else() {
        let plugin = all_on();
        let extras = node();
        let names = allocate_names(&plugin, &extras);
        assert_eq!(
            names,
            [
                "k8s.gpu-agent.io/imex-channel=0",
                "k8s.gpu-agent.io/gds=all",
                "k8s.gpu-agent.io/mofed=all"
            ]
        );
        let defined: Vec<String> = specs(&plugin, &extras)
            .iter()
            .flat_map(|(_, s)| {
                s.devices
                    .iter()
                    .map(|d| format!("{}={}", s.kind, d.name))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(names, defined);

        // Everything off: no spec, no name, whatever the node has.
        let off = PluginSettings::default();
        assert!(specs(&off, &extras).is_empty());
        assert!(allocate_names(&off, &extras).is_empty());
    }
}
