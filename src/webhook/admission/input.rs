//! The parts of an AdmissionReview v1 the webhook reads, as typed serde structs. Everything else
//! (the pod's spec beyond its containers' names and resource keys, `oldObject`, `userInfo`, other
//! annotations, resource values) is skipped as it is read, never built into a tree: what a
//! review holds in memory is a few strings whatever the size of the body.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{GPU_RESOURCE_PREFIX, MEMORY_ANNOTATION, WORKLOAD_ANNOTATION};
use crate::webhook::patch::ResourcesShape;

/// The envelope. `request.object` stays raw text (borrowed from the body) until the request is
/// known to be a pod CREATE, so other objects are never parsed at all.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Review<'a> {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default, borrow)]
    pub request: Option<Request<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub kind: Option<GroupVersionKind>,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default, borrow)]
    pub object: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
}

impl std::fmt::Display for GroupVersionKind {
    /// `apps/v1 Deployment`, `v1 Pod` (the core group is empty).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = self.group.as_deref().unwrap_or("");
        let version = self.version.as_deref().unwrap_or("?");
        let kind = self.kind.as_deref().unwrap_or("?");
        if group.is_empty() {
            write!(f, "{version} {kind}")
        } else {
            write!(f, "{group}/{version} {kind}")
        }
    }
}

/// A pod, as far as the webhook looks.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a Pod object")]
pub struct Pod {
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub spec: Option<PodSpec>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub annotations: Option<Annotations>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Option<Containers>,
    #[serde(default)]
    pub init_containers: Option<Containers>,
}

/// An annotation value: a string, or what was there instead (for the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Str(String),
    /// Not a string: the number, `true`, `false`, `null`, `a list` or `an object`.
    Other(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an annotation value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other("null".into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("a list".into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an object".into()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The two `gpu.ml.io/` annotations; the others are skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Annotations {
    pub workload: Option<Scalar>,
    pub memory: Option<Scalar>,
}

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnnotationsVisitor;
        impl<'de> Visitor<'de> for AnnotationsVisitor {
            type Value = Annotations;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("metadata.annotations to be an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
                let mut found = Annotations::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        WORKLOAD_ANNOTATION => found.workload = Some(map.next_value()?),
                        MEMORY_ANNOTATION => found.memory = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(found)
            }
        }
        deserializer.deserialize_map(AnnotationsVisitor)
    }
}

/// A container list, folded as it is read: how many, the first one's `resources` shape (the
/// patch goes there), and the first container already asking for an `nvidia.com/` resource.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Containers {
    pub len: usize,
    pub first: Option<ResourcesShape>,
    /// (container name, resource)
    pub gpu_request: Option<(String, String)>,
}

impl<'de> Deserialize<'de> for Containers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContainersVisitor;
        impl<'de> Visitor<'de> for ContainersVisitor {
            type Value = Containers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of containers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Containers, A::Error> {
                let mut folded = Containers::default();
                while let Some(container) = seq.next_element::<Container>()? {
                    if folded.len == 0 {
                        folded.first = Some(container.shape());
                    }
                    folded.len += 1;
                    if folded.gpu_request.is_none() {
                        if let Some(resource) = container.gpu_request() {
                            let name = container.name.unwrap_or_else(|| "?".into());
                            folded.gpu_request = Some((name, resource));
                        }
                    }
                }
                Ok(folded)
            }
        }
        deserializer.deserialize_seq(ContainersVisitor)
    }
}

/// One container: its name and the keys of its limits and requests.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a container object")]
pub struct Container {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub resources: Option<Resources>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub limits: Option<GpuKey>,
    #[serde(default)]
    pub requests: Option<GpuKey>,
}

/// A `limits` or `requests` map, reduced to its first `nvidia.com/` key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GpuKey(pub Option<String>);

