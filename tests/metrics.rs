//! `/metrics`, `/healthz`, `/readyz` and the NFD feature file, from the real binary on the mock
//! backend, over real HTTP and real unix sockets (SPEC.md section 6).

mod common;
#[path = "common/exposition.rs"]
mod exposition;
#[path = "common/pods.rs"]
mod pods;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use gpu_agent::proto::podresources_v1::ListPodResourcesResponse;
use pods::{pod, serve_pod_resources, PodResourcesStub};

const GPU0: &str = "GPU-00000000-1111-2222-3333-000000000000";
const GPU1: &str = "GPU-00000000-1111-2222-3333-000000000001";
const GPU2: &str = "GPU-00000000-1111-2222-3333-000000000002";

fn fixture(gpu0_utilization: u32) -> String {
    format!(
        r#"
node: metrics-node
driverVersion: "580.95.05"
cudaDriverVersion: "13.0"
gpus:
  - model: NVIDIA H100 80GB HBM3
    uuid: {GPU0}
    telemetry: {{utilizationPercent: {gpu0_utilization}, memoryUsedMiB: 40000, memoryReservedMiB: 559, temperatureCelsius: 61, memoryClockMhz: 2619, energyMillijoules: 123456789, eccUncorrectedTotal: 1, clockThrottleReasons: 0x44, profiling: {{smActive: 0.75, pcieRxBytesPerSecond: 2.5e9}}, powerWatts: 412.5}}
  - model: NVIDIA H100 80GB HBM3
    uuid: {GPU1}
    telemetry: {{utilizationPercent: 5, memoryUsedMiB: 1024, temperatureCelsius: 40, powerWatts: 90}}
  - model: NVIDIA H100 80GB HBM3
    uuid: {GPU2}
    mig: {{devices: [{{profile: 3g.40gb, memoryUsedMiB: 1200}}, 2g.20gb]}}
"#
    )
}

/// One sample: (metric name, labels, value).
type Sample = (String, BTreeMap<String, String>, f64);

/// Parse the text exposition.
fn parse(text: &str) -> Vec<Sample> {
    exposition::parse(text)
        .into_iter()
        .map(|s| {
            let labels = s.labels_map();
            (s.name, labels, s.value)
        })
        .collect()
}

fn find<'a>(samples: &'a [Sample], name: &str, label: (&str, &str)) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.get(label.0).map(String::as_str) == Some(label.1))
}

fn value(samples: &[Sample], name: &str, uuid: &str) -> Option<f64> {
    find(samples, name, ("uuid", uuid)).map(|s| s.2)
}

/// Scrape until `check` passes on the parsed samples; returns that scrape's text.
async fn scrape_until(addr: &str, what: &str, check: impl Fn(&[Sample]) -> bool) -> String {
    let mut found = None;
    eventually(what, || {
        found = scrape(addr).filter(|text| check(&parse(text)));
        found.is_some()
    })
    .await;
    found.unwrap_or_default()
}

/// `promtool check metrics` on `text` finds nothing to complain about (when promtool is
/// installed: `.ci/run` installs it).
fn promtool_check(text: &str) {
    if let Some(complaints) = exposition::promtool_check(text) {
        assert!(
            complaints.is_empty(),
            "promtool check metrics complained:\n{}\n--- scrape ---\n{text}",
            complaints.join("\n")
        );
    }
}

