//! DRA, the API-server side: this node's GPUs and MIG devices published as `resource.k8s.io/v1`
//! ResourceSlices (SPEC §8, docs/dra-apiserver.md).
//!
//! - [`devices`]: inventory + health → named devices with NVIDIA-DRA-driver attributes (pure);
//!   [`semver`] and [`models`] supply what the API and the attributes need.

pub mod devices;
pub mod models;
pub mod pcie;
pub mod semver;
