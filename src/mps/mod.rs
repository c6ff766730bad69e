//! MPS (Multi-Process Service) sharing: what the device plugin side and the control side
//! (`gpu-agent mps-control`) must agree on. [`layout`] is the directory layout under `MPS_ROOT`
//! and the limits each client gets; both sides read it, so a path is spelled in one place.

pub mod layout;
pub mod readiness;
