//! A test Kubernetes API server: plain HTTP on 127.0.0.1 that keeps Nodes, ResourceSlices and
//! ResourceClaims with the real server's semantics, for kube-rs clients pointed at it by a
//! kubeconfig. Written from `staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go`
//! (Create, Update, Delete, finalizeDelete), the etcd3 storage (one cluster-wide
//! resourceVersion, bumped by every write; a no-op update writes nothing),
//! `pkg/registry/resource/resourceslice/strategy.go` (metadata.generation, selectable fields) and
//! `pkg/apis/resource/validation` (see `apiserver_validate.rs`):
//!
//! - create: 201; a taken name 409 AlreadyExists; a resourceVersion in the body 400; invalid 422;
//!   unknown fields 400 (fieldValidation=Strict: stricter than the default Warn, on purpose);
//! - update: 404 if missing (no create on update); a stale resourceVersion 409 Conflict; an
//!   empty one is an unconditional update; immutable fields 422;
//! - delete: preconditions (uid, resourceVersion) 409 on mismatch; 200 with a Status;
//! - list: fieldSelector (the resource's selectable fields; others 400) and labelSelector;
//!   items without kind/apiVersion, the list's resourceVersion;
//! - watch (`watch=1|true`): initial ADDED events for resourceVersion "" or "0", else replay
//!   from the given version (410 Gone in an ERROR event once compacted), then live events as JSON
//!   lines on a chunked response; a MODIFIED object that leaves or enters the selector arrives as
//!   DELETED or ADDED; `timeoutSeconds` ends it, with a BOOKMARK first when asked for;
//! - deleting a Node deletes the objects it owns (what the garbage collector does).
//!
//! Every request is logged (method, path, query) so that tests can count them, and a fault can be
//! injected once (e.g. a 409 on the next PUT).

#![allow(dead_code)]
// A refused request is answered by its whole HTTP response, passed up as the error.
#![allow(clippy::result_large_err)]

#[path = "apiserver_validate.rs"]
pub mod validate;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;

type Body = BoxBody<Bytes, Infallible>;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
}

impl Logged {
    pub fn is_watch(&self) -> bool {
        self.query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1")
    }

    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// The resources the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Node,
    ResourceSlice,
    ResourceClaim,
}

impl Kind {
    fn kind(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::ResourceSlice => "ResourceSlice",
            Kind::ResourceClaim => "ResourceClaim",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Node => "v1",
            _ => "resource.k8s.io/v1",
        }
    }
    fn group(self) -> &'static str {
        match self {
            Kind::Node => "",
            _ => "resource.k8s.io",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::ResourceSlice => "resourceslices",
            Kind::ResourceClaim => "resourceclaims",
        }
    }
    /// `GetAttrs` of each strategy: the fields a fieldSelector may name.
    fn field(self, obj: &Value, field: &str) -> Option<Option<String>> {
        let s = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_string);
        match (self, field) {
            (_, "metadata.name") => Some(s("/metadata/name")),
            (Kind::ResourceClaim, "metadata.namespace") => Some(s("/metadata/namespace")),
            (Kind::ResourceSlice, "spec.nodeName") => {
                Some(Some(s("/spec/nodeName").unwrap_or_default()))
            }
            (Kind::ResourceSlice, "spec.driver") => Some(s("/spec/driver")),
            (Kind::Node, "spec.unschedulable") => Some(Some(
                obj.pointer("/spec/unschedulable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            )),
            _ => None,
        }
    }
}

/// A stored change, for watches.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    kind_type: &'static str,
    object: Value,
    /// The object before a MODIFIED change.
    old: Option<Value>,
}

/// A fault injected once.
#[derive(Debug, Clone)]
struct Fault {
    method: Method,
    kind: Kind,
    code: u16,
}

type Key = (Kind, String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    requests: Vec<Logged>,
    written: Vec<Value>,
    faults: VecDeque<Fault>,
}

struct Inner {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
}

