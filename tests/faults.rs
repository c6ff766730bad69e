//! Failures the agent survives, against the real binary through a test kubelet: its config file
//! deleted, truncated and replaced with garbage while it runs, and a GPU lost while Allocate
//! calls are in flight.
//!
//! Other faults have their tests next to the feature they exercise: 100 kubelet restarts
//! (`restarts.rs`), a kubelet absent at start (`kubelet.rs`, `waits_for_a_kubelet_that_starts_later`),
//! SIGTERM during an open ListAndWatch (`kubelet.rs`, `sigterm_removes_the_socket_and_exits_zero`),
//! no pod-resources socket (`metrics.rs`, `scrape_reports_the_fixture_and_follows_its_edits`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The value of the unlabelled counter `name` in a scrape of `addr` (None: no answer or absent).
fn counter(addr: &str, name: &str) -> Option<f64> {
    scrape(addr)?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Something done to the config file.
type Fault = dyn Fn(&Path);

const REPLICAS_2: &str =
    "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2}\n";
const REPLICAS_3: &str =
    "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 3}\n";
const REPLICAS_4: &str =
    "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 4}\n";

#[tokio::test]
async fn a_deleted_truncated_or_garbage_config_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "config.yaml", REPLICAS_2);
    let addr = free_addr();
    let args = ["--config", arg(&config), "--metrics-addr", &addr];
    let (kubelet, agent, reg) = start_registered(dir.path(), &args).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    assert_eq!(ids.len(), 16, "8 GPUs x 2 replicas");
    assert!(ids[0].ends_with("::0"), "{ids:?}");

    let failures = |addr: &str| counter(addr, "gpu_agent_config_reload_failures_total");
    eventually("the metrics endpoint", || failures(&addr).is_some()).await;
    let mut seen = failures(&addr).unwrap();
    assert_eq!(seen, 0.0);

    // Each fault: the failure counter goes up, the device list stays, Allocate keeps working
    // with the replicas of the last good config.
    let faults: [(&str, &Fault); 3] = [
        ("deleted", &|p| std::fs::remove_file(p).unwrap()),
        ("truncated mid-document", &|p| {
            std::fs::write(p, &REPLICAS_3[..REPLICAS_3.len() - 20]).unwrap()
        }),
        ("replaced with garbage", &|p| {
            std::fs::write(p, b"\xff\xfe\x00garbage: [{{ ::\n\t- \x07").unwrap()
        }),
    ];
    for (what, fault) in faults {
        fault(&config);
        eventually(
            &format!("the failure counter to count the config {what}"),
            || failures(&addr).is_some_and(|n| n > seen),
        )
        .await;
        seen = failures(&addr).unwrap();
        plugin.assert_quiet(Duration::from_millis(700), what).await;
        plugin
            .allocate(&ids[0..2])
            .await
            .unwrap_or_else(|s| panic!("Allocate after the config was {what}: {s}"));
    }
    assert!(seen >= 3.0, "{seen}");
    let logs = agent.logs();
    assert!(logs.contains("config file unreadable"), "{logs}");
    assert!(logs.contains("invalid config rejected"), "{logs}");

    // A good config afterwards is applied on the same stream: the watcher survived it all.
    let reloads = counter(&addr, "gpu_agent_config_reloads_total").unwrap();
    replace_file(&config, REPLICAS_3);
    assert_eq!(plugin.next().await.len(), 24);
    eventually("the reload counter", || {
        counter(&addr, "gpu_agent_config_reloads_total").is_some_and(|n| n > reloads)
    })
    .await;
    assert_eq!(failures(&addr), Some(seen));
}

/// NVIDIA's config-manager sidecar switches the config by replacing it with a symlink, to
/// `/dev/null` for its "empty" fallback: that is a valid config, all defaults, not a fault.
#[tokio::test]
async fn a_switch_to_dev_null_means_defaults_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let real = write_file(dir.path(), "replicas.yaml", REPLICAS_2);
    let config = dir.path().join("config.yaml");
    std::os::unix::fs::symlink(&real, &config).unwrap();
    let (kubelet, _agent, reg) = start_registered(dir.path(), &["--config", arg(&config)]).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    assert_eq!(plugin.devices.len(), 16);

    let relink = |target: &Path| {
        let tmp = dir.path().join("config.yaml.new");
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    };
    relink(Path::new("/dev/null"));
    plugin
        .until("whole GPUs again", |d| {
            d.len() == 8 && d.iter().all(|d| !d.id.contains("::"))
        })
        .await;
    relink(&real);
    plugin.until("replicas again", |d| d.len() == 16).await;
    // An empty file is the same config as /dev/null.
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, "").unwrap();
    plugin
        .until("whole GPUs from an empty file", |d| d.len() == 8)
        .await;
}

