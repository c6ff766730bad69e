//! A [`Grant`] as CDI container edits: what the DRA side writes into a claim's spec. Pure.
//!
//! The device plugin hands the kubelet the same grant as a `ContainerAllocateResponse`
//! (`plugin::response`); converting one value on both sides keeps a container's env, nodes and
//! mounts the same whichever way its GPUs were requested.
//!
//! Two fields are not edits and are left to the caller: `cdi_devices` are names of devices in
//! other specs, which a DRA driver reports next to the claim's own device for the runtime to
//! resolve, and `annotations` are read by the runtime from the container's config, which a CDI
//! spec cannot set.

use super::spec::{ContainerEdits, DeviceNode, Mount};
use crate::allocate::{self, Grant};

/// Bind-mount options for a grant's mount: a bind mount, read-only or not, nothing more (what the
/// kubelet asks of the runtime for a device-plugin mount).
fn mount_options(read_only: bool) -> Vec<String> {
    let access = if read_only { "ro" } else { "rw" };
    vec![access.to_string(), "bind".to_string()]
}

impl ContainerEdits {
    /// The env (`NAME=value`, sorted by name), device nodes (host path only where it differs,
    /// permissions kept) and mounts of `grant`, in the grant's order.
    pub fn from_grant(grant: &Grant) -> Self {
        Self {
            env: grant.envs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            device_nodes: grant.device_nodes.iter().map(device_node).collect(),
            mounts: grant.mounts.iter().map(mount).collect(),
            hooks: Vec::new(),
        }
    }
}

fn device_node(node: &allocate::DeviceNode) -> DeviceNode {
    DeviceNode {
        path: node.container_path.clone(),
        host_path: (node.host_path != node.container_path).then(|| node.host_path.clone()),
        permissions: Some(node.permissions.clone()),
    }
}

fn mount(m: &allocate::Mount) -> Mount {
    Mount {
        host_path: m.host_path.clone(),
        container_path: m.container_path.clone(),
        options: mount_options(m.read_only),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn grant() -> Grant {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        Grant {
            // Inserted out of order: the edits list them sorted.
            envs: BTreeMap::from([
                pair("NVIDIA_VISIBLE_DEVICES", "GPU-1"),
                pair("CUDA_DEVICE_MEMORY_LIMIT", "20480m"),
                pair("NVIDIA_GDS", "enabled"),
            ]),
            mounts: vec![
                allocate::Mount {
                    container_path: "/var/run/nvidia-container-devices/GPU-1".into(),
                    host_path: "/dev/null".into(),
                    read_only: true,
                },
                allocate::Mount {
                    container_path: "/c".into(),
                    host_path: "/h".into(),
                    read_only: false,
                },
            ],
            device_nodes: vec![
                allocate::DeviceNode {
                    container_path: "/dev/nvidiactl".into(),
                    host_path: "/dev/nvidiactl".into(),
                    permissions: "rw".into(),
                },
                allocate::DeviceNode {
                    container_path: "/dev/nvidia1".into(),
                    host_path: "/run/nvidia/driver/dev/nvidia1".into(),
                    permissions: "rw".into(),
                },
            ],
            annotations: BTreeMap::from([pair("cdi.k8s.io/x", "k8s.gpu-agent.io/gpu=1")]),
            cdi_devices: vec!["k8s.gpu-agent.io/gpu=1".into()],
        }
    }

    #[test]
    fn env_sorted_nodes_and_mounts_in_order() {
        let edits = ContainerEdits::from_grant(&grant());
        assert_eq!(
            edits.env,
            [
                "CUDA_DEVICE_MEMORY_LIMIT=20480m",
                "NVIDIA_GDS=enabled",
                "NVIDIA_VISIBLE_DEVICES=GPU-1",
            ]
        );
        assert_eq!(
            edits.device_nodes,
            [
                DeviceNode {
                    path: "/dev/nvidiactl".into(),
                    host_path: None,
                    permissions: Some("rw".into()),
                },
                DeviceNode {
                    path: "/dev/nvidia1".into(),
                    host_path: Some("/run/nvidia/driver/dev/nvidia1".into()),
                    permissions: Some("rw".into()),
                },
            ]
        );
        assert_eq!(
            edits.mounts,
            [
                Mount {
                    host_path: "/dev/null".into(),
                    container_path: "/var/run/nvidia-container-devices/GPU-1".into(),
                    options: vec!["ro".into(), "bind".into()],
                },
                Mount {
                    host_path: "/h".into(),
                    container_path: "/c".into(),
                    options: vec!["rw".into(), "bind".into()],
                },
            ]
        );
        assert!(edits.hooks.is_empty());
    }

    #[test]
    fn written_in_cdi_field_names_and_empty_grant_writes_nothing() {
        let json = serde_json::to_value(ContainerEdits::from_grant(&grant())).unwrap();
        assert_eq!(
            json["deviceNodes"][1],
            serde_json::json!({
                "path": "/dev/nvidia1",
                "hostPath": "/run/nvidia/driver/dev/nvidia1",
                "permissions": "rw",
            })
        );
        assert_eq!(
            json["mounts"][0]["containerPath"],
            "/var/run/nvidia-container-devices/GPU-1"
        );
        let empty = serde_json::to_value(ContainerEdits::from_grant(&Grant::default())).unwrap();
        assert_eq!(empty, serde_json::json!({}));
    }
}
