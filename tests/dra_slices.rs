//! DRA, API-server side: the publisher against the test API server (tests/common/apiserver.rs)
//! through a real kube client, on the mock inventory. What is published (every GPU and MIG device
//! with its attributes and capacity, schema-valid), what it costs (requests at start, none at
//! steady state, one write per health change) and what happens on conflicts, foreign edits,
//! restarts, uninstall and Node deletion.

#[path = "common/apiserver.rs"]
mod apiserver;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::{Kind, Logged, TestApiServer};
use gpu_agent::dra_api::devices::{self, DeviceList, PcieRoots};
use gpu_agent::dra_api::{self, ClaimError, ClaimSource, PublisherConfig};
use gpu_agent::gpu::backend::BackendEvents;
use gpu_agent::gpu::mock::MockBackend;
use gpu_agent::gpu::{GpuBackend, Inventory};
use gpu_agent::health::{self, HealthPolicy, HealthState, HealthTracker};
use hyper::Method;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const DRIVER: &str = "gpu.gpu-agent.io";
const NODE: &str = "gpu-node-1";
const WAIT: Duration = Duration::from_secs(20);

const FIXTURE: &str = r#"
node: gpu-node-1
driverVersion: "580.95.05"
cudaDriverVersion: "13.0"
gpus:
  - model: NVIDIA H100 80GB HBM3
    pciBusId: "0000:18:00.0"
  - model: NVIDIA H100 80GB HBM3
    pciBusId: "0000:2a:00.0"
  - model: NVIDIA A100-SXM4-80GB
    pciBusId: "0000:3a:00.0"
    mig:
      devices: [3g.40gb, 2g.20gb, 1g.10gb]
"#;

/// The test API server with a Node, a kube client for it, and a temp dir.
struct Cluster {
    server: TestApiServer,
    client: kube::Client,
    dir: tempfile::TempDir,
    node_uid: String,
}

impl Cluster {
    async fn start() -> Self {
        let server = TestApiServer::start().await;
        let node_uid = server.add_node(NODE);
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = server.kubeconfig(dir.path());
        let client = dra_api::client(Some(&kubeconfig)).await.expect("client");
        Self {
            server,
            client,
            dir,
            node_uid,
        }
    }

    fn fixture(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("fixture.yaml");
        std::fs::write(&path, text).expect("write fixture");
        path
    }

    /// Requests since `from` (an index into the log).
    fn requests_since(&self, from: usize) -> Vec<Logged> {
        self.server.requests()[from..].to_vec()
    }

