//! The CDI spec describing our devices. Pure: inventory and plugin settings in, spec out.
//!
//! Every GPU and every MIG device of the inventory is listed under both of its names (UUID and
//! index, `<gpu>:<mig>` for MIG), whatever the current `deviceIDStrategy`, MIG strategy or
//! sharing config: a container that the kubelet restarts from its checkpoint is not allocated
//! again, so the names handed out under an earlier config must keep resolving after a reload.
//!
//! Each device carries its own nodes (`/dev/nvidiaN`, plus the GPU-instance and compute-instance
//! caps for a MIG device); the spec-wide edits carry the control nodes,
//! `NVIDIA_VISIBLE_DEVICES=void`, and, when the driver was found on the node, the mounts (and
//! hooks) that bring its libraries, binaries and firmware into the container (see `layout`).
//! `void` is what NVIDIA's own CDI specs set: CUDA images default to
//! `NVIDIA_VISIBLE_DEVICES=all`, and without `void` a legacy NVIDIA runtime hook on the node would
//! add every GPU to a container that CDI gave one.

use serde::{Deserialize, Serialize};

use super::driver::Driver;
use super::{layout, CDI_VERSION, KIND};
use crate::config::PluginSettings;
use crate::device_nodes;
use crate::gpu::{Gpu, Inventory, MigDevice};
use crate::resources::ids;

/// Env edit keeping the legacy NVIDIA hook away from CDI containers.
pub const VISIBLE_DEVICES_VOID: &str = "NVIDIA_VISIBLE_DEVICES=void";

/// A CDI spec file (the subset of the format we write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    pub container_edits: ContainerEdits,
}

/// One named device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

/// What the runtime adds to the container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
}

/// A bind mount of a host file into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An OCI hook the runtime runs on the host (`createContainer`: after the mounts, before the
/// pivot into the container's root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    /// Host path of the program.
    pub path: String,
    /// Its argv, program name first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// A device node: `path` in the container, `host_path` on the host when it differs, and the
/// cgroup `permissions` (`r`, `w`, `m`) when not the runtime's default (`rwm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

impl DeviceNode {
    /// The node at container path `path`, found on the host under `dev_root` (`nvidiaDevRoot`).
    pub fn new(path: String, dev_root: &str) -> Self {
        let host = device_nodes::host_path(dev_root, &path);
        Self {
            host_path: (host != path).then_some(host),
            path,
            permissions: None,
        }
    }
}

impl Spec {
    /// The device called `name` (without the `k8s.gpu-agent.io/gpu=` prefix).
    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The spec as written to disk: pretty JSON with a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain structs of strings: serialization cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// The spec for every GPU and MIG device of `inventory`, with the files of `driver` when it was
/// found.
pub fn build(inventory: &Inventory, plugin: &PluginSettings, driver: Option<&Driver>) -> Spec {
    let dev_root = plugin.nvidia_dev_root.as_str();
    let mut devices = Vec::new();
    for gpu in &inventory.gpus {
        let nodes = gpu_nodes(gpu, dev_root);
        for name in [gpu.uuid.clone(), gpu.index.to_string()] {
            devices.push(Device {
                name,
                container_edits: nodes.clone(),
            });
        }
        for mig in &gpu.mig_devices {
            let nodes = mig_nodes(gpu, mig, dev_root);
            for name in [mig.uuid.clone(), ids::mig_index(gpu.index, mig.index)] {
                devices.push(Device {
                    name,
                    container_edits: nodes.clone(),
                });
            }
        }
    }
    Spec {
        cdi_version: CDI_VERSION.to_string(),
        kind: KIND.to_string(),
        devices,
        container_edits: common_edits(plugin, driver),
    }
}

/// The edits of one whole GPU: its `/dev/nvidiaN` node.
pub fn gpu_nodes(gpu: &Gpu, dev_root: &str) -> ContainerEdits {
    node_edits(vec![device_nodes::gpu(gpu.minor_number)], dev_root)
}

/// The edits of one MIG device: its parent's node and its GPU-instance and compute-instance caps.
pub fn mig_nodes(gpu: &Gpu, mig: &MigDevice, dev_root: &str) -> ContainerEdits {
    let (gi, ci) = mig.cap_minors(gpu.minor_number);
    node_edits(
        vec![
            device_nodes::gpu(gpu.minor_number),
            device_nodes::cap(gi),
            device_nodes::cap(ci),
        ],
        dev_root,
    )
}

/// The edits every container with one of our devices gets: the control nodes,
/// `NVIDIA_VISIBLE_DEVICES=void`, and the driver's files (mounts, hooks) when it was found.
pub fn common_edits(plugin: &PluginSettings, driver: Option<&Driver>) -> ContainerEdits {
    let mut common = node_edits(
        device_nodes::CONTROL
            .iter()
            .map(|p| p.to_string())
            .collect(),
        &plugin.nvidia_dev_root,
    );
    common.env.push(VISIBLE_DEVICES_VOID.to_string());
    if let Some(driver) = driver {
        let files = layout::edits(driver, &plugin.nvidia_driver_root);
        common.mounts = files.mounts;
        common.hooks = files.hooks;
    }
    common
}

fn node_edits(paths: Vec<String>, dev_root: &str) -> ContainerEdits {
    ContainerEdits {
        device_nodes: paths
            .into_iter()
            .map(|p| DeviceNode::new(p, dev_root))
            .collect(),
        ..ContainerEdits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fixture;

    const NODE: &str = r#"
gpus:
  - {model: NVIDIA H100 80GB HBM3}
  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 1g.10gb]}}
