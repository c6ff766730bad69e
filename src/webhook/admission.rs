//! AdmissionReview v1 in, AdmissionReview v1 out. Pure: the server hands it the request body, the
//! catalog and the thresholds, and sends back [`Reviewed::review`] whatever happened. The body is
//! read into the typed structs of [`input`], which skip what the rules do not need, so a review
//! never holds a tree of the whole document.
//!
//! | request | response |
//! | --- | --- |
//! | not JSON, not an `admission.k8s.io/v1` `AdmissionReview`, no `request.uid` | denied, code 400 |
//! | not a Pod, a subresource, or not CREATE | allowed, unchanged |
//! | a Pod without either `gpu.ml.io/` annotation | allowed, unchanged |
//! | a Pod whose containers already request an `nvidia.com/` resource | allowed, unchanged, with a warning when it is also annotated |
//! | an annotation missing, an unknown workload type, a bad quantity | denied, code 400, naming the annotation and value |
//! | a Pod object without containers | denied, code 400 |
//! | nothing in the catalog fits | denied, code 403, with the reason |
//! | otherwise | allowed, a JSON patch adding the limit and `gpu.ml.io/decision`; a warning when a fallback was used |
//!
//! Denying bad annotations (rather than admitting the pod unchanged) is deliberate: the pod asked
//! for a GPU, and running it without one would fail later and less clearly.

use base64::Engine as _;
use serde::Serialize;
use serde_json::error::Category;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::patch;
use crate::config::StrategyThresholds;
use crate::strategy::{self, Catalog, Decision, WorkloadType};

/// Annotation naming the workload type: `training`, `inference` or `data-processing`.
pub const WORKLOAD_ANNOTATION: &str = "gpu.ml.io/workload-type";
/// Annotation with the GPU memory the pod needs, as a Kubernetes quantity.
pub const MEMORY_ANNOTATION: &str = "gpu.ml.io/gpu-memory";
/// Annotation the webhook adds: the decision as JSON (strategy, resource, count, fallback, reason).
pub const DECISION_ANNOTATION: &str = "gpu.ml.io/decision";
/// Pods requesting any resource with this prefix are left alone.
pub const GPU_RESOURCE_PREFIX: &str = "nvidia.com/";

const API_VERSION: &str = "admission.k8s.io/v1";

/// What happened to one review, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed with a patch adding `resource`.
    Patched { resource: String, fallback: bool },
    /// Allowed without a patch, and why.
    Unchanged(String),
    /// Denied (bad annotations, nothing fits), with the message sent back.
    Denied(String),
    /// The request was not a usable AdmissionReview, with the message sent back.
    Malformed(String),
}

/// The response document and what it decided.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// The `AdmissionReview` to send back (always well-formed v1).
    pub review: Value,
    /// `request.uid`, empty when there was none.
    pub uid: String,
    pub outcome: Outcome,
}

/// The decision as recorded in the `gpu.ml.io/decision` annotation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DecisionRecord<'a> {
    workload: &'static str,
    gpu_memory_bytes: u64,
    strategy: &'static str,
    resource: &'a str,
    count: u32,
    fallback: bool,
    reason: &'a str,
}

/// Review one request body (at most the server's body cap). The body is read into typed
/// structs that keep only what the rules need (see [`input`]).
pub fn review(body: &[u8], catalog: &Catalog, thresholds: &StrategyThresholds) -> Reviewed {
    let doc: Review = match serde_json::from_slice(body) {
        Ok(doc) => doc,
        Err(e) if e.classify() != Category::Data => {
            return malformed(String::new(), format!("the request body is not JSON: {e}"))
        }
        // JSON, but not an object: not a review at all.
        Err(_) if !starts_with_object(body) => {
            return malformed(String::new(), wrong_envelope(None, None))
        }
        Err(e) => {
            return malformed(
                String::new(),
                format!("the request body is not an AdmissionReview v1: {e}"),
            )
        }
    };
    let request = doc.request;
    let uid = request
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_default();
    let (api_version, kind) = (doc.api_version.as_deref(), doc.kind.as_deref());
    if api_version != Some(API_VERSION) || kind != Some("AdmissionReview") {
        return malformed(uid, wrong_envelope(api_version, kind));
    }
    let Some(request) = request else {
        return malformed(uid, "the AdmissionReview has no request".into());
    };
    if uid.is_empty() {
        return malformed(uid, "request.uid is missing or empty".into());
    }
    match admit(&request, catalog, thresholds) {
        Verdict::Unchanged { why, warnings } => {
            allowed(uid, None, warnings, Outcome::Unchanged(why))
        }
        Verdict::Patched {
            ops,
            decision,
            warnings,
        } => allowed(
            uid,
            Some(ops),
            warnings,
            Outcome::Patched {
                resource: decision.resource,
                fallback: decision.fallback,
            },
        ),
        Verdict::Denied { code, message } => denied(uid, code, message),
        Verdict::Malformed(message) => malformed(uid, message),
    }
}