    /// Wait until a watch was opened after request `from`.
    async fn until_watching(&self, from: usize) {
        let start = Instant::now();
        while self.requests_since(from).iter().all(|r| !r.is_watch()) {
            assert!(start.elapsed() < WAIT, "no watch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the stored slices satisfy `pred`.
    async fn until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let slices = self.server.slices();
            if pred(&slices) {
                return slices;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}: {slices:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A running publisher and the means to stop it.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<dra_api::PublishStats, dra_api::PublishError>>,
}

impl Running {
    fn start(
        cluster: &Cluster,
        config: PublisherConfig,
        devices: watch::Receiver<Arc<DeviceList>>,
    ) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dra_api::publish(
            cluster.client.clone(),
            config,
            devices,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> dra_api::PublishStats {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("publisher stops")
            .expect("publisher task")
            .expect("publisher result")
    }
}

fn config() -> PublisherConfig {
    let mut c = PublisherConfig::new(DRIVER, NODE);
    c.backoff_min = Duration::from_millis(20);
    c.repair_delay = Duration::from_millis(100);
    c
}

fn inventory(text: &str) -> Inventory {
    gpu_agent::gpu::fixture::parse(text)
        .expect("fixture")
        .inventory
}

fn list_of(inv: &Inventory, health: &HealthState) -> DeviceList {
    devices::build(inv, health, &PcieRoots::new(), |_| true)
}

fn device_names(slices: &[Value]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .map(|d| d["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn generation(slices: &[Value]) -> i64 {
    slices[0]["spec"]["pool"]["generation"]
        .as_i64()
        .unwrap_or(-1)
}

fn has_slice(slices: &[Value]) -> bool {
    !slices.is_empty()
}

/// `kubernetes-validate` (GPU_AGENT_KUBERNETES_VALIDATE or .venv), or `None` with a message.
fn validator() -> Option<PathBuf> {
    let candidate = std::env::var_os("GPU_AGENT_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/kubernetes-validate")
        });
    if candidate.is_file() {
        return Some(candidate);
    }
    eprintln!(
        "skipping schema validation: {} not found (.ci/run installs it: \
         python3 -m venv .venv && .venv/bin/pip install kubernetes-validate)",
        candidate.display()
    );
    None
}

/// Every object validated strictly against the official OpenAPI schema of Kubernetes 1.34 (the
/// first with resource.k8s.io/v1) and the validator's newest.
fn validate_schema(objects: &[Value]) {
    let Some(validator) = validator() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, object) in objects.iter().enumerate() {
        let path = dir.path().join(format!("object-{i}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(object).expect("json")).expect("write");
        for version in [Some("1.34.0"), None] {
            let mut command = std::process::Command::new(&validator);
            command.arg("--strict");
            if let Some(v) = version {
                command.args(["--kubernetes-version", v]);
            }
            let out = command
                .arg(&path)
                .output()
                .expect("run kubernetes-validate");
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && report.contains("passed") && !report.contains("WARN"),
                "{} fails the schema ({version:?}):\n{report}\n{object:#}",
                object["metadata"]["name"]
            );
        }
    }
}

#[tokio::test]
async fn every_device_is_published_with_its_attributes_schema_valid_for_four_requests() {
    let cluster = Cluster::start().await;
    let inv = inventory(FIXTURE);
    let (_tx, rx) = watch::channel(Arc::new(list_of(&inv, &HealthState::default())));
    let before = cluster.server.requests().len();
    let publisher = Running::start(&cluster, config(), rx);
    let slices = cluster.until("the slice", has_slice).await;

    assert_eq!(slices.len(), 1);
    let slice = &slices[0];
    assert_eq!(slice["metadata"]["name"], format!("{NODE}-{DRIVER}-0"));
    assert_eq!(slice["spec"]["driver"], DRIVER);
    assert_eq!(slice["spec"]["nodeName"], NODE);
    assert_eq!(slice["spec"]["pool"]["name"], NODE);
    assert_eq!(slice["spec"]["pool"]["generation"], 1);
    assert_eq!(slice["spec"]["pool"]["resourceSliceCount"], 1);
    let owner = &slice["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Node");
    assert_eq!(owner["uid"], cluster.node_uid.as_str());
    assert_eq!(owner["controller"], true);

    // Two whole GPUs and the A100's three MIG devices (not the A100 itself).
    let a100 = &inv.gpus[2];
    let mut expected: BTreeSet<String> = ["gpu-0", "gpu-1"].map(String::from).into();
    for m in &a100.mig_devices {
        expected.insert(format!(
            "gpu-2-mig-{}-{}",
            m.gpu_instance_id, m.compute_instance_id
        ));
    }
    assert_eq!(device_names(&slices), expected);

    let devices = slice["spec"]["devices"].as_array().unwrap();
    let gpu0 = devices.iter().find(|d| d["name"] == "gpu-0").unwrap();
    let a = &gpu0["attributes"];
    assert_eq!(a["type"]["string"], "gpu");
    assert_eq!(a["uuid"]["string"], inv.gpus[0].uuid.as_str());
    assert_eq!(a["productName"]["string"], "NVIDIA H100 80GB HBM3");
    assert_eq!(a["brand"]["string"], "Nvidia");
    assert_eq!(a["architecture"]["string"], "Hopper");
    assert_eq!(a["cudaComputeCapability"]["version"], "9.0.0");
    assert_eq!(a["driverVersion"]["version"], "580.95.5");
    assert_eq!(a["cudaDriverVersion"]["version"], "13.0.0");
    assert_eq!(a["index"]["int"], 0);
    assert_eq!(a["minor"]["int"], 0);
    assert_eq!(a["pcieBusID"]["string"], "0000:18:00.0");
    assert_eq!(
        a["resource.kubernetes.io/pciBusID"]["string"],
        "0000:18:00.0"
    );
    assert_eq!(gpu0["capacity"]["memory"]["value"], "81559Mi");

    let mig3g = devices
        .iter()
        .find(|d| d["attributes"]["profile"]["string"] == "3g.40gb")
        .unwrap();
    let m = &mig3g["attributes"];
    assert_eq!(m["type"]["string"], "mig");
    assert_eq!(m["parentUUID"]["string"], a100.uuid.as_str());
    assert_eq!(m["parentIndex"]["int"], 2);
    assert_eq!(m["architecture"]["string"], "Ampere");
    assert_eq!(m["cudaComputeCapability"]["version"], "8.0.0");
    assert_eq!(mig3g["capacity"]["multiprocessors"]["value"], "42");
    assert!(mig3g["capacity"]["memory"]["value"]
        .as_str()
        .unwrap()
        .ends_with("Mi"));

    // Start: GET Node, LIST, POST, WATCH.
    cluster.until_watching(before).await;
    let start = cluster.requests_since(before);
    let shape: Vec<(String, bool)> = start
        .iter()
        .map(|r| (r.method.clone(), r.is_watch()))
        .collect();
    assert!(start.len() <= 5, "{start:#?}");
    assert_eq!(
        shape,
        [
            ("GET", false),
            ("GET", false),
            ("POST", false),
            ("GET", true)
        ]
        .map(|(m, w)| (m.to_string(), w)),
        "{start:#?}"
    );
    assert!(
        start[1]
            .query
            .contains("fieldSelector=spec.driver%3Dgpu.gpu-agent.io%2Cspec.nodeName%3Dgpu-node-1"),
        "{:?}",
        start[1]
    );

    // Steady state: nothing.
    let settled = cluster.server.requests().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cluster.requests_since(settled),
        [],
        "steady state must be silent"
    );

    publisher.stop().await;
    validate_schema(&cluster.server.written());
}

#[tokio::test]
async fn a_health_change_in_the_fixture_leaves_the_slice_within_two_seconds_in_one_write() {
    let cluster = Cluster::start().await;
    let fixture = cluster.fixture(FIXTURE);
    let backend = Arc::new(MockBackend::open(Some(fixture.clone())).expect("mock"));
    let inv = Arc::new(backend.inventory().expect("inventory"));
    let (inventory_tx, _inventory_rx) = watch::channel(inv.clone());
    let (events_tx, events_rx) = health::queue::channel();
    backend
        .clone()
        .watch(BackendEvents {
            inventory: inventory_tx,
            health: events_tx,
        })
        .expect("watch fixture");
    let policy = HealthPolicy::new(&gpu_agent::config::HealthSettings::default(), None, None);
    let (_policy_tx, policy_rx) = watch::channel(policy.clone());
    let (state_tx, state_rx) = watch::channel(Arc::new(HealthState::default()));
    tokio::spawn(health::watcher::run(
        HealthTracker::new(policy),
        events_rx,
        policy_rx,
        state_tx,
        health::watcher::XidCounts::default(),
    ));
    let for_devices = inv.clone();
    let devices = dra_api::follow(state_rx, move |h: &Arc<HealthState>| {
        list_of(&for_devices, h)
    });
    let publisher = Running::start(&cluster, config(), devices);
    let slices = cluster
        .until("gpu-1 published", |s| device_names(s).contains("gpu-1"))
        .await;
    assert_eq!(generation(&slices), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cluster.server.requests().len();

    let lost = FIXTURE.replacen(
        "    pciBusId: \"0000:2a:00.0\"\n",
        "    pciBusId: \"0000:2a:00.0\"\n    lost: true\n",
        1,
    );
    let edited = Instant::now();
    std::fs::write(&fixture, lost).expect("edit fixture");
    let slices = cluster
        .until("gpu-1 gone", |s| !device_names(s).contains("gpu-1"))
        .await;
    let took = edited.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "gpu-1 left the slice after {took:?}"
    );
    assert_eq!(generation(&slices), 2);
    assert!(device_names(&slices).contains("gpu-0"));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = cluster.requests_since(before);
    let writes: Vec<&Logged> = after.iter().filter(|r| r.is_write()).collect();
    assert_eq!(writes.len(), 1, "{after:#?}");
    assert_eq!(writes[0].method, "PUT");
    assert_eq!(after.len(), 1, "nothing but the write: {after:#?}");
    eprintln!(
        "health change -> slice without the device: {took:?}, requests: {}",
        after.len()
    );
    publisher.stop().await;
}

#[tokio::test]
async fn a_conflict_is_re_read_and_retried() {
    let cluster = Cluster::start().await;
    let inv = inventory(FIXTURE);
    let (tx, rx) = watch::channel(Arc::new(list_of(&inv, &HealthState::default())));
    let publisher = Running::start(&cluster, config(), rx);
    cluster.until("the slice", has_slice).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cluster.server.requests().len();

    cluster
        .server
        .fail_next(Method::PUT, Kind::ResourceSlice, 409);
    let mut health = HealthState::default();
    health.gpus.insert(
        inv.gpus[0].uuid.clone(),
        gpu_agent::health::Unhealthy {
            reason: "XID 79".into(),
        },
    );
    tx.send_replace(Arc::new(list_of(&inv, &health)));
    let slices = cluster
        .until("gpu-0 gone", |s| !device_names(s).contains("gpu-0"))
        .await;
    assert_eq!(generation(&slices), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<(String, bool)> = cluster
        .requests_since(before)
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.path.ends_with(&format!("{NODE}-{DRIVER}-0")),
            )
        })
        .collect();
    // The refused PUT, a GET of that slice, the PUT that lands.
    assert_eq!(
        after,
        [("PUT", true), ("GET", true), ("PUT", true)].map(|(m, p)| (m.to_string(), p))
    );
    let stats = publisher.stop().await;
    assert_eq!((stats.conflicts, stats.updates), (1, 1));
}

#[tokio::test]
async fn slices_changed_or_deleted_by_others_are_put_back() {
    let cluster = Cluster::start().await;
    let inv = inventory(FIXTURE);
    let (_tx, rx) = watch::channel(Arc::new(list_of(&inv, &HealthState::default())));
    let publisher = Running::start(&cluster, config(), rx);
    let slices = cluster.until("the slice", has_slice).await;
    let name = slices[0]["metadata"]["name"].as_str().unwrap().to_string();
    let want = device_names(&slices);

    cluster
        .server
        .edit_as_other(Kind::ResourceSlice, &name, |s| {
            s["spec"]["devices"].as_array_mut().unwrap().truncate(1);
        });
    let slices = cluster
        .until("repaired", |s| {
            !s.is_empty() && device_names(s) == want && generation(s) == 2
        })
        .await;
    assert_eq!(slices.len(), 1);

    cluster.server.delete_as_other(Kind::ResourceSlice, &name);
    cluster
        .until("re-created", |s| !s.is_empty() && device_names(s) == want)
        .await;
    // One PUT to repair the edit, one POST to re-create: the stats may lag the server by the
    // last response, so count the server's log.
    let writes: Vec<String> = cluster
        .server
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(writes, ["POST", "PUT", "POST"]);
    publisher.stop().await;
}

#[tokio::test]
async fn a_restart_writes_nothing_and_an_uninstall_deletes_the_slices() {
    let cluster = Cluster::start().await;
    let inv = inventory(FIXTURE);
    let list = Arc::new(list_of(&inv, &HealthState::default()));
    let (_tx, rx) = watch::channel(list.clone());
    let first = Running::start(&cluster, config(), rx.clone());
    cluster.until("the slice", has_slice).await;
    first.stop().await;
    assert_eq!(
        cluster.server.slices().len(),
        1,
        "a plain stop keeps the slices"
    );

    let before = cluster.server.requests().len();
    let mut uninstall = config();
    uninstall.delete_on_shutdown = true;
    let second = Running::start(&cluster, uninstall, rx);
    cluster.until_watching(before).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restart = cluster.requests_since(before);
    assert_eq!(restart.len(), 3, "GET Node, LIST, WATCH: {restart:#?}");
    assert!(restart.iter().all(|r| !r.is_write()));
    assert_eq!(generation(&cluster.server.slices()), 1);

    let stats = second.stop().await;
    assert_eq!(stats.deletes, 1);
    assert!(cluster.server.slices().is_empty());
    let last = cluster.server.requests().pop().unwrap();
    assert_eq!(last.method, "DELETE");
}

#[tokio::test]
async fn more_than_128_devices_make_several_slices_and_an_expired_watch_lists_again() {
    let cluster = Cluster::start().await;
    // 40 GPUs x 7 MIG devices = 280 devices: three slices.
    let mut text =
        String::from("driverVersion: \"580.95.05\"\ncudaDriverVersion: \"13.0\"\ngpus:\n");
    for _ in 0..40 {
        text.push_str("  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb]}}\n");
    }
    let inv = inventory(&text);
    let (tx, rx) = watch::channel(Arc::new(list_of(&inv, &HealthState::default())));
    let mut c = config();
    c.watch_timeout = 1;
    let publisher = Running::start(&cluster, c, rx);
    let slices = cluster.until("three slices", |s| s.len() == 3).await;
    assert_eq!(device_names(&slices).len(), 280);
    assert!(slices
        .iter()
        .all(|s| s["spec"]["pool"]["resourceSliceCount"] == 3));

    // History gone: the next watch (after its 1 s timeout) gets 410 and lists again.
    cluster.server.compact();
    let before = cluster.server.requests().len();
    let start = Instant::now();
    while cluster
        .requests_since(before)
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch())
        .count()
        == 0
    {
        assert!(start.elapsed() < WAIT, "no relist");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it still follows changes: one GPU lost = 7 devices fewer, every slice rewritten.
    let mut health = HealthState::default();
    health.gpus.insert(
        inv.gpus[0].uuid.clone(),
        gpu_agent::health::Unhealthy {
            reason: "lost".into(),
        },
    );
    tx.send_replace(Arc::new(list_of(&inv, &health)));
    let slices = cluster
        .until("273 devices at generation 2", |s| {
            s.iter().all(|s| s["spec"]["pool"]["generation"] == 2) && device_names(s).len() == 273
        })
        .await;
    // 273 devices still need three slices: every one rewritten at the new generation.
    assert_eq!(slices.len(), 3);
    publisher.stop().await;
    validate_schema(&cluster.server.written()[..1]);
}

#[tokio::test]
async fn deleting_the_node_takes_the_slices_with_it() {
    let cluster = Cluster::start().await;
    let inv = inventory(FIXTURE);
    let (_tx, rx) = watch::channel(Arc::new(list_of(&inv, &HealthState::default())));
    let publisher = Running::start(&cluster, config(), rx);
    cluster.until("the slice", has_slice).await;
    cluster.server.delete_node(NODE);
    assert!(cluster.server.slices().is_empty());
    publisher.task.abort();
}

#[tokio::test]
async fn claims_are_read_as_neutral_views() {
    let cluster = Cluster::start().await;
    let stored = cluster.server.insert_claim(serde_json::json!({
        "metadata": {"name": "train", "namespace": "ml"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.gpu-agent.io"}}]}},
        "status": {"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": "gpu-0"}
        ]}}}
    }));
    let claims = ClaimSource::new(cluster.client.clone());
    let view = claims.get("ml", "train").await.expect("claim");
    assert_eq!(view.uid, stored["metadata"]["uid"].as_str().unwrap());
    assert_eq!(view.results.len(), 1);
    assert_eq!(view.results[0].device, "gpu-0");
    match claims.get("ml", "gone").await {
        Err(ClaimError::NotFound { namespace, name }) => {
            assert_eq!((namespace.as_str(), name.as_str()), ("ml", "gone"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_test_api_server_refuses_what_the_real_one_refuses() {
    use k8s_openapi::api::resource::v1::ResourceSlice;
    let cluster = Cluster::start().await;
    let api: kube::Api<ResourceSlice> = kube::Api::all(cluster.client.clone());
    let good = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": "s"},
        "spec": {"driver": DRIVER, "nodeName": NODE, "pool": {"name": NODE, "generation": 0, "resourceSliceCount": 1},
                 "devices": [{"name": "gpu-0", "attributes": {"driverVersion": {"version": "580.95.5"}}}]}
    });
    let refused = |edit: fn(&mut Value)| {
        let mut v = good.clone();
        edit(&mut v);
        serde_json::from_value::<ResourceSlice>(v).unwrap()
    };
    let code = |r: Result<ResourceSlice, kube::Error>| match r {
        Err(kube::Error::Api(s)) => s.code,
        Ok(_) => 200,
        Err(e) => panic!("{e}"),
    };
    let pp = kube::api::PostParams::default();
    for (why, edit) in [
        (
            "version not semver",
            (|v: &mut Value| {
                v["spec"]["devices"][0]["attributes"]["driverVersion"]["version"] =
                    "580.95.05".into()
            }) as fn(&mut Value),
        ),
        ("device name not a DNS label", |v| {
            v["spec"]["devices"][0]["name"] = "GPU_0".into()
        }),
        ("no node selection", |v| {
            v["spec"].as_object_mut().unwrap().remove("nodeName");
        }),
        ("zero slice count", |v| {
            v["spec"]["pool"]["resourceSliceCount"] = 0.into()
        }),
        ("two value kinds", |v| {
            v["spec"]["devices"][0]["attributes"]["driverVersion"]["int"] = 1.into()
        }),
    ] {
        assert_eq!(code(api.create(&pp, &refused(edit)).await), 422, "{why}");
    }
    let created = api
        .create(&pp, &refused(|_| {}))
        .await
        .expect("a valid slice");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        code(api.create(&pp, &refused(|_| {})).await),
        409,
        "AlreadyExists"
    );
    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    assert_eq!(
        code(api.replace("s", &pp, &stale).await),
        409,
        "stale resourceVersion"
    );
    let mut moved = created.clone();
    moved.spec.node_name = Some("elsewhere".into());
    assert_eq!(
        code(api.replace("s", &pp, &moved).await),
        422,
        "nodeName is immutable"
    );
    assert_eq!(code(api.get("nope").await), 404);
    let dp = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("other".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert!(matches!(api.delete("s", &dp).await, Err(kube::Error::Api(s)) if s.code == 409));
    assert!(api.delete("s", &Default::default()).await.is_ok());
}
