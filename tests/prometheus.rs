//! The agent scraped by a real Prometheus (Debian's `prometheus` package, which `.ci/run`
//! installs for promtool; skipped, saying why, where `prometheus` is not installed):
//!
//! - NVIDIA's dcgm-exporter dashboard (its 8 panel queries and 2 template variables, written
//!   here as text) returns data from the agent in `dcgm` naming;
//! - an alert on `increase(gpu_xid_events_total[1m]) > 0` fires on the first XID of a device,
//!   GPU or MIG (the series exists at 0 before it);
//! - our dashboard's queries work when two jobs scrape the same agent (the Service annotations
//!   and the ServiceMonitor), and its per-pod panels return data.

mod common;
#[path = "common/pods.rs"]
mod pods;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pods::{pod, serve_pod_resources, PodResourcesStub};
use serde_json::Value;

const GPU0: &str = "GPU-00000000-1111-2222-3333-000000000000";
const GPU1: &str = "GPU-00000000-1111-2222-3333-000000000001";

/// How long Prometheus gets to scrape what a check needs (scrapes every second).
const PROMETHEUS_WAIT: Duration = Duration::from_secs(40);

fn fixture(gpu0_xids: &str, mig_xids: &str) -> String {
    format!(
        r#"
node: prom-node
driverVersion: "580.95.05"
gpus:
  - model: NVIDIA H100 80GB HBM3
    uuid: {GPU0}
    pciBusId: "0000:18:00.0"
    telemetry: {{utilizationPercent: 87, memoryUsedMiB: 40000, temperatureCelsius: 61, powerWatts: 412.5, profiling: {{tensorActive: 0.25}}}}
    xids: [{gpu0_xids}]
  - model: NVIDIA H100 80GB HBM3
    uuid: {GPU1}
    pciBusId: "0000:2a:00.0"
    mig: {{devices: [{{profile: 3g.40gb, memoryUsedMiB: 1200, xids: [{mig_xids}]}}, 2g.20gb]}}
"#
    )
}

