//! Dynamic Resource Allocation, kubelet side (SPEC.md section 8, docs/dra.md).
//!
//! ```text
//! kubelet plugin watcher ──GetInfo──► <registry dir>/<driver>-reg.sock   (registration)
//! kubelet DRA manager ──NodePrepareResources──► <plugins dir>/<driver>/dra.sock (service)
//!                                   │  ClaimSource (API server) ─► prepare (pure) ─► CDI spec
//!                                   └─ checkpoint.json: prepared claims, for unprepare after a restart
//! ```

pub mod cdi;
pub mod claims;
pub mod names;
pub mod partition;
pub mod prepare;

/// `--dra-driver-name`'s default.
pub const DEFAULT_DRIVER_NAME: &str = "gpu.gpu-agent.io";
