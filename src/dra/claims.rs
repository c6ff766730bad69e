//! Where ResourceClaims come from, in a form neither side of the wire owns: the API-server client
//! (kube-rs) turns `resource.k8s.io/v1` ResourceClaims into [`Claim`]s; prepare reads only these.
//!
//! Implementations: the API server's (elsewhere), [`FileClaims`] (test only: a JSON file, read on
//! every lookup so that a test can change or delete claims while the agent runs) and
//! [`NoApiServer`] (the placeholder `run` uses until an API-server client is wired in).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One ResourceClaim, reduced to what preparing it needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `status.allocation.devices.results`: every allocated device, of every driver.
    #[serde(default)]
    pub results: Vec<AllocatedDevice>,
    /// `status.allocation.devices.config` entries with an `opaque` config (from the claim or its
    /// DeviceClass), of every driver.
    #[serde(default)]
    pub configs: Vec<OpaqueConfig>,
}

impl Claim {
    /// The results for `driver`'s devices in `pool`: another driver's devices, or another
    /// pool's, are not ours to prepare.
    pub fn results_for<'a>(
        &'a self,
        driver: &'a str,
        pool: &'a str,
    ) -> impl Iterator<Item = &'a AllocatedDevice> + 'a {
        self.results
            .iter()
            .filter(move |r| r.driver == driver && r.pool == pool)
    }
}

/// One entry of `status.allocation.devices.results`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocatedDevice {
    /// The request (or `request/subrequest`) the device was allocated for.
    pub request: String,
    /// Driver that owns the device.
    pub driver: String,
    /// Pool of the device (ours: the node name).
    pub pool: String,
    /// Device name in the pool (ours: see [`super::names`]).
    pub device: String,
}

/// An opaque device configuration: `opaque.driver` and `opaque.parameters`, for the requests
/// listed (empty: every request of the claim).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpaqueConfig {
    /// `opaque.driver`: only configs for our driver are ours to read.
    pub driver: String,
    /// `requests`: the requests it applies to; empty means all.
    #[serde(default)]
    pub requests: Vec<String>,
    /// `opaque.parameters`, as the API server returned them.
    #[serde(default)]
    pub parameters: serde_json::Value,
}

/// Why a claim could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The claim does not exist (any more).
    #[error("ResourceClaim {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    /// The source could not answer (API server unreachable, forbidden, no client configured).
    #[error("cannot read ResourceClaim {namespace}/{name}: {reason}")]
    Unavailable {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// Reads ResourceClaims by namespace and name.
#[tonic::async_trait]
pub trait ClaimSource: Send + Sync {
    /// The claim `namespace/name` as it is now.
    async fn get(&self, namespace: &str, name: &str) -> Result<Claim, ClaimError>;
}

/// The placeholder: every lookup fails, saying that no API-server client is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoApiServer;

#[tonic::async_trait]
impl ClaimSource for NoApiServer {
    async fn get(&self, namespace: &str, name: &str) -> Result<Claim, ClaimError> {
        Err(ClaimError::Unavailable {
            namespace: namespace.to_string(),
            name: name.to_string(),
            reason: "no API server client configured".to_string(),
        })
    }
}

/// Test only: claims from a JSON file holding an array of [`Claim`]s, read on every lookup.
#[derive(Debug, Clone)]
pub struct FileClaims {
    path: PathBuf,
}

impl FileClaims {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

#[tonic::async_trait]
impl ClaimSource for FileClaims {
    async fn get(&self, namespace: &str, name: &str) -> Result<Claim, ClaimError> {
        let unavailable = |reason: String| ClaimError::Unavailable {
            namespace: namespace.to_string(),
            name: name.to_string(),
            reason,
        };
        let bytes = tokio::fs::read(&self.path)
            .await
            .map_err(|e| unavailable(format!("{}: {e}", self.path.display())))?;
        let claims: Vec<Claim> = serde_json::from_slice(&bytes)
            .map_err(|e| unavailable(format!("{}: {e}", self.path.display())))?;
        find(claims, namespace, name)
    }
}

/// An in-memory source (unit tests and benchmarks).
#[derive(Debug, Default)]
pub struct MemoryClaims {
    claims: std::sync::Mutex<Vec<Claim>>,
}

impl MemoryClaims {
    pub fn new(claims: Vec<Claim>) -> Self {
        Self {
            claims: std::sync::Mutex::new(claims),
        }
    }

    /// Add or replace (by namespace and name) a claim.
    pub fn put(&self, claim: Claim) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.retain(|c| !(c.namespace == claim.namespace && c.name == claim.name));
        claims.push(claim);
    }

    /// Delete a claim.
    pub fn remove(&self, namespace: &str, name: &str) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.retain(|c| !(c.namespace == namespace && c.name == name));
    }
}

#[tonic::async_trait]
impl ClaimSource for MemoryClaims {
    async fn get(&self, namespace: &str, name: &str) -> Result<Claim, ClaimError> {
        let claims = self
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        find(claims, namespace, name)
    }
}

fn find(claims: Vec<Claim>, namespace: &str, name: &str) -> Result<Claim, ClaimError> {
    claims
        .into_iter()
        .find(|c| c.namespace == namespace && c.name == name)
        .ok_or_else(|| ClaimError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_claims_are_read_on_every_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claims.json");
        let source = FileClaims::new(path.clone());
        assert!(matches!(
            source.get("ns", "a").await,
            Err(ClaimError::Unavailable { .. })
        ));
        let claim = Claim {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "a".into(),
            results: vec![AllocatedDevice {
                request: "gpu".into(),
                driver: "gpu.gpu-agent.io".into(),
                pool: "node-1".into(),
                device: "gpu-0".into(),
            }],
            configs: Vec::new(),
        };
        std::fs::write(&path, serde_json::to_vec(&[&claim]).unwrap()).unwrap();
        assert_eq!(source.get("ns", "a").await.unwrap(), claim);
        assert_eq!(
            source.get("other", "a").await,
            Err(ClaimError::NotFound {
                namespace: "other".into(),
                name: "a".into()
            })
        );
        std::fs::write(&path, "[]").unwrap();
        assert!(matches!(
            source.get("ns", "a").await,
            Err(ClaimError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn the_placeholder_says_what_is_missing() {
        let err = NoApiServer.get("ns", "c").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read ResourceClaim ns/c: no API server client configured"
        );
    }
}