fn starts_with_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn wrong_envelope(api_version: Option<&str>, kind: Option<&str>) -> String {
    format!(
        "expected an AdmissionReview of apiVersion {API_VERSION}, got apiVersion {} kind {}",
        shown_str(api_version),
        shown_str(kind)
    )
}

enum Verdict {
    Unchanged {
        why: String,
        warnings: Vec<String>,
    },
    Patched {
        ops: Vec<Value>,
        decision: Decision,
        warnings: Vec<String>,
    },
    Denied {
        code: u16,
        message: String,
    },
    Malformed(String),
}

fn unchanged(why: impl Into<String>) -> Verdict {
    Verdict::Unchanged {
        why: why.into(),
        warnings: Vec::new(),
    }
}

fn bad(message: String) -> Verdict {
    Verdict::Denied { code: 400, message }
}

fn admit(request: &Request, catalog: &Catalog, thresholds: &StrategyThresholds) -> Verdict {
    let gvk = request.kind.as_ref();
    let kind = gvk.and_then(|k| k.kind.as_deref());
    let group = gvk.and_then(|k| k.group.as_deref()).unwrap_or("");
    if kind != Some("Pod") || !group.is_empty() {
        let what = gvk.map_or_else(|| "none".to_string(), ToString::to_string);
        return unchanged(format!("not a Pod (kind {what})"));
    }
    if let Some(sub) = request.sub_resource.as_deref().filter(|s| !s.is_empty()) {
        return unchanged(format!("subresource {sub}"));
    }
    let operation = request.operation.as_deref().unwrap_or("CREATE");
    if operation != "CREATE" {
        return unchanged(format!("operation {operation}"));
    }
    let pod = match request.object.map(RawValue::get) {
        Some(raw) if starts_with_object(raw.as_bytes()) => match serde_json::from_str::<Pod>(raw) {
            Ok(pod) => pod,
            Err(e) => return Verdict::Malformed(format!("request.object: {e}")),
        },
        other => {
            return Verdict::Malformed(format!(
                "request.object: expected a Pod, got {}",
                other.map_or_else(|| "none".to_string(), cut)
            ))
        }
    };
    let annotations = pod.metadata.and_then(|m| m.annotations);
    let has_annotations = annotations.is_some();
    let Annotations {
        workload, memory, ..
    } = annotations.unwrap_or_default();
    if workload.is_none() && memory.is_none() {
        return unchanged("no gpu.ml.io annotations");
    }
    let spec = pod.spec.unwrap_or_default();
    let gpu_request = [&spec.containers, &spec.init_containers]
        .into_iter()
        .flatten()
        .find_map(|list| list.gpu_request.clone());
    if let Some((container, resource)) = gpu_request {
        return Verdict::Unchanged {
            why: format!("container {container} already requests {resource}"),
            warnings: vec![format!(
                "{WORKLOAD_ANNOTATION} and {MEMORY_ANNOTATION} ignored: container {container} already requests {resource}"
            )],
        };
    }
    let workload = match workload {
        None => {
            return bad(format!(
                "metadata.annotations[{WORKLOAD_ANNOTATION}] is required with {MEMORY_ANNOTATION}: training, inference or data-processing"
            ))
        }
        Some(Scalar::Str(s)) => match WorkloadType::parse(&s) {
            Ok(w) => w,
            Err(e) => return bad(format!("metadata.annotations[{WORKLOAD_ANNOTATION}]: {e}")),
        },
        Some(Scalar::Other(other)) => {
            return bad(format!(
                "metadata.annotations[{WORKLOAD_ANNOTATION}]: must be a string, got {other}"
            ))
        }
    };
    let memory_bytes = match memory {
        None => {
            return bad(format!(
                "metadata.annotations[{MEMORY_ANNOTATION}] is required with {WORKLOAD_ANNOTATION}: a quantity such as 8Gi"
            ))
        }
        Some(Scalar::Str(s)) => match crate::units::parse_quantity(&s) {
            Ok(b) => b,
            Err(e) => return bad(format!("metadata.annotations[{MEMORY_ANNOTATION}]: {e}")),
        },
        Some(Scalar::Other(other)) => {
            return bad(format!(
                "metadata.annotations[{MEMORY_ANNOTATION}]: must be a string such as \"8Gi\", got {other}"
            ))
        }
    };
    let first = match &spec.containers {
        Some(Containers {
            first: Some(shape), ..
        }) => *shape,
        listed => {
            return Verdict::Malformed(format!(
                "request.object.spec.containers: expected a non-empty list of containers, got {}",
                if listed.is_some() { "[]" } else { "none" }
            ))
        }
    };
    let decision = match strategy::plan(workload, memory_bytes, thresholds, catalog) {
        Ok(d) => d,
        Err(e) => {
            return Verdict::Denied {
                code: 403,
                message: format!("no GPU resource in the cluster catalog fits: {e}"),
            }
        }
    };
    let record = DecisionRecord {
        workload: decision.workload.as_str(),
        gpu_memory_bytes: decision.memory_bytes,
        strategy: decision.mode.as_str(),
        resource: &decision.resource,
        count: decision.count,
        fallback: decision.fallback,
        reason: &decision.reason,
    };
    let recorded = serde_json::to_string(&record).unwrap_or_default();
    let mut ops = patch::add_limit(0, first, &decision.resource, decision.count);
    ops.push(patch::set_annotation(
        has_annotations,
        DECISION_ANNOTATION,
        &recorded,
    ));
    let mut warnings = Vec::new();
    if decision.fallback {
        warnings.push(format!(
            "gpu.ml.io: no {} resource fits, using {} {}",
            decision.classified.as_str(),
            decision.mode.as_str(),
            decision.resource
        ));
    }
    Verdict::Patched {
        ops,
        decision,
        warnings,
    }
}

