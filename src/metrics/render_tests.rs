//! The families, from a mock fixture, under every naming: values and units, labels, omissions,
//! attribution, XIDs, the agent's own metrics, and the refreshed template.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::proto::{MetricFamily, MetricType};

use super::families::{build, refresh, template, View};
use super::names::{self, Kind};
use super::{dcgm_fields, Naming};
use crate::config::{self, Config};
use crate::gpu::mock::MockBackend;
use crate::gpu::{GpuBackend, Telemetry};
use crate::health::policy::{HealthPolicy, HealthTracker, XidTally};
use crate::health::HealthState;
use crate::plugin::PluginStatus;
use crate::podresources::{ContainerDevice, PodAllocations};
use crate::snapshot::Snapshot;

const MIB: f64 = 1024.0 * 1024.0;

const FIXTURE: &str = r#"
driverVersion: "580.95.05"
gpus:
  - model: NVIDIA H100 80GB HBM3
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
      memoryClockMhz: null
      pcieReplayCount: 2
      nvlinkBytesTotal: 5000000
      eccCorrectedTotal: 7
      eccUncorrectedTotal: 1
      remappedRowsCorrectable: 3
      remappedRowsUncorrectable: 2
      rowRemapFailure: true
      clockThrottleReasons: 0x44
      vgpuLicenseStatus: 1
      profiling: {grEngineActive: 0.8, smActive: 0.75, smOccupancy: 0.5, tensorActive: 0.25, fp64Active: 0.01, fp32Active: 0.3, fp16Active: 0.4, dramActive: 0.6, pcieTxBytesPerSecond: 1.5e9, pcieRxBytesPerSecond: 2.5e9, nvlinkTxBytesPerSecond: 4e10, nvlinkRxBytesPerSecond: 3e10}
  - model: NVIDIA H100 80GB HBM3
    pciBusId: "0000:2a:00.0"
    telemetry: {temperatureCelsius: 40, powerWatts: 90}
    mig: {devices: [{profile: 3g.40gb, telemetry: {memoryUsedMiB: 1200, profiling: {smActive: 0.5}}}, 1g.10gb]}
  - model: NVIDIA A100-SXM4-40GB
    memoryMiB: 40960
"#;

struct Fixture {
    snapshot: Snapshot,
    telemetry: Telemetry,
}

fn fixture(config: Option<&str>, health: HealthState) -> Fixture {
    let backend = MockBackend::from_text(FIXTURE).unwrap();
    let inventory = backend.inventory().unwrap();
    let telemetry = backend.telemetry(&inventory);
    let config = config.map_or_else(Config::default, |c| config::parse(c).unwrap());
    let snapshot =
        Snapshot::build(Arc::new(inventory), Arc::new(config), Arc::new(health)).unwrap();
    Fixture {
        snapshot,
        telemetry,
    }
}

/// What a view takes besides the fixture.
#[derive(Default)]
struct State {
    naming: Naming,
    xids: XidTally,
    pods: PodAllocations,
    plugins: BTreeMap<String, PluginStatus>,
}

fn view<'a>(f: &'a Fixture, s: &'a State) -> View<'a> {
    View {
        node: "n1",
        version: "9.9.9",
        naming: s.naming,
        snapshot: &f.snapshot,
        telemetry: &f.telemetry,
        xids: &s.xids,
        pods: &s.pods,
        plugins: &s.plugins,
        config_reloads: 3,
        config_reload_failures: 1,
    }
}

fn named(naming: Naming) -> State {
    State {
        naming,
        ..State::default()
    }
}

type Labels = BTreeMap<String, String>;

/// (labels as name=value, value) of every series of `name`.
fn series(families: &[MetricFamily], name: &str) -> Vec<(Labels, f64)> {
    let Some(mf) = families.iter().find(|f| f.name() == name) else {
        return Vec::new();
    };
    mf.get_metric()
        .iter()
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let value = match mf.get_field_type() {
                MetricType::COUNTER => m.get_counter().get_value(),
                _ => m.get_gauge().get_value(),
            };
            (labels, value)
        })
        .collect()
}