"#;

    #[test]
    fn every_gpu_and_mig_device_under_both_names() {
        let inv = fixture::parse(NODE).unwrap().inventory;
        let spec = build(&inv, &PluginSettings::default(), None);
        assert_eq!(spec.cdi_version, "0.6.0");
        assert_eq!(spec.kind, "k8s.gpu-agent.io/gpu");
        let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
        let g = &inv.gpus;
        let m = &g[1].mig_devices;
        assert_eq!(
            names,
            [
                g[0].uuid.as_str(),
                "0",
                g[1].uuid.as_str(),
                "1",
                m[0].uuid.as_str(),
                "1:0",
                m[1].uuid.as_str(),
                "1:1",
            ]
        );
        let paths = |name: &str| -> Vec<String> {
            spec.device(name)
                .unwrap()
                .container_edits
                .device_nodes
                .iter()
                .map(|n| n.path.clone())
                .collect()
        };
        assert_eq!(paths("0"), ["/dev/nvidia0"]);
        assert_eq!(paths(&g[1].uuid), ["/dev/nvidia1"]);
        let (gi, ci) = m[1].cap_minors(1);
        assert_eq!(
            paths("1:1"),
            [
                "/dev/nvidia1".to_string(),
                format!("/dev/nvidia-caps/nvidia-cap{gi}"),
                format!("/dev/nvidia-caps/nvidia-cap{ci}"),
            ]
        );
        assert_eq!(paths(&m[1].uuid), paths("1:1"));
        assert_eq!(spec.container_edits.env, [VISIBLE_DEVICES_VOID]);
        let common: Vec<&str> = spec
            .container_edits
            .device_nodes
            .iter()
            .map(|n| n.path.as_str())
            .collect();
        assert_eq!(common, device_nodes::CONTROL);
        assert!(spec
            .container_edits
            .device_nodes
            .iter()
            .all(|n| n.host_path.is_none()));
    }

    #[test]
    fn host_paths_follow_the_dev_root_and_json_round_trips() {
        let inv = fixture::parse(NODE).unwrap().inventory;
        let plugin = PluginSettings {
            nvidia_dev_root: "/run/nvidia/driver".into(),
            ..PluginSettings::default()
        };
        let spec = build(&inv, &plugin, None);
        let node = &spec.device("0").unwrap().container_edits.device_nodes[0];
        assert_eq!(node.path, "/dev/nvidia0");
        assert_eq!(
            node.host_path.as_deref(),
            Some("/run/nvidia/driver/dev/nvidia0")
        );
        let bytes = spec.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["cdiVersion"], "0.6.0");
        assert_eq!(
            json["devices"][0]["containerEdits"]["deviceNodes"][0]["hostPath"],
            "/run/nvidia/driver/dev/nvidia0"
        );
        assert_eq!(serde_json::from_slice::<Spec>(&bytes).unwrap(), spec);
        // No driver: no mounts, no hooks, not even empty lists.
        assert!(json["containerEdits"].get("mounts").is_none());
        assert!(json["containerEdits"].get("hooks").is_none());
    }

    #[test]
    fn a_found_driver_adds_mounts_and_the_hook_in_cdi_field_names() {
        use crate::cdi::driver::Library;
        let inv = fixture::parse(NODE).unwrap().inventory;
        let driver = Driver {
            version: "580.95.05".into(),
            libraries: vec![Library {
                path: "/usr/lib64/libcuda.so.580.95.05".into(),
                location: "/usr/lib64/libcuda.so.580.95.05".into(),
                soname: "libcuda.so.1".into(),
            }],
            binaries: Vec::new(),
            firmware: Vec::new(),
            ctk: Some("/usr/bin/nvidia-ctk".into()),
        };
        let spec = build(&inv, &PluginSettings::default(), Some(&driver));
        let json: serde_json::Value = serde_json::from_slice(&spec.to_bytes()).unwrap();
        let edits = &json["containerEdits"];
        assert_eq!(
            edits["mounts"][0],
            serde_json::json!({
                "hostPath": "/usr/lib64/libcuda.so.580.95.05",
                "containerPath": "/usr/lib64/libcuda.so.580.95.05",
                "options": ["ro", "nosuid", "nodev", "bind"],
            })
        );
        assert_eq!(
            edits["hooks"][0],
            serde_json::json!({
                "hookName": "createContainer",
                "path": "/usr/bin/nvidia-ctk",
                "args": ["nvidia-ctk", "hook", "update-ldcache", "--folder", "/usr/lib64"],
            })
        );
        // Devices carry their nodes only; the driver is spec-wide.
        assert!(spec
            .devices
            .iter()
            .all(|d| d.container_edits.mounts.is_empty()));
        assert_eq!(edits["env"][0], VISIBLE_DEVICES_VOID);
    }
}
