//! Profiling counters from NVML GPM (GPU Performance Monitoring, Hopper and newer): what DCGM
//! exports as `DCGM_FI_PROF_*`, without DCGM.
//!
//! GPM metrics are computed by NVML from two samples taken some time apart. Each collection
//! cycle takes a new sample per GPU (`nvmlGpmSampleGet`) and per MIG GPU instance
//! (`nvmlGpmMigSampleGet`), asks NVML for the metrics between it and the sample the previous
//! cycle kept, and keeps the new one: the profiling values describe the last collect interval,
//! and appear from the second cycle on. Samples of devices that were not sampled in a cycle
//! (gone, re-partitioned, lost) are freed at the end of that cycle.
//!
//! GPUs without GPM get `profiling: None` and one log line per model at the first cycle.

use std::collections::{BTreeSet, HashMap};

use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::gpm::gpm_metrics_get;
use nvml_wrapper::{Device, GpmSample, Nvml};
use nvml_wrapper_sys::bindings::nvmlGpmSample_t;
use tracing::{debug, info};

use super::history::SampleHistory;
use crate::gpu::{Gpu, Profiling};

/// GPM gives activities in percent; `Profiling` holds ratios 0–1 (as DCGM does: value ÷ 100).
const PERCENT: f64 = 0.01;

/// GPM gives PCIe and NVLink throughput in MiB/s (nvml.h: "PCIe traffic from this GPU in
/// MiB/sec"); `Profiling` holds bytes/s. DCGM passes GPM's number on unconverted as its
/// "bytes per second" `PROF_PCIE_*_BYTES`: which of nvml.h and DCGM is right about the unit is
/// not yet checked on hardware (PCIe load on a Hopper GPU, against nvmlDeviceGetPcieThroughput).
const MIB_PER_SECOND: f64 = 1024.0 * 1024.0;

/// One GPM metric: the `Profiling` field it fills and the factor from GPM's unit to ours.
struct Metric {
    id: GpmMetricId,
    field: fn(&mut Profiling) -> &mut Option<f64>,
    scale: f64,
}

/// Which GPM metric feeds which field: the metric DCGM reads for the same `DCGM_FI_PROF_*`
/// field on Hopper (`DcgmFieldIdToNvmlGpmMetricId`). Tensor activity is "any tensor" (DCGM's
/// `PIPE_TENSOR_ACTIVE`), not HMMA alone.
const METRICS: [Metric; 12] = [
    Metric {
        id: GpmMetricId::GraphicsUtil,
        field: |p| &mut p.gr_engine_active,
        scale: PERCENT,
    },
    Metric {
        id: GpmMetricId::SmUtil,
        field: |p| &mut p.sm_active,
        scale: PERCENT,
    },
    Metric {
        id: GpmMetricId::SmOccupancy,
        field: |p| &mut p.sm_occupancy,
        scale: PERCENT,
    },
    Metric {
        id: GpmMetricId::AnyTensorUtil,
        field: |p| &mut p.tensor_active,
        scale: PERCENT,
    },
    Metric {
        id: GpmMetricId::Fp64Util,
        field: |p| &mut p.fp64_active,
        scale: PERCENT,
    },
    Metric {
        id: GpmMetricId::Fp32Util,
        field: |p| &mut p.fp32_active,
        scale: PERCENT,
    },
    Metric {
        id: GpmMetricId::Fp16Util,
        field: |p| &mut p.fp16_active,
        scale: PERCENT,
    },
    Metric {
        id: GpmMetricId::DramBwUtil,
        field: |p| &mut p.dram_active,
        scale: PERCENT,
    },
    Metric {
        id: GpmMetricId::PcieTxPerSec,
        field: |p| &mut p.pcie_tx_bytes_per_second,
        scale: MIB_PER_SECOND,
    },
    Metric {
        id: GpmMetricId::PcieRxPerSec,
        field: |p| &mut p.pcie_rx_bytes_per_second,
        scale: MIB_PER_SECOND,
    },
    Metric {
        id: GpmMetricId::NvlinkTotalTxPerSec,
        field: |p| &mut p.nvlink_tx_bytes_per_second,
        scale: MIB_PER_SECOND,
    },
    Metric {
        id: GpmMetricId::NvlinkTotalRxPerSec,
        field: |p| &mut p.nvlink_rx_bytes_per_second,
        scale: MIB_PER_SECOND,
    },
];

