//! `passDeviceSpecs: true`: the `/dev` nodes of the allocated devices (the kubelet's
//! `DeviceSpec`s), for runtimes without the NVIDIA hook (or to make the cgroup rules explicit).
//!
//! The control nodes (`/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools`) come first,
//! then per device `/dev/nvidiaN` and, for MIG, its GPU-instance and compute-instance caps;
//! de-duplicated (replicas and MIG devices of one GPU share its node), host paths under
//! `nvidiaDevRoot`, permissions `rw`.

use super::grant::DeviceNode;
use crate::device_nodes;
use crate::resources::Device;

/// Cgroup permissions of every node: read and write, no mknod.
pub const PERMISSIONS: &str = "rw";

/// The device nodes for `devices`.
pub fn for_devices(devices: &[&Device], dev_root: &str) -> Vec<DeviceNode> {
    let mut paths: Vec<String> = device_nodes::CONTROL
        .iter()
        .map(|p| p.to_string())
        .collect();
    for device in devices {
        for path in device_nodes::of_target(&device.target) {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    paths
        .into_iter()
        .map(|path| DeviceNode {
            host_path: device_nodes::host_path(dev_root, &path),
            container_path: path,
            permissions: PERMISSIONS.into(),
        })
        .collect()
}