/// The value of the series of `name` whose labels include every `want`.
fn value(families: &[MetricFamily], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    series(families, name)
        .into_iter()
        .find(|(l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
}

fn value_for(families: &[MetricFamily], name: &str, uuid: &str) -> Option<f64> {
    value(families, name, &[("uuid", uuid)])
}

#[test]
fn every_field_under_our_names_in_si_units() {
    let f = fixture(None, HealthState::default());
    let fams = build(&view(&f, &State::default()));
    let gpu0 = &f.snapshot.inventory.gpus[0];
    let uuid = gpu0.uuid.as_str();
    let v = |name: &str| value_for(&fams, name, uuid);
    assert_eq!(v("gpu_utilization_percent"), Some(87.0));
    assert_eq!(v("gpu_memory_used_bytes"), Some(40000.0 * MIB));
    assert_eq!(v("gpu_memory_reserved_bytes"), Some(559.0 * MIB));
    let total = gpu0.memory_mib as f64;
    assert_eq!(v("gpu_memory_total_bytes"), Some(total * MIB));
    assert_eq!(
        v("gpu_memory_free_bytes"),
        Some((total - 40000.0 - 559.0) * MIB)
    );
    assert_eq!(
        v("gpu_memory_utilization_percent"),
        Some(40000.0 / total * 100.0)
    );
    assert_eq!(v("gpu_memory_controller_utilization_percent"), Some(41.0));
    assert_eq!(v("gpu_encoder_utilization_percent"), Some(3.0));
    assert_eq!(v("gpu_decoder_utilization_percent"), Some(4.0));
    assert_eq!(v("gpu_temperature_celsius"), Some(61.0));
    assert_eq!(v("gpu_memory_temperature_celsius"), Some(70.0));
    assert_eq!(v("gpu_power_watts"), Some(412.5));
    assert_eq!(v("gpu_energy_joules_total"), Some(123456.789));
    assert_eq!(v("gpu_sm_clock_hertz"), Some(1.98e9));
    // `null` in the fixture: unsupported, omitted, not 0.
    assert_eq!(v("gpu_memory_clock_hertz"), None);
    assert_eq!(v("gpu_pcie_replays_total"), Some(2.0));
    assert_eq!(v("gpu_nvlink_bytes_total"), Some(5e6));
    let labelled = |name: &str, label: &str, value_: &str| {
        value(&fams, name, &[("uuid", uuid), (label, value_)])
    };
    assert_eq!(
        labelled("gpu_ecc_errors_total", "type", "corrected"),
        Some(7.0)
    );
    assert_eq!(
        labelled("gpu_ecc_errors_total", "type", "uncorrected"),
        Some(1.0)
    );
    assert_eq!(
        labelled("gpu_remapped_rows_total", "cause", "correctable"),
        Some(3.0)
    );
    assert_eq!(
        labelled("gpu_remapped_rows_total", "cause", "uncorrectable"),
        Some(2.0)
    );
    assert_eq!(v("gpu_row_remap_failure"), Some(1.0));
    // 0x44 = sw_power_cap | hw_thermal_slowdown; one series per reason.
    let throttled: Vec<(String, f64)> = series(&fams, "gpu_clock_throttled")
        .into_iter()
        .filter(|(l, _)| l["uuid"] == uuid)
        .map(|(l, v)| (l["reason"].clone(), v))
        .collect();
    assert_eq!(throttled.len(), 9);
    let on: Vec<&str> = throttled
        .iter()
        .filter(|(_, v)| *v == 1.0)
        .map(|(r, _)| r.as_str())
        .collect();
    assert_eq!(on, ["sw_power_cap", "hw_thermal_slowdown"]);
    assert_eq!(v("gpu_vgpu_license_status"), Some(1.0));
    assert_eq!(v("gpu_prof_gr_engine_active_ratio"), Some(0.8));
    assert_eq!(v("gpu_prof_sm_occupancy_ratio"), Some(0.5));
    assert_eq!(v("gpu_prof_dram_active_ratio"), Some(0.6));
    assert_eq!(v("gpu_prof_pcie_rx_bytes_per_second"), Some(2.5e9));
    assert_eq!(v("gpu_prof_nvlink_tx_bytes_per_second"), Some(4e10));
    assert_eq!(v("gpu_healthy"), Some(1.0));
    let (labels, _) = series(&fams, "gpu_healthy")
        .into_iter()
        .find(|(l, _)| l["uuid"] == uuid)
        .unwrap();
    assert_eq!(labels["node"], "n1");
    assert_eq!(labels["gpu"], "0");
    assert_eq!(labels["model"], "NVIDIA H100 80GB HBM3");
    assert!(!labels.contains_key("parent_uuid"));

    // Left out of the fixture: an idle GPU. An A100 has no GPM: no profiling series.
    let a100 = &f.snapshot.inventory.gpus[2].uuid;
    assert_eq!(value_for(&fams, "gpu_utilization_percent", a100), Some(0.0));
    assert_eq!(value_for(&fams, "gpu_sm_clock_hertz", a100), Some(345e6));
    assert_eq!(
        value(
            &fams,
            "gpu_clock_throttled",
            &[("uuid", a100), ("reason", "gpu_idle")]
        ),
        Some(1.0)
    );
    assert_eq!(value_for(&fams, "gpu_prof_sm_active_ratio", a100), None);
    let h100 = &f.snapshot.inventory.gpus[1].uuid;
    assert_eq!(
        value_for(&fams, "gpu_prof_sm_active_ratio", h100),
        Some(0.0)
    );
}

#[test]
fn mig_devices_carry_their_parent_and_report_memory_and_profiling_only() {
    let f = fixture(None, HealthState::default());
    let fams = build(&view(&f, &State::default()));
    let gpu1 = &f.snapshot.inventory.gpus[1];
    let mig = &gpu1.mig_devices[0];
    let (labels, used) = series(&fams, "gpu_memory_used_bytes")
        .into_iter()
        .find(|(l, _)| l["uuid"] == mig.uuid)
        .expect("MIG memory series");
    assert_eq!(used, 1200.0 * MIB);
    assert_eq!(labels["parent_uuid"], gpu1.uuid);
    assert_eq!(labels["mig_profile"], "3g.40gb");
    assert_eq!(labels["gpu_instance_id"], mig.gpu_instance_id.to_string());
    assert_eq!(labels["gpu"], "1");
    let v = |name: &str| value_for(&fams, name, &mig.uuid);
    assert_eq!(
        v("gpu_memory_free_bytes"),
        Some((mig.memory_mib - 1200) as f64 * MIB)
    );
    assert_eq!(v("gpu_prof_sm_active_ratio"), Some(0.5));
    assert_eq!(v("gpu_prof_tensor_active_ratio"), Some(0.0));
    for name in [
        "gpu_utilization_percent",
        "gpu_temperature_celsius",
        "gpu_power_watts",
        "gpu_energy_joules_total",
        "gpu_sm_clock_hertz",
        "gpu_pcie_replays_total",
        "gpu_row_remap_failure",
    ] {
        assert_eq!(v(name), None, "{name}");
    }
    assert!(!series(&fams, "gpu_clock_throttled")
        .iter()
        .any(|(l, _)| l["uuid"] == mig.uuid));
    assert_eq!(v("gpu_healthy"), Some(1.0));
}

#[test]
fn a_device_without_telemetry_keeps_only_health_and_inventory_facts() {
    let mut f = fixture(None, HealthState::default());
    let uuid = f.snapshot.inventory.gpus[0].uuid.clone();
    f.telemetry.remove(&uuid);
    let health = HealthState::default().with_lost([uuid.clone()]);
    f.snapshot = Snapshot::build(
        f.snapshot.inventory.clone(),
        f.snapshot.config.clone(),
        Arc::new(health),
    )
    .unwrap();
    let fams = build(&view(&f, &State::default()));
    assert_eq!(value_for(&fams, "gpu_utilization_percent", &uuid), None);
    assert_eq!(value_for(&fams, "gpu_memory_used_bytes", &uuid), None);
    assert_eq!(value_for(&fams, "gpu_healthy", &uuid), Some(0.0));
    assert!(value_for(&fams, "gpu_memory_total_bytes", &uuid).is_some());
    assert_eq!(value_for(&fams, "gpu_xid_events_total", &uuid), Some(0.0));
    // The other GPU is still reported.
    let other = &f.snapshot.inventory.gpus[1].uuid;
    assert_eq!(value_for(&fams, "gpu_healthy", other), Some(1.0));
}

/// A tally as the health task keeps it, from `(gpu, mig, xid, times)` deliveries.
fn tally(events: &[(&str, Option<&str>, u64, u64)]) -> XidTally {
    let mut tracker = HealthTracker::new(HealthPolicy::new(
        &crate::config::HealthSettings::default(),
        None,
        None,
    ));
    for (gpu, mig, xid, times) in events {
        let event = crate::gpu::HealthEvent::Xid {
            gpu_uuid: gpu.to_string(),
            mig_uuid: mig.map(str::to_string),
            xid: *xid,
        };
        tracker.apply_repeated(&event, *times, std::time::Instant::now());
    }
    tracker.xids().clone()
}

#[test]
fn xids_count_per_device_and_kind_and_every_device_starts_at_zero() {
    let f = fixture(None, HealthState::default());
    let gpu0 = f.snapshot.inventory.gpus[0].uuid.clone();
    let gpu1 = f.snapshot.inventory.gpus[1].uuid.clone();
    let mig = f.snapshot.inventory.gpus[1].mig_devices[1].uuid.clone();

    // Before any XID: every GPU and MIG device has both totals at 0, no per-kind series.
    let fams = build(&view(&f, &State::default()));
    let devices = 3 + 2;
    for name in ["gpu_xid_events_total", "gpu_xid_critical_errors_total"] {
        let all = series(&fams, name);
        assert_eq!(all.len(), devices, "{name}");
        assert!(all.iter().all(|(_, v)| *v == 0.0), "{name}");
        assert!(all.iter().any(|(l, _)| l.get("mig_profile").is_some()));
    }
    assert!(series(&fams, "gpu_xid_errors_total").is_empty());

    let state = State {
        xids: tally(&[
            (&gpu0, None, 13, 2),
            (&gpu0, None, 79, 1),
            (&gpu1, Some(&mig), 43, 5),
            ("GPU-gone", None, 79, 1),
        ]),
        ..State::default()
    };
    let fams = build(&view(&f, &state));
    let got: Vec<(String, String, f64)> = series(&fams, "gpu_xid_errors_total")
        .into_iter()
        .map(|(l, v)| (l["uuid"].clone(), l["xid"].clone(), v))
        .collect();
    assert_eq!(
        got,
        [
            (gpu0.clone(), "13".to_string(), 2.0),
            (gpu0.clone(), "79".to_string(), 1.0),
            (mig.clone(), "43".to_string(), 5.0)
        ]
    );
    assert_eq!(value_for(&fams, "gpu_xid_events_total", &gpu0), Some(3.0));
    assert_eq!(
        value_for(&fams, "gpu_xid_critical_errors_total", &gpu0),
        Some(1.0),
        "13 is ignored by default, 79 is critical"
    );
    assert_eq!(value_for(&fams, "gpu_xid_events_total", &mig), Some(5.0));
    assert_eq!(
        value_for(&fams, "gpu_xid_critical_errors_total", &mig),
        Some(0.0)
    );
    assert_eq!(value_for(&fams, "gpu_xid_events_total", &gpu1), Some(0.0));
}

const SHARED: &str = "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2}\n";

fn held(pod: &str, resource: &str, id: String) -> ContainerDevice {
    ContainerDevice {
        namespace: "ml".into(),
        pod: pod.into(),
        container: "main".into(),
        resource: resource.into(),
        device_id: id,
    }
}

#[test]
fn attribution_maps_every_sharer_to_the_device_uuid() {
    let f = fixture(Some(SHARED), HealthState::default());
    let gpu0 = f.snapshot.inventory.gpus[0].uuid.clone();
    let gpu = "nvidia.com/gpu";
    let state = State {
        pods: PodAllocations {
            devices: vec![
                held("a", gpu, format!("{gpu0}::0")),
                held("b", gpu, format!("{gpu0}::1")),
                held("c", gpu, "GPU-not-ours::0".into()),
                // Allocated by an agent that advertised index IDs, before an upgrade.
                held("d", gpu, "0::1".into()),
                held("e", gpu, "9::0".into()),
            ],
            up: true,
        },
        ..State::default()
    };
    let fams = build(&view(&f, &state));
    let got = series(&fams, "gpu_container_allocation");
    assert_eq!(got.len(), 3, "{got:?}");
    for (labels, value) in &got {
        assert_eq!(labels["uuid"], gpu0);
        assert_eq!(labels["resource"], "nvidia.com/gpu");
        assert_eq!(*value, 1.0);
    }
    assert_eq!(got[1].0["pod"], "b");
    assert_eq!(got[1].0["device_id"], format!("{gpu0}::1"));
    assert_eq!(got[2].0["pod"], "d");
    assert_eq!(got[2].0["device_id"], "0::1");
    assert_eq!(series(&fams, "gpu_agent_pod_resources_up")[0].1, 1.0);
}

#[test]
fn mps_replicas_are_attributed_like_time_sliced_ones_with_their_sm_share() {
    let f = fixture(
        Some("version: v1\nsharing:\n  mps:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 3}\n"),
        HealthState::default(),
    );
    let gpu0 = f.snapshot.inventory.gpus[0].uuid.clone();
    let gpu = "nvidia.com/gpu";
    let state = State {
        pods: PodAllocations {
            devices: vec![
                held("a", gpu, format!("{gpu0}::0")),
                held("b", gpu, format!("{gpu0}::2")),
            ],
            up: true,
        },
        ..State::default()
    };
    let fams = build(&view(&f, &state));
    let got = series(&fams, "gpu_container_allocation");
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|(l, _)| l["uuid"] == gpu0));
    assert_eq!(got[1].0["device_id"], format!("{gpu0}::2"));

    // 100 / 3 replicas, rounded down as NVIDIA's daemon does, for every GPU of the resource.
    let shares = series(&fams, "gpu_mps_active_thread_percent");
    assert_eq!(shares.len(), f.snapshot.inventory.gpus.len(), "{shares:?}");
    assert_eq!(
        value(
            &fams,
            "gpu_mps_active_thread_percent",
            &[("uuid", &gpu0), ("resource", gpu)]
        ),
        Some(33.0)
    );
    // No MPS resource, no series.
    let plain = fixture(Some(SHARED), HealthState::default());
    assert!(series(
        &build(&view(&plain, &state)),
        "gpu_mps_active_thread_percent"
    )
    .is_empty());
}

