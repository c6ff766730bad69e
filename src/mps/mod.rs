//! MPS (CUDA Multi-Process Service) sharing, both sides:
//!
//! - [`layout`]: the directory layout under `MPS_ROOT` and the limits each client gets; both
//!   sides read it, so a path is spelled in one place;
//! - [`readiness`] (plugin side): a resource's replicas are Healthy only while its daemon's
//!   `.started` marker exists;
//! - [`control`] and [`daemon`] (`gpu-agent mps-control`): one `nvidia-cuda-mps-control -d` per
//!   MPS-shared resource, the way NVIDIA's mps-control-daemon runs them, supervised, writing and
//!   removing the marker.

pub mod control;
pub mod daemon;
pub mod layout;
pub mod readiness;
