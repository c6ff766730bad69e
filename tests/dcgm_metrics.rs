//! `--metrics-names dcgm|both` over real HTTP from the real binary on the mock backend: every
//! field of dcgm-exporter's default list for every GPU and GPU instance, with dcgm-exporter's
//! labels (in its order), types and units, values from the fixture; pods on the devices they
//! hold (every sharer, with `vgpu`); the last XID; and both namings side by side.

mod common;
#[path = "common/exposition.rs"]
mod exposition;
#[path = "common/pods.rs"]
mod pods;

use std::collections::BTreeMap;

use common::*;
use exposition::{find, parse, Sample};
use pods::{pod, serve_pod_resources, PodResourcesStub};

const GPU0: &str = "GPU-00000000-1111-2222-3333-000000000000";
const GPU1: &str = "GPU-00000000-1111-2222-3333-000000000001";
const GPU2: &str = "GPU-00000000-1111-2222-3333-000000000002";

/// dcgm-exporter 4.x's default field list (`etc/default-counters.csv`), with its types.
const DEFAULT_FIELDS: &[(&str, &str)] = &[
    ("DCGM_FI_DEV_SM_CLOCK", "gauge"),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge"),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge"),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge"),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge"),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter"),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter"),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge"),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge"),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge"),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge"),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge"),
    ("DCGM_FI_DEV_FB_FREE", "gauge"),
    ("DCGM_FI_DEV_FB_USED", "gauge"),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge"),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter"),
    ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge"),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter"),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter"),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge"),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge"),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge"),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge"),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge"),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge"),
];

/// The profiling fields of `dcp-metrics-included.csv` that list leaves commented out, and
/// NVLink throughput: served where the GPU has them (GPM).
const EXTRA_PROFILING: &[&str] = &[
    "DCGM_FI_PROF_SM_ACTIVE",
    "DCGM_FI_PROF_SM_OCCUPANCY",
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE",
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
    "DCGM_FI_PROF_NVLINK_TX_BYTES",
    "DCGM_FI_PROF_NVLINK_RX_BYTES",
];

const FIXTURE: &str = r#"
node: dcgm-node
driverVersion: "580.95.05"
gpus:
  - model: NVIDIA H100 80GB HBM3
    uuid: GPU-00000000-1111-2222-3333-000000000000
    pciBusId: "0000:18:00.0"
    telemetry:
      utilizationPercent: 87
      memoryCopyUtilizationPercent: 41
      encoderUtilizationPercent: 3
      decoderUtilizationPercent: 4
      memoryUsedMiB: 40000
      memoryReservedMiB: 559
      temperatureCelsius: 61
      memoryTemperatureCelsius: 70
      powerWatts: 412.5
      energyMillijoules: 123456789
      smClockMhz: 1980
      memoryClockMhz: 2619
      pcieReplayCount: 2
      nvlinkBytesTotal: 5000000
      nvlinkBandwidthMbPerSecond: 1234
      eccCorrectedTotal: 7
      eccUncorrectedTotal: 1
      remappedRowsCorrectable: 3
      remappedRowsUncorrectable: 2
      rowRemapFailure: true
      clockThrottleReasons: 0
      vgpuLicenseStatus: 1
      profiling: {grEngineActive: 0.8, smActive: 0.75, smOccupancy: 0.5, tensorActive: 0.25, fp64Active: 0.01, fp32Active: 0.3, fp16Active: 0.4, dramActive: 0.6, pcieTxBytesPerSecond: 1.5e9, pcieRxBytesPerSecond: 2.5e9, nvlinkTxBytesPerSecond: 4e10, nvlinkRxBytesPerSecond: 3e10}
  - model: NVIDIA H100 80GB HBM3
    uuid: GPU-00000000-1111-2222-3333-000000000001
    pciBusId: "0000:2a:00.0"
    telemetry: {temperatureCelsius: 40, powerWatts: 90}
  - model: NVIDIA H100 80GB HBM3
    uuid: GPU-00000000-1111-2222-3333-000000000002
    pciBusId: "0000:3a:00.0"
    telemetry: {temperatureCelsius: 52, powerWatts: 300.25, smClockMhz: 1755}
    mig: {devices: [{profile: 3g.40gb, telemetry: {memoryUsedMiB: 1200, memoryReservedMiB: 10, profiling: {smActive: 0.5}}}, 2g.20gb]}