/// A Prometheus server scraping the agent, its data in a temp dir; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Prometheus {
    /// Start Prometheus with one scrape job per name in `jobs`, each scraping `target` every
    /// second with `honor_labels` and a `node` target label (as the ServiceMonitor's
    /// relabeling adds). `None`, with the reason printed, where `prometheus` is not installed.
    async fn start(dir: &Path, target: &str, node: &str, jobs: &[&str]) -> Option<Self> {
        if let Err(e) = Command::new("prometheus").arg("--version").output() {
            println!("SKIPPED: prometheus not runnable ({e}); install Debian's `prometheus` package (RUNLEVEL=1 apt-get install prometheus)");
            return None;
        }
        let mut config = String::from(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\nscrape_configs:\n",
        );
        for job in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    honor_labels: true\n    static_configs:\n      - targets: [\"{target}\"]\n        labels: {{node: {node}}}\n"
            ));
        }
        let config_path = write_file(dir, "prometheus.yml", &config);
        let addr = free_addr();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect("spawn prometheus");
        let prometheus = Self { child, addr, log };
        eventually("Prometheus ready", || {
            matches!(get(&prometheus.addr, "/-/ready"), Some((200, _)))
        })
        .await;
        Some(prometheus)
    }

    /// `/api/v1/query`: the result vector, or the error Prometheus answered.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = get(&self.addr, &path).ok_or("no answer")?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Grafana's `label_values(metric, label)`: `/api/v1/label/<label>/values?match[]=metric`.
    fn label_values(&self, metric: &str, label: &str) -> Vec<String> {
        let path = format!("/api/v1/label/{label}/values?match[]={}", encode(metric));
        let Some((200, body)) = get(&self.addr, &path) else {
            return Vec::new();
        };
        let json: Value = serde_json::from_str(&body).unwrap_or_default();
        json["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// Poll `promql` until its result satisfies `check`; the last result.
    async fn until(&self, promql: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        let mut last = Err(String::new());
        while Instant::now() < deadline {
            last = self.query(promql);
            if let Ok(result) = &last {
                if check(result) {
                    return result.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("timed out waiting for {promql}: last answer {last:?}");
    }

    /// Wait until every job has scraped the agent.
    async fn scraped(&self, jobs: usize) {
        self.until("up == 1", |r| r.len() == jobs).await;
    }
}

/// `GET path` over HTTP/1.0 (no chunked answers): (status, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Percent-encode a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The agent on `fixture_text` with HTTP on, `extra` arguments added.
struct Node {
    dir: tempfile::TempDir,
    _kubelet: TestKubelet,
    _agent: Agent,
    addr: String,
    fixture: PathBuf,
}

async fn start_agent(fixture_text: &str, extra: &[&str], stub: Option<PodResourcesStub>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(dir.path(), "fixture.yaml", fixture_text);
    if let Some(stub) = stub {
        serve_pod_resources(&dir.path().join("pod-resources.sock"), stub);
    }
    let addr = free_addr();
    let kubelet = TestKubelet::start(dir.path()).await;
    let mut args = vec![
        "--mock-fixture",
        arg(&fixture),
        "--metrics-addr",
        &addr,
        "--collect-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let agent = Agent::spawn(dir.path(), &args);
    eventually("the agent's /metrics", || scrape(&addr).is_some()).await;
    Node {
        dir,
        _kubelet: kubelet,
        _agent: agent,
        addr,
        fixture,
    }
}

/// NVIDIA's dashboard (grafana/dcgm-exporter-dashboard.json of dcgm-exporter 4.x): the
/// expression of each of its 8 panels, `$instance` and `$gpu` as "All" selects them.
const NVIDIA_PANELS: &[(&str, &str)] = &[
    (
        "GPU Temperature",
        r#"DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"}"#,
    ),
    (
        "GPU Avg. Temp",
        r#"avg(DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"})"#,
    ),
    (
        "GPU Power Usage",
        r#"DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"}"#,
    ),
    (
        "GPU Power Total",
        r#"sum(DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"})"#,
    ),
    (
        "GPU SM Clocks",
        r#"DCGM_FI_DEV_SM_CLOCK{instance=~"$instance", gpu=~"$gpu"} * 1000000"#,
    ),
    (
        "GPU Utilization",
        r#"DCGM_FI_DEV_GPU_UTIL{instance=~"$instance", gpu=~"$gpu"}"#,
    ),
    (
        "GPU Framebuffer Mem Used",
        r#"DCGM_FI_DEV_FB_USED{instance=~"$instance", gpu=~"$gpu"}"#,
    ),
    (
        "Tensor Core Utilization",
        r#"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{instance=~"$instance", gpu=~"$gpu"}"#,
    ),
];

/// Its template variables: `label_values(metric, label)`.
const NVIDIA_VARIABLES: &[(&str, &str)] = &[
    ("DCGM_FI_DEV_GPU_TEMP", "instance"),
    ("DCGM_FI_DEV_GPU_TEMP", "gpu"),
];

#[tokio::test]
async fn nvidia_dashboard_queries_return_data_in_dcgm_naming() {
    let node = start_agent(&fixture("", ""), &["--metrics-names", "dcgm"], None).await;
    let Some(prometheus) =
        Prometheus::start(node.dir.path(), &node.addr, "prom-node", &["dcgm-exporter"]).await
    else {
        return;
    };
    prometheus.scraped(1).await;

    for (metric, label) in NVIDIA_VARIABLES {
        let values = prometheus.label_values(metric, label);
        assert!(!values.is_empty(), "label_values({metric}, {label})");
        if *label == "gpu" {
            assert_eq!(
                values,
                ["0", "1"],
                "both GPUs, the MIG one as its instances"
            );
        }
    }
    for (panel, expr) in NVIDIA_PANELS {
        let promql = expr.replace("$instance", ".+").replace("$gpu", ".+");
        let result = prometheus.until(&promql, |r| !r.is_empty()).await;
        // Per-GPU panels show every GPU (the MIG one through its instances).
        if !panel.contains("Avg") && !panel.contains("Total") && *panel != "GPU Utilization" {
            let gpus: std::collections::BTreeSet<&str> = result
                .iter()
                .filter_map(|s| s["metric"]["gpu"].as_str())
                .collect();
            assert_eq!(gpus.len(), 2, "{panel}: {result:?}");
        }
    }
    // Units as the dashboard expects them: SM clock in MHz (it multiplies by 10^6), power in W.
    let power = prometheus
        .query(r#"sum(DCGM_FI_DEV_POWER_USAGE{gpu="0"})"#)
        .unwrap();
    assert_eq!(power[0]["value"][1], "412.5");
}

#[tokio::test]
async fn an_xid_alert_fires_on_the_first_xid_of_a_gpu_and_of_a_mig_device() {
    let node = start_agent(&fixture("", ""), &[], None).await;
    let Some(prometheus) =
        Prometheus::start(node.dir.path(), &node.addr, "prom-node", &["gpu-agent"]).await
    else {
        return;
    };
    prometheus.scraped(1).await;
    // Every device has its series at 0 before any XID; the alert is quiet.
    prometheus
        .until("gpu_xid_events_total", |r| r.len() == 2 + 2)
        .await;
    // A few scrapes at 0, so that the XID lands in the alert's window after them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alert = "increase(gpu_xid_events_total[1m]) > 0";
    assert_eq!(prometheus.query(alert).unwrap(), Vec::<Value>::new());

    // The bug report's scenario: XID 43 on a GPU, XID 94 on a MIG device, the first of each.
    replace_file(&node.fixture, &fixture("43", "94"));
    let fired = prometheus.until(alert, |r| r.len() == 2).await;
    let devices: Vec<(&str, Option<&str>)> = fired
        .iter()
        .map(|s| {
            (
                s["metric"]["uuid"].as_str().unwrap_or(""),
                s["metric"]["mig_profile"].as_str(),
            )
        })
        .collect();
    assert!(devices.contains(&(GPU0, None)), "{fired:?}");
    assert!(
        devices.iter().any(|(_, mig)| *mig == Some("3g.40gb")),
        "{fired:?}"
    );
    // 43 is an application fault (ignored by the health policy), 94 marks the MIG device
    // unhealthy: only the latter counts as critical.
    let critical = prometheus
        .until("increase(gpu_xid_critical_errors_total[1m]) > 0", |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(critical.len(), 1, "{critical:?}");
    assert_eq!(critical[0]["metric"]["mig_profile"], "3g.40gb");
}

/// Every PromQL expression of our dashboard, `$node` as "All" selects it.
fn our_dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/daemonset/dashboards/gpu-agent.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("").to_string();
                out.push((title, expr.replace("$node", ".*")));
            }
        }
    }
    out
}

#[tokio::test]
async fn our_dashboard_works_with_two_scrape_jobs() {
    let config = "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2}\n";
    let stub = PodResourcesStub::default();
    stub.set(vec![
        pod(
            "ml",
            "infer-a",
            &[("server", "nvidia.com/gpu", &[format!("{GPU0}::0")])],
        ),
        pod(
            "ml",
            "infer-b",
            &[("server", "nvidia.com/gpu", &[format!("{GPU0}::1")])],
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_file(dir.path(), "config.yaml", config);
    let node = start_agent(
        &fixture("", ""),
        &["--config", arg(&config_path)],
        Some(stub),
    )
    .await;
    let jobs = ["gpu-agent", "kubernetes-service-endpoints"];
    let Some(prometheus) = Prometheus::start(node.dir.path(), &node.addr, "prom-node", &jobs).await
    else {
        return;
    };
    prometheus.scraped(2).await;
    prometheus
        .until("gpu_container_allocation", |r| r.len() == 2 * 2)
        .await;

    for (panel, promql) in our_dashboard_queries() {
        let result = prometheus.query(&promql);
        let result = result.unwrap_or_else(|e| panic!("{panel}: {promql}: {e}"));
        let per_pod = promql.contains("gpu_container_allocation");
        if per_pod {
            assert!(!result.is_empty(), "{panel}: {promql}");
        }
        if panel.ends_with("by pod") || panel.contains("the pod's") {
            // One series per pod, not one per job.
            let pods: Vec<&str> = result
                .iter()
                .filter_map(|s| s["metric"]["pod"].as_str())
                .collect();
            assert_eq!(pods.len(), 2, "{panel}: {result:?}");
        }
        if panel == "Advertised devices" {
            // GPU 0's two replicas, counted once, not once per job.
            let healthy = result
                .iter()
                .find(|s| {
                    s["metric"]["health"] == "Healthy"
                        && s["metric"]["resource"] == "nvidia.com/gpu"
                })
                .and_then(|s| s["value"][1].as_str())
                .unwrap_or("");
            assert_eq!(healthy, "2", "{panel}: {result:?}");
        }
    }
}
