//! What a backend measures of a device: the data both metric namings (gpu-agent's and
//! dcgm-exporter's) are rendered from. Every value is optional: `None` means the device does not
//! support it (a MIG device has no utilization of its own; a GPU without GPM has no profiling
//! counters), and its series is then omitted, never reported as 0.
//!
//! Units are the ones NVML reports, named in each field, so that no conversion is lost between
//! the backend and the exposition: each metric converts once, at rendering.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latest telemetry of one device (a GPU or a MIG device).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTelemetry {
    /// Percent of time a kernel ran (NVML utilization.gpu; dcgm `GPU_UTIL`).
    pub utilization_percent: Option<f64>,
    /// Percent of time the memory controller was busy (NVML utilization.memory; dcgm
    /// `MEM_COPY_UTIL`). Not used/total: that is `memory_used_mib` / `memory_total_mib`.
    pub memory_copy_utilization_percent: Option<f64>,
    /// Video encoder / decoder busy percent (dcgm `ENC_UTIL`, `DEC_UTIL`).
    pub encoder_utilization_percent: Option<f64>,
    pub decoder_utilization_percent: Option<f64>,
    /// Framebuffer (dcgm `FB_USED`, `FB_FREE`, `FB_RESERVED`; NVML memory info v2).
    pub memory_used_mib: Option<u64>,
    pub memory_total_mib: Option<u64>,
    pub memory_free_mib: Option<u64>,
    pub memory_reserved_mib: Option<u64>,
    /// GPU and HBM temperature (dcgm `GPU_TEMP`, `MEMORY_TEMP`).
    pub temperature_celsius: Option<f64>,
    pub memory_temperature_celsius: Option<f64>,
    /// Power draw (dcgm `POWER_USAGE`).
    pub power_watts: Option<f64>,
    /// Energy since the driver was loaded (dcgm `TOTAL_ENERGY_CONSUMPTION`, in mJ).
    pub energy_millijoules: Option<u64>,
    /// Current clocks (dcgm `SM_CLOCK`, `MEM_CLOCK`).
    pub sm_clock_mhz: Option<f64>,
    pub memory_clock_mhz: Option<f64>,
    /// PCIe replays since boot (dcgm `PCIE_REPLAY_COUNTER`).
    pub pcie_replay_count: Option<u64>,
    /// NVLink data counter summed over all links, in bytes (TX + RX).
    pub nvlink_bytes_total: Option<u64>,
    /// dcgm `NVLINK_BANDWIDTH_TOTAL` as DCGM computes it: not a byte counter (despite its
    /// `counter` type in dcgm-exporter's CSV) but the growth of the same NVLink data counters
    /// between two collections, in KiB/s ÷ 1000 (DCGM's "MB/s"). `None` on the first collection.
    pub nvlink_bandwidth_mb_per_second: Option<f64>,
    /// ECC errors since boot (volatile): corrected (single-bit), uncorrected (double-bit).
    pub ecc_corrected_total: Option<u64>,
    pub ecc_uncorrected_total: Option<u64>,
    /// Remapped rows (dcgm `CORRECTABLE_REMAPPED_ROWS`, `UNCORRECTABLE_REMAPPED_ROWS`) and whether
    /// a remapping failed (dcgm `ROW_REMAP_FAILURE`).
    pub remapped_rows_correctable: Option<u64>,
    pub remapped_rows_uncorrectable: Option<u64>,
    pub row_remap_failure: Option<bool>,
    /// Why the clocks are held down now, as NVML's bitmask (`nvmlClocksEventReasons`).
    pub clock_throttle_reasons: Option<u64>,
    /// vGPU software licence state (dcgm `VGPU_LICENSE_STATUS`): 1 licensed, 0 not.
    pub vgpu_license_status: Option<u64>,
    /// Profiling counters (NVML GPM, Hopper and newer): `None` where the GPU has no GPM.
    pub profiling: Option<Profiling>,
}

/// GPM profiling metrics over the last sampling interval: what DCGM exports as `DCGM_FI_PROF_*`.
/// Activities are ratios 0–1 (NVML GPM gives percent); rates are bytes per second.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profiling {
    /// Graphics/compute engine active (dcgm `PROF_GR_ENGINE_ACTIVE`).
    pub gr_engine_active: Option<f64>,
    /// An SM has at least one warp (`PROF_SM_ACTIVE`); warps resident per SM (`PROF_SM_OCCUPANCY`).
    pub sm_active: Option<f64>,
    pub sm_occupancy: Option<f64>,
    /// Pipes active (`PROF_PIPE_TENSOR_ACTIVE`, `_FP64_`, `_FP32_`, `_FP16_`).
    pub tensor_active: Option<f64>,
    pub fp64_active: Option<f64>,
    pub fp32_active: Option<f64>,
    pub fp16_active: Option<f64>,
    /// Device memory interface active (`PROF_DRAM_ACTIVE`).
    pub dram_active: Option<f64>,
    /// PCIe and NVLink throughput, bytes/s (`PROF_PCIE_TX_BYTES`, `PROF_PCIE_RX_BYTES`,
    /// `PROF_NVLINK_TX_BYTES`, `PROF_NVLINK_RX_BYTES`).
    pub pcie_tx_bytes_per_second: Option<f64>,
    pub pcie_rx_bytes_per_second: Option<f64>,
    pub nvlink_tx_bytes_per_second: Option<f64>,
    pub nvlink_rx_bytes_per_second: Option<f64>,
}

/// Telemetry of every device, keyed by device UUID (GPU or MIG).
pub type Telemetry = BTreeMap<String, DeviceTelemetry>;