impl<'de> Deserialize<'de> for GpuKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GpuKeyVisitor;
        impl<'de> Visitor<'de> for GpuKeyVisitor {
            type Value = GpuKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of resource quantities")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GpuKey, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    if found.is_none() && key.starts_with(GPU_RESOURCE_PREFIX) {
                        found = Some(key);
                    }
                }
                Ok(GpuKey(found))
            }
        }
        deserializer.deserialize_map(GpuKeyVisitor)
    }
}

impl Container {
    /// What the patch must create to add a limit.
    pub fn shape(&self) -> ResourcesShape {
        match &self.resources {
            None => ResourcesShape::NoResources,
            Some(Resources { limits: None, .. }) => ResourcesShape::NoLimits,
            Some(_) => ResourcesShape::Limits,
        }
    }

    /// The first `nvidia.com/` resource in limits, else in requests.
    pub fn gpu_request(&self) -> Option<String> {
        let resources = self.resources.as_ref()?;
        [&resources.limits, &resources.requests]
            .into_iter()
            .flatten()
            .find_map(|keys| keys.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_webhook_reads_is_kept() {
        let body = br#"{
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE", "userInfo": {"username": "x", "groups": ["a"]},
                "object": {"metadata": {"name": "p", "annotations": {
                    "team": "ml", "gpu.ml.io/workload-type": "inference", "gpu.ml.io/gpu-memory": 8}},
                    "spec": {"volumes": [{"name": "v"}], "containers": [
                        {"name": "a", "image": "x", "resources": {"requests": {"cpu": "1"}}},
                        {"name": "b", "resources": {"limits": {"memory": "1Gi", "nvidia.com/gpu": "1"}}}],
                      "initContainers": [{"name": "i", "resources": {"requests": {"nvidia.com/mig-1g.10gb": 1}}}]}},
                "oldObject": null
            }
        }"#;
        let review: Review = serde_json::from_slice(body).unwrap();
        assert_eq!(review.api_version.as_deref(), Some("admission.k8s.io/v1"));
        let request = review.request.unwrap();
        assert_eq!(request.kind.unwrap().to_string(), "v1 Pod");
        let pod: Pod = serde_json::from_str(request.object.unwrap().get()).unwrap();
        assert_eq!(
            pod.metadata.unwrap().annotations.unwrap(),
            Annotations {
                workload: Some(Scalar::Str("inference".into())),
                memory: Some(Scalar::Other("8".into())),
            }
        );
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.containers.unwrap(),
            Containers {
                len: 2,
                first: Some(ResourcesShape::NoLimits),
                gpu_request: Some(("b".into(), "nvidia.com/gpu".into())),
            }
        );
        assert_eq!(
            spec.init_containers.unwrap().gpu_request,
            Some(("i".into(), "nvidia.com/mig-1g.10gb".into()))
        );
    }

    #[test]
    fn shapes_follow_what_exists() {
        let shape = |json: &str| serde_json::from_str::<Container>(json).unwrap().shape();
        assert_eq!(shape(r#"{"name": "c"}"#), ResourcesShape::NoResources);
        assert_eq!(shape(r#"{"resources": null}"#), ResourcesShape::NoResources);
        assert_eq!(shape(r#"{"resources": {}}"#), ResourcesShape::NoLimits);
        assert_eq!(
            shape(r#"{"resources": {"limits": null, "requests": {"cpu": "1"}}}"#),
            ResourcesShape::NoLimits
        );
        assert_eq!(
            shape(r#"{"resources": {"limits": {}}}"#),
            ResourcesShape::Limits
        );
    }

    #[test]
    fn annotation_values_of_other_types_are_described() {
        let annotations: Annotations = serde_json::from_str(
            r#"{"gpu.ml.io/workload-type": ["a", {"b": 1}], "gpu.ml.io/gpu-memory": null}"#,
        )
        .unwrap();
        assert_eq!(annotations.workload, Some(Scalar::Other("a list".into())));
        assert_eq!(annotations.memory, Some(Scalar::Other("null".into())));
    }
}
