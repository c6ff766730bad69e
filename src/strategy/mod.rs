//! Workload strategy rules (SPEC.md section 5): from "what the workload is and how much GPU memory
//! it needs" to a concrete resource to request. Pure: `plan` and the admission webhook feed it a
//! [`Catalog`] (what a node or a cluster offers) and print or patch what it returns.
//!
//! Two steps, each explained in the decision's `reason`:
//! 1. [`classify`]: the first matching rule picks a [`Mode`] (thresholds from config `strategy:`).
//! 2. [`resolve`]: the smallest offered resource of that mode whose per-device memory covers the
//!    request; when none fits, the next mode of the fallback chain ([`Mode::fallbacks`]).

pub mod catalog;

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::StrategyThresholds;
use crate::units::{GIB, MIB};

pub use catalog::{Catalog, CatalogError, CatalogLoadError, Offer};

/// What the workload does; the rules treat training and inference differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadType {
    Training,
    Inference,
    DataProcessing,
}

impl WorkloadType {
    /// Every type, for error messages.
    pub const ALL: [WorkloadType; 3] = [
        WorkloadType::Training,
        WorkloadType::Inference,
        WorkloadType::DataProcessing,
    ];

    /// Name as flags and annotations spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::Training => "training",
            WorkloadType::Inference => "inference",
            WorkloadType::DataProcessing => "data-processing",
        }
    }

    /// Parse a name as flags and annotations spell it (exact, lower case).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|w| w.as_str() == s.trim())
            .ok_or_else(|| format!("must be training, inference or data-processing, got {s:?}"))
    }
}

/// How a workload gets its GPU: the strategies of the rules, plus vGPU as a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Whole GPUs.
    Exclusive,
    /// Time-sliced replicas of a GPU (or MIG device); a replica sees the whole device's memory.
    Shared,
    /// A MIG device.
    Mig,
    /// A fixed-size vGPU memory slice.
    Vgpu,
}

impl Mode {
    /// Name as `plan` prints it and the webhook records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
            Mode::Mig => "mig",
            Mode::Vgpu => "vgpu",
        }
    }

    /// The mode of an advertised resource.
    pub fn of_resource(strategy: crate::resources::Strategy) -> Self {
        use crate::resources::Strategy;
        match strategy {
            Strategy::Exclusive => Mode::Exclusive,
            Strategy::TimeSliced | Strategy::Mps => Mode::Shared,
            Strategy::Mig => Mode::Mig,
            Strategy::Vgpu => Mode::Vgpu,
        }
    }

    /// This mode followed by its fallbacks, in the order they are tried (SPEC.md section 5):
    /// shared → vGPU → MIG → exclusive; MIG → vGPU → exclusive; exclusive has none. vGPU (never
    /// chosen by a rule, only reached as a fallback) continues like MIG's chain.
    pub fn fallbacks(self) -> &'static [Mode] {
        match self {
            Mode::Shared => &[Mode::Shared, Mode::Vgpu, Mode::Mig, Mode::Exclusive],
            Mode::Mig => &[Mode::Mig, Mode::Vgpu, Mode::Exclusive],
            Mode::Vgpu => &[Mode::Vgpu, Mode::Exclusive],
            Mode::Exclusive => &[Mode::Exclusive],
        }
    }

    /// How a reason names resources of this mode.
    fn noun(self) -> &'static str {
        match self {
            Mode::Exclusive => "whole-GPU",
            Mode::Shared => "time-sliced",
            Mode::Mig => "MIG",
            Mode::Vgpu => "vGPU",
        }
    }
}

/// The rule that matched and the mode it picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub mode: Mode,
    /// 1-based rule number, as SPEC.md section 5 numbers them.
    pub rule: u8,
    /// Why, e.g. `rule 3: 4 GiB <= 8 GiB <= 20 GiB -> mig`.
    pub reason: String,
}

/// Apply the rules in order; the first that matches wins.
pub fn classify(
    workload: WorkloadType,
    memory_bytes: u64,
    t: &StrategyThresholds,
) -> Classification {
    let bytes = memory_bytes as f64;
    let gib = |v: f64| v * GIB as f64;
    let mem = format_bytes(memory_bytes);
    let (mode, rule, why) =
        if workload == WorkloadType::Training && bytes > gib(t.training_exclusive_above_gib) {
            (
                Mode::Exclusive,
                1,
                format!(
                    "training with {mem} > {}",
                    format_gib(t.training_exclusive_above_gib)
                ),
            )
        } else if workload == WorkloadType::Inference && bytes < gib(t.inference_shared_below_gib) {
            (
                Mode::Shared,
                2,
                format!(
                    "inference with {mem} < {}",
                    format_gib(t.inference_shared_below_gib)
                ),
            )
        } else if gib(t.mig_range_gib[0]) <= bytes && bytes <= gib(t.mig_range_gib[1]) {
            (
                Mode::Mig,
                3,
                format!(
                    "{} <= {mem} <= {}",
                    format_gib(t.mig_range_gib[0]),
                    format_gib(t.mig_range_gib[1])
                ),
            )
        } else {
            (
                Mode::Exclusive,
                4,
                format!("{} with {mem} matches no sharing rule", workload.as_str()),
            )
        };
    Classification {
        mode,
        rule,
        reason: format!("rule {rule}: {why} -> {}", mode.as_str()),
    }
}