"#;

const CONFIG: &str = r#"version: v1
flags: {migStrategy: mixed}
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, replicas: 2, devices: [0], rename: nvidia.com/gpu.shared}
"#;

/// What dcgm-exporter prints for GPU 0's fields, from the fixture (MHz, °C, W with six
/// decimals, mJ, MiB, %, ratios, bytes/s).
fn gpu0_values(total_mib: u64) -> BTreeMap<&'static str, String> {
    [
        ("DCGM_FI_DEV_SM_CLOCK", "1980".to_string()),
        ("DCGM_FI_DEV_MEM_CLOCK", "2619".into()),
        ("DCGM_FI_DEV_MEMORY_TEMP", "70".into()),
        ("DCGM_FI_DEV_GPU_TEMP", "61".into()),
        ("DCGM_FI_DEV_POWER_USAGE", "412.500000".into()),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "123456789".into()),
        ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "2".into()),
        ("DCGM_FI_DEV_GPU_UTIL", "87".into()),
        ("DCGM_FI_DEV_MEM_COPY_UTIL", "41".into()),
        ("DCGM_FI_DEV_ENC_UTIL", "3".into()),
        ("DCGM_FI_DEV_DEC_UTIL", "4".into()),
        ("DCGM_FI_DEV_XID_ERRORS", "0".into()),
        ("DCGM_FI_DEV_FB_FREE", (total_mib - 40000 - 559).to_string()),
        ("DCGM_FI_DEV_FB_USED", "40000".into()),
        ("DCGM_FI_DEV_FB_RESERVED", "559".into()),
        ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "1234".into()),
        ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "1".into()),
        ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "2".into()),
        ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "3".into()),
        ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "1".into()),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.800000".into()),
        ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "0.250000".into()),
        ("DCGM_FI_PROF_DRAM_ACTIVE", "0.600000".into()),
        ("DCGM_FI_PROF_PCIE_TX_BYTES", "1500000000".into()),
        ("DCGM_FI_PROF_PCIE_RX_BYTES", "2500000000".into()),
        ("DCGM_FI_PROF_SM_ACTIVE", "0.750000".into()),
        ("DCGM_FI_PROF_SM_OCCUPANCY", "0.500000".into()),
        ("DCGM_FI_PROF_PIPE_FP64_ACTIVE", "0.010000".into()),
        ("DCGM_FI_PROF_PIPE_FP32_ACTIVE", "0.300000".into()),
        ("DCGM_FI_PROF_PIPE_FP16_ACTIVE", "0.400000".into()),
        ("DCGM_FI_PROF_NVLINK_TX_BYTES", "40000000000".into()),
        ("DCGM_FI_PROF_NVLINK_RX_BYTES", "30000000000".into()),
    ]
    .into_iter()
    .collect()
}

/// dcgm-exporter's label order: the device, (MIG) `GPU_I_PROFILE`, `GPU_I_ID`, `Hostname`, the
/// label fields, then the pod's attributes in name order.
fn expected_labels(mig: bool, pod: bool, vgpu: bool, xid: bool) -> Vec<&'static str> {
    let mut want = vec!["gpu", "UUID", "pci_bus_id", "device", "modelName"];
    if mig {
        want.extend(["GPU_I_PROFILE", "GPU_I_ID"]);
    }
    want.extend(["Hostname", "DCGM_FI_DRIVER_VERSION"]);
    if pod {
        want.push("container");
    }
    if xid {
        want.extend(["err_code", "err_msg"]);
    }
    if pod {
        want.extend(["namespace", "pod"]);
    }
    if vgpu {
        want.push("vgpu");
    }
    want
}

struct Node {
    _dir: tempfile::TempDir,
    _kubelet: TestKubelet,
    _agent: Agent,
    addr: String,
    fixture: std::path::PathBuf,
}