/// DRA claims come from the pod-resources API as (driver, DRA device name): attributed to the
/// GPU or MIG device the name resolves to.
#[test]
fn dra_claims_are_attributed_by_their_device_name() {
    let f = fixture(None, HealthState::default());
    let inventory = &f.snapshot.inventory;
    let gpu0 = inventory.gpus[0].uuid.clone();
    let gpu1 = &inventory.gpus[1];
    let mig = &gpu1.mig_devices[0];
    let mig_name = crate::dra::names::of_mig(gpu1, mig);
    let driver = "gpu.gpu-agent.io";
    let state = State {
        pods: PodAllocations {
            devices: vec![
                held("a", driver, "gpu-0".into()),
                held("b", driver, mig_name.clone()),
                held("c", driver, "gpu-9".into()),
            ],
            up: true,
        },
        ..State::default()
    };
    let fams = build(&view(&f, &state));
    let got = series(&fams, "gpu_container_allocation");
    assert_eq!(got.len(), 2, "{got:?}");
    let by_pod: BTreeMap<&str, (&str, &str)> = got
        .iter()
        .map(|(l, _)| {
            (
                l["pod"].as_str(),
                (l["uuid"].as_str(), l["resource"].as_str()),
            )
        })
        .collect();
    assert_eq!(by_pod["a"], (gpu0.as_str(), driver));
    assert_eq!(by_pod["b"], (mig.uuid.as_str(), driver));
}