/// The metric ids requested from NVML, in [`METRICS`] order.
fn metric_ids() -> [GpmMetricId; METRICS.len()] {
    METRICS.map(|m| m.id)
}

/// `Profiling` from NVML's answer for [`metric_ids`] (same order). A metric NVML could not
/// compute (not on this device, e.g. PCIe of a MIG instance) or that is not a number stays
/// `None`; `None` as a whole when no metric has a value.
fn profiling_from(results: &[Result<f64, NvmlError>]) -> Option<Profiling> {
    let mut profiling = Profiling::default();
    let mut any = false;
    for (metric, result) in METRICS.iter().zip(results) {
        if let Ok(value) = result {
            if value.is_finite() {
                *(metric.field)(&mut profiling) = Some(value * metric.scale);
                any = true;
            }
        }
    }
    any.then_some(profiling)
}

/// Whose GPM sample it is: a GPU, or one GPU instance of a MIG-enabled GPU. An instance is also
/// keyed by the UUID of its first MIG device, which changes when the instance is re-created,
/// so that a re-partition never pairs samples of two different instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum GpmKey {
    Gpu(String),
    Instance { gpu: String, gi: u32, mig: String },
}

/// Which GPUs have GPM (asked once per GPU), and the models already logged as having none.
#[derive(Default)]
struct Support {
    by_gpu: HashMap<String, bool>,
    logged_models: BTreeSet<String>,
}

impl Support {
    /// Record NVML's answer for a GPU. Returns whether it has GPM, and the line to log when it
    /// has none and no GPU of its model was logged yet.
    fn record(
        &mut self,
        gpu: &str,
        model: &str,
        answer: Result<bool, NvmlError>,
    ) -> (bool, Option<String>) {
        let (supported, line) = match answer {
            Ok(true) => (true, String::new()),
            Ok(false) => (
                false,
                format!(
                    "GPM profiling metrics need Hopper or newer; {model} has none: \
                     DCGM_FI_PROF_* omitted"
                ),
            ),
            Err(error) => (
                false,
                format!(
                    "GPM support of {model} cannot be read ({error}); no profiling metrics: \
                     DCGM_FI_PROF_* omitted"
                ),
            ),
        };
        self.by_gpu.insert(gpu.to_string(), supported);
        let log = !supported && self.logged_models.insert(model.to_string());
        (supported, log.then_some(line))
    }
}

/// A GPM sample handle kept between cycles, owned here and freed through [`Gpm::free`].
/// (A `GpmSample` borrows the `Nvml` it came from, which the backend owns next to it.)
struct HeldSample(nvmlGpmSample_t);

// SAFETY: a GPM sample is a heap buffer NVML allocated; it is used by one thread at a time (the
// backend keeps it behind a mutex) and NVML does not tie it to the allocating thread.
unsafe impl Send for HeldSample {}

/// The GPM state of the backend: previous samples and GPM support, across collection cycles.
pub(super) struct Gpm {
    history: SampleHistory<GpmKey, HeldSample>,
    support: Support,
}

impl Gpm {
    pub(super) fn new() -> Self {
        Self {
            history: SampleHistory::new(),
            support: Support::default(),
        }
    }

    /// Whether `gpu` has GPM; asked of NVML at its first cycle, logged once per model without.
    pub(super) fn supported(&mut self, device: &Device<'_>, gpu: &Gpu) -> bool {
        if let Some(&known) = self.support.by_gpu.get(&gpu.uuid) {
            return known;
        }
        let (supported, log) = self
            .support
            .record(&gpu.uuid, &gpu.model, device.gpm_support());
        if let Some(line) = log {
            info!(gpu = %gpu.uuid, model = %gpu.model, "{line}");
        }
        supported
    }

