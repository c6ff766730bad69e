//! gpu-agent's device families (`--metrics-names gpu-agent|both`): every telemetry field under
//! our own names, in SI units (bytes, hertz, joules), health, XIDs and pod attribution.
//!
//! A value the device did not report is omitted, never 0. Units are converted here, once.

use std::collections::{BTreeMap, HashMap};

use super::names::{self, MetricDef};
use super::sink::Sink;
use super::view::{Device, Holder, View};
use crate::gpu::Profiling;
use crate::resources::Strategy;

const MIB: f64 = 1024.0 * 1024.0;
const MHZ: f64 = 1_000_000.0;

type Value = fn(&Device<'_>) -> Option<f64>;

fn mib(v: Option<u64>) -> Option<f64> {
    v.map(|m| m as f64 * MIB)
}

fn count(v: Option<u64>) -> Option<f64> {
    v.map(|n| n as f64)
}

fn prof(d: &Device<'_>, f: fn(&Profiling) -> Option<f64>) -> Option<f64> {
    d.own(|t| t.profiling.as_ref().and_then(f))
}

/// Families with one series per device, before the labelled ones.
const GAUGES_BEFORE: [(&MetricDef, Value); 15] = [
    (&names::GPU_UTILIZATION, |d| {
        d.own(|t| t.utilization_percent)
    }),
    (&names::GPU_MEMORY_UTILIZATION, |d| {
        let t = d.telemetry?;
        let used = t.memory_used_mib? as f64;
        let total = t.memory_total_mib.unwrap_or(d.memory_total_mib) as f64;
        (total > 0.0).then(|| used / total * 100.0)
    }),
    (&names::GPU_MEMORY_CONTROLLER_UTILIZATION, |d| {
        d.own(|t| t.memory_copy_utilization_percent)
    }),
    (&names::GPU_ENCODER_UTILIZATION, |d| {
        d.own(|t| t.encoder_utilization_percent)
    }),
    (&names::GPU_DECODER_UTILIZATION, |d| {
        d.own(|t| t.decoder_utilization_percent)
    }),
    (&names::GPU_MEMORY_USED, |d| {
        mib(d.own(|t| t.memory_used_mib))
    }),
    (&names::GPU_MEMORY_FREE, |d| {
        mib(d.own(|t| t.memory_free_mib))
    }),
    (&names::GPU_MEMORY_RESERVED, |d| {
        mib(d.own(|t| t.memory_reserved_mib))
    }),
    (&names::GPU_MEMORY_TOTAL, |d| {
        let total = d.own(|t| t.memory_total_mib).unwrap_or(d.memory_total_mib);
        (total > 0).then_some(total as f64 * MIB)
    }),
    (&names::GPU_TEMPERATURE, |d| {
        d.own(|t| t.temperature_celsius)
    }),
    (&names::GPU_MEMORY_TEMPERATURE, |d| {
        d.own(|t| t.memory_temperature_celsius)
    }),
    (&names::GPU_POWER, |d| d.own(|t| t.power_watts)),
    (&names::GPU_ENERGY, |d| {
        d.own(|t| t.energy_millijoules).map(|mj| mj as f64 / 1000.0)
    }),
    (&names::GPU_SM_CLOCK, |d| {
        d.own(|t| t.sm_clock_mhz).map(|c| c * MHZ)
    }),
    (&names::GPU_MEMORY_CLOCK, |d| {
        d.own(|t| t.memory_clock_mhz).map(|c| c * MHZ)
    }),
];

/// NVML's clock event reasons (`nvmlClocksEventReason*`), as `gpu_clock_throttled{reason}`.
pub const THROTTLE_REASONS: [(&str, u64); 9] = [
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
];

const COUNTERS: [(&MetricDef, Value); 2] = [
    (&names::GPU_PCIE_REPLAYS, |d| {
        count(d.own(|t| t.pcie_replay_count))
    }),
    (&names::GPU_NVLINK_BYTES, |d| {
        count(d.own(|t| t.nvlink_bytes_total))
    }),
];

const ECC: [(&str, Value); 2] = [
    ("corrected", |d| count(d.own(|t| t.ecc_corrected_total))),
    ("uncorrected", |d| count(d.own(|t| t.ecc_uncorrected_total))),
];

const REMAPPED: [(&str, Value); 2] = [
    ("correctable", |d| {
        count(d.own(|t| t.remapped_rows_correctable))
    }),
    ("uncorrectable", |d| {
        count(d.own(|t| t.remapped_rows_uncorrectable))
    }),
];

/// Families with one series per device, after the labelled ones.
const GAUGES_AFTER: [(&MetricDef, Value); 14] = [
    (&names::GPU_ROW_REMAP_FAILURE, |d| {
        d.own(|t| t.row_remap_failure)
            .map(|f| if f { 1.0 } else { 0.0 })
    }),
    (&names::GPU_VGPU_LICENSE_STATUS, |d| {
        count(d.own(|t| t.vgpu_license_status))
    }),
    (&names::GPU_PROF_GR_ENGINE_ACTIVE, |d| {
        prof(d, |p| p.gr_engine_active)
    }),
    (&names::GPU_PROF_SM_ACTIVE, |d| prof(d, |p| p.sm_active)),
    (&names::GPU_PROF_SM_OCCUPANCY, |d| {
        prof(d, |p| p.sm_occupancy)
    }),
    (&names::GPU_PROF_TENSOR_ACTIVE, |d| {
        prof(d, |p| p.tensor_active)
    }),
    (&names::GPU_PROF_FP64_ACTIVE, |d| prof(d, |p| p.fp64_active)),
    (&names::GPU_PROF_FP32_ACTIVE, |d| prof(d, |p| p.fp32_active)),
    (&names::GPU_PROF_FP16_ACTIVE, |d| prof(d, |p| p.fp16_active)),
    (&names::GPU_PROF_DRAM_ACTIVE, |d| prof(d, |p| p.dram_active)),
    (&names::GPU_PROF_PCIE_TX, |d| {
        prof(d, |p| p.pcie_tx_bytes_per_second)
    }),
    (&names::GPU_PROF_PCIE_RX, |d| {
        prof(d, |p| p.pcie_rx_bytes_per_second)
    }),
    (&names::GPU_PROF_NVLINK_TX, |d| {
        prof(d, |p| p.nvlink_tx_bytes_per_second)
    }),
    (&names::GPU_PROF_NVLINK_RX, |d| {
        prof(d, |p| p.nvlink_rx_bytes_per_second)
    }),
];

/// One series per device that reports `value`.
fn per_device(
    sink: &mut impl Sink,
    view: &View<'_>,
    devices: &[Device<'_>],
    def: &'static MetricDef,
    value: impl Fn(&Device<'_>) -> Option<f64>,
) {
    sink.family(def);
    for (id, device) in devices.iter().enumerate() {
        if let Some(v) = value(device).filter(|v| v.is_finite()) {
            sink.series(
                id as u64,
                |l| {
                    l.set(device.agent_labels(view.node));
                },
                v,
            );
        }
    }
}

/// One series per device and value of `label`.
fn per_device_labelled<'d>(
    sink: &mut impl Sink,
    view: &View<'_>,
    devices: &'d [Device<'_>],
    def: &'static MetricDef,
    label: &str,
    values: &[(&str, Value)],
) {
    sink.family(def);
    for (i, device) in devices.iter().enumerate() {
        for (j, (name, value)) in values.iter().enumerate() {
            if let Some(v) = value(device).filter(|v| v.is_finite()) {
                let id = (i * values.len() + j) as u64;
                let labels = |l: &mut super::sink::Labels<'_, 'd>| {
                    l.set(device.agent_labels(view.node)).add(label, name);
                };
                sink.series(id, labels, v);
            }
        }
    }
}

/// Every gpu-agent device family, then pod attribution.
pub fn emit<'d>(
    view: &View<'_>,
    devices: &'d [Device<'_>],
    holders: &[Holder<'_>],
    sink: &mut impl Sink,
) {
    for (def, value) in GAUGES_BEFORE {
        per_device(sink, view, devices, def, value);
    }

    sink.family(&names::GPU_CLOCK_THROTTLED);
    for (i, device) in devices.iter().enumerate() {
        let Some(mask) = device.own(|t| t.clock_throttle_reasons) else {
            continue;
        };
        for (j, (reason, bit)) in THROTTLE_REASONS.iter().enumerate() {
            let id = (i * THROTTLE_REASONS.len() + j) as u64;
            let on = if mask & bit != 0 { 1.0 } else { 0.0 };
            let labels = |l: &mut super::sink::Labels<'_, 'd>| {
                l.set(device.agent_labels(view.node)).add("reason", reason);
            };
            sink.series(id, labels, on);
        }
    }

    for (def, value) in COUNTERS {
        per_device(sink, view, devices, def, value);
    }
    per_device_labelled(sink, view, devices, &names::GPU_ECC_ERRORS, "type", &ECC);
    per_device_labelled(
        sink,
        view,
        devices,
        &names::GPU_REMAPPED_ROWS,
        "cause",
        &REMAPPED,
    );
    for (def, value) in GAUGES_AFTER {
        per_device(sink, view, devices, def, value);
    }
    per_device(sink, view, devices, &names::GPU_HEALTHY, |d| {
        Some(if d.healthy { 1.0 } else { 0.0 })
    });

    // XIDs per kind, for devices still in the inventory.
    let by_uuid: HashMap<&str, &Device<'_>> = devices.iter().map(|d| (d.uuid(), d)).collect();
    sink.family(&names::GPU_XID_ERRORS);
    let mut totals: HashMap<&str, u64> = HashMap::new();
    for (id, ((uuid, xid), count)) in view.xids.by_xid.iter().enumerate() {
        let total = totals.entry(uuid.as_str()).or_default();
        *total = total.saturating_add(*count);
        if let Some(device) = by_uuid.get(uuid.as_str()) {
            let labels = |l: &mut super::sink::Labels<'_, 'd>| {
                l.set(device.agent_labels(view.node))
                    .add("xid", &xid.to_string());
            };
            sink.series(id as u64, labels, *count as f64);
        }
    }
    // Per device, from the start at 0: what `increase()` alerts read.
    per_device(sink, view, devices, &names::GPU_XID_EVENTS, |d| {
        Some(totals.get(d.uuid()).copied().unwrap_or(0) as f64)
    });
    per_device(sink, view, devices, &names::GPU_XID_CRITICAL_ERRORS, |d| {
        Some(view.xids.critical.get(d.uuid()).copied().unwrap_or(0) as f64)
    });

    // Attribution: every container on every device of ours, mapped to the GPU / MIG UUID.
    sink.family(&names::CONTAINER_ALLOCATION);
    for holder in holders {
        let held = holder.held;
        let labels = |l: &mut super::sink::Labels<'_, 'd>| {
            l.add("namespace", &held.namespace)
                .add("pod", &held.pod)
                .add("container", &held.container)
                .add("resource", &held.resource)
                .add("device_id", &held.device_id)
                .add("uuid", holder.uuid);
        };
        sink.series(holder.position as u64, labels, 1.0);
    }

    mps_shares(view, sink);
}

/// `gpu_mps_active_thread_percent`: per MPS resource and GPU, `100 / replicas on that GPU`, the
/// share NVIDIA's control daemon gives each client ([`crate::mps::layout::active_thread_percentage`]).
fn mps_shares(view: &View<'_>, sink: &mut impl Sink) {
    sink.family(&names::MPS_ACTIVE_THREAD_PERCENT);
    let mut id = 0u64;
    for (name, resource) in &view.snapshot.resources.resources {
        if resource.strategy != Strategy::Mps {
            continue;
        }
        let mut replicas: BTreeMap<&str, u32> = BTreeMap::new();
        for d in &resource.devices {
            *replicas.entry(d.target.gpu_uuid.as_str()).or_default() += 1;
        }
        for (uuid, count) in replicas {
            let Some(pct) = crate::mps::layout::active_thread_percentage(count) else {
                continue;
            };
            sink.series(
                id,
                |l| {
                    l.add("resource", name).add("uuid", uuid);
                },
                f64::from(pct),
            );
            id += 1;
        }
    }
}
