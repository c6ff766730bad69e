//! Resource names and the socket file names derived from them. The one place they are built.

/// Whole GPUs (and, under `migStrategy: single`, MIG devices).
pub const GPU: &str = "nvidia.com/gpu";

/// `nvidia.com/mig-<profile>`, NVIDIA's naming: `+` (e.g. `1g.10gb+me`) becomes `.`.
pub fn mig_resource(profile: &str) -> String {
    format!("nvidia.com/mig-{}", profile.replace('+', "."))
}

/// Name of time-sliced replicas under `renameByDefault: true`.
pub fn shared_default(source: &str) -> String {
    format!("{source}.shared")
}

/// Name of vGPU slices when `rename` is not given.
pub fn vgpu_default(source: &str) -> String {
    format!("{source}.vgpu")
}

/// File name of the plugin socket for `resource` inside the device-plugin dir:
/// `gpu-agent-<name with / replaced by _>.sock`.
pub fn socket_file(resource: &str) -> String {
    format!("gpu-agent-{}.sock", resource.replace('/', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(mig_resource("1g.10gb"), "nvidia.com/mig-1g.10gb");
        assert_eq!(mig_resource("1g.10gb+me"), "nvidia.com/mig-1g.10gb.me");
        assert_eq!(shared_default(GPU), "nvidia.com/gpu.shared");
        assert_eq!(vgpu_default(GPU), "nvidia.com/gpu.vgpu");
        assert_eq!(
            socket_file("nvidia.com/gpu"),
            "gpu-agent-nvidia.com_gpu.sock"
        );
        assert_eq!(
            socket_file("nvidia.com/mig-1g.10gb"),
            "gpu-agent-nvidia.com_mig-1g.10gb.sock"
        );
    }
}