/// A resolved request: the resource to put in `resources.limits`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub workload: WorkloadType,
    pub memory_bytes: u64,
    /// What the rules asked for.
    pub classified: Mode,
    /// What was found (differs from `classified` when `fallback`).
    pub mode: Mode,
    /// Resource name to request, e.g. `nvidia.com/mig-1g.10gb`.
    pub resource: String,
    /// Devices to request (always 1: the rules size one device to the request).
    pub count: u32,
    /// Memory one device of `resource` gives, in MiB.
    pub device_memory_mib: u64,
    /// Devices of `resource` on offer.
    pub available: u32,
    /// True when `mode` is a fallback of `classified`.
    pub fallback: bool,
    /// What was tried and why this was chosen.
    pub reason: String,
}

/// Nothing on offer fits, even after the fallbacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NoFit {
    pub workload: WorkloadType,
    pub memory_bytes: u64,
    pub classified: Mode,
    /// The classification and what was tried for each mode of the chain.
    pub reason: String,
}

/// Classify, then resolve against `catalog`.
pub fn plan(
    workload: WorkloadType,
    memory_bytes: u64,
    thresholds: &StrategyThresholds,
    catalog: &Catalog,
) -> Result<Decision, NoFit> {
    let class = classify(workload, memory_bytes, thresholds);
    let mut reason = format!(
        "{} needing {}: {}",
        workload.as_str(),
        format_bytes(memory_bytes),
        class.reason
    );
    for &mode in class.mode.fallbacks() {
        match pick(mode, memory_bytes, catalog) {
            Ok(offer) => {
                let fallback = mode != class.mode;
                let _ = write!(
                    reason,
                    "; {}{}: {} ({} per device, {} available)",
                    if fallback { "fell back to " } else { "" },
                    mode.as_str(),
                    offer.name,
                    format_bytes(offer.memory_mib.saturating_mul(MIB)),
                    offer.count,
                );
                return Ok(Decision {
                    workload,
                    memory_bytes,
                    classified: class.mode,
                    mode,
                    resource: offer.name.clone(),
                    count: 1,
                    device_memory_mib: offer.memory_mib,
                    available: offer.count,
                    fallback,
                    reason,
                });
            }
            Err(why) => {
                let _ = write!(reason, "; {}: {why}", mode.as_str());
            }
        }
    }
    reason.push_str("; nothing fits");
    Err(NoFit {
        workload,
        memory_bytes,
        classified: class.mode,
        reason,
    })
}

/// Resolve one mode: the offer of that mode with the least per-device memory that still covers
/// the request (ties by name: `mig-1g.20gb` before `mig-2g.20gb`, `mig-1g.10gb` before
/// `mig-1g.10gb.me`). Err says why none qualifies.
pub fn pick(mode: Mode, memory_bytes: u64, catalog: &Catalog) -> Result<&Offer, String> {
    let of_mode: Vec<&Offer> = catalog.offers.iter().filter(|o| o.mode == mode).collect();
    if of_mode.is_empty() {
        return Err(format!("no {} resource offered", mode.noun()));
    }
    let available: Vec<&Offer> = of_mode.iter().copied().filter(|o| o.count > 0).collect();
    if available.is_empty() {
        let names: Vec<&str> = of_mode.iter().map(|o| o.name.as_str()).collect();
        return Err(format!("{} has no healthy device", names.join(", ")));
    }
    let fits = |o: &&Offer| o.memory_mib.saturating_mul(MIB) >= memory_bytes;
    if let Some(best) = available
        .iter()
        .copied()
        .filter(fits)
        .min_by(|a, b| a.memory_mib.cmp(&b.memory_mib).then(a.name.cmp(&b.name)))
    {
        return Ok(best);
    }
    let largest = available
        .iter()
        .max_by_key(|o| o.memory_mib)
        .map(|o| {
            format!(
                "largest is {} with {}",
                o.name,
                format_bytes(o.memory_mib.saturating_mul(MIB))
            )
        })
        .unwrap_or_default();
    Err(format!(
        "no {} resource has >= {} per device ({largest})",
        mode.noun(),
        format_bytes(memory_bytes)
    ))
}

/// Bytes exactly, as a person reads them: `8 GiB`, `9856 MiB`, `20000000000 bytes (~18.6 GiB)`.
/// Exact so that a reason never reads like `16 GiB > 16 GiB` for a request one byte over.
pub fn format_bytes(bytes: u64) -> String {
    if bytes > 0 && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes > 0 && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= GIB {
        format!(
            "{bytes} bytes (~{})",
            trim(bytes as f64 / GIB as f64, "GiB")
        )
    } else if bytes >= MIB {
        format!(
            "{bytes} bytes (~{})",
            trim(bytes as f64 / MIB as f64, "MiB")
        )
    } else {
        format!("{bytes} bytes")
    }
}

fn format_gib(gib: f64) -> String {
    trim(gib, "GiB")
}

/// One decimal at most, none when whole: `8 GiB`, `9.6 GiB`.
fn trim(value: f64, unit: &str) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0} {unit}")
    } else {
        format!("{rounded:.1} {unit}")
    }
}

#[cfg(test)]
pub(crate) mod tests;