fn four_gpus(lost: Option<usize>) -> String {
    let mut text = String::from("node: faults\ngpus:\n");
    for i in 0..4 {
        text += &format!(
            "  - {{model: NVIDIA H100 80GB HBM3, numaNode: 0, lost: {}}}\n",
            lost == Some(i)
        );
    }
    text
}

#[tokio::test]
async fn a_gpu_lost_during_allocations_is_refused_by_id_and_the_rest_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(dir.path(), "fixture.yaml", &four_gpus(None));
    let config = write_file(dir.path(), "config.yaml", REPLICAS_4);
    let args = ["--mock-fixture", arg(&fixture), "--config", arg(&config)];
    let (kubelet, _agent, reg) = start_registered(dir.path(), &args).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let ids = plugin.ids();
    assert_eq!(ids.len(), 16);
    let lost_gpu = gpu_agent::gpu::fixture::parse(&four_gpus(None))
        .unwrap()
        .inventory
        .gpus[2]
        .uuid
        .clone();
    let on_lost: BTreeSet<String> = ids
        .iter()
        .filter(|id| id.starts_with(&lost_gpu))
        .cloned()
        .collect();
    assert_eq!(on_lost.len(), 4, "{ids:?}");

    // Allocations in flight on their own connection while the GPU is lost: each one either
    // succeeds or is refused with InvalidArgument naming a replica of the lost GPU.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let ok = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    let mut busy = kubelet.plugin(&reg.endpoint).await;
    let all = ids.clone();
    let lost_ids = on_lost.clone();
    let (ok_count, refused_count) = (ok.clone(), refused.clone());
    let allocator = tokio::spawn(async move {
        let mut i = 0usize;
        while !*stop_rx.borrow_and_update() {
            // One, then two devices per request, walking every replica.
            let request: Vec<&str> = (0..1 + i % 2)
                .map(|k| all[(i + k) % all.len()].as_str())
                .collect();
            i += 1;
            match allocate(&mut busy, &request).await {
                Ok(_) => ok_count.fetch_add(1, Ordering::SeqCst),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                    let named = request
                        .iter()
                        .find(|id| status.message().contains(&format!("{id:?}")))
                        .unwrap_or_else(|| {
                            panic!(
                                "{request:?} refused without naming one: {}",
                                status.message()
                            )
                        });
                    assert!(
                        lost_ids.contains(*named),
                        "refused a healthy device: {}",
                        status.message()
                    );
                    refused_count.fetch_add(1, Ordering::SeqCst)
                }
            };
        }
    });

    // Allocations succeed before the loss, and are refused once the agent has seen it (a panic
    // in the allocator ends the wait early; joining it below reports the panic).
    eventually("an allocation before the GPU is lost", || {
        ok.load(Ordering::SeqCst) > 0 || allocator.is_finished()
    })
    .await;
    replace_file(&fixture, &four_gpus(Some(2)));
    assert_eq!(unhealthy(plugin.next().await), on_lost);
    eventually("an allocation refused after the GPU is lost", || {
        refused.load(Ordering::SeqCst) > 0 || allocator.is_finished()
    })
    .await;
    let _ = stop_tx.send(true);
    allocator.await.expect("allocator task");
    let (ok, refused) = (ok.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");

    // Now, one by one: the lost GPU's replicas are refused as unhealthy, naming the ID; the
    // others work.
    plugin.assert_allocatable(&ids, &on_lost).await;
    // A request mixing a healthy replica with a lost one names the lost one.
    let lost_one = on_lost.iter().next().unwrap();
    let status = plugin.allocate(&[&ids[0], lost_one]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains(lost_one.as_str()),
        "{}",
        status.message()
    );

    // Preferred allocation still answers, even when the kubelet still offers the lost replicas
    // (its own view may lag), and never picks them.
    let chosen = plugin.preferred(&ids, &[], 4).await;
    assert_eq!(chosen.len(), 4, "{chosen:?}");
    assert!(chosen.iter().all(|id| !on_lost.contains(id)), "{chosen:?}");
}