#[test]
fn agent_metrics_report_counters_advertised_devices_and_registration() {
    let f = fixture(None, HealthState::default());
    let mut plugins = BTreeMap::new();
    plugins.insert(
        "nvidia.com/gpu".to_string(),
        PluginStatus {
            registrations: 2,
            allocations: 7,
            allocation_errors: 1,
            active: true,
            registered: true,
            ..PluginStatus::default()
        },
    );
    let mut state = State {
        plugins,
        ..State::default()
    };
    let fams = build(&view(&f, &state));
    let one = |fams: &[MetricFamily], name: &str| series(fams, name)[0].1;
    assert_eq!(one(&fams, "gpu_agent_registrations_total"), 2.0);
    assert_eq!(one(&fams, "gpu_agent_allocations_total"), 7.0);
    assert_eq!(one(&fams, "gpu_agent_allocation_errors_total"), 1.0);
    assert_eq!(one(&fams, "gpu_agent_config_reloads_total"), 3.0);
    assert_eq!(one(&fams, "gpu_agent_config_reload_failures_total"), 1.0);
    assert_eq!(one(&fams, "gpu_agent_pod_resources_up"), 0.0);
    let info = &series(&fams, "gpu_agent_build_info")[0];
    assert_eq!(info.0["version"], "9.9.9");
    let advertised: Vec<(String, f64)> = series(&fams, "gpu_agent_advertised_devices")
        .into_iter()
        .map(|(l, v)| (format!("{} {}", l["resource"], l["health"]), v))
        .collect();
    assert_eq!(
        advertised,
        [
            ("nvidia.com/gpu Healthy".to_string(), 3.0),
            ("nvidia.com/gpu Unhealthy".to_string(), 0.0)
        ]
    );
    // Registered but no stream open yet: not registered as /readyz sees it.
    let registered = series(&fams, "gpu_agent_resource_registered");
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].0["resource"], "nvidia.com/gpu");
    assert_eq!(registered[0].1, 0.0);
    state
        .plugins
        .get_mut("nvidia.com/gpu")
        .unwrap()
        .open_streams = 1;
    let fams = build(&view(&f, &state));
    assert_eq!(one(&fams, "gpu_agent_resource_registered"), 1.0);
}

