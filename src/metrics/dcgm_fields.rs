//! dcgm-exporter's names (`--metrics-names dcgm|both`): the fields of dcgm-exporter 4.x's default
//! field list plus the `DCGM_FI_PROF_*` profiling fields, with the type, help text and number
//! format dcgm-exporter prints for each (DCGM int64 fields as integers, doubles with six
//! decimals). Counters keep DCGM's names, without `_total`, as dcgm-exporter serves them.
//!
//! Our own table, in dcgm-exporter's order: NVIDIA's CSV files are not part of this project.

use super::names::{Format, Kind, MetricDef};

/// Labels of every dcgm series, in dcgm-exporter's order: the device, then (MIG) `GPU_I_PROFILE`,
/// `GPU_I_ID`, then `Hostname`, `DCGM_FI_DRIVER_VERSION`, then the pod's `container`,
/// `namespace`, `pod`, `vgpu` (and `err_code`, `err_msg` on the XID field) in name order.
pub const LABELS: &[&str] = &[
    "gpu",
    "UUID",
    "pci_bus_id",
    "device",
    "modelName",
    "Hostname",
    "DCGM_FI_DRIVER_VERSION",
];
/// Labels of a GPU instance (MIG), after `modelName`.
pub const MIG_LABELS: &[&str] = &["GPU_I_PROFILE", "GPU_I_ID"];
/// Labels of the pod holding the device, when one does.
pub const POD_LABELS: &[&str] = &["container", "namespace", "pod", "vgpu"];
/// Labels of the XID field.
pub const XID_LABELS: &[&str] = &["err_code", "err_msg"];

const fn field(name: &'static str, kind: Kind, format: Format, help: &'static str) -> MetricDef {
    MetricDef {
        name,
        help,
        kind,
        labels: LABELS,
        format,
    }
}

const fn int_gauge(name: &'static str, help: &'static str) -> MetricDef {
    field(name, Kind::Gauge, Format::Integer, help)
}

const fn int_counter(name: &'static str, help: &'static str) -> MetricDef {
    field(name, Kind::Counter, Format::Integer, help)
}

const fn ratio(name: &'static str, help: &'static str) -> MetricDef {
    field(name, Kind::Gauge, Format::Fixed6, help)
}

pub const SM_CLOCK: MetricDef = int_gauge("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).");
pub const MEM_CLOCK: MetricDef =
    int_gauge("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).");
pub const MEMORY_TEMP: MetricDef =
    int_gauge("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).");
pub const GPU_TEMP: MetricDef = int_gauge("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).");
pub const POWER_USAGE: MetricDef = field(
    "DCGM_FI_DEV_POWER_USAGE",
    Kind::Gauge,
    Format::Fixed6,
    "Power draw (in W).",
);
pub const TOTAL_ENERGY_CONSUMPTION: MetricDef = int_counter(
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "Total energy consumption since boot (in mJ).",
);
pub const PCIE_REPLAY_COUNTER: MetricDef = int_counter(
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "Total number of PCIe retries.",
);
pub const GPU_UTIL: MetricDef = int_gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).");
pub const MEM_COPY_UTIL: MetricDef =
    int_gauge("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).");
pub const ENC_UTIL: MetricDef = int_gauge("DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %).");
pub const DEC_UTIL: MetricDef = int_gauge("DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %).");
pub const XID_ERRORS: MetricDef = int_gauge(
    "DCGM_FI_DEV_XID_ERRORS",
    "Value of the last XID error encountered.",
);
pub const FB_FREE: MetricDef =
    int_gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).");
pub const FB_USED: MetricDef =
    int_gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).");
