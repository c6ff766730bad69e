//! Generated kubelet API types (see `proto/` and `build.rs`).

/// Kubelet device-plugin API v1beta1.
#[allow(clippy::all, missing_docs)]
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");

    /// API version sent in `RegisterRequest.version`.
    pub const VERSION: &str = "v1beta1";
    /// File name of the kubelet's registration socket inside the device-plugin dir.
    pub const KUBELET_SOCKET: &str = "kubelet.sock";
    /// `Device.health` of a device that can be allocated.
    pub const HEALTHY: &str = "Healthy";
    /// `Device.health` of a device the kubelet must not hand out.
    pub const UNHEALTHY: &str = "Unhealthy";
}

/// Kubelet pod-resources API v1.
#[allow(clippy::all, missing_docs)]
pub mod podresources_v1 {
    tonic::include_proto!("v1");
}
