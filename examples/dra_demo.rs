//! gpu-agent as a DRA driver, without a cluster: this program plays the API server (the test API
//! server of `tests/common/apiserver.rs`), the scheduler (one CEL selector, `tests/common/cel.rs`)
//! and the kubelet (the plugin watcher and DRA client of `tests/common/dra_kubelet.rs`); the agent
//! runs in a second terminal on the mock backend.
//!
//! ```sh
//! cargo run --example dra_demo                  # terminal 1: prints the agent's command line
//! cargo run -- run --backend mock --dra ...     # terminal 2: that command line
//! ```
//!
//! It waits for the agent's ResourceSlice, lists the devices with their attributes, allocates the
//! first GPU with at least 40 GiB to a claim as the scheduler would, prepares it as the kubelet
//! would (printing the CDI device IDs and the CDI spec the agent wrote), and unprepares it.

#[path = "../tests/common/apiserver.rs"]
mod apiserver;
#[path = "../tests/common/cel.rs"]
mod cel;
#[allow(dead_code)]
#[path = "../tests/common/dra_kubelet.rs"]
mod dra_kubelet;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

/// How long the kubelet stand-in waits for the agent's answers (`dra_kubelet` reads it).
const WAIT: Duration = Duration::from_secs(30);
const NODE: &str = "demo-node";
const DRIVER: &str = "gpu.gpu-agent.io";
/// The selector of `daemonset/examples/dra/big-memory.yaml`.
const AT_LEAST_40_GIB: &str =
    r#"device.capacity["gpu.gpu-agent.io"].memory.compareTo(quantity("40Gi")) >= 0"#;

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .skip_while(|a| a != "--dir")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/gpu-agent-dra"));
    std::fs::create_dir_all(&dir).expect("create the demo directory");
    let server = apiserver::TestApiServer::start().await;
    server.add_node(NODE);
    let kubeconfig = server.kubeconfig(&dir);
    let registry = dir.join("plugins_registry");
    let plugins = dir.join("plugins");
    let cdi = dir.join("cdi");
    let mut kubelet = dra_kubelet::DraKubelet::start(&registry);
    println!(
        "API server stand-in at http://{}; start the agent:\n",
        server.addr
    );
    println!(
        "  cargo run -- run --backend mock --dra --node-name {NODE} --kubeconfig {} \\\n    \
         --kubelet-registry-dir {} --kubelet-plugins-dir {} --cdi-spec-dir {} \\\n    \
         --device-plugin-dir {} --metrics-addr 127.0.0.1:9400 --nfd-features-file \"\"\n",
        kubeconfig.display(),
        registry.display(),
        plugins.display(),
        cdi.display(),
        dir.join("device-plugins").display(),
    );

    let started = Instant::now();
    let slices = loop {
        let slices = server.slices();
        if !slices.is_empty() {
            break slices;
        }
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!("no ResourceSlice after 10 minutes; giving up");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let devices: Vec<serde_json::Value> = slices
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .collect();
    println!(
        "ResourceSlice {} (pool {}, generation {}): {} devices",
        slices[0]["metadata"]["name"].as_str().unwrap_or("?"),
        slices[0]["spec"]["pool"]["name"].as_str().unwrap_or("?"),
        slices[0]["spec"]["pool"]["generation"],
        devices.len()
    );
    for d in &devices {
        let attr = |name: &str| {
            let a = &d["attributes"][name];
            a["string"]
                .as_str()
                .map(String::from)
                .or_else(|| a["version"].as_str().map(String::from))
                .or_else(|| a["int"].as_i64().map(|i| i.to_string()))
                .unwrap_or_default()
        };
        println!(
            "  {:<16} {:<4} {:<26} memory {:<8} {}",
            d["name"].as_str().unwrap_or("?"),
            attr("type"),
            attr("productName"),
            d["capacity"]["memory"]["value"].as_str().unwrap_or("?"),
            attr("profile"),
        );
    }

    // The scheduler: the first device of the gpu class with at least 40 GiB.
    let class = cel::Selector::compile(&format!(
        r#"device.driver == "{DRIVER}" && device.attributes["{DRIVER}"].type == "gpu""#
    ))
    .expect("class selector");
    let big = cel::Selector::compile(AT_LEAST_40_GIB).expect("request selector");
    let Some(device) = devices.iter().find(|d| {
        class.matches(DRIVER, d).unwrap_or(false) && big.matches(DRIVER, d).unwrap_or(false)
    }) else {
        eprintln!("no whole GPU with at least 40 GiB to allocate");
        std::process::exit(1);
    };
    let device = device["name"].as_str().unwrap_or_default().to_string();
    let stored = server.insert_claim(json!({
        "metadata": {"name": "big-memory-gpu", "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": DRIVER,
            "selectors": [{"cel": {"expression": AT_LEAST_40_GIB}}]}}]}},
        "status": {"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": device}
        ]}}}
    }));
    let uid = stored["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!("\nallocated {device} to ResourceClaim default/big-memory-gpu (uid {uid})");

    // The kubelet: registration, then prepare and unprepare.
    let plugin = kubelet.next_registration().await;
    println!(
        "kubelet: {} registered, endpoint {}, service {}",
        plugin.info.name, plugin.info.endpoint, plugin.chosen_service
    );
    let client = dra_kubelet::DraClient::connect(&plugin).await;
    let claim = ("default", uid.as_str(), "big-memory-gpu");
    let prepared = client.prepare(&[claim]).await;
    let answer = &prepared[&uid];
    if !answer.error.is_empty() {
        eprintln!("NodePrepareResources failed: {}", answer.error);
        std::process::exit(1);
    }
    for d in &answer.devices {
        println!(
            "prepared {}: CDI devices {:?}",
            d.device_name, d.cdi_device_ids
        );
    }
    let spec = cdi.join(format!("k8s.gpu-agent.io-claim_{uid}.json"));
    println!("CDI spec {}:", spec.display());
    println!("{}", std::fs::read_to_string(&spec).unwrap_or_default());
    let unprepared = client.unprepare(&[claim]).await;
    println!(
        "unprepared: {}; spec removed: {}",
        if unprepared[&uid].is_empty() {
            "ok"
        } else {
            &unprepared[&uid]
        },
        !spec.exists()
    );
}
