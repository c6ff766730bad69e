//! dcgm-exporter's exposition (`--metrics-names dcgm|both`), as dcgm-exporter 4.x serves its
//! default field list and the profiling fields, with `KUBERNETES_VIRTUAL_GPUS` pod mapping:
//!
//! - A GPU in MIG mode is reported as its GPU instances: the GPU's labels plus `GPU_I_PROFILE`
//!   and `GPU_I_ID`; framebuffer and profiling per instance; no `GPU_UTIL` / `MEM_COPY_UTIL`;
//!   the other fields are the GPU's (DCGM answers device fields for an instance with its GPU's).
//! - A device a container holds is reported once per container (every sharer of a time-sliced
//!   GPU, with `vgpu` = the replica), with `container`, `namespace`, `pod`; a device nobody
//!   holds once, without them.
//! - `DCGM_FI_DEV_XID_ERRORS` is the last XID (0 before any), with `err_code` and `err_msg`.
//! - Native units: MHz, °C, W, mJ, MiB, percent, ratios 0–1, bytes/s. Unsupported: omitted.

use std::cell::OnceCell;

use super::dcgm_fields::{self as fields, xid_message};
use super::names::MetricDef;
use super::sink::{LabelSet, Labels, Sink};
use super::view::{Device, Holder, View};
use crate::gpu::Profiling;