/// The agent on the fixture, with pods on GPU 0's two replicas and on the 2g.20gb instance;
/// `args` choose the naming (`env` too).
async fn start(args: &[&str], env: &[(&str, &str)]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(dir.path(), "fixture.yaml", FIXTURE);
    let config = write_file(dir.path(), "config.yaml", CONFIG);
    let stub = PodResourcesStub::default();
    stub.set(vec![
        pod(
            "ml",
            "infer-a",
            &[("server", "nvidia.com/gpu.shared", &[format!("{GPU0}::0")])],
        ),
        pod(
            "ml",
            "infer-b",
            &[("server", "nvidia.com/gpu.shared", &[format!("{GPU0}::1")])],
        ),
        pod(
            "ml",
            "train",
            &[(
                "main",
                "nvidia.com/mig-2g.20gb",
                &[mig_id(&fixture, &config)],
            )],
        ),
    ]);
    serve_pod_resources(&dir.path().join("pod-resources.sock"), stub.clone());
    let addr = free_addr();
    let kubelet = TestKubelet::start(dir.path()).await;
    let mut all = vec![
        "--mock-fixture",
        arg(&fixture),
        "--config",
        arg(&config),
        "--metrics-addr",
        &addr,
        "--collect-interval",
        "200ms",
    ];
    all.extend_from_slice(args);
    let agent = Agent::spawn_with_env(dir.path(), &all, env);

    Node {
        _dir: dir,
        _kubelet: kubelet,
        _agent: agent,
        addr,
        fixture,
    }
}

/// The advertised ID of the 2g.20gb MIG device, as `gpu-agent list` shows it.
fn mig_id(fixture: &std::path::Path, config: &std::path::Path) -> String {
    let list = list_json(&["--mock-fixture", arg(fixture), "--config", arg(config)]);
    list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "nvidia.com/mig-2g.20gb")
        .and_then(|r| r["devices"][0]["id"].as_str())
        .expect("the 2g.20gb device")
        .to_string()
}

/// Scrape until every device series carries the pods and `check` passes.
async fn scrape_dcgm(node: &Node, check: impl Fn(&[Sample]) -> bool) -> String {
    let mut found = None;
    eventually("a dcgm scrape with the three pods", || {
        found = scrape(&node.addr).filter(|text| {
            let s = parse(text);
            let pods: std::collections::BTreeSet<&str> = s
                .iter()
                .filter(|s| s.name == "DCGM_FI_DEV_GPU_TEMP")
                .filter_map(|s| s.label("pod"))
                .collect();
            pods.len() == 3 && check(&s)
        });
        found.is_some()
    })
    .await;
    found.unwrap_or_default()
}

