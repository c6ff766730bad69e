//! The kubelet shell: one DevicePlugin gRPC server per resource, registration, restarts, and
//! the allocation core's grants in the wire format ([`response`]).

pub mod conn;
pub mod kubelet_watch;
pub mod lifecycle;
pub mod manager;
pub mod registration;
pub mod response;
pub mod served;
pub mod server;
pub mod status;
pub mod uds;

pub use lifecycle::PluginContext;
pub use status::{PluginStatus, StatusBoard};
