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

/// Kubelet DRA plugin API v1 (`k8s.io/kubelet/pkg/apis/dra/v1`).
#[allow(clippy::all, missing_docs)]
pub mod dra_v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");

    /// How the plugin names this service in its registration's `supported_versions`, and how the
    /// kubelet (1.34+) looks for it there: `<last package element>.<service>`.
    pub const SERVICE: &str = "v1.DRAPlugin";
}

/// Kubelet DRA plugin API v1beta1 (`k8s.io/kubelet/pkg/apis/dra/v1beta1`), wire-identical to v1.
#[allow(clippy::all, missing_docs)]
pub mod dra_v1beta1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");

    /// See [`super::dra_v1::SERVICE`].
    pub const SERVICE: &str = "v1beta1.DRAPlugin";
}

/// Kubelet plugin-registration API v1 (the plugin watcher's; the proto package has no version).
#[allow(clippy::all, missing_docs)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");

    /// `PluginInfo.type` of a DRA driver.
    pub const DRA_PLUGIN: &str = "DRAPlugin";
}
