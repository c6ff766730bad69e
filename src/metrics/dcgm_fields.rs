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

/// dcgm-exporter's `err_msg` for an XID: NVIDIA's XID catalog name as dcgm-exporter 4.5 prints
/// it ("Unknown Error" past its table).
pub fn xid_message(xid: u64) -> &'static str {
    usize::try_from(xid)
        .ok()
        .and_then(|i| XID_MESSAGES.get(i))
        .copied()
        .unwrap_or("Unknown Error")
}

/// NVIDIA's XID catalog (docs.nvidia.com/deploy/xid-errors), by XID, in dcgm-exporter's words.
const XID_MESSAGES: &[&str] = &[
    "No Error",
    "Invalid or corrupted push buffer stream",
    "Invalid or corrupted push buffer stream",
    "Invalid or corrupted push buffer stream",
    "Invalid or corrupted push buffer stream",
    "Unused",
    "Invalid or corrupted push buffer stream",
    "Invalid or corrupted push buffer address",
    "GPU stopped processing",
    "Driver error programming GPU",
    "Unused",
    "Invalid or corrupted push buffer stream",
    "Driver error handling GPU exception",
    "Graphics Engine Exception",
    "Unused",
    "Unused",
    "Display engine hung",
    "Unused",
    "Bus mastering disabled in PCI Config Space",
    "Display Engine error",
    "Invalid or corrupted Mpeg push buffer",
    "Invalid or corrupted Motion Estimation push buffer",
    "Invalid or corrupted Video Processor push buffer",
    "Unused",
    "GPU semaphore timeout",
    "Invalid or illegal push buffer stream",
    "Framebuffer timeout",
    "Video processor exception",
    "Video processor exception",
    "Video processor exception",
    "GPU semaphore access error",
    "GPU memory page fault",
    "Invalid or corrupted push buffer stream",
    "Internal micro-controller error",
    "Video processor exception",
    "Video processor exception",
    "Video processor exception",
    "Driver firmware error",
    "Driver firmware error",
    "Unused",
    "Unused",
    "Unused",
    "Video processor exception",
    "GPU stopped processing",
    "Graphics Engine fault during context switch",
    "Preemptive cleanup, due to previous errors -- Most likely to see when running multiple cuda",
    "GPU stopped processing",
    "Video processor exception",
    "Double Bit ECC Error",
    "Unused",
    "Unused",
    "Unused",
    "Unused",
    "Unused",
    "Auxiliary power is not connected to the GPU board",
    "Unused",
    "Display Engine error",
    "Error programming video memory interface",
    "Unstable video memory interface detected",
    "Internal micro-controller error",
    "Video processor exception",
    "Internal micro-controller breakpoint/warning",
    "Internal micro-controller halt",
    "ECC page retirement or row remapping recording event",
    "ECC page retirement or row remapper recording failure",
    "Video processor exception",
    "Illegal access by driver",
    "Illegal access by driver",
    "NVDEC0 Exception",
    "Graphics Engine class error",
    "CE3: Unknown Error",
    "CE4: Unknown Error",
    "CE5: Unknown Error",
    "NVENC2 Error",
    "NVLINK Error",
    "CE6: Unknown Error",
    "CE7: Unknown Error",
    "CE8: Unknown Error",
    "vGPU Start Error",
    "GPU has fallen off the bus",
    "Corrupted data sent to GPU",
    "VGA Subsystem Error",
    "NVJPG0 Error",
    "NVDEC1 Error",
    "NVDEC2 Error",
    "CE9: Unknown Error",
    "OFA Exception",
    "Reserved",
    "NVDEC3 Error",
    "NVDEC4 Error",
    "Reserved",
    "Reserved",
    "High single-bit ECC error rate",
    "Non-fatal violation of provisioned InfoROM wear limit",
    "Contained ECC error",
    "Uncontained ECC error",
    "NVDEC5 Error",
    "NVDEC6 Error",
    "NVDEC7 Error",
    "NVJPG1 Error",
    "NVJPG2 Error",
    "NVJPG3 Error",
    "NVJPG4 Error",
    "NVJPG5 Error",
    "NVJPG6 Error",
    "NVJPG7 Error",
    "SMBPBI Test Message",
    "SMBPBI Test Message Silent",
    "Reserved",
    "Context Switch Timeout Error",
    "Security Fault Error",
    "Display Bundle Error Event",
    "Display Supervisor Error",
    "DP Link Training Error",
    "Display Pipeline Underflow Error",
    "Display Core Channel Error",
    "Display Window Channel Error",
    "Display Cursor Channel Error",
    "Display Pixel Pipeline Error",
    "GSP RPC Timeout",
    "GSP Error",
    "C2C Link Error",
    "SPI PMU RPC Read Failure",
    "SPI PMU RPC Write Failure",
    "SPI PMU RPC Erase Failure",
    "Inforom FS Failure",
    "Robust Channel CE10 Error",
    "Robust Channel CE11 Error",
    "Robust Channel CE12 Error",
    "Robust Channel CE13 Error",
    "Robust Channel CE14 Error",
    "Robust Channel CE15 Error",
    "Robust Channel CE16 Error",
    "Robust Channel CE17 Error",
    "Robust Channel CE18 Error",
    "Robust Channel CE19 Error",
    "ALI Training Fail",
    "NVLink Privilege Error",
    "Robust Channel DLA Error",
    "Robust Channel OFA1 Error",
    "Unrecovered ECC Error",
    "Robust Channel Fast Path Error",
    "Robust Channel NVENVC3 Error",
    "GPU Initialization Failure",
    "NVLINK: Saw Error",
    "NVLINK: RLW Error",
    "NVLINK: TLW Error",
    "NVLINK: TREX Error",
    "NVLINK: NVLPW_CTRL Error",
    "NVLINK: NETIR Error",
    "NVLINK: MSE Error",
    "Robust Channel Key rotation Error",
    "Robust Channel DLA SMMU Error",
    "Robust Channel DLA timeout Error",
    "GPU Recovery Action Changed",
    "NVLINK: SW Defined Error",
    "Resource Retirement Event",
    "Resource Retirement Failure",
    "GPU Fatal Timeout",
    "Robust Channel CHI Non-Data Error",
    "Channel Retirement Event",
    "Channel Retirement Failure",
    "Power Smoothing HW Circuitry Reengaged",
    "Power Smoothing HW Circuitry Disengaged",
    "Power Smoothing HW Circuitry Low Lifetime",
    "Power Smoothing HW Circuitry Lifetime Exhausted",
    "NVLINK Secure Crypto Error",
    "PCIE Fatal Timeout",
    "Reduced GPU Memory Capacity (Errors found in write protection region)",
    "Internal micro-controller halt",
    "NVLINK: Interrupt seen in CC mode",
    "Uncorrectable DRAM Error",
    "Uncorrectable SRAM Error",
];

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
    fn xid_messages_as_dcgm_exporter_prints_them() {
        assert_eq!(xid_message(0), "No Error");
        assert_eq!(xid_message(43), "GPU stopped processing");
        assert_eq!(xid_message(79), "GPU has fallen off the bus");
        assert_eq!(xid_message(172), "Uncorrectable SRAM Error");
        assert_eq!(xid_message(173), "Unknown Error");
        assert_eq!(xid_message(u64::MAX), "Unknown Error");
    }
}
