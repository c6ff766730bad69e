//! The agent as a DRA driver, as the kubelet sees it: plugin-watcher registration, then
//! NodePrepareResources / NodeUnprepareResources over real unix sockets, against the real binary
//! on the mock backend (8 × H100). Claims come from the test-only claims file
//! (`--dra-claims-file`), which the agent reads on every lookup.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::dra_kubelet::{DraClient, DraKubelet, RegisteredPlugin, WatchEvent};
use common::*;
use serde_json::json;

const DRIVER: &str = "gpu.gpu-agent.io";
const NODE: &str = "node-1";
const NS: &str = "team-a";
const UID_A: &str = "0b7c1f0e-4d7a-4c55-8d1e-7a3c2b1f9e01";
const UID_B: &str = "5e2d9c8b-1a3f-4b6e-9c7d-2f1e0a9b8c02";

struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    fn registry(&self) -> PathBuf {
        self.root.join("plugins_registry")
    }
    fn plugins(&self) -> PathBuf {
        self.root.join("plugins")
    }
    fn claims(&self) -> PathBuf {
        self.root.join("claims.json")
    }
    fn cdi(&self) -> PathBuf {
        self.root.join("cdi")
    }
    fn spec(&self, uid: &str) -> PathBuf {
        self.cdi()
            .join(format!("k8s.gpu-agent.io-claim_{uid}.json"))
    }
    fn args(&self) -> Vec<String> {
        [
            "--dra",
            "--node-name",
            NODE,
            "--kubelet-registry-dir",
            arg(&self.registry()),
            "--kubelet-plugins-dir",
            arg(&self.plugins()),
            "--dra-claims-file",
            arg(&self.claims()),
        ]
        .map(String::from)
        .to_vec()
    }
    fn spawn(&self, extra: &[&str]) -> Agent {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::spawn(&self.root, &args)
    }
    fn set_claims(&self, claims: serde_json::Value) {
        replace_file(&self.claims(), &claims.to_string());
    }
}

fn result(request: &str, driver: &str, device: &str) -> serde_json::Value {
    json!({"request": request, "driver": driver, "pool": NODE, "device": device})
}

fn claim(uid: &str, name: &str, results: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"uid": uid, "namespace": NS, "name": name, "results": results})
}

fn cdi_id(uid: &str, device: &str) -> String {
    format!("k8s.gpu-agent.io/claim={uid}-{device}")
}