#[tokio::test]
async fn every_default_field_for_every_gpu_and_gpu_instance() {
    let node = start(&[], &[("GPU_AGENT_METRICS_NAMES", "dcgm")]).await;
    let text = scrape_dcgm(&node, |_| true).await;
    let samples = parse(&text);
    let types = exposition::types(&text);
    let helps = exposition::helps(&text);

    // Names and types as dcgm-exporter's, counters without _total; HELP on each.
    for (name, kind) in DEFAULT_FIELDS {
        assert_eq!(types.get(*name).map(String::as_str), Some(*kind), "{name}");
        assert!(!helps[*name].is_empty(), "{name}");
    }
    for name in EXTRA_PROFILING {
        assert_eq!(
            types.get(*name).map(String::as_str),
            Some("gauge"),
            "{name}"
        );
    }
    // Only dcgm names and the agent's own.
    for s in &samples {
        assert!(
            s.name.starts_with("DCGM_FI_") || s.name.starts_with("gpu_agent_"),
            "{}",
            s.name
        );
    }

    // GPU 0, time-sliced: one series per sharer, vgpu = the replica, values from the fixture.
    let total = 81559;
    let want = gpu0_values(total);
    for (name, _) in DEFAULT_FIELDS
        .iter()
        .copied()
        .chain(EXTRA_PROFILING.iter().map(|n| (*n, "gauge")))
    {
        let on_gpu0: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == name && s.label("UUID") == Some(GPU0))
            .collect();
        let sharers: Vec<(&str, &str)> = on_gpu0
            .iter()
            .map(|s| (s.label("pod").unwrap(), s.label("vgpu").unwrap()))
            .collect();
        assert_eq!(sharers, [("infer-a", "0"), ("infer-b", "1")], "{name}");
        for s in on_gpu0 {
            assert_eq!(s.raw, want[name], "{name}");
            let xid = name == "DCGM_FI_DEV_XID_ERRORS";
            assert_eq!(
                s.label_names(),
                expected_labels(false, true, true, xid),
                "{name}"
            );
            assert_eq!(s.label("gpu"), Some("0"));
            assert_eq!(s.label("pci_bus_id"), Some("00000000:18:00.0"));
            assert_eq!(s.label("device"), Some("nvidia0"));
            assert_eq!(s.label("modelName"), Some("NVIDIA H100 80GB HBM3"));
            assert_eq!(s.label("Hostname"), Some("dcgm-node"));
            assert_eq!(s.label("DCGM_FI_DRIVER_VERSION"), Some("580.95.05"));
            assert_eq!(s.label("namespace"), Some("ml"));
            assert_eq!(s.label("container"), Some("server"));
        }
    }

    // GPU 1, nobody on it: one series per field, no pod labels; idle values left out of the
    // fixture.
    for (name, _) in DEFAULT_FIELDS {
        let on_gpu1: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == *name && s.label("UUID") == Some(GPU1))
            .collect();
        assert_eq!(on_gpu1.len(), 1, "{name}");
        let xid = *name == "DCGM_FI_DEV_XID_ERRORS";
        assert_eq!(
            on_gpu1[0].label_names(),
            expected_labels(false, false, false, xid),
            "{name}"
        );
    }
    let gpu1 = |name: &str| find(&samples, name, &[("UUID", GPU1)]).map(|s| s.raw.clone());
    assert_eq!(gpu1("DCGM_FI_DEV_GPU_TEMP").as_deref(), Some("40"));
    assert_eq!(
        gpu1("DCGM_FI_DEV_POWER_USAGE").as_deref(),
        Some("90.000000")
    );
    assert_eq!(gpu1("DCGM_FI_DEV_GPU_UTIL").as_deref(), Some("0"));
    assert_eq!(gpu1("DCGM_FI_DEV_FB_USED").as_deref(), Some("0"));
    assert_eq!(
        gpu1("DCGM_FI_DEV_FB_FREE").as_deref(),
        Some(total.to_string().as_str())
    );

    // GPU 2, in MIG mode: reported as its two GPU instances only.
    let on_gpu2: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.label("UUID") == Some(GPU2))
        .collect();
    assert!(on_gpu2.iter().all(|s| s.label("GPU_I_ID").is_some()));
    for (profile, pod) in [("3g.40gb", None), ("2g.20gb", Some("train"))] {
        for (name, _) in DEFAULT_FIELDS {
            let got: Vec<&&Sample> = on_gpu2
                .iter()
                .filter(|s| s.name == *name && s.label("GPU_I_PROFILE") == Some(profile))
                .collect();
            let expected = match *name {
                // A GPU instance has no utilization of its own.
                "DCGM_FI_DEV_GPU_UTIL" | "DCGM_FI_DEV_MEM_COPY_UTIL" => 0,
                _ => 1,
            };
            assert_eq!(got.len(), expected, "{name} on {profile}");
            for s in got {
                let xid = *name == "DCGM_FI_DEV_XID_ERRORS";
                assert_eq!(
                    s.label_names(),
                    expected_labels(true, pod.is_some(), false, xid),
                    "{name} on {profile}"
                );
                assert_eq!(s.label("pod"), pod);
                assert_eq!(s.label("gpu"), Some("2"));
                assert_eq!(s.label("device"), Some("nvidia2"));
                assert_eq!(s.label("pci_bus_id"), Some("00000000:3a:00.0"));
                assert!(s.label("GPU_I_ID").unwrap().parse::<u32>().is_ok());
            }
        }
    }
    let instance = |name: &str, profile: &str| {
        find(
            &samples,
            name,
            &[("UUID", GPU2), ("GPU_I_PROFILE", profile)],
        )
        .map(|s| s.raw.clone())
        .unwrap_or_default()
    };
    // Framebuffer per instance; the GPU's own fields on each; profiling per instance.
    assert_eq!(instance("DCGM_FI_DEV_FB_USED", "3g.40gb"), "1200");
    assert_eq!(instance("DCGM_FI_DEV_FB_RESERVED", "3g.40gb"), "10");
    assert_eq!(instance("DCGM_FI_DEV_FB_FREE", "3g.40gb"), "39238");
    assert_eq!(instance("DCGM_FI_DEV_FB_USED", "2g.20gb"), "0");
    assert_eq!(instance("DCGM_FI_DEV_GPU_TEMP", "2g.20gb"), "52");
    assert_eq!(instance("DCGM_FI_DEV_POWER_USAGE", "3g.40gb"), "300.250000");
    assert_eq!(instance("DCGM_FI_DEV_SM_CLOCK", "3g.40gb"), "1755");
    assert_eq!(instance("DCGM_FI_PROF_SM_ACTIVE", "3g.40gb"), "0.500000");
    assert_eq!(instance("DCGM_FI_PROF_SM_ACTIVE", "2g.20gb"), "0.000000");

    // promtool, by design, says DCGM's counters lack _total, PCIE_REPLAY_COUNTER names its type
    // and `modelName` is camelCase; nothing else.
    if let Some(complaints) = exposition::promtool_check(&text) {
        assert!(!complaints.is_empty());
        for c in &complaints {
            assert!(
                c.ends_with("counter metrics should have \"_total\" suffix")
                    || c == "DCGM_FI_DEV_PCIE_REPLAY_COUNTER metric name should not include type 'counter'"
                    || c.ends_with("label names should be written in 'snake_case' not 'camelCase'"),
                "{c}\n{}",
                complaints.join("\n")
            );
        }
    }

    // The last XID, with err_code (the XID) and err_msg (its meaning, in our words).
    let edited = FIXTURE.replacen(
        "    telemetry: {temperatureCelsius: 40, powerWatts: 90}",
        "    telemetry: {temperatureCelsius: 40, powerWatts: 90}\n    xids: [79, 43]",
        1,
    );
    replace_file(&node.fixture, &edited);
    let text = scrape_dcgm(&node, |s| {
        find(s, "DCGM_FI_DEV_XID_ERRORS", &[("UUID", GPU1)]).map(|s| s.value) == Some(43.0)
    })
    .await;
    let xid = parse(&text)
        .into_iter()
        .find(|s| s.name == "DCGM_FI_DEV_XID_ERRORS" && s.label("UUID") == Some(GPU1))
        .unwrap();
    assert_eq!(xid.label("err_code"), Some("43"));
    assert_eq!(
        xid.label("err_msg"),
        Some("GPU stopped processing (application fault)")
    );
}

