//! dcgm-exporter's exposition, line by line, from a mock fixture.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::families::{template, View};
use super::super::Naming;
use crate::config;
use crate::gpu::mock::MockBackend;
use crate::gpu::{GpuBackend, Telemetry};
use crate::health::policy::{HealthPolicy, HealthTracker, XidTally};
use crate::health::HealthState;
use crate::plugin::PluginStatus;
use crate::podresources::{ContainerDevice, PodAllocations};
use crate::snapshot::Snapshot;

const FIXTURE: &str = r#"
driverVersion: "580.95.05"
gpus:
  - model: NVIDIA H100 80GB HBM3
    uuid: GPU-00000000-0000-0000-0000-000000000000
    pciBusId: "0000:18:00.0"
    telemetry:
      utilizationPercent: 87
      memoryCopyUtilizationPercent: 41
      memoryUsedMiB: 40000
      memoryReservedMiB: 559
      temperatureCelsius: 61
      powerWatts: 412.5
      energyMillijoules: 123456789
      memoryClockMhz: null
      profiling: {grEngineActive: 0.8, pcieTxBytesPerSecond: 1.5e9}
  - model: NVIDIA H100 80GB HBM3
    uuid: GPU-11111111-1111-1111-1111-111111111111
    pciBusId: "0000:2a:00.0"
    telemetry: {temperatureCelsius: 40, powerWatts: 90, utilizationPercent: 0}
    mig: {devices: [{profile: 3g.40gb, telemetry: {memoryUsedMiB: 1200, profiling: {smActive: 0.5}}}, 1g.10gb]}
  - model: NVIDIA A100-SXM4-40GB
    uuid: GPU-22222222-2222-2222-2222-222222222222
    memoryMiB: 40960
"#;

const CONFIG: &str = "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2, devices: [0], rename: nvidia.com/gpu.shared}\n";

struct Node {
    snapshot: Snapshot,
    telemetry: Telemetry,
}

fn node() -> Node {
    let backend = MockBackend::from_text(FIXTURE).unwrap();
    let inventory = backend.inventory().unwrap();
    let telemetry = backend.telemetry(&inventory);
    let snapshot = Snapshot::build(
        Arc::new(inventory),
        Arc::new(config::parse(CONFIG).unwrap()),
        Arc::new(HealthState::default()),
    )
    .unwrap();
    Node {
        snapshot,
        telemetry,
    }
}

fn render(n: &Node, xids: &XidTally, pods: &PodAllocations) -> String {
    let plugins = BTreeMap::<String, PluginStatus>::new();
    let view = View {
        node: "n1",
        version: "9.9.9",
        naming: Naming::Dcgm,
        snapshot: &n.snapshot,
        telemetry: &n.telemetry,
        xids,
        pods,
        plugins: &plugins,
        config_reloads: 0,
        config_reload_failures: 0,
    };
    template(&view).encode()
}

/// The lines of family `name` (samples only).
fn samples<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .collect()
}

const GPU0: &str = r#"gpu="0",UUID="GPU-00000000-0000-0000-0000-000000000000",pci_bus_id="00000000:18:00.0",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="n1",DCGM_FI_DRIVER_VERSION="580.95.05""#;
const GPU2: &str = r#"gpu="2",UUID="GPU-22222222-2222-2222-2222-222222222222",pci_bus_id="",device="nvidia2",modelName="NVIDIA A100-SXM4-40GB",Hostname="n1",DCGM_FI_DRIVER_VERSION="580.95.05""#;

fn instance(n: &Node, i: usize) -> String {
    let gpu = &n.snapshot.inventory.gpus[1];
    let mig = &gpu.mig_devices[i];
    format!(
        r#"gpu="1",UUID="{}",pci_bus_id="00000000:2a:00.0",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",GPU_I_PROFILE="{}",GPU_I_ID="{}",Hostname="n1",DCGM_FI_DRIVER_VERSION="580.95.05""#,
        gpu.uuid, mig.profile, mig.gpu_instance_id
    )
}