fn read_spec(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The agent registered with a stand-in kubelet, and a DRA client on the chosen service.
async fn registered(
    dirs: &Dirs,
    extra: &[&str],
) -> (DraKubelet, Agent, RegisteredPlugin, DraClient) {
    let mut kubelet = DraKubelet::start(&dirs.registry());
    let agent = dirs.spawn(extra);
    let plugin = kubelet.next_registration().await;
    let client = DraClient::connect(&plugin).await;
    (kubelet, agent, plugin, client)
}

#[tokio::test]
async fn registers_with_the_plugin_watcher_as_a_dra_driver() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let (_kubelet, agent, plugin, _client) = registered(&dirs, &[]).await;
    assert_eq!(
        plugin.socket,
        dirs.registry().join("gpu.gpu-agent.io-reg.sock")
    );
    assert_eq!(plugin.info.r#type, "DRAPlugin");
    assert_eq!(plugin.info.name, DRIVER);
    assert_eq!(
        PathBuf::from(&plugin.info.endpoint),
        dirs.plugins().join(DRIVER).join("dra.sock")
    );
    assert_eq!(
        plugin.info.supported_versions,
        ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    );
    assert_eq!(plugin.chosen_service, "v1.DRAPlugin");
    for socket in [&plugin.socket, &PathBuf::from(&plugin.info.endpoint)] {
        let mode = std::fs::metadata(socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", socket.display());
    }
    eventually("the registration status to be logged", || {
        agent
            .logs()
            .contains("registered with the kubelet as a DRA driver")
    })
    .await;
}

#[tokio::test]
async fn prepares_one_and_eight_gpus_into_per_claim_cdi_specs() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let eight: Vec<_> = (0..8)
        .map(|i| result("all", DRIVER, &format!("gpu-{i}")))
        .collect();
    dirs.set_claims(json!([
        claim(UID_A, "one", vec![result("gpu", DRIVER, "gpu-3")]),
        claim(UID_B, "eight", eight),
    ]));
    let (_kubelet, _agent, plugin, client) = registered(&dirs, &[]).await;

    let answer = client.prepare(&[(NS, UID_A, "one")]).await;
    let a = &answer[UID_A];
    assert_eq!(a.error, "");
    assert_eq!(a.devices.len(), 1);
    assert_eq!(a.devices[0].request_names, ["gpu"]);
    assert_eq!(a.devices[0].pool_name, NODE);
    assert_eq!(a.devices[0].device_name, "gpu-3");
    assert_eq!(a.devices[0].cdi_device_ids, [cdi_id(UID_A, "gpu-3")]);
    let spec = read_spec(&dirs.spec(UID_A));
    assert_eq!(spec["kind"], "k8s.gpu-agent.io/claim");
    assert_eq!(spec["cdiVersion"], "0.6.0");
    assert_eq!(
        spec["devices"],
        json!([{"name": format!("{UID_A}-gpu-3"),
                "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia3"}]}}])
    );
    let common = &spec["containerEdits"];
    assert_eq!(common["env"], json!(["NVIDIA_VISIBLE_DEVICES=void"]));
    assert_eq!(
        common["deviceNodes"],
        json!([{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia-uvm"}, {"path": "/dev/nvidia-uvm-tools"}])
    );

    // Eight devices, over the v1beta1 service this time.
    let beta = DraClient::connect_as(&plugin, "v1beta1.DRAPlugin").await;
    let answer = beta.prepare(&[(NS, UID_B, "eight")]).await;
    let b = &answer[UID_B];
    assert_eq!(b.error, "");
    let ids: Vec<String> = b
        .devices
        .iter()
        .flat_map(|d| d.cdi_device_ids.clone())
        .collect();
    let want: Vec<String> = (0..8).map(|i| cdi_id(UID_B, &format!("gpu-{i}"))).collect();
    assert_eq!(ids, want);
    let spec = read_spec(&dirs.spec(UID_B));
    let names: Vec<&str> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 8);
    for (i, d) in spec["devices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["name"], format!("{UID_B}-gpu-{i}"));
        assert_eq!(
            d["containerEdits"]["deviceNodes"][0]["path"],
            format!("/dev/nvidia{i}")
        );
    }
}

#[tokio::test]
async fn prepare_is_idempotent_and_errors_stay_with_their_claim() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    dirs.set_claims(json!([
        claim(
            UID_A,
            "good",
            vec![
                result("net", "net.example.com", "eth0"),
                result("gpu", DRIVER, "gpu-1"),
            ]
        ),
        // Re-created under the same name: another UID.
        claim(
            "99999999-0000-0000-0000-000000000000",
            "recreated",
            vec![result("gpu", DRIVER, "gpu-2")]
        ),
        claim(UID_B, "unknown", vec![result("gpu", DRIVER, "gpu-42")]),
    ]));
    let (_kubelet, _agent, _plugin, client) = registered(&dirs, &[]).await;
    let stale_uid = "11111111-2222-3333-4444-555555555555";
    let answer = client
        .prepare(&[
            (NS, UID_A, "good"),
            (NS, stale_uid, "recreated"),
            (NS, UID_B, "unknown"),
        ])
        .await;
    // Other drivers' devices are left alone; ours prepared.
    let good = &answer[UID_A];
    assert_eq!(good.error, "");
    assert_eq!(good.devices.len(), 1);
    assert_eq!(good.devices[0].device_name, "gpu-1");
    let spec = read_spec(&dirs.spec(UID_A));
    assert_eq!(spec["devices"].as_array().unwrap().len(), 1);
    assert!(
        answer[stale_uid]
            .error
            .contains("the claim was deleted and re-created"),
        "{}",
        answer[stale_uid].error
    );
    assert!(answer[stale_uid].devices.is_empty());
    assert!(
        answer[UID_B]
            .error
            .contains("\"gpu-42\" is not a device of this node"),
        "{}",
        answer[UID_B].error
    );
    assert!(!dirs.spec(stale_uid).exists() && !dirs.spec(UID_B).exists());
    let missing = client
        .prepare(&[(NS, "77777777-0000-0000-0000-000000000000", "nope")])
        .await;
    assert_eq!(
        missing["77777777-0000-0000-0000-000000000000"].error,
        format!("ResourceClaim {NS}/nope not found")
    );

    // Again: the same answer, the spec untouched.
    let before = std::fs::metadata(dirs.spec(UID_A)).unwrap();
    let again = client.prepare(&[(NS, UID_A, "good")]).await;
    assert_eq!(again[UID_A], *good);
    let after = std::fs::metadata(dirs.spec(UID_A)).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
}

#[tokio::test]
async fn unprepare_removes_the_spec_even_after_the_claim_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    dirs.set_claims(json!([claim(
        UID_A,
        "c",
        vec![result("gpu", DRIVER, "gpu-0")]
    )]));
    let (_kubelet, _agent, _plugin, client) = registered(&dirs, &[]).await;
    assert_eq!(client.prepare(&[(NS, UID_A, "c")]).await[UID_A].error, "");
    assert!(dirs.spec(UID_A).exists());
    dirs.set_claims(json!([]));
    let done = client.unprepare(&[(NS, UID_A, "c")]).await;
    assert_eq!(done[UID_A], "");
    assert!(!dirs.spec(UID_A).exists());
    // Unpreparing what is not prepared is done, too (the kubelet retries until it hears so).
    assert_eq!(client.unprepare(&[(NS, UID_A, "c")]).await[UID_A], "");
}

