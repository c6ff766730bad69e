//! gpu-agent: a Kubernetes GPU device plugin and node agent.
//!
//! The crate is a pure core (inventory model, resource building, allocation, preferred
//! allocation, config validation) wrapped by thin I/O shells (gRPC servers, NVML, HTTP, files).
//! See docs/architecture.md.

pub mod agent;
pub mod allocate;
pub mod cdi;
pub mod cli;
pub mod commands;
pub mod config;
pub mod device_nodes;
pub mod dra;
pub mod dra_api;
pub mod extras;
pub mod gpu;
pub mod health;
pub mod hostfs;
pub mod http;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod mps;
pub mod plugin;
pub mod podresources;
pub mod preferred;
pub mod proto;
pub mod resources;
pub mod serve;
pub mod snapshot;
pub mod strategy;
pub mod sync;
pub mod telemetry;
pub mod units;
pub mod webhook;
pub mod yaml_limits;