#[test]
fn fields_labels_help_and_number_formats_as_dcgm_exporter() {
    let n = node();
    let text = render(&n, &XidTally::default(), &PodAllocations::default());
    for (header, line) in [
        (
            "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n",
            format!("DCGM_FI_DEV_GPU_TEMP{{{GPU0}}} 61"),
        ),
        (
            "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).\n# TYPE DCGM_FI_DEV_POWER_USAGE gauge\n",
            format!("DCGM_FI_DEV_POWER_USAGE{{{GPU0}}} 412.500000"),
        ),
        (
            "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).\n# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n",
            format!("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{GPU0}}} 123456789"),
        ),
        (
            "# TYPE DCGM_FI_DEV_FB_FREE gauge\n",
            format!(
                "DCGM_FI_DEV_FB_FREE{{{GPU0}}} {}",
                n.snapshot.inventory.gpus[0].memory_mib - 40000 - 559
            ),
        ),
        (
            "# TYPE DCGM_FI_DEV_FB_RESERVED gauge\n",
            format!("DCGM_FI_DEV_FB_RESERVED{{{GPU0}}} 559"),
        ),
        (
            "# TYPE DCGM_FI_DEV_MEM_COPY_UTIL gauge\n",
            format!("DCGM_FI_DEV_MEM_COPY_UTIL{{{GPU0}}} 41"),
        ),
        (
            "# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge\n",
            format!("DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{GPU0}}} 0.800000"),
        ),
        (
            "# TYPE DCGM_FI_PROF_PCIE_TX_BYTES gauge\n",
            format!("DCGM_FI_PROF_PCIE_TX_BYTES{{{GPU0}}} 1500000000"),
        ),
        (
            "# TYPE DCGM_FI_DEV_SM_CLOCK gauge\n",
            format!("DCGM_FI_DEV_SM_CLOCK{{{GPU2}}} 345"),
        ),
        (
            "# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.\n# TYPE DCGM_FI_DEV_XID_ERRORS gauge\n",
            format!(r#"DCGM_FI_DEV_XID_ERRORS{{{GPU0},err_code="0",err_msg="No Error"}} 0"#),
        ),
    ] {
        assert!(text.contains(header), "{header} in\n{text}");
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // Unsupported: omitted. `memoryClockMhz: null`, and an A100 has no GPM.
    assert!(!samples(&text, "DCGM_FI_DEV_MEM_CLOCK")
        .iter()
        .any(|l| l.contains(GPU0)));
    assert!(!text
        .lines()
        .any(|l| l.starts_with("DCGM_FI_PROF_") && l.contains("nvidia2")));
    // No gpu-agent device names under this naming; the agent's own metrics are there.
    assert!(!text.contains("\ngpu_utilization_percent"));
    assert!(text.contains("\ngpu_agent_build_info{version=\"9.9.9\"} 1\n"));
}

#[test]
fn a_mig_gpu_is_reported_as_its_gpu_instances() {
    let n = node();
    let text = render(&n, &XidTally::default(), &PodAllocations::default());
    let gpu1 = &n.snapshot.inventory.gpus[1];
    let (big, small) = (instance(&n, 0), instance(&n, 1));
    // Framebuffer per instance.
    let mig = &gpu1.mig_devices[0];
    for line in [
        format!("DCGM_FI_DEV_FB_USED{{{big}}} 1200"),
        format!("DCGM_FI_DEV_FB_FREE{{{big}}} {}", mig.memory_mib - 1200),
        format!("DCGM_FI_DEV_FB_USED{{{small}}} 0"),
        // The GPU's fields, on each instance.
        format!("DCGM_FI_DEV_GPU_TEMP{{{big}}} 40"),
        format!("DCGM_FI_DEV_POWER_USAGE{{{small}}} 90.000000"),
        // Profiling per instance.
        format!("DCGM_FI_PROF_SM_ACTIVE{{{big}}} 0.500000"),
        format!("DCGM_FI_PROF_SM_ACTIVE{{{small}}} 0.000000"),
        format!(r#"DCGM_FI_DEV_XID_ERRORS{{{small},err_code="0",err_msg="No Error"}} 0"#),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // The GPU itself is not reported, and instances have no GPU_UTIL / MEM_COPY_UTIL.
    let on_gpu1: Vec<&str> = text.lines().filter(|l| l.contains("nvidia1")).collect();
    assert!(
        on_gpu1.iter().all(|l| l.contains("GPU_I_ID=")),
        "{on_gpu1:?}"
    );
    for name in ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL"] {
        assert!(
            !samples(&text, name).iter().any(|l| l.contains("nvidia1")),
            "{name}"
        );
    }
}

fn held(pod: &str, resource: &str, id: &str) -> ContainerDevice {
    ContainerDevice {
        namespace: "ml".into(),
        pod: pod.into(),
        container: "main".into(),
        resource: resource.into(),
        device_id: id.into(),
    }
}

#[test]
fn every_sharer_gets_its_own_series_with_its_replica() {
    let n = node();
    let gpu0 = &n.snapshot.inventory.gpus[0].uuid;
    let mig = &n.snapshot.inventory.gpus[1].mig_devices[1];
    let pods = PodAllocations {
        devices: vec![
            held("a", "nvidia.com/gpu.shared", &format!("{gpu0}::0")),
            held("b", "nvidia.com/gpu.shared", &format!("{gpu0}::1")),
            held("m", "nvidia.com/mig-1g.10gb", &mig.uuid),
        ],
        up: true,
    };
    let text = render(&n, &XidTally::default(), &pods);
    let temps = samples(&text, "DCGM_FI_DEV_GPU_TEMP");
    let on_gpu0: Vec<&str> = temps.iter().copied().filter(|l| l.contains(GPU0)).collect();
    assert_eq!(
        on_gpu0,
        [
            format!(
                r#"DCGM_FI_DEV_GPU_TEMP{{{GPU0},container="main",namespace="ml",pod="a",vgpu="0"}} 61"#
            ),
            format!(
                r#"DCGM_FI_DEV_GPU_TEMP{{{GPU0},container="main",namespace="ml",pod="b",vgpu="1"}} 61"#
            ),
        ]
    );
    // A whole MIG device held by one pod: pod labels, no vgpu.
    let small = instance(&n, 1);
    assert!(
        temps.contains(
            &format!(
                r#"DCGM_FI_DEV_GPU_TEMP{{{small},container="main",namespace="ml",pod="m"}} 40"#
            )
            .as_str()
        ),
        "{temps:?}"
    );
    // Nobody on the A100: one series without pod labels.
    assert!(temps.contains(&format!("DCGM_FI_DEV_GPU_TEMP{{{GPU2}}} 34").as_str()));
    // The XID field: err_code / err_msg between container and namespace, as dcgm-exporter's
    // attribute order has them.
    assert!(text.lines().any(|l| l
        == format!(r#"DCGM_FI_DEV_XID_ERRORS{{{GPU0},container="main",err_code="0",err_msg="No Error",namespace="ml",pod="a",vgpu="0"}} 0"#)));
}

#[test]
fn the_xid_field_is_the_last_xid_of_the_device_or_its_gpu() {
    let n = node();
    let gpu1 = &n.snapshot.inventory.gpus[1];
    let (big, small) = (&gpu1.mig_devices[0], &gpu1.mig_devices[1]);
    let mut tracker = HealthTracker::new(HealthPolicy::new(
        &crate::config::HealthSettings::default(),
        None,
        None,
    ));
    let now = std::time::Instant::now();
    let mut xid = |gpu: &str, mig: Option<&str>, xid: u64| {
        let event = crate::gpu::HealthEvent::Xid {
            gpu_uuid: gpu.to_string(),
            mig_uuid: mig.map(str::to_string),
            xid,
        };
        tracker.apply(&event, now);
    };
    xid(GPU0_UUID, None, 48);
    xid(GPU0_UUID, None, 43);
    xid(&gpu1.uuid, Some(&big.uuid), 94);
    xid(&gpu1.uuid, None, 31);
    xid(&gpu1.uuid, Some(&small.uuid), 200);
    let text = render(&n, tracker.xids(), &PodAllocations::default());
    let lines = samples(&text, "DCGM_FI_DEV_XID_ERRORS");
    for want in [
        format!(
            r#"DCGM_FI_DEV_XID_ERRORS{{{GPU0},err_code="43",err_msg="GPU stopped processing (application fault)"}} 43"#
        ),
        // The GPU's 31 came after the instance's own 94.
        format!(
            r#"DCGM_FI_DEV_XID_ERRORS{{{},err_code="31",err_msg="GPU memory page fault (application fault)"}} 31"#,
            instance(&n, 0)
        ),
        format!(
            r#"DCGM_FI_DEV_XID_ERRORS{{{},err_code="200",err_msg="see NVIDIA's XID catalog"}} 200"#,
            instance(&n, 1)
        ),
        format!(r#"DCGM_FI_DEV_XID_ERRORS{{{GPU2},err_code="0",err_msg="No Error"}} 0"#),
    ] {
        assert!(lines.contains(&want.as_str()), "{want} in {lines:?}");
    }
}

const GPU0_UUID: &str = "GPU-00000000-0000-0000-0000-000000000000";