#[test]
fn a_refreshed_template_matches_a_fresh_build() {
    for naming in [Naming::GpuAgent, Naming::Dcgm, Naming::Both] {
        let mut f = fixture(None, HealthState::default());
        let state = named(naming);
        let mut t = template(&view(&f, &state));
        let gpu0 = f.snapshot.inventory.gpus[0].uuid.clone();
        let gpu2 = f.snapshot.inventory.gpus[2].uuid.clone();

        // New values, same series: refreshed in place, identical to a fresh build.
        let t0 = f.telemetry.get_mut(&gpu0).unwrap();
        t0.utilization_percent = Some(3.0);
        t0.power_watts = Some(99.5);
        assert!(refresh(&mut t, &view(&f, &state)), "{naming:?}");
        let fresh = template(&view(&f, &state)).encode();
        let text = t.encode();
        assert_eq!(text, fresh, "{naming:?}");
        if naming.gpu_agent() {
            assert!(text.contains(&format!(
                "gpu_utilization_percent{{node=\"n1\",gpu=\"0\",uuid=\"{gpu0}\",model=\"NVIDIA H100 80GB HBM3\"}} 3\n"
            )));
        }
        if naming.dcgm() {
            assert!(
                text.contains("DCGM_FI_DEV_POWER_USAGE{gpu=\"0\","),
                "{text}"
            );
            assert!(text.contains("} 99.500000\n"), "{text}");
        }

        // Values appear and disappear: not the same series any more.
        f.telemetry.get_mut(&gpu0).unwrap().sm_clock_mhz = None;
        f.telemetry.get_mut(&gpu2).unwrap().memory_clock_mhz = None;
        f.telemetry.get_mut(&gpu2).unwrap().sm_clock_mhz = Some(1000.0);
        assert!(!refresh(&mut t, &view(&f, &state)), "{naming:?}");

        // A device stops reporting altogether: fewer series.
        let mut t = template(&view(&f, &state));
        f.telemetry.remove(&gpu2);
        assert!(!refresh(&mut t, &view(&f, &state)), "{naming:?}");
    }
}