/// The running server.
#[derive(Clone)]
pub struct TestApiServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl TestApiServer {
    /// Listen on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (changes, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::default()),
            changes,
        });
        let served = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(handle(&inner, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, inner }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.inner)
    }

    /// A kubeconfig for this server, written under `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.store().requests.clone()
    }

    /// Every object a client created or updated successfully, as stored.
    pub fn written(&self) -> Vec<Value> {
        self.store().written.clone()
    }

    /// Register a Node; its UID.
    pub fn add_node(&self, name: &str) -> String {
        let obj = json!({"metadata": {"name": name}, "spec": {}});
        let mut store = self.store();
        let stored = store
            .create(&self.inner.changes, Kind::Node, "", obj)
            .expect("create node");
        stored["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Delete a Node and, as the garbage collector would, every object it owns.
    pub fn delete_node(&self, name: &str) {
        let mut store = self.store();
        let Some(node) = store
            .objects
            .get(&(Kind::Node, String::new(), name.to_string()))
            .cloned()
        else {
            return;
        };
        let uid = node["metadata"]["uid"].clone();
        store.remove(
            &self.inner.changes,
            &(Kind::Node, String::new(), name.to_string()),
        );
        let owned: Vec<Key> = store
            .objects
            .iter()
            .filter(|(_, o)| {
                o.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            store.remove(&self.inner.changes, &key);
        }
    }

    /// Store a claim as if a user created it (and the scheduler allocated it, if `status` is set).
    pub fn insert_claim(&self, claim: Value) -> Value {
        let ns = claim["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let mut store = self.store();
        store
            .create(&self.inner.changes, Kind::ResourceClaim, &ns, claim)
            .expect("create claim")
    }

    /// The ResourceSlices stored now.
    pub fn slices(&self) -> Vec<Value> {
        self.objects(Kind::ResourceSlice)
    }

    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        self.store()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Answer the next `method` request on `kind` with `code` instead of serving it.
    pub fn fail_next(&self, method: Method, kind: Kind, code: u16) {
        self.store().faults.push_back(Fault { method, kind, code });
    }

    /// Someone else deletes an object.
    pub fn delete_as_other(&self, kind: Kind, name: &str) {
        let mut store = self.store();
        store.remove(
            &self.inner.changes,
            &(kind, String::new(), name.to_string()),
        );
    }

    /// Someone else edits an object (a new resourceVersion, a MODIFIED event).
    pub fn edit_as_other(&self, kind: Kind, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut store = self.store();
        let key = (kind, String::new(), name.to_string());
        let Some(mut obj) = store.objects.get(&key).cloned() else {
            return;
        };
        edit(&mut obj);
        store.replace(&self.inner.changes, &key, obj);
    }

    /// Forget the history: watches from any older resourceVersion get 410 Gone.
    pub fn compact(&self) {
        let mut store = self.store();
        store.compacted = store.rv;
        store.history.clear();
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, Store> {
    inner.store.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, tx: &broadcast::Sender<Change>, change: Change) {
        self.history.push(change.clone());
        let _ = tx.send(change);
    }

    /// Storage create: the name must be free; uid, creationTimestamp, resourceVersion set.
    fn create(
        &mut self,
        tx: &broadcast::Sender<Change>,
        kind: Kind,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, Response<Body>> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key = (kind, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(status(
                409,
                "AlreadyExists",
                &format!("{}.{} {name:?} already exists", kind.plural(), kind.group()),
                kind,
                &name,
            ));
        }
        self.uids += 1;
        let uid = format!(
            "{:08x}-7e57-4a91-8c2d-{:012x}",
            0x5eed_0000u32 + self.rv as u32,
            self.uids
        );
        let rv = self.next_rv();
        let meta = obj["metadata"].as_object_mut().expect("metadata object");
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        if !ns.is_empty() {
            meta.insert("namespace".into(), json!(ns));
        }
        obj["kind"] = json!(kind.kind());
        obj["apiVersion"] = json!(kind.api_version());
        self.objects.insert(key, obj.clone());
        self.record(
            tx,
            Change {
                rv,
                kind,
                kind_type: "ADDED",
                object: obj.clone(),
                old: None,
            },
        );
        Ok(obj)
    }

    /// Storage update of `key` with `obj` (already checked): metadata.generation bumped when the
    /// spec changed; nothing written when nothing changed (etcd3 GuaranteedUpdate).
    fn replace(&mut self, tx: &broadcast::Sender<Change>, key: &Key, mut obj: Value) -> Value {
        let old = self.objects.get(key).cloned().expect("exists");
        for field in ["uid", "creationTimestamp", "namespace"] {
            if let Some(v) = old["metadata"].get(field) {
                obj["metadata"][field] = v.clone();
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        obj["metadata"]["generation"] = json!(if old.get("spec") != obj.get("spec") {
            generation + 1
        } else {
            generation
        });
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        obj["kind"] = json!(key.0.kind());
        obj["apiVersion"] = json!(key.0.api_version());
        if obj == old {
            return old;
        }
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(key.clone(), obj.clone());
        self.record(
            tx,
            Change {
                rv,
                kind: key.0,
                kind_type: "MODIFIED",
                object: obj.clone(),
                old: Some(old),
            },
        );
        obj
    }

    fn remove(&mut self, tx: &broadcast::Sender<Change>, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            tx,
            Change {
                rv,
                kind: key.0,
                kind_type: "DELETED",
                object: obj.clone(),
                old: None,
            },
        );
        Some(obj)
    }
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn full(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

/// A `metav1.Status` failure, as `k8s.io/apimachinery/pkg/api/errors` builds them.
fn status(code: u16, reason: &str, message: &str, kind: Kind, name: &str) -> Response<Body> {
    full(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason,
            "details": {"name": name, "group": kind.group(), "kind": kind.plural()},
            "code": code
        }),
    )
}

fn bad_request(message: &str) -> Response<Body> {
    full(
        400,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "BadRequest", "code": 400}),
    )
}

fn not_found(kind: Kind, name: &str) -> Response<Body> {
    status(
        404,
        "NotFound",
        &format!("{}.{} {name:?} not found", kind.plural(), kind.group()),
        kind,
        name,
    )
}

fn invalid(kind: Kind, name: &str, errors: &[String]) -> Response<Body> {
    let causes: Vec<Value> = errors.iter().map(|e| json!({"message": e})).collect();
    full(
        422,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{} {name:?} is invalid: {}", kind.kind(), errors.join(", ")),
            "reason": "Invalid",
            "details": {"name": name, "group": kind.group(), "kind": kind.kind(), "causes": causes},
            "code": 422
        }),
    )
}

fn conflict(kind: Kind, name: &str, why: &str) -> Response<Body> {
    status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {}.{} {name:?}: {why}",
            kind.plural(),
            kind.group()
        ),
        kind,
        name,
    )
}