    /// Profiling of the whole GPU over the interval since the last cycle.
    pub(super) fn gpu<'n>(
        &mut self,
        nvml: &'n Nvml,
        device: &Device<'n>,
        gpu: &Gpu,
    ) -> Option<Profiling> {
        self.advance(nvml, GpmKey::Gpu(gpu.uuid.clone()), device.gpm_sample())
    }

    /// Profiling of GPU instance `gi` of `gpu` (its first MIG device `mig`) over the interval.
    pub(super) fn instance<'n>(
        &mut self,
        nvml: &'n Nvml,
        device: &Device<'n>,
        gpu: &Gpu,
        gi: u32,
        mig: &str,
    ) -> Option<Profiling> {
        let key = GpmKey::Instance {
            gpu: gpu.uuid.clone(),
            gi,
            mig: mig.to_string(),
        };
        self.advance(nvml, key, device.gpm_mig_sample(gi))
    }

    /// Keep the new sample and compute the metrics between the previous one and it.
    fn advance<'n>(
        &mut self,
        nvml: &'n Nvml,
        key: GpmKey,
        new: Result<GpmSample<'n>, NvmlError>,
    ) -> Option<Profiling> {
        let previous = self.history.take(&key);
        let new = match new {
            Ok(sample) => sample,
            Err(error) => {
                debug!(device = ?key, error = %error, "GPM sample failed; no profiling this interval");
                if let Some(stale) = previous {
                    Self::free(nvml, stale);
                }
                return None;
            }
        };
        let profiling = previous.and_then(|previous| {
            // SAFETY: `previous` holds a handle of a sample of this `nvml`, taken out of the
            // history, so nothing else owns it: this wrapper frees it when the closure ends.
            let previous = unsafe { GpmSample::from_handle(nvml, previous.0) };
            match gpm_metrics_get(nvml, &previous, &new, &metric_ids()) {
                Ok(results) => {
                    let values: Vec<Result<f64, NvmlError>> =
                        results.into_iter().map(|r| r.map(|m| m.value)).collect();
                    profiling_from(&values)
                }
                Err(error) => {
                    debug!(device = ?key, error = %error, "GPM metrics failed; no profiling this interval");
                    None
                }
            }
        });
        self.history.keep(key, HeldSample(new.into_handle()));
        profiling
    }

    /// End a collection cycle: free the samples of devices that were not sampled in it.
    pub(super) fn end_cycle(&mut self, nvml: &Nvml) {
        for stale in self.history.end_cycle() {
            Self::free(nvml, stale);
        }
    }

    /// Free every kept sample (the backend is going away).
    pub(super) fn release(&mut self, nvml: &Nvml) {
        for sample in self.history.drain() {
            Self::free(nvml, sample);
        }
    }

    fn free(nvml: &Nvml, sample: HeldSample) {
        // SAFETY: every `HeldSample` holds a handle of this `nvml` taken out of the history, so
        // it is freed exactly once, here.
        drop(unsafe { GpmSample::from_handle(nvml, sample.0) });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The profiling NVML's answer gives when only `id` has `value`.
    fn only(id: GpmMetricId, value: f64) -> Option<Profiling> {
        let results: Vec<Result<f64, NvmlError>> = metric_ids()
            .iter()
            .map(|m| {
                if *m == id {
                    Ok(value)
                } else {
                    Err(NvmlError::NotSupported)
                }
            })
            .collect();
        profiling_from(&results)
    }

    #[test]
    fn each_gpm_metric_feeds_its_field_in_our_unit() {
        let ratio = |f: fn(&mut Profiling) -> &mut Option<f64>, v| {
            let mut p = Profiling::default();
            *f(&mut p) = Some(v);
            Some(p)
        };
        let mib = 1024.0 * 1024.0;
        let cases: [(GpmMetricId, Option<Profiling>); 12] = [
            (
                GpmMetricId::GraphicsUtil,
                ratio(|p| &mut p.gr_engine_active, 0.5),
            ),
            (GpmMetricId::SmUtil, ratio(|p| &mut p.sm_active, 0.5)),
            (
                GpmMetricId::SmOccupancy,
                ratio(|p| &mut p.sm_occupancy, 0.5),
            ),
            (
                GpmMetricId::AnyTensorUtil,
                ratio(|p| &mut p.tensor_active, 0.5),
            ),
            (GpmMetricId::Fp64Util, ratio(|p| &mut p.fp64_active, 0.5)),
            (GpmMetricId::Fp32Util, ratio(|p| &mut p.fp32_active, 0.5)),
            (GpmMetricId::Fp16Util, ratio(|p| &mut p.fp16_active, 0.5)),
            (GpmMetricId::DramBwUtil, ratio(|p| &mut p.dram_active, 0.5)),
            (
                GpmMetricId::PcieTxPerSec,
                ratio(|p| &mut p.pcie_tx_bytes_per_second, 50.0 * mib),
            ),
            (
                GpmMetricId::PcieRxPerSec,
                ratio(|p| &mut p.pcie_rx_bytes_per_second, 50.0 * mib),
            ),
            (
                GpmMetricId::NvlinkTotalTxPerSec,
                ratio(|p| &mut p.nvlink_tx_bytes_per_second, 50.0 * mib),
            ),
            (
                GpmMetricId::NvlinkTotalRxPerSec,
                ratio(|p| &mut p.nvlink_rx_bytes_per_second, 50.0 * mib),
            ),
        ];
        for (id, expected) in cases {
            assert_eq!(only(id, 50.0), expected, "{id:?}");
        }
        // Every field of `Profiling` has a metric, none twice.
        let ids: HashSet<GpmMetricId> = metric_ids().into_iter().collect();
        assert_eq!(ids.len(), METRICS.len());
    }

    #[test]
    fn a_full_answer_fills_every_field() {
        let results: Vec<Result<f64, NvmlError>> =
            (0..METRICS.len()).map(|i| Ok(i as f64)).collect();
        let p = profiling_from(&results).unwrap();
        assert_eq!(p.gr_engine_active, Some(0.0));
        assert_eq!(p.dram_active, Some(0.07));
        assert_eq!(p.nvlink_rx_bytes_per_second, Some(11.0 * 1024.0 * 1024.0));
        assert!(serde_json::to_value(&p)
            .unwrap()
            .as_object()
            .unwrap()
            .values()
            .all(|v| !v.is_null()));
    }

    #[test]
    fn no_value_means_no_profiling() {
        let none: Vec<Result<f64, NvmlError>> = (0..METRICS.len())
            .map(|_| Err(NvmlError::NotSupported))
            .collect();
        assert_eq!(profiling_from(&none), None);
        assert_eq!(only(GpmMetricId::SmUtil, f64::NAN), None);
        // A short answer fills what it has.
        assert_eq!(
            profiling_from(&[Ok(100.0)]).unwrap().gr_engine_active,
            Some(1.0)
        );
    }

    #[test]
    fn a_recreated_gpu_instance_is_a_new_device() {
        let instance = |mig: &str| GpmKey::Instance {
            gpu: "GPU-0".into(),
            gi: 1,
            mig: mig.into(),
        };
        let mut h: SampleHistory<GpmKey, u32> = SampleHistory::new();
        h.keep(instance("MIG-a"), 1);
        h.end_cycle();
        assert_eq!(h.take(&instance("MIG-b")), None);
        h.keep(instance("MIG-b"), 2);
        assert_eq!(h.end_cycle(), vec![1]);
    }

    #[test]
    fn gpus_without_gpm_are_logged_once_per_model() {
        let mut s = Support::default();
        let (yes, log) = s.record("GPU-h100", "NVIDIA H100 80GB HBM3", Ok(true));
        assert!(yes && log.is_none());
        let (no, log) = s.record("GPU-a", "NVIDIA A100-SXM4-80GB", Ok(false));
        assert!(!no);
        assert_eq!(
            log.as_deref(),
            Some(
                "GPM profiling metrics need Hopper or newer; NVIDIA A100-SXM4-80GB has none: \
                 DCGM_FI_PROF_* omitted"
            )
        );
        let (_, again) = s.record("GPU-b", "NVIDIA A100-SXM4-80GB", Ok(false));
        assert_eq!(again, None);
        let (no, log) = s.record(
            "GPU-c",
            "Tesla V100",
            Err(NvmlError::FailedToLoadSymbol("x".into())),
        );
        assert!(!no);
        assert!(
            log.unwrap().contains("Tesla V100"),
            "a different model is logged"
        );
        assert_eq!(s.by_gpu.get("GPU-b"), Some(&false));
    }
}