#[tokio::test]
async fn scrape_reports_the_fixture_and_follows_its_edits() {
    let dir = tempfile::tempdir().unwrap();
    let fixture_path = write_file(dir.path(), "fixture.yaml", &fixture(87));
    let addr = free_addr();
    let _kubelet = TestKubelet::start(dir.path()).await;
    let agent = Agent::spawn(
        dir.path(),
        &[
            "--mock-fixture",
            arg(&fixture_path),
            "--metrics-addr",
            &addr,
            "--collect-interval",
            "200ms",
        ],
    );

    let text = scrape_until(&addr, "GPU 0 utilization", |s| {
        value(s, "gpu_utilization_percent", GPU0) == Some(87.0)
    })
    .await;
    let samples = parse(&text);
    let (_, labels, _) = find(&samples, "gpu_healthy", ("uuid", GPU0)).unwrap();
    assert_eq!(labels["node"], "metrics-node");
    assert_eq!(labels["gpu"], "0");
    assert_eq!(labels["model"], "NVIDIA H100 80GB HBM3");
    assert_eq!(
        value(&samples, "gpu_memory_used_bytes", GPU0),
        Some(40000.0 * 1048576.0)
    );
    let total = value(&samples, "gpu_memory_total_bytes", GPU0).unwrap();
    let percent = value(&samples, "gpu_memory_utilization_percent", GPU0).unwrap();
    assert!((percent - 40000.0 * 1048576.0 / total * 100.0).abs() < 1e-9);
    assert_eq!(value(&samples, "gpu_temperature_celsius", GPU1), Some(40.0));
    assert_eq!(value(&samples, "gpu_power_watts", GPU0), Some(412.5));
    assert_eq!(value(&samples, "gpu_healthy", GPU1), Some(1.0));
    // The fields added for dcgm-exporter's list, in SI units.
    assert_eq!(
        value(&samples, "gpu_memory_reserved_bytes", GPU0),
        Some(559.0 * 1048576.0)
    );
    assert_eq!(
        value(&samples, "gpu_memory_free_bytes", GPU0),
        Some(total - (40000.0 + 559.0) * 1048576.0)
    );
    assert_eq!(
        value(&samples, "gpu_memory_clock_hertz", GPU0),
        Some(2.619e9)
    );
    assert_eq!(
        value(&samples, "gpu_energy_joules_total", GPU0),
        Some(123456.789)
    );
    assert_eq!(
        value(&samples, "gpu_prof_sm_active_ratio", GPU0),
        Some(0.75)
    );
    assert_eq!(
        value(&samples, "gpu_prof_pcie_rx_bytes_per_second", GPU0),
        Some(2.5e9)
    );
    let labelled = |name: &str, label: (&str, &str)| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l["uuid"] == GPU0
                    && l.get(label.0).map(String::as_str) == Some(label.1)
            })
            .map(|s| s.2)
    };
    assert_eq!(
        labelled("gpu_ecc_errors_total", ("type", "uncorrected")),
        Some(1.0)
    );
    assert_eq!(
        labelled("gpu_clock_throttled", ("reason", "hw_thermal_slowdown")),
        Some(1.0)
    );
    assert_eq!(
        labelled("gpu_clock_throttled", ("reason", "gpu_idle")),
        Some(0.0)
    );
    // Every GPU and MIG device has its XID totals, at 0 before any XID: an alert on
    // increase() sees the first one.
    for name in ["gpu_xid_events_total", "gpu_xid_critical_errors_total"] {
        let at_zero: Vec<&Sample> = samples.iter().filter(|s| s.0 == name).collect();
        assert_eq!(at_zero.len(), 3 + 2, "{name}: {at_zero:?}");
        assert!(at_zero.iter().all(|s| s.2 == 0.0), "{name}: {at_zero:?}");
    }
    assert!(!samples.iter().any(|s| s.0 == "gpu_xid_errors_total"));

    // MIG devices: parent, profile and instance id; memory, no utilization / power / temperature.
    let migs: Vec<&Sample> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "gpu_memory_used_bytes" && l.get("parent_uuid").map(String::as_str) == Some(GPU2)
        })
        .collect();
    assert_eq!(migs.len(), 2, "{migs:?}");
    let big = migs
        .iter()
        .find(|(_, l, _)| l["mig_profile"] == "3g.40gb")
        .expect("3g.40gb series");
    assert_eq!(big.2, 1200.0 * 1048576.0);
    assert_eq!(big.1["gpu"], "2");
    assert!(big.1["uuid"].starts_with("MIG-"));
    assert!(big.1["gpu_instance_id"].parse::<u32>().is_ok());
    for (_, l, _) in &migs {
        let uuid = &l["uuid"];
        assert_eq!(value(&samples, "gpu_utilization_percent", uuid), None);
        assert_eq!(value(&samples, "gpu_power_watts", uuid), None);
        assert_eq!(value(&samples, "gpu_temperature_celsius", uuid), None);
        assert_eq!(value(&samples, "gpu_healthy", uuid), Some(1.0));
    }
    // No pod-resources socket: device metrics without attribution.
    assert!(!samples.iter().any(|s| s.0 == "gpu_container_allocation"));
    assert_eq!(
        samples
            .iter()
            .find(|s| s.0 == "gpu_agent_pod_resources_up")
            .map(|s| s.2),
        Some(0.0)
    );
    assert_eq!(
        samples
            .iter()
            .find(|s| s.0 == "gpu_agent_build_info")
            .map(|s| s.1["version"].clone()),
        Some(env!("CARGO_PKG_VERSION").to_string())
    );
    promtool_check(&text);

    // A fixture edit shows up within a few collect intervals; an appended XID is counted.
    let edited = fixture(12).replacen(
        "powerWatts: 412.5}",
        "powerWatts: 412.5}\n    xids: [13]",
        1,
    );
    replace_file(&fixture_path, &edited);
    let text = scrape_until(&addr, "the edited utilization and the XID", |s| {
        value(s, "gpu_utilization_percent", GPU0) == Some(12.0)
            && s.iter().any(|(n, l, v)| {
                n == "gpu_xid_errors_total" && l["uuid"] == GPU0 && l["xid"] == "13" && *v == 1.0
            })
    })
    .await;
    let samples = parse(&text);
    assert_eq!(value(&samples, "gpu_xid_events_total", GPU0), Some(1.0));
    assert_eq!(
        value(&samples, "gpu_xid_critical_errors_total", GPU0),
        Some(0.0),
        "XID 13 is an application fault, ignored by default"
    );
    assert_eq!(value(&samples, "gpu_xid_events_total", GPU1), Some(0.0));
    promtool_check(&text);

    // The absent socket was reported once, not every interval.
    let logs = agent.logs();
    assert_eq!(
        logs.matches("pod-resources socket absent").count(),
        1,
        "{logs}"
    );
}

