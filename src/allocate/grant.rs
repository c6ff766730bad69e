//! What one container is granted by an allocation, in no consumer's wire format. Pure.
//!
//! Two sides hand devices to containers: the device plugin answers the kubelet's Allocate with a
//! `ContainerAllocateResponse` (`plugin::response`), and the DRA side (issue 16) writes a CDI
//! spec per claim (`ContainerEdits::from_grant` in `cdi::grant`). Both convert this one value,
//! built by [`allocate::grant`](fn@super::grant), instead of each deciding the env, nodes and
//! mounts itself, so what a container gets can never drift between them.
//!
//! Maps are ordered (`BTreeMap`) so that every conversion, and every spec file written from a
//! grant, comes out the same for the same grant. Lists keep the order they were built in: it is
//! part of the behaviour (device nodes: control nodes first; CDI names: NVIDIA's order).

use std::collections::BTreeMap;

/// Everything a container gets for its devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Environment variables (`NVIDIA_VISIBLE_DEVICES`, vGPU limits, feature switches, …).
    pub envs: BTreeMap<String, String>,
    /// Bind mounts (the `volume-mounts` strategy's device markers).
    pub mounts: Vec<Mount>,
    /// Device nodes and their cgroup permissions (`passDeviceSpecs`).
    pub device_nodes: Vec<DeviceNode>,
    /// Annotations for the runtime (the `cdi-annotations` strategy), by key.
    pub annotations: BTreeMap<String, String>,
    /// Fully-qualified CDI device names (`k8s.gpu-agent.io/gpu=<id>`) for the runtime to
    /// resolve (the `cdi-cri` strategy).
    pub cdi_devices: Vec<String>,
}

/// A host file bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub read_only: bool,
}

/// A device node: where the container sees it, where it is on the host (under
/// `nvidiaDevRoot`), and the cgroup permissions (`r`, `w`, `m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
}