#[tokio::test]
async fn unprepare_after_the_agent_was_killed_still_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    dirs.set_claims(json!([claim(
        UID_A,
        "c",
        vec![result("gpu", DRIVER, "gpu-5")]
    )]));
    let (mut kubelet, mut agent, _plugin, client) = registered(&dirs, &[]).await;
    let first = client.prepare(&[(NS, UID_A, "c")]).await;
    assert_eq!(first[UID_A].error, "");
    agent.signal(libc::SIGKILL);
    agent.wait_exit(WAIT).expect("killed agent exits");
    drop(client);

    // Gone from the API server while the agent was down.
    dirs.set_claims(json!([]));
    let _agent = dirs.spawn(&[]);
    let plugin = kubelet.next_registration().await;
    let client = DraClient::connect(&plugin).await;
    // The kubelet may prepare again after a restart: the checkpoint answers as before.
    assert_eq!(
        client.prepare(&[(NS, UID_A, "c")]).await[UID_A],
        first[UID_A]
    );
    assert!(dirs.spec(UID_A).exists());
    assert_eq!(client.unprepare(&[(NS, UID_A, "c")]).await[UID_A], "");
    assert!(!dirs.spec(UID_A).exists());
    let checkpoint = read_spec(&dirs.plugins().join(DRIVER).join("checkpoint.json"));
    assert_eq!(checkpoint["claims"], json!({}));
}

#[tokio::test]
async fn a_deleted_registration_socket_comes_back_and_sigterm_removes_both() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let (mut kubelet, mut agent, plugin, _client) = registered(&dirs, &[]).await;
    std::fs::remove_file(&plugin.socket).unwrap();
    loop {
        match kubelet.next_event().await {
            WatchEvent::Removed(path) => assert_eq!(path, plugin.socket),
            WatchEvent::Registered(again) => {
                assert_eq!(again.socket, plugin.socket);
                assert_eq!(again.info, plugin.info);
                break;
            }
            WatchEvent::Refused { error, .. } => panic!("{error}"),
        }
    }
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(WAIT).expect("exits on SIGTERM").success());
    assert!(!plugin.socket.exists());
    assert!(!Path::new(&plugin.info.endpoint).exists());
}

#[tokio::test]
async fn dra_gpus_leave_the_device_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(dir.path());
    let inventory = list_json(&[]);
    let uuid = |i: usize| inventory["gpus"][i]["uuid"].as_str().unwrap().to_string();
    dirs.set_claims(json!([
        claim(UID_A, "dra", vec![result("gpu", DRIVER, "gpu-1")]),
        claim(UID_B, "plugin", vec![result("gpu", DRIVER, "gpu-2")]),
    ]));
    let mut dra_kubelet = DraKubelet::start(&dirs.registry());
    let mut args = dirs.args();
    args.extend(["--dra-devices".to_string(), format!("0,{}", uuid(1))]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (kubelet, _agent, reg) = start_registered(dir.path(), &args).await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    let mut plugin = kubelet.plugin(&reg.endpoint).await;
    let mut stream = list_and_watch(&mut plugin).await;
    let ids: Vec<String> = next_list(&mut stream)
        .await
        .devices
        .into_iter()
        .map(|d| d.id)
        .collect();
    let want: Vec<String> = (2..8).map(uuid).collect();
    assert_eq!(ids, want);

    let registered = dra_kubelet.next_registration().await;
    let client = DraClient::connect(&registered).await;
    let answer = client
        .prepare(&[(NS, UID_A, "dra"), (NS, UID_B, "plugin")])
        .await;
    assert_eq!(answer[UID_A].error, "");
    assert!(
        answer[UID_B].error.contains("through the device plugin"),
        "{}",
        answer[UID_B].error
    );
}

/// SPEC §8: without `--kubeconfig` the agent uses the in-cluster config; outside a pod there is
/// none, and DRA without an API server offers nothing: exit 1 at start, saying what to set.
#[tokio::test]
async fn dra_without_an_api_server_configuration_exits_saying_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::spawn(dir.path(), &["--dra", "--node-name", NODE]);
    let status = agent
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("exits at start");
    assert_eq!(status.code(), Some(1), "{}", agent.logs());
    let logs = agent.logs();
    assert!(logs.contains("no in-cluster Kubernetes config"), "{logs}");
    assert!(
        logs.contains("--kubeconfig PATH or set KUBECONFIG"),
        "{logs}"
    );
}
