//! A [`Grant`] in the kubelet's device-plugin wire format (`ContainerAllocateResponse`).
//!
//! The allocation core knows nothing of the wire type: it decides what a container gets once, as
//! a [`Grant`], and this shell only renames fields. Nothing is dropped or added, so the kubelet
//! receives exactly what the DRA side would write into its CDI spec for the same devices.

use crate::allocate::{DeviceNode, Grant, Mount};
use crate::proto::v1beta1::{CdiDevice, ContainerAllocateResponse, DeviceSpec};

/// The Allocate answer for one container: every field of `grant`, one to one.
pub fn container_allocate_response(grant: Grant) -> ContainerAllocateResponse {
    let Grant {
        envs,
        mounts,
        device_nodes,
        annotations,
        cdi_devices,
    } = grant;
    ContainerAllocateResponse {
        envs: envs.into_iter().collect(),
        mounts: mounts.into_iter().map(mount).collect(),
        devices: device_nodes.into_iter().map(device_spec).collect(),
        annotations: annotations.into_iter().collect(),
        cdi_devices: cdi_devices
            .into_iter()
            .map(|name| CdiDevice { name })
            .collect(),
    }
}

fn mount(m: Mount) -> crate::proto::v1beta1::Mount {
    crate::proto::v1beta1::Mount {
        container_path: m.container_path,
        host_path: m.host_path,
        read_only: m.read_only,
    }
}

fn device_spec(d: DeviceNode) -> DeviceSpec {
    DeviceSpec {
        container_path: d.container_path,
        host_path: d.host_path,
        permissions: d.permissions,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every field set, lists of two so that order shows.
    fn full() -> Grant {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        Grant {
            envs: BTreeMap::from([pair("B", "2"), pair("A", "1")]),
            mounts: vec![
                Mount {
                    container_path: "/c/ro".into(),
                    host_path: "/h/ro".into(),
                    read_only: true,
                },
                Mount {
                    container_path: "/c/rw".into(),
                    host_path: "/h/rw".into(),
                    read_only: false,
                },
            ],
            device_nodes: vec![
                DeviceNode {
                    container_path: "/dev/nvidia1".into(),
                    host_path: "/root/dev/nvidia1".into(),
                    permissions: "rw".into(),
                },
                DeviceNode {
                    container_path: "/dev/nvidiactl".into(),
                    host_path: "/dev/nvidiactl".into(),
                    permissions: "rwm".into(),
                },
            ],
            annotations: BTreeMap::from([pair("cdi.k8s.io/x", "k8s.gpu-agent.io/gpu=1")]),
            cdi_devices: vec![
                "k8s.gpu-agent.io/gpu=1".into(),
                "k8s.gpu-agent.io/gpu=0".into(),
            ],
        }
    }

    #[test]
    fn every_field_is_carried_over_in_order() {
        let r = container_allocate_response(full());
        assert_eq!(
            r.envs,
            [("A".into(), "1".into()), ("B".into(), "2".into())].into()
        );
        let mounts: Vec<(&str, &str, bool)> = r
            .mounts
            .iter()
            .map(|m| (m.container_path.as_str(), m.host_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [("/c/ro", "/h/ro", true), ("/c/rw", "/h/rw", false)]
        );
        let specs: Vec<(&str, &str, &str)> = r
            .devices
            .iter()
            .map(|d| {
                (
                    d.container_path.as_str(),
                    d.host_path.as_str(),
                    d.permissions.as_str(),
                )
            })
            .collect();
        assert_eq!(
            specs,
            [
                ("/dev/nvidia1", "/root/dev/nvidia1", "rw"),
                ("/dev/nvidiactl", "/dev/nvidiactl", "rwm")
            ]
        );
        assert_eq!(
            r.annotations,
            [("cdi.k8s.io/x".into(), "k8s.gpu-agent.io/gpu=1".into())].into()
        );
        let names: Vec<&str> = r.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["k8s.gpu-agent.io/gpu=1", "k8s.gpu-agent.io/gpu=0"]);
    }

    #[test]
    fn the_same_grant_gives_the_same_response_and_empty_gives_empty() {
        assert_eq!(
            container_allocate_response(full()),
            container_allocate_response(full())
        );
        assert_eq!(
            container_allocate_response(Grant::default()),
            ContainerAllocateResponse::default()
        );
    }
}
