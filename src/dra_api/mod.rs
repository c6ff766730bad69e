//! DRA, the API-server side: this node's GPUs and MIG devices published as `resource.k8s.io/v1`
//! ResourceSlices, and ResourceClaims read for the node side (SPEC §8, docs/dra-apiserver.md).
//!
//! - [`devices`]: inventory + health → named devices with NVIDIA-DRA-driver attributes (pure);
//!   [`semver`] and [`models`] supply what the API and the attributes need.
//! - [`slices`]: devices → the node's pool of ResourceSlices, and the writes to get there (pure).
//! - [`publisher`]: keeps the API server in sync (list, watch, write, retry).
//! - [`claims`]: `get` of a ResourceClaim as the kubelet side's neutral [`crate::dra::claims::Claim`].
//! - [`client`]: the kube client, in-cluster or from a kubeconfig.

pub mod claims;
pub mod client;
pub mod devices;
pub mod models;
pub mod pcie;
pub mod publisher;
pub mod semver;
pub mod slices;

pub use claims::{ClaimError, ClaimSource};
pub use client::{client, ClientError};
pub use devices::{DeviceList, DraDevice};
pub use publisher::{follow, run as publish, PublishError, PublishStats, PublisherConfig};

/// The devices of a snapshot that `selected` hands to DRA.
pub fn devices_of(
    snapshot: &crate::snapshot::Snapshot,
    roots: &devices::PcieRoots,
    selected: impl Fn(&crate::gpu::Gpu) -> bool,
) -> DeviceList {
    devices::build(&snapshot.inventory, &snapshot.health, roots, selected)
}
