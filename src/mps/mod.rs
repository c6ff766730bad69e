//! MPS (CUDA Multi-Process Service) sharing, control side: `gpu-agent mps-control` runs one
//! `nvidia-cuda-mps-control -d` per MPS-shared resource, the way NVIDIA's mps-control-daemon
//! does, and tells the plugin side through a ready marker when each one is up.
//!
//! `layout.rs` (the pure directory layout under MPS_ROOT: pipe and log dirs and ready markers per
//! resource) comes from the core MPS work; until it lands, `daemon.rs` carries private stand-ins
//! with the same names.

pub mod control;
pub mod daemon;