/// `(kind, namespace, name)` of a path.
fn route(path: &str) -> Option<(Kind, String, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "nodes"] => Some((Kind::Node, String::new(), None)),
        ["api", "v1", "nodes", name] => Some((Kind::Node, String::new(), Some((*name).into()))),
        ["apis", "resource.k8s.io", "v1", "resourceslices"] => {
            Some((Kind::ResourceSlice, String::new(), None))
        }
        ["apis", "resource.k8s.io", "v1", "resourceslices", name] => {
            Some((Kind::ResourceSlice, String::new(), Some((*name).into())))
        }
        ["apis", "resource.k8s.io", "v1", "namespaces", ns, "resourceclaims"] => {
            Some((Kind::ResourceClaim, (*ns).into(), None))
        }
        ["apis", "resource.k8s.io", "v1", "namespaces", ns, "resourceclaims", name] => {
            Some((Kind::ResourceClaim, (*ns).into(), Some((*name).into())))
        }
        _ => None,
    }
}

fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(inner: &Arc<Inner>, req: hyper::Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    lock(inner).requests.push(Logged {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
    });
    let Some((kind, ns, name)) = route(&path) else {
        return full(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("the server could not find the requested resource ({path})"), "reason": "NotFound", "code": 404}),
        );
    };
    {
        let mut store = lock(inner);
        if let Some(i) = store
            .faults
            .iter()
            .position(|f| f.method == method && f.kind == kind)
        {
            let fault = store.faults.remove(i).expect("fault");
            let n = name.clone().unwrap_or_default();
            return match fault.code {
                409 => conflict(kind, &n, "the object has been modified; please apply your changes to the latest version and try again"),
                code => status(code, "InternalError", "injected fault", kind, &n),
            };
        }
    }
    let params = query_params(&query);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_request(&format!("reading the body: {e}")),
    };
    match (method.clone(), name) {
        (Method::GET, Some(name)) => {
            let store = lock(inner);
            match store.objects.get(&(kind, ns, name.clone())) {
                Some(obj) => full(200, obj),
                None => not_found(kind, &name),
            }
        }
        (Method::GET, None) => {
            let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
            let selector = match Selector::parse(kind, &params) {
                Ok(s) => s,
                Err(message) => return bad_request(&message),
            };
            if watching {
                watch(inner, kind, ns, selector, &params)
            } else {
                list(inner, kind, &ns, &selector)
            }
        }
        (Method::POST, None) => {
            let obj = match decode_object(kind, &body) {
                Ok(o) => o,
                Err(r) => return r,
            };
            create(inner, kind, &ns, obj)
        }
        (Method::PUT, Some(name)) => {
            let obj = match decode_object(kind, &body) {
                Ok(o) => o,
                Err(r) => return r,
            };
            update(inner, kind, &ns, &name, obj)
        }
        (Method::DELETE, Some(name)) => delete(inner, kind, &ns, &name, &body),
        _ => full(
            405,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("{method} is not supported here"), "reason": "MethodNotAllowed", "code": 405}),
        ),
    }
}