#[tokio::test]
async fn readyz_follows_registration_and_healthz_is_always_up() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut kubelet = TestKubelet::absent(dir.path());
    let _agent = Agent::spawn(dir.path(), &["--metrics-addr", &addr]);

    eventually("/healthz answers", || {
        matches!(http_get(&addr, "/healthz"), Some((200, _)))
    })
    .await;
    // dcgm-exporter's liveness path answers the same.
    assert_eq!(http_get(&addr, "/health"), http_get(&addr, "/healthz"));
    let registered = |addr: &str| {
        let text = scrape(addr).unwrap();
        find(
            &parse(&text),
            "gpu_agent_resource_registered",
            ("resource", "nvidia.com/gpu"),
        )
        .map(|s| s.2)
    };
    assert_eq!(registered(&addr), Some(0.0));
    // No kubelet yet: not ready, and the body says which resource waits.
    let (status, body) = http_get(&addr, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nvidia.com/gpu"), "{body}");

    // The kubelet starts: it registers us and opens its stream inside Register.
    kubelet.serve();
    kubelet.next_registration().await;
    eventually("/readyz 200", || {
        matches!(http_get(&addr, "/readyz"), Some((200, _)))
    })
    .await;
    assert_eq!(registered(&addr), Some(1.0), "as /readyz says");
    let registrations = |addr: &str| {
        let text = scrape(addr).unwrap();
        find(
            &parse(&text),
            "gpu_agent_registrations_total",
            ("resource", "nvidia.com/gpu"),
        )
        .map(|s| s.2)
    };
    assert_eq!(registrations(&addr), Some(1.0));

    // The kubelet exits (its stream goes with it): not ready until the next one registers us.
    kubelet.stop().await;
    eventually("/readyz 503 after the kubelet exited", || {
        matches!(http_get(&addr, "/readyz"), Some((503, _)))
    })
    .await;
    assert_eq!(registered(&addr), Some(0.0));
    assert!(matches!(http_get(&addr, "/healthz"), Some((200, _))));
    kubelet.serve();
    eventually("/readyz 200 again", || {
        matches!(http_get(&addr, "/readyz"), Some((200, _)))
    })
    .await;
    assert_eq!(registrations(&addr), Some(2.0));
}