type Value = fn(&Device<'_>) -> Option<f64>;

fn int(v: Option<u64>) -> Option<f64> {
    v.map(|n| n as f64)
}

/// A profiling field of the device itself (a GPU instance's own, never its GPU's).
fn prof(d: &Device<'_>, f: fn(&Profiling) -> Option<f64>) -> Option<f64> {
    d.own(|t| t.profiling.as_ref().and_then(f))
}

/// A field only a whole GPU has.
fn gpu_only(d: &Device<'_>, f: fn(&crate::gpu::DeviceTelemetry) -> Option<f64>) -> Option<f64> {
    if d.mig.is_some() {
        None
    } else {
        d.own(f)
    }
}

/// Every field but the XID one, with where its value comes from.
const FIELDS: [(&MetricDef, Value); 31] = [
    (&fields::SM_CLOCK, |d| d.own_or_parent(|t| t.sm_clock_mhz)),
    (&fields::MEM_CLOCK, |d| {
        d.own_or_parent(|t| t.memory_clock_mhz)
    }),
    (&fields::MEMORY_TEMP, |d| {
        d.own_or_parent(|t| t.memory_temperature_celsius)
    }),
    (&fields::GPU_TEMP, |d| {
        d.own_or_parent(|t| t.temperature_celsius)
    }),
    (&fields::POWER_USAGE, |d| d.own_or_parent(|t| t.power_watts)),
    (&fields::TOTAL_ENERGY_CONSUMPTION, |d| {
        int(d.own_or_parent(|t| t.energy_millijoules))
    }),
    (&fields::PCIE_REPLAY_COUNTER, |d| {
        int(d.own_or_parent(|t| t.pcie_replay_count))
    }),
    (&fields::GPU_UTIL, |d| {
        gpu_only(d, |t| t.utilization_percent)
    }),
    (&fields::MEM_COPY_UTIL, |d| {
        gpu_only(d, |t| t.memory_copy_utilization_percent)
    }),
    (&fields::ENC_UTIL, |d| {
        d.own_or_parent(|t| t.encoder_utilization_percent)
    }),
    (&fields::DEC_UTIL, |d| {
        d.own_or_parent(|t| t.decoder_utilization_percent)
    }),
    (&fields::FB_FREE, |d| int(d.own(|t| t.memory_free_mib))),
    (&fields::FB_USED, |d| int(d.own(|t| t.memory_used_mib))),
    (&fields::FB_RESERVED, |d| {
        int(d.own(|t| t.memory_reserved_mib))
    }),
    // DCGM fills this "counter" with the NVLink data counters' growth since its last sample, in
    // its MB/s (KiB/s / 1000), not with a byte count: rendered from the same rate.
    (&fields::NVLINK_BANDWIDTH_TOTAL, |d| {
        d.own_or_parent(|t| t.nvlink_bandwidth_mb_per_second.map(f64::round))
    }),
    (&fields::VGPU_LICENSE_STATUS, |d| {
        int(d.own_or_parent(|t| t.vgpu_license_status))
    }),
    (&fields::UNCORRECTABLE_REMAPPED_ROWS, |d| {
        int(d.own_or_parent(|t| t.remapped_rows_uncorrectable))
    }),
    (&fields::CORRECTABLE_REMAPPED_ROWS, |d| {
        int(d.own_or_parent(|t| t.remapped_rows_correctable))
    }),
    (&fields::ROW_REMAP_FAILURE, |d| {
        d.own_or_parent(|t| t.row_remap_failure)
            .map(|f| if f { 1.0 } else { 0.0 })
    }),
    (&fields::PROF_GR_ENGINE_ACTIVE, |d| {
        prof(d, |p| p.gr_engine_active)
    }),
    (&fields::PROF_SM_ACTIVE, |d| prof(d, |p| p.sm_active)),
    (&fields::PROF_SM_OCCUPANCY, |d| prof(d, |p| p.sm_occupancy)),
    (&fields::PROF_PIPE_TENSOR_ACTIVE, |d| {
        prof(d, |p| p.tensor_active)
    }),
    (&fields::PROF_DRAM_ACTIVE, |d| prof(d, |p| p.dram_active)),
    (&fields::PROF_PIPE_FP64_ACTIVE, |d| {
        prof(d, |p| p.fp64_active)
    }),
    (&fields::PROF_PIPE_FP32_ACTIVE, |d| {
        prof(d, |p| p.fp32_active)
    }),
    (&fields::PROF_PIPE_FP16_ACTIVE, |d| {
        prof(d, |p| p.fp16_active)
    }),
    (&fields::PROF_PCIE_TX_BYTES, |d| {
        prof(d, |p| p.pcie_tx_bytes_per_second)
    }),
    (&fields::PROF_PCIE_RX_BYTES, |d| {
        prof(d, |p| p.pcie_rx_bytes_per_second)
    }),
    (&fields::PROF_NVLINK_TX_BYTES, |d| {
        prof(d, |p| p.nvlink_tx_bytes_per_second)
    }),
    (&fields::PROF_NVLINK_RX_BYTES, |d| {
        prof(d, |p| p.nvlink_rx_bytes_per_second)
    }),
];

/// Where the XID family goes in dcgm-exporter's order: after `DEC_UTIL`.
const XID_AFTER: &str = fields::DEC_UTIL.name;

/// A sharer of a device, as dcgm-exporter labels it.
struct Sharer<'a> {
    namespace: &'a str,
    pod: &'a str,
    container: &'a str,
    vgpu: Option<&'a str>,
    /// The device's labels and the pod's, rendered once for every family.
    labels: OnceCell<LabelSet>,
}