pub const FB_RESERVED: MetricDef = int_gauge(
    "DCGM_FI_DEV_FB_RESERVED",
    "Framebuffer memory reserved (in MiB).",
);
pub const NVLINK_BANDWIDTH_TOTAL: MetricDef = int_counter(
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "Total number of NVLink bandwidth counters for all lanes.",
);
pub const VGPU_LICENSE_STATUS: MetricDef =
    int_gauge("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "vGPU License status");
pub const UNCORRECTABLE_REMAPPED_ROWS: MetricDef = int_counter(
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "Number of remapped rows for uncorrectable errors",
);
pub const CORRECTABLE_REMAPPED_ROWS: MetricDef = int_counter(
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "Number of remapped rows for correctable errors",
);
pub const ROW_REMAP_FAILURE: MetricDef = int_gauge(
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "Whether remapping of rows has failed",
);
pub const PROF_GR_ENGINE_ACTIVE: MetricDef = ratio(
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "Ratio of time the graphics engine is active.",
);
pub const PROF_SM_ACTIVE: MetricDef = ratio(
    "DCGM_FI_PROF_SM_ACTIVE",
    "The ratio of cycles an SM has at least 1 warp assigned.",
);
pub const PROF_SM_OCCUPANCY: MetricDef = ratio(
    "DCGM_FI_PROF_SM_OCCUPANCY",
    "The ratio of number of warps resident on an SM.",
);
pub const PROF_PIPE_TENSOR_ACTIVE: MetricDef = ratio(
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "Ratio of cycles the tensor (HMMA) pipe is active.",
);
pub const PROF_DRAM_ACTIVE: MetricDef = ratio(
    "DCGM_FI_PROF_DRAM_ACTIVE",
    "Ratio of cycles the device memory interface is active sending or receiving data.",
);
pub const PROF_PIPE_FP64_ACTIVE: MetricDef = ratio(
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE",
    "Ratio of cycles the fp64 pipes are active.",
);
pub const PROF_PIPE_FP32_ACTIVE: MetricDef = ratio(
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
    "Ratio of cycles the fp32 pipes are active.",
);
pub const PROF_PIPE_FP16_ACTIVE: MetricDef = ratio(
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
    "Ratio of cycles the fp16 pipes are active.",
);
pub const PROF_PCIE_TX_BYTES: MetricDef = int_gauge(
    "DCGM_FI_PROF_PCIE_TX_BYTES",
    "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes per second.",
);
pub const PROF_PCIE_RX_BYTES: MetricDef = int_gauge(
    "DCGM_FI_PROF_PCIE_RX_BYTES",
    "The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes per second.",
);
pub const PROF_NVLINK_TX_BYTES: MetricDef = int_gauge(
    "DCGM_FI_PROF_NVLINK_TX_BYTES",
    "The rate of data transmitted over NVLink - including both protocol headers and data payloads - in bytes per second.",
);
pub const PROF_NVLINK_RX_BYTES: MetricDef = int_gauge(
    "DCGM_FI_PROF_NVLINK_RX_BYTES",
    "The rate of data received over NVLink - including both protocol headers and data payloads - in bytes per second.",
);

/// dcgm-exporter's default field list (`default-counters.csv`), in its order. The label field
/// `DCGM_FI_DRIVER_VERSION` is a label on every series, not a family.
pub const DEFAULT: &[MetricDef] = &[
    SM_CLOCK,
    MEM_CLOCK,
    MEMORY_TEMP,
    GPU_TEMP,
    POWER_USAGE,
    TOTAL_ENERGY_CONSUMPTION,
    PCIE_REPLAY_COUNTER,
    GPU_UTIL,
    MEM_COPY_UTIL,
    ENC_UTIL,
    DEC_UTIL,
    XID_ERRORS,
    FB_FREE,
    FB_USED,
    FB_RESERVED,
    NVLINK_BANDWIDTH_TOTAL,
    VGPU_LICENSE_STATUS,
    UNCORRECTABLE_REMAPPED_ROWS,
    CORRECTABLE_REMAPPED_ROWS,
    ROW_REMAP_FAILURE,
    PROF_GR_ENGINE_ACTIVE,
    PROF_PIPE_TENSOR_ACTIVE,
    PROF_DRAM_ACTIVE,
    PROF_PCIE_TX_BYTES,
    PROF_PCIE_RX_BYTES,
];

/// The profiling fields served besides [`DEFAULT`] where the device has them: the ones
/// `dcp-metrics-included.csv` lists commented out, and NVLink throughput.
pub const EXTRA_PROFILING: &[MetricDef] = &[
    PROF_SM_ACTIVE,
    PROF_SM_OCCUPANCY,
    PROF_PIPE_FP64_ACTIVE,
    PROF_PIPE_FP32_ACTIVE,
    PROF_PIPE_FP16_ACTIVE,
    PROF_NVLINK_TX_BYTES,
    PROF_NVLINK_RX_BYTES,
];

/// Every dcgm family, in the order `/metrics` serves them.
pub const ALL: &[MetricDef] = &[
    SM_CLOCK,
    MEM_CLOCK,
    MEMORY_TEMP,
    GPU_TEMP,
    POWER_USAGE,
    TOTAL_ENERGY_CONSUMPTION,
    PCIE_REPLAY_COUNTER,
    GPU_UTIL,
    MEM_COPY_UTIL,
    ENC_UTIL,
    DEC_UTIL,
    XID_ERRORS,
    FB_FREE,
    FB_USED,
    FB_RESERVED,
    NVLINK_BANDWIDTH_TOTAL,
    VGPU_LICENSE_STATUS,
    UNCORRECTABLE_REMAPPED_ROWS,
    CORRECTABLE_REMAPPED_ROWS,
    ROW_REMAP_FAILURE,
    PROF_GR_ENGINE_ACTIVE,
    PROF_SM_ACTIVE,
    PROF_SM_OCCUPANCY,
    PROF_PIPE_TENSOR_ACTIVE,
    PROF_DRAM_ACTIVE,
    PROF_PIPE_FP64_ACTIVE,
    PROF_PIPE_FP32_ACTIVE,
    PROF_PIPE_FP16_ACTIVE,
    PROF_PCIE_TX_BYTES,
    PROF_PCIE_RX_BYTES,
    PROF_NVLINK_TX_BYTES,
    PROF_NVLINK_RX_BYTES,
];

/// The definition of the dcgm field `name`.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    ALL.iter().find(|d| d.name == name)
}

/// The `err_msg` of an XID series: what the XID means, in gpu-agent's own words (the same text
/// its logs use). `err_code` is the XID as dcgm-exporter prints it; the message text is ours, not
/// dcgm-exporter's copy of NVIDIA's catalog.
pub fn xid_message(xid: u64) -> &'static str {
    match xid {
        // What the series says before any XID, as dcgm-exporter's.
        0 => "No Error",
        _ => crate::health::xid_meaning(xid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_named_once_and_counters_keep_dcgm_names() {
        let mut seen = std::collections::BTreeSet::new();
        for def in ALL {
            assert!(seen.insert(def.name), "duplicate {}", def.name);
            assert!(def.name.starts_with("DCGM_FI_"), "{}", def.name);
            assert!(!def.name.ends_with("_total"), "{}", def.name);
        }
        for def in DEFAULT.iter().chain(EXTRA_PROFILING) {
            assert_eq!(find(def.name), Some(def));
        }
        assert_eq!(DEFAULT.len() + EXTRA_PROFILING.len(), ALL.len());
    }

    #[test]
    fn xid_messages_are_the_health_module_s() {
        assert_eq!(xid_message(0), "No Error");
        assert_eq!(xid_message(79), "GPU has fallen off the bus");
        assert_eq!(xid_message(48), "double-bit ECC error");
        assert_eq!(xid_message(9999), "see NVIDIA's XID catalog");
    }
}