#[tokio::test]
async fn attribution_lists_every_sharer_and_every_vgpu_slice() {
    let dir = tempfile::tempdir().unwrap();
    let fixture_path = write_file(dir.path(), "fixture.yaml", &fixture(50));
    let config = write_file(
        dir.path(),
        "config.yaml",
        r#"version: v1
flags: {migStrategy: mixed}
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, replicas: 4, devices: [0], rename: nvidia.com/gpu.shared}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 20000, devices: [1], rename: nvidia.com/vgpu}
"#,
    );
    let stub = PodResourcesStub::default();
    let slice = |n: u32| format!("{GPU1}::vgpu{n}");
    let replica = |n: u32| format!("{GPU0}::{n}");
    *stub.answer.lock().unwrap() = ListPodResourcesResponse {
        pod_resources: vec![
            pod(
                "ml",
                "infer-a",
                &[("server", "nvidia.com/gpu.shared", &[replica(0)])],
            ),
            pod(
                "ml",
                "infer-b",
                &[("server", "nvidia.com/gpu.shared", &[replica(1)])],
            ),
            pod(
                "ml",
                "slices",
                &[
                    ("one", "nvidia.com/vgpu", &[slice(0)]),
                    ("two", "nvidia.com/vgpu", &[slice(1), slice(2)]),
                ],
            ),
            pod(
                "other",
                "fpga",
                &[("x", "example.com/fpga", &["F-0".to_string()])],
            ),
        ],
    };
    serve_pod_resources(&dir.path().join("pod-resources.sock"), stub.clone());

    let addr = free_addr();
    let _kubelet = TestKubelet::start(dir.path()).await;
    let _agent = Agent::spawn(
        dir.path(),
        &[
            "--mock-fixture",
            arg(&fixture_path),
            "--config",
            arg(&config),
            "--metrics-addr",
            &addr,
            "--collect-interval",
            "200ms",
        ],
    );

    let allocations = |s: &[Sample]| -> Vec<String> {
        s.iter()
            .filter(|(n, _, _)| n == "gpu_container_allocation")
            .map(|(_, l, v)| {
                format!(
                    "{}/{}/{} {} {} {} {v}",
                    l["namespace"],
                    l["pod"],
                    l["container"],
                    l["resource"],
                    l["device_id"],
                    l["uuid"]
                )
            })
            .collect()
    };
    let text = scrape_until(
        &addr,
        "five attributed containers and a telemetry sample",
        |s| {
            allocations(s).len() == 5
                && find(s, "gpu_memory_used_bytes", ("mig_profile", "2g.20gb")).is_some()
        },
    )
    .await;
    let samples = parse(&text);
    let mut got = allocations(&samples);
    got.sort();
    assert_eq!(
        got,
        [
            format!(
                "ml/infer-a/server nvidia.com/gpu.shared {} {GPU0} 1",
                replica(0)
            ),
            format!(
                "ml/infer-b/server nvidia.com/gpu.shared {} {GPU0} 1",
                replica(1)
            ),
            format!("ml/slices/one nvidia.com/vgpu {} {GPU1} 1", slice(0)),
            format!("ml/slices/two nvidia.com/vgpu {} {GPU1} 1", slice(1)),
            format!("ml/slices/two nvidia.com/vgpu {} {GPU1} 1", slice(2)),
        ]
    );
    assert_eq!(
        samples
            .iter()
            .find(|s| s.0 == "gpu_agent_pod_resources_up")
            .map(|s| s.2),
        Some(1.0)
    );
    promtool_check(&text);

    // A MIG device held by a pod joins on the MIG UUID.
    let mig = find(
        &samples,
        "gpu_memory_used_bytes",
        ("mig_profile", "2g.20gb"),
    )
    .map(|s| s.1["uuid"].clone())
    .expect("2g.20gb device");
    *stub.answer.lock().unwrap() = ListPodResourcesResponse {
        pod_resources: vec![pod(
            "ml",
            "train",
            &[("main", "nvidia.com/mig-2g.20gb", std::slice::from_ref(&mig))],
        )],
    };
    scrape_until(&addr, "the MIG allocation replacing the others", |s| {
        allocations(s)
            == [format!(
                "ml/train/main nvidia.com/mig-2g.20gb {mig} {mig} 1"
            )]
    })
    .await;
}