/// The devices dcgm-exporter reports (GPUs without MIG devices, and GPU instances), each with
/// the containers holding it.
fn reported<'h>(
    devices: &[Device<'_>],
    holders: &'h [Holder<'_>],
) -> Vec<(usize, Vec<Sharer<'h>>)> {
    let mut out: Vec<(usize, Vec<Sharer<'h>>)> = Vec::new();
    let mut slot = vec![usize::MAX; devices.len()];
    for (i, d) in devices.iter().enumerate() {
        if d.mig.is_some() || d.gpu.mig_devices.is_empty() {
            slot[i] = out.len();
            out.push((i, Vec::new()));
        }
    }
    for h in holders {
        let Some(&s) = h.device.and_then(|i| slot.get(i)) else {
            continue;
        };
        let Some((_, sharers)) = out.get_mut(s) else {
            continue;
        };
        let sharer = Sharer {
            namespace: &h.held.namespace,
            pod: &h.held.pod,
            container: &h.held.container,
            vgpu: h.vgpu(),
            labels: OnceCell::new(),
        };
        // The same container under an old and a new ID of one device: one series.
        let seen = sharers.iter().any(|s| {
            (s.namespace, s.pod, s.container, s.vgpu)
                == (sharer.namespace, sharer.pod, sharer.container, sharer.vgpu)
        });
        if !seen {
            sharers.push(sharer);
        }
    }
    out
}

/// The series of one device for one field: one per sharer, or one without pod labels.
fn device_series<'d>(
    sink: &mut impl Sink,
    view: &View<'_>,
    index: usize,
    device: &'d Device<'_>,
    sharers: &'d [Sharer<'_>],
    xid: Option<u64>,
    value: f64,
) {
    let driver = view.snapshot.inventory.driver_version.as_deref();
    let xid_labels = |l: &mut Labels<'_, '_>| {
        if let Some(xid) = xid {
            l.add("err_code", &xid.to_string())
                .add("err_msg", xid_message(xid));
        }
    };
    let base = (index as u64) << 32;
    if sharers.is_empty() {
        let labels = |l: &mut Labels<'_, 'd>| {
            l.set(device.dcgm_labels(view.node, driver));
            xid_labels(l);
        };
        sink.series(base, labels, value);
        return;
    }
    for (k, s) in sharers.iter().enumerate() {
        // dcgm-exporter writes these attributes in name order (err_* between them).
        let labels = |l: &mut Labels<'_, 'd>| {
            if xid.is_none() {
                l.set(s.labels.get_or_init(|| {
                    let mut set = device.dcgm_labels(view.node, driver).clone();
                    set.push("container", s.container);
                    set.push("namespace", s.namespace);
                    set.push("pod", s.pod);
                    if let Some(vgpu) = s.vgpu {
                        set.push("vgpu", vgpu);
                    }
                    set
                }));
                return;
            }
            l.set(device.dcgm_labels(view.node, driver))
                .add("container", s.container);
            xid_labels(l);
            l.add("namespace", s.namespace).add("pod", s.pod);
            if let Some(vgpu) = s.vgpu {
                l.add("vgpu", vgpu);
            }
        };
        sink.series(base | (k as u64 + 1), labels, value);
    }
}

/// The last XID of a device: its own or, on a GPU instance, its GPU's, whichever came later.
fn last_xid(view: &View<'_>, device: &Device<'_>) -> u64 {
    let own = view.xids.last.get(device.uuid());
    let parent = device
        .mig
        .and_then(|_| view.xids.last.get(&device.gpu.uuid));
    match (own, parent) {
        (Some(a), Some(b)) => {
            if a.sequence >= b.sequence {
                a.xid
            } else {
                b.xid
            }
        }
        (Some(a), None) | (None, Some(a)) => a.xid,
        (None, None) => 0,
    }
}

/// Every dcgm family.
pub fn emit(view: &View<'_>, devices: &[Device<'_>], holders: &[Holder<'_>], sink: &mut impl Sink) {
    let reported = reported(devices, holders);
    for (def, value) in FIELDS {
        sink.family(def);
        for (i, sharers) in &reported {
            let device = &devices[*i];
            if let Some(v) = value(device).filter(|v| v.is_finite()) {
                device_series(sink, view, *i, device, sharers, None, v);
            }
        }
        if def.name == XID_AFTER {
            sink.family(&fields::XID_ERRORS);
            for (i, sharers) in &reported {
                let device = &devices[*i];
                let xid = last_xid(view, device);
                device_series(sink, view, *i, device, sharers, Some(xid), xid as f64);
            }
        }
    }
}

#[cfg(test)]
#[path = "dcgm_tests.rs"]
mod tests;
