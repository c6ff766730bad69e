//! `passDeviceSpecs: true`: the `/dev` nodes of the allocated devices as `DeviceSpec`s, for
//! runtimes without the NVIDIA hook (or to make the cgroup rules explicit).
//!
//! The control nodes (`/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools`) come first,
//! then per device `/dev/nvidiaN` and, for MIG, its GPU-instance and compute-instance caps;
//! de-duplicated (replicas and MIG devices of one GPU share its node), host paths under
//! `nvidiaDevRoot`, permissions `rw`.

use crate::device_nodes;
use crate::proto::v1beta1::DeviceSpec;
use crate::resources::Device;

/// Cgroup permissions of every spec: read and write, no mknod.
pub const PERMISSIONS: &str = "rw";

/// The device specs for `devices`.
pub fn for_devices(devices: &[&Device], dev_root: &str) -> Vec<DeviceSpec> {
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
        .map(|path| DeviceSpec {
            host_path: device_nodes::host_path(dev_root, &path),
            container_path: path,
            permissions: PERMISSIONS.into(),
        })
        .collect()
}