/// Decode a body: JSON, the right kind and apiVersion when given, no unknown fields.
fn decode_object(kind: Kind, body: &[u8]) -> Result<Value, Response<Body>> {
    let obj: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(&format!("decoding the body: {e}")))?;
    for (field, want) in [("kind", kind.kind()), ("apiVersion", kind.api_version())] {
        if let Some(got) = obj.get(field).and_then(Value::as_str) {
            if got != want {
                return Err(bad_request(&format!(
                    "the body's {field} is {got:?}, not {want:?}"
                )));
            }
        }
    }
    let unknown = match kind {
        Kind::ResourceSlice => {
            unknown_fields::<k8s_openapi::api::resource::v1::ResourceSlice>(&obj)
        }
        Kind::ResourceClaim => {
            unknown_fields::<k8s_openapi::api::resource::v1::ResourceClaim>(&obj)
        }
        Kind::Node => unknown_fields::<k8s_openapi::api::core::v1::Node>(&obj),
    };
    match unknown {
        Ok(fields) if fields.is_empty() => Ok(obj),
        Ok(fields) => Err(bad_request(&format!(
            "strict decoding error: {}",
            fields
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Err(e) => Err(bad_request(&format!("decoding the body: {e}"))),
    }
}

/// The fields of `obj` that the typed object does not have (lost on a typed round trip).
fn unknown_fields<T: serde::de::DeserializeOwned + serde::Serialize>(
    obj: &Value,
) -> Result<Vec<String>, serde_json::Error> {
    let typed: T = serde_json::from_value(obj.clone())?;
    let back = serde_json::to_value(&typed)?;
    let mut lost = Vec::new();
    diff_keys(obj, &back, "", &mut lost);
    Ok(lost)
}

fn diff_keys(a: &Value, b: &Value, at: &str, lost: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match b.get(k) {
                    Some(w) => diff_keys(v, w, &here, lost),
                    None if v.is_null() => {}
                    // Maps of free-form values (opaque parameters) are kept whole by the types.
                    None => lost.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                diff_keys(v, w, &format!("{at}[{i}]"), lost);
            }
        }
        _ => {}
    }
}