#[test]
fn every_family_has_its_documented_name_type_and_help() {
    let f = fixture(None, HealthState::default());
    for mf in build(&view(&f, &named(Naming::Both))) {
        let def = names::find(mf.name())
            .or_else(|| dcgm_fields::find(mf.name()))
            .expect("documented");
        assert_eq!(mf.help(), def.help);
        let counter = mf.get_field_type() == MetricType::COUNTER;
        assert_eq!(counter, def.kind == Kind::Counter, "{}", def.name);
        if def.name.starts_with("DCGM_") {
            continue; // Their labels: dcgm_tests.
        }
        for m in mf.get_metric() {
            let got: Vec<&str> = m.get_label().iter().map(|l| l.name()).collect();
            let mig = got.len() > def.labels.len();
            let mut want: Vec<&str> = def.labels.to_vec();
            if mig {
                // MIG series: the device labels, the MIG labels, then the rest (xid, type …).
                want = names::DEVICE_LABELS
                    .iter()
                    .chain(names::MIG_LABELS)
                    .chain(&def.labels[names::DEVICE_LABELS.len()..])
                    .copied()
                    .collect();
            }
            assert_eq!(got, want, "{}", def.name);
        }
    }
}

#[test]
fn each_naming_serves_its_set_and_the_agent_metrics() {
    let f = fixture(None, HealthState::default());
    let names_of = |naming| -> Vec<String> {
        build(&view(&f, &named(naming)))
            .into_iter()
            .filter(|mf| !mf.get_metric().is_empty())
            .map(|mf| mf.name().to_string())
            .collect()
    };
    let own = names_of(Naming::GpuAgent);
    let dcgm = names_of(Naming::Dcgm);
    let both = names_of(Naming::Both);
    assert!(own.iter().all(|n| n.starts_with("gpu_")));
    assert!(own.iter().any(|n| n == "gpu_prof_sm_active_ratio"));
    assert!(dcgm
        .iter()
        .all(|n| n.starts_with("DCGM_FI_") || n.starts_with("gpu_agent_")));
    assert!(dcgm.iter().any(|n| n == "gpu_agent_build_info"));
    let mut union: Vec<String> = own.iter().chain(&dcgm).cloned().collect();
    union.sort();
    union.dedup();
    let mut both_sorted = both.clone();
    both_sorted.sort();
    assert_eq!(both_sorted, union);
}