/// A string for a message: JSON-quoted, absent as `none`, long values cut.
fn shown_str(v: Option<&str>) -> String {
    match v {
        None => "none".into(),
        Some(s) => cut(&Value::String(s.to_string()).to_string()),
    }
}

/// `text` cut to 80 characters.
fn cut(text: &str) -> String {
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text.to_string()
    }
}

fn envelope(response: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}

fn allowed(
    uid: String,
    ops: Option<Vec<Value>>,
    warnings: Vec<String>,
    outcome: Outcome,
) -> Reviewed {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(ops) = ops {
        let text = Value::Array(ops).to_string();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    Reviewed {
        review: envelope(response),
        uid,
        outcome,
    }
}

fn refusal(uid: String, code: u16, message: String) -> Value {
    envelope(json!({
        "uid": uid,
        "allowed": false,
        "status": {"code": code, "message": message},
    }))
}

fn denied(uid: String, code: u16, message: String) -> Reviewed {
    Reviewed {
        review: refusal(uid.clone(), code, message.clone()),
        uid,
        outcome: Outcome::Denied(message),
    }
}

/// A refusal of a request that was not a usable review (always code 400).
pub fn malformed(uid: String, message: String) -> Reviewed {
    Reviewed {
        review: refusal(uid.clone(), 400, message.clone()),
        uid,
        outcome: Outcome::Malformed(message),
    }
}

pub mod input;

use input::{Annotations, Containers, Pod, Request, Review, Scalar};

#[cfg(test)]
mod tests;