fn validate(kind: Kind, obj: &Value, old: Option<&Value>) -> Vec<String> {
    match kind {
        Kind::ResourceSlice => validate::resource_slice(obj, old),
        Kind::ResourceClaim => validate::resource_claim(obj),
        Kind::Node => {
            let mut e = Vec::new();
            validate::metadata(obj, &mut e);
            e
        }
    }
}

fn create(inner: &Arc<Inner>, kind: Kind, ns: &str, mut obj: Value) -> Response<Body> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| !v.is_empty())
    {
        return bad_request("resourceVersion should not be set on objects to be created");
    }
    if obj.get("metadata").is_none() {
        obj["metadata"] = json!({});
    }
    let errors = validate(kind, &obj, None);
    if !errors.is_empty() {
        return invalid(kind, &name, &errors);
    }
    let mut store = lock(inner);
    match store.create(&inner.changes, kind, ns, obj) {
        Ok(stored) => {
            store.written.push(stored.clone());
            full(201, &stored)
        }
        Err(response) => response,
    }
}

fn update(inner: &Arc<Inner>, kind: Kind, ns: &str, name: &str, obj: Value) -> Response<Body> {
    if obj.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return bad_request("the name of the object does not match the name in the URL");
    }
    let mut store = lock(inner);
    let key = (kind, ns.to_string(), name.to_string());
    let Some(old) = store.objects.get(&key).cloned() else {
        return not_found(kind, name);
    };
    let want_rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !want_rv.is_empty()
        && Some(want_rv)
            != old
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
    {
        return conflict(kind, name, "the object has been modified; please apply your changes to the latest version and try again");
    }
    if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
        if Some(uid) != old.pointer("/metadata/uid").and_then(Value::as_str) {
            return conflict(
                kind,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old["metadata"]["uid"]
                ),
            );
        }
    }
    let errors = validate(kind, &obj, Some(&old));
    if !errors.is_empty() {
        return invalid(kind, name, &errors);
    }
    let stored = store.replace(&inner.changes, &key, obj);
    store.written.push(stored.clone());
    full(200, &stored)
}

fn delete(inner: &Arc<Inner>, kind: Kind, ns: &str, name: &str, body: &[u8]) -> Response<Body> {
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("decoding DeleteOptions: {e}")),
        }
    };
    let mut store = lock(inner);
    let key = (kind, ns.to_string(), name.to_string());
    let Some(old) = store.objects.get(&key).cloned() else {
        return not_found(kind, name);
    };
    for (field, what) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        if let Some(want) = options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
        {
            let have = old["metadata"][field].as_str().unwrap_or_default();
            if want != have {
                return conflict(kind, name, &format!("Precondition failed: {what} in precondition: {want}, {what} in object meta: {have}"));
            }
        }
    }
    store.remove(&inner.changes, &key);
    full(
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": kind.group(), "kind": kind.plural(), "uid": old["metadata"]["uid"]}}),
    )
}

/// A parsed fieldSelector and labelSelector.
#[derive(Debug, Clone, Default)]
struct Selector {
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
    kind: Option<Kind>,
}

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// Split on commas outside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