#[tokio::test]
async fn a_rate_limiting_kubelet_gets_fewer_calls() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let stub = PodResourcesStub::default();
    stub.exhausted.store(true, Ordering::SeqCst);
    serve_pod_resources(&dir.path().join("pod-resources.sock"), stub.clone());
    let addr = free_addr();
    let _kubelet = TestKubelet::start(dir.path()).await;
    let _agent = Agent::spawn(
        dir.path(),
        &["--metrics-addr", &addr, "--collect-interval", "100ms"],
    );
    eventually("the first List call", || {
        stub.calls.load(Ordering::SeqCst) > 0
    })
    .await;
    let started = stub.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Without backoff that is ~30 calls; doubling from 100 ms gives 4 or 5.
    let during = stub.calls.load(Ordering::SeqCst) - started;
    assert!(during <= 8, "{during} List calls in 3 s while rate-limited");

    // Once the kubelet answers again, attribution is back (pods_resources_up 1).
    stub.exhausted.store(false, Ordering::SeqCst);
    scrape_until(&addr, "pod-resources up again", |s| {
        s.iter()
            .any(|(n, _, v)| n == "gpu_agent_pod_resources_up" && *v == 1.0)
    })
    .await;
}

#[tokio::test]
async fn nfd_feature_file_follows_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let fixture_path = write_file(dir.path(), "fixture.yaml", &fixture(0));
    let config = write_file(
        dir.path(),
        "config.yaml",
        "version: v1\nflags: {migStrategy: mixed}\n",
    );
    let features = dir.path().join("features.d").join("gpu-agent");
    let _kubelet = TestKubelet::start(dir.path()).await;
    let _agent = Agent::spawn(
        dir.path(),
        &[
            "--mock-fixture",
            arg(&fixture_path),
            "--config",
            arg(&config),
            "--nfd-features-file",
            arg(&features),
        ],
    );
    let read = || std::fs::read_to_string(&features).unwrap_or_default();
    eventually("the feature file", || !read().is_empty()).await;
    let labels: BTreeMap<String, String> = read()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let expect = [
        ("nvidia.com/gpu.present", "true"),
        ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
        ("nvidia.com/gpu.count", "3"),
        ("nvidia.com/gpu.replicas", "1"),
        ("nvidia.com/gpu.sharing-strategy", "none"),
        ("nvidia.com/mig.capable", "true"),
        ("nvidia.com/mig.strategy", "mixed"),
        ("nvidia.com/mig-3g.40gb.count", "1"),
        ("nvidia.com/mig-2g.20gb.count", "1"),
        (
            "nvidia.com/mig-2g.20gb.product",
            "NVIDIA-H100-80GB-HBM3-MIG-2g.20gb",
        ),
        ("nvidia.com/cuda.driver-version.full", "580.95.05"),
    ];
    for (k, v) in expect {
        assert_eq!(
            labels.get(k).map(String::as_str),
            Some(v),
            "{k} in {labels:?}"
        );
    }
    assert!(labels["nvidia.com/gpu.memory"].parse::<u64>().unwrap() > 80_000);
    // No temp file left beside it (NFD would skip a hidden one anyway).
    let entries = std::fs::read_dir(features.parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(entries, 1);

    // A config change rewrites the file.
    replace_file(
        &config,
        "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 4}\n",
    );
    eventually("time-slicing labels", || {
        let text = read();
        text.contains("nvidia.com/gpu.replicas=4\n")
            && text.contains("nvidia.com/gpu.sharing-strategy=time-slicing\n")
            && text.contains("nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3-SHARED\n")
    })
    .await;
}

#[test]
fn a_taken_metrics_address_is_a_clear_fatal_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut agent = Agent::spawn(dir.path(), &["--metrics-addr", &addr]);
    let status = agent.wait_exit(WAIT).expect("the agent exits");
    assert_eq!(status.code(), Some(1));
    let logs = agent.logs();
    assert!(
        logs.contains(&addr) && logs.contains("--metrics-addr"),
        "{logs}"
    );
}