#[tokio::test]
async fn both_namings_side_by_side() {
    let node = start(&["--metrics-names", "both"], &[]).await;
    let text = scrape_dcgm(&node, |_| true).await;
    let samples = parse(&text);
    let has = |name: &str| samples.iter().any(|s| s.name == name);
    for name in [
        "gpu_utilization_percent",
        "gpu_memory_free_bytes",
        "gpu_xid_events_total",
        "gpu_container_allocation",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gpu_agent_build_info",
        "gpu_agent_resource_registered",
    ] {
        assert!(has(name), "{name}");
    }
    // The same value under both names, each in its unit.
    let ours = find(&samples, "gpu_memory_used_bytes", &[("uuid", GPU0)]).unwrap();
    let dcgm = find(&samples, "DCGM_FI_DEV_FB_USED", &[("UUID", GPU0)]).unwrap();
    assert_eq!(ours.value, dcgm.value * 1024.0 * 1024.0);
    let ours = find(&samples, "gpu_sm_clock_hertz", &[("uuid", GPU0)]).unwrap();
    let dcgm = find(&samples, "DCGM_FI_DEV_SM_CLOCK", &[("UUID", GPU0)]).unwrap();
    assert_eq!(ours.value, dcgm.value * 1e6);
    // Every family once.
    let mut headers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    let all = headers.len();
    headers.sort();
    headers.dedup();
    assert_eq!(headers.len(), all);
    // /health as /healthz.
    assert_eq!(
        http_get(&node.addr, "/health").map(|r| r.0),
        Some(200),
        "/health"
    );
}

#[test]
fn an_unknown_naming_is_refused_with_the_choices() {
    let (code, _, err) = run_cli(&["run", "--backend", "mock", "--metrics-names", "prometheus"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("gpu-agent") && err.contains("dcgm") && err.contains("both"),
        "{err}"
    );
}
