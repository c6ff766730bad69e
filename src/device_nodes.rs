//! The `/dev` nodes a container needs for a GPU or MIG device: the one place their paths are
//! built. Read by Allocate (`passDeviceSpecs`) and by the CDI spec, so that both hand out the
//! same nodes.

use crate::resources::Target;

/// Nodes every CUDA container needs besides its GPUs: the control device and unified memory.
pub const CONTROL: [&str; 3] = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"];

/// `/dev/nvidia<minor>`: one physical GPU.
pub fn gpu(minor: u32) -> String {
    format!("/dev/nvidia{minor}")
}

/// `/dev/nvidia-caps/nvidia-cap<minor>`: a MIG access capability (a GPU instance or a compute
/// instance). A container needs both of its MIG device's caps, next to the parent GPU's node.
pub fn cap(minor: u32) -> String {
    format!("/dev/nvidia-caps/nvidia-cap{minor}")
}

/// The nodes of one advertised device, without [`CONTROL`]: the GPU, and for a MIG device its
/// GPU-instance and compute-instance caps.
pub fn of_target(target: &Target) -> Vec<String> {
    let mut nodes = vec![gpu(target.gpu_minor)];
    if let Some(mig) = &target.mig {
        nodes.push(cap(mig.gpu_instance_cap_minor));
        nodes.push(cap(mig.compute_instance_cap_minor));
    }
    nodes
}

/// Where `path` (a container path such as `/dev/nvidia0`) is on the host when the driver's
/// device nodes live under `dev_root` (`flags.nvidiaDevRoot`, `/` on most nodes,
/// `/run/nvidia/driver` under the GPU operator's driver container).
pub fn host_path(dev_root: &str, path: &str) -> String {
    let root = dev_root.trim_end_matches('/');
    format!("{root}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(gpu(3), "/dev/nvidia3");
        assert_eq!(cap(30), "/dev/nvidia-caps/nvidia-cap30");
        assert_eq!(host_path("/", "/dev/nvidia0"), "/dev/nvidia0");
        assert_eq!(host_path("", "/dev/nvidia0"), "/dev/nvidia0");
        assert_eq!(
            host_path("/run/nvidia/driver/", "/dev/nvidiactl"),
            "/run/nvidia/driver/dev/nvidiactl"
        );
    }
}
