//! ResourceClaims as the node side needs them: `get(namespace, name)` of a `resource.k8s.io/v1`
//! ResourceClaim, reduced to the kubelet side's neutral [`Claim`] (UID, allocation results,
//! opaque configs), so that the kubelet side never sees the Kubernetes types.

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::Api;

use crate::dra::claims::{AllocatedDevice, Claim, OpaqueConfig};

/// Why a claim could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("ResourceClaim {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("ResourceClaim {namespace}/{name} has no UID")]
    NoUid { namespace: String, name: String },
    #[error("cannot read ResourceClaim {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Reads claims from the API server.
#[derive(Clone)]
pub struct ClaimSource {
    client: kube::Client,
}

impl ClaimSource {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// The claim `namespace/name` now (one GET).
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Claim, ClaimError> {
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), namespace);
        match api.get(name).await {
            Ok(claim) => view(&claim).ok_or_else(|| ClaimError::NoUid {
                namespace: namespace.into(),
                name: name.into(),
            }),
            Err(kube::Error::Api(status)) if status.is_not_found() => Err(ClaimError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            }),
            Err(source) => Err(ClaimError::Api {
                namespace: namespace.into(),
                name: name.into(),
                source,
            }),
        }
    }
}

/// The neutral view of `claim`; `None` without a UID (never the case for a stored claim).
pub fn view(claim: &ResourceClaim) -> Option<Claim> {
    let meta = &claim.metadata;
    let allocation = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref());
    let results = allocation
        .and_then(|d| d.results.as_ref())
        .into_iter()
        .flatten()
        .map(|r| AllocatedDevice {
            request: r.request.clone(),
            driver: r.driver.clone(),
            pool: r.pool.clone(),
            device: r.device.clone(),
        })
        .collect();
    let configs = allocation
        .and_then(|d| d.config.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let opaque = c.opaque.as_ref()?;
            Some(OpaqueConfig {
                driver: opaque.driver.clone(),
                requests: c.requests.clone().unwrap_or_default(),
                parameters: opaque.parameters.0.clone(),
            })
        })
        .collect();
    Some(Claim {
        uid: meta.uid.clone()?,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        results,
        configs,
    })
}

/// The kubelet side reads claims through [`crate::dra::claims::ClaimSource`]: this is its
/// API-server implementation.
#[tonic::async_trait]
impl crate::dra::claims::ClaimSource for ClaimSource {
    async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Claim, crate::dra::claims::ClaimError> {
        use crate::dra::claims::ClaimError as NodeError;
        ClaimSource::get(self, namespace, name)
            .await
            .map_err(|error| match error {
                ClaimError::NotFound { namespace, name } => NodeError::NotFound { namespace, name },
                other => NodeError::Unavailable {
                    namespace: namespace.into(),
                    name: name.into(),
                    reason: other.to_string(),
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocated_claim_becomes_a_view() {
        let claim: ResourceClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "c", "namespace": "ns", "uid": "0b6f3a52-8d0e-4a8e-9a53-3f6c2f1d2b10"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.gpu-agent.io"}}]}},
            "status": {"allocation": {"devices": {
                "results": [
                    {"request": "gpu", "driver": "gpu.gpu-agent.io", "pool": "node-a", "device": "gpu-0"},
                    {"request": "nic", "driver": "nic.example.com", "pool": "node-a", "device": "eth0"}
                ],
                "config": [
                    {"source": "FromClaim", "requests": ["gpu"], "opaque": {"driver": "gpu.gpu-agent.io",
                      "parameters": {"memoryMiB": 4096}}},
                    {"source": "FromClass"}
                ]
            }}}
        }))
        .unwrap();
        let v = view(&claim).unwrap();
        assert_eq!(v.uid, "0b6f3a52-8d0e-4a8e-9a53-3f6c2f1d2b10");
        assert_eq!((v.namespace.as_str(), v.name.as_str()), ("ns", "c"));
        assert_eq!(v.results.len(), 2);
        let ours: Vec<&str> = v
            .results_for("gpu.gpu-agent.io", "node-a")
            .map(|r| r.device.as_str())
            .collect();
        assert_eq!(ours, ["gpu-0"]);
        assert_eq!(v.configs.len(), 1);
        assert_eq!(v.configs[0].requests, ["gpu"]);
        assert_eq!(v.configs[0].parameters["memoryMiB"], 4096);
    }

    #[test]
    fn an_unallocated_claim_has_no_results() {
        let claim: ResourceClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c", "namespace": "ns", "uid": "u"},
            "spec": {}
        }))
        .unwrap();
        let v = view(&claim).unwrap();
        assert!(v.results.is_empty() && v.configs.is_empty());
        let mut no_uid = claim;
        no_uid.metadata.uid = None;
        assert!(view(&no_uid).is_none());
    }
}