impl Selector {
    fn parse(kind: Kind, params: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut sel = Selector {
            kind: Some(kind),
            ..Selector::default()
        };
        for term in split_top(params.get("fieldSelector").map_or("", String::as_str)) {
            let (key, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector: {term:?}"));
            };
            if kind.field(&json!({}), key).is_none() {
                return Err(format!("field label not supported: {key}"));
            }
            sel.fields.push((key.to_string(), eq, value.to_string()));
        }
        for term in split_top(params.get("labelSelector").map_or("", String::as_str)) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or(format!("invalid label selector: {term:?}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some((k, rest)) = term.split_once(" notin ") {
                LabelReq::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = term.split_once(" in ") {
                LabelReq::In(k.trim().into(), set(rest)?)
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::Ne(k.into(), v.into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelReq::Eq(k.into(), v.into())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelReq::NotExists(k.into())
            } else {
                LabelReq::Exists(term.clone())
            };
            sel.labels.push(req);
        }
        Ok(sel)
    }

    fn matches(&self, obj: &Value) -> bool {
        let Some(kind) = self.kind else { return true };
        let fields_ok = self.fields.iter().all(|(key, eq, value)| {
            let have = kind.field(obj, key).flatten().unwrap_or_default();
            (have == *value) == *eq
        });
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        });
        fields_ok && labels_ok
    }
}

fn in_namespace(ns: &str, obj: &Value) -> bool {
    ns.is_empty() || obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
}

fn list(inner: &Arc<Inner>, kind: Kind, ns: &str, selector: &Selector) -> Response<Body> {
    let store = lock(inner);
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, _, _), o)| *k == kind && in_namespace(ns, o) && selector.matches(o))
        .map(|(_, o)| {
            let mut item = o.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    full(
        200,
        &json!({
            "kind": format!("{}List", kind.kind()), "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items
        }),
    )
}

fn event_line(kind_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind_type, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// What a change looks like to a watcher with `selector`, if anything.
fn as_seen(change: &Change, ns: &str, selector: &Selector) -> Option<Bytes> {
    let now = in_namespace(ns, &change.object) && selector.matches(&change.object);
    match (change.kind_type, change.old.as_ref()) {
        ("MODIFIED", Some(old)) => {
            let before = in_namespace(ns, old) && selector.matches(old);
            match (before, now) {
                (true, true) => Some(event_line("MODIFIED", &change.object)),
                (false, true) => Some(event_line("ADDED", &change.object)),
                (true, false) => Some(event_line("DELETED", &change.object)),
                (false, false) => None,
            }
        }
        (t, _) => now.then(|| event_line(t, &change.object)),
    }
}

fn watch(
    inner: &Arc<Inner>,
    kind: Kind,
    ns: String,
    selector: Selector,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut live = inner.changes.subscribe();
    let from = params.get("resourceVersion").cloned().unwrap_or_default();
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok());
    let bookmarks = matches!(
        params.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let mut backlog = Vec::new();
    let mut last;
    {
        let store = lock(inner);
        last = store.rv;
        if from.is_empty() || from == "0" {
            for ((k, _, _), o) in &store.objects {
                if *k == kind && in_namespace(&ns, o) && selector.matches(o) {
                    backlog.push(event_line("ADDED", o));
                }
            }
        } else {
            let Ok(start) = from.parse::<u64>() else {
                return bad_request(&format!("invalid resourceVersion {from:?}"));
            };
            if start < store.compacted {
                backlog.push(event_line("ERROR", &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": format!("too old resource version: {start} ({})", store.compacted),
                    "reason": "Expired", "code": 410})));
                last = u64::MAX;
            } else {
                for change in store
                    .history
                    .iter()
                    .filter(|c| c.rv > start && c.kind == kind)
                {
                    backlog.extend(as_seen(change, &ns, &selector));
                }
            }
        }
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if last == u64::MAX {
            return;
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
        loop {
            let expiry = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = expiry => {
                    if bookmarks {
                        let rv = lock(&inner).rv;
                        let _ = tx.send(event_line("BOOKMARK", &json!({"kind": kind.kind(), "apiVersion": kind.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()}}))).await;
                    }
                    return;
                }
                () = tx.closed() => return,
                change = live.recv() => match change {
                    Ok(change) if change.rv > last && change.kind == kind => {
                        last = change.rv;
                        if let Some(line) = as_seen(&change, &ns, &selector) {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("watch response")
}
