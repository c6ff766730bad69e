//! A kubelet stand-in for demos and hardware checks: the same one the integration tests use
//! (`tests/common/kubelet.rs`, written from the kubelet's device manager). It creates `--dir`,
//! wipes it as a starting kubelet does (every file but `kubelet_internal_checkpoint`), binds
//! `<dir>/kubelet.sock`, and for every plugin that registers dials it, opens ListAndWatch and
//! prints each event as one JSON line. With `--allocate N` it allocates the first N healthy
//! devices of each resource once and prints the response.
//!
//! ```sh
//! cargo run --example test_kubelet -- --dir /tmp/gpu-agent-demo --allocate 1
//! ```
//!
//! Ctrl-C makes it exit as a kubelet process does: connections drop, `kubelet.sock` stays behind
//! until the next start deletes it. Start it again to see the agent come back.

#[allow(dead_code)]
#[path = "../tests/common/kubelet.rs"]
mod kubelet;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use kubelet::{KubeletEvent, Plugin, TestKubelet};

/// How long the stand-in waits for what should take milliseconds (`kubelet.rs` reads it).
const WAIT: Duration = Duration::from_secs(20);

fn print(value: serde_json::Value) {
    println!("{value}");
}

async fn allocate_once(kubelet: &TestKubelet, resource: &str, endpoint: &str, count: usize) {
    let mut plugin = Plugin::open(kubelet, endpoint).await;
    let ids: Vec<String> = plugin
        .devices
        .iter()
        .filter(|d| d.health == "Healthy")
        .take(count)
        .map(|d| d.id.clone())
        .collect();
    match plugin.allocate(&ids).await {
        Ok(c) => print(serde_json::json!({
            "event": "allocate", "resource": resource, "devices": ids, "envs": c.envs,
            "cdiDevices": c.cdi_devices.iter().map(|d| &d.name).collect::<Vec<_>>(),
        })),
        Err(e) => print(serde_json::json!({
            "event": "allocate-error", "resource": resource, "error": e.message(),
        })),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut dir = PathBuf::from("/tmp/gpu-agent-demo");
    let mut allocate = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = PathBuf::from(args.next().ok_or("--dir needs a value")?),
            "--allocate" => allocate = args.next().ok_or("--allocate needs a value")?.parse()?,
            other => {
                return Err(
                    format!("unknown argument {other:?} (use --dir DIR, --allocate N)").into(),
                )
            }
        }
    }
    let mut kubelet = TestKubelet::at(&dir);
    let mut events = kubelet.observe();
    kubelet.serve();
    eprintln!("test kubelet listening on {}", kubelet.socket().display());
    let mut allocated = BTreeSet::new();
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            KubeletEvent::Register {
                resource,
                endpoint,
                version,
            } => print(serde_json::json!({
                "event": "register", "resource": resource, "endpoint": endpoint, "version": version,
            })),
            KubeletEvent::RegisterFailed { resource, error } => print(serde_json::json!({
                "event": "register-error", "resource": resource, "error": error,
            })),
            KubeletEvent::List {
                resource,
                endpoint,
                devices,
            } => {
                let list: Vec<_> = devices
                    .iter()
                    .map(|d| serde_json::json!({"id": d.id, "health": d.health}))
                    .collect();
                print(serde_json::json!({"event": "list", "resource": resource, "devices": list}));
                if allocate > 0 && allocated.insert(resource.clone()) {
                    allocate_once(&kubelet, &resource, &endpoint, allocate).await;
                }
            }
            KubeletEvent::StreamEnded { resource, result } => print(serde_json::json!({
                "event": "stream-closed", "resource": resource,
                "error": result.err(),
            })),
        }
    }
    kubelet.stop().await;
    Ok(())
}
