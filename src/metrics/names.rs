//! Every metric the agent exports: name, type and help, in one table (SPEC.md section 6).
//!
//! Names and label names are an external contract (dashboards, alerts and Prometheus tooling
//! check them); change nothing here without changing the spec. Additions are fine.

/// Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// How a family writes its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Shortest exact form (`87`, `412.5`, `1980000000`): gpu-agent's names.
    Shortest,
    /// An integer, as dcgm-exporter prints DCGM's int64 fields (`%d`).
    Integer,
    /// Six decimals, as dcgm-exporter prints DCGM's double fields (`%f`).
    Fixed6,
}

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// Label names, in the order series carry them (MIG device series add [`MIG_LABELS`]).
    pub labels: &'static [&'static str],
    pub format: Format,
}

/// Labels of every device series (a GPU, or a MIG device with [`MIG_LABELS`] added).
pub const DEVICE_LABELS: &[&str] = &["node", "gpu", "uuid", "model"];
/// Extra labels of MIG device series.
pub const MIG_LABELS: &[&str] = &["parent_uuid", "mig_profile", "gpu_instance_id"];

const fn gauge(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> MetricDef {
    MetricDef {
        name,
        help,
        kind: Kind::Gauge,
        labels,
        format: Format::Shortest,
    }
}

/// A gauge with one series per device: labelled [`DEVICE_LABELS`] (plus [`MIG_LABELS`] on MIG
/// devices).
const fn device_gauge(name: &'static str, help: &'static str) -> MetricDef {
    gauge(name, help, DEVICE_LABELS)
}

/// A counter with one series per device.
const fn device_counter(name: &'static str, help: &'static str) -> MetricDef {
    counter(name, help, DEVICE_LABELS)
}

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> MetricDef {
    MetricDef {
        name,
        help,
        kind: Kind::Counter,
        labels,
        format: Format::Shortest,
    }
}

pub const GPU_UTILIZATION: MetricDef = device_gauge(
    "gpu_utilization_percent",
    "Percent of time over the last sample period during which a kernel was running on the GPU (omitted where unsupported, e.g. MIG devices).",
);
pub const GPU_MEMORY_UTILIZATION: MetricDef = device_gauge(
    "gpu_memory_utilization_percent",
    "Device memory in use as a percent of the device's total memory (used / total x 100).",
);
pub const GPU_MEMORY_USED: MetricDef =
    device_gauge("gpu_memory_used_bytes", "Device memory in use, in bytes.");
pub const GPU_MEMORY_TOTAL: MetricDef =
    device_gauge("gpu_memory_total_bytes", "Total device memory, in bytes.");
pub const GPU_TEMPERATURE: MetricDef = device_gauge(
    "gpu_temperature_celsius",
    "GPU core temperature in degrees Celsius.",
);
pub const GPU_POWER: MetricDef = device_gauge("gpu_power_watts", "GPU power draw in watts.");
pub const GPU_SM_CLOCK: MetricDef = device_gauge(
    "gpu_sm_clock_hertz",
    "Current SM (streaming multiprocessor) clock in hertz.",
);
pub const GPU_MEMORY_CLOCK: MetricDef =
    device_gauge("gpu_memory_clock_hertz", "Current memory clock in hertz.");
pub const GPU_MEMORY_CONTROLLER_UTILIZATION: MetricDef = device_gauge(
    "gpu_memory_controller_utilization_percent",
    "Percent of time over the last sample period during which device memory was being read or written (NVML utilization.memory; dcgm MEM_COPY_UTIL).",
);
pub const GPU_ENCODER_UTILIZATION: MetricDef = device_gauge(
    "gpu_encoder_utilization_percent",
    "Percent of time the video encoder was busy.",
);
pub const GPU_DECODER_UTILIZATION: MetricDef = device_gauge(
    "gpu_decoder_utilization_percent",
    "Percent of time the video decoder was busy.",
);
pub const GPU_MEMORY_FREE: MetricDef = device_gauge(
    "gpu_memory_free_bytes",
    "Device memory free, in bytes (total - used - reserved).",
);
pub const GPU_MEMORY_RESERVED: MetricDef = device_gauge(
    "gpu_memory_reserved_bytes",
    "Device memory reserved by the driver and firmware, in bytes.",
);
pub const GPU_MEMORY_TEMPERATURE: MetricDef = device_gauge(
    "gpu_memory_temperature_celsius",
    "Memory (HBM) temperature in degrees Celsius.",
);
pub const GPU_ENERGY: MetricDef = device_counter(
    "gpu_energy_joules_total",
    "Energy the GPU consumed since the driver was loaded, in joules.",
);
pub const GPU_PCIE_REPLAYS: MetricDef = device_counter(
    "gpu_pcie_replays_total",
    "PCIe replays (retries) since boot.",
);
pub const GPU_NVLINK_BYTES: MetricDef = device_counter(
    "gpu_nvlink_bytes_total",
    "NVLink data counter summed over all links, in bytes.",
);
pub const GPU_ECC_ERRORS: MetricDef = counter(
    "gpu_ecc_errors_total",
    "ECC errors since boot (volatile): type=corrected (single-bit) or uncorrected (double-bit).",
    &["node", "gpu", "uuid", "model", "type"],
);
pub const GPU_REMAPPED_ROWS: MetricDef = counter(
    "gpu_remapped_rows_total",
    "Memory rows remapped, by the kind of error that caused it: cause=correctable or uncorrectable.",
    &["node", "gpu", "uuid", "model", "cause"],
);
pub const GPU_ROW_REMAP_FAILURE: MetricDef = device_gauge(
    "gpu_row_remap_failure",
    "1 when a row remapping failed (the GPU needs service), else 0.",
);
pub const GPU_CLOCK_THROTTLED: MetricDef = gauge(
    "gpu_clock_throttled",
    "1 while the clocks are held down for the reason, else 0 (NVML clock event reasons).",
    &["node", "gpu", "uuid", "model", "reason"],
);
pub const GPU_VGPU_LICENSE_STATUS: MetricDef = device_gauge(
    "gpu_vgpu_license_status",
    "vGPU software licence state: 1 licensed, 0 not.",
);
pub const GPU_PROF_GR_ENGINE_ACTIVE: MetricDef = device_gauge(
    "gpu_prof_gr_engine_active_ratio",
    "Ratio of time the graphics/compute engine was active over the last sample period (NVML GPM).",
);
pub const GPU_PROF_SM_ACTIVE: MetricDef = device_gauge(
    "gpu_prof_sm_active_ratio",
    "Ratio of cycles an SM had at least one warp assigned (NVML GPM).",
);
pub const GPU_PROF_SM_OCCUPANCY: MetricDef = device_gauge(
    "gpu_prof_sm_occupancy_ratio",
    "Ratio of warps resident on an SM to the maximum (NVML GPM).",
);
pub const GPU_PROF_TENSOR_ACTIVE: MetricDef = device_gauge(
    "gpu_prof_tensor_active_ratio",
    "Ratio of cycles the tensor pipe was active (NVML GPM).",
);
pub const GPU_PROF_FP64_ACTIVE: MetricDef = device_gauge(
    "gpu_prof_fp64_active_ratio",
    "Ratio of cycles the FP64 pipe was active (NVML GPM).",
);
pub const GPU_PROF_FP32_ACTIVE: MetricDef = device_gauge(
    "gpu_prof_fp32_active_ratio",
    "Ratio of cycles the FP32 pipe was active (NVML GPM).",
);
pub const GPU_PROF_FP16_ACTIVE: MetricDef = device_gauge(
    "gpu_prof_fp16_active_ratio",
    "Ratio of cycles the FP16 pipe was active (NVML GPM).",
);
pub const GPU_PROF_DRAM_ACTIVE: MetricDef = device_gauge(
    "gpu_prof_dram_active_ratio",
    "Ratio of cycles the device memory interface was active (NVML GPM).",
);
pub const GPU_PROF_PCIE_TX: MetricDef = device_gauge(
    "gpu_prof_pcie_tx_bytes_per_second",
    "PCIe data transmitted, headers included, in bytes per second (NVML GPM).",
);
pub const GPU_PROF_PCIE_RX: MetricDef = device_gauge(
    "gpu_prof_pcie_rx_bytes_per_second",
    "PCIe data received, headers included, in bytes per second (NVML GPM).",
);
pub const GPU_PROF_NVLINK_TX: MetricDef = device_gauge(
    "gpu_prof_nvlink_tx_bytes_per_second",
    "NVLink data transmitted, in bytes per second (NVML GPM).",
);
pub const GPU_PROF_NVLINK_RX: MetricDef = device_gauge(
    "gpu_prof_nvlink_rx_bytes_per_second",
    "NVLink data received, in bytes per second (NVML GPM).",
);
pub const GPU_HEALTHY: MetricDef = device_gauge(
    "gpu_healthy",
    "1 when the device is healthy (allocatable), 0 when a fatal XID, ECC error or loss made it unhealthy.",
);
pub const GPU_XID_ERRORS: MetricDef = counter(
    "gpu_xid_errors_total",
    "XID errors delivered by the driver for the device since the agent started, ignored XIDs included.",
    &["node", "gpu", "uuid", "model", "xid"],
);
pub const GPU_XID_EVENTS: MetricDef = device_counter(
    "gpu_xid_events_total",
    "XID errors delivered by the driver for the device since the agent started, every kind (ignored XIDs included); 0 from the start so that increase() sees the first.",
);
pub const GPU_XID_CRITICAL_ERRORS: MetricDef = device_counter(
    "gpu_xid_critical_errors_total",
    "XID errors delivered for the device since the agent started that mark a device unhealthy under the health policy; 0 from the start.",
);
pub const CONTAINER_ALLOCATION: MetricDef = gauge(
    "gpu_container_allocation",
    "1 for every container the kubelet reports holding an advertised device; uuid joins the device gauges.",
    &["namespace", "pod", "container", "resource", "device_id", "uuid"],
);
pub const MPS_ACTIVE_THREAD_PERCENT: MetricDef = gauge(
    "gpu_mps_active_thread_percent",
    "SM share (percent) each MPS client of the resource gets on the GPU: 100 / replicas, as the MPS control daemon sets it (set_default_active_thread_percentage).",
    &["resource", "uuid"],
);
pub const BUILD_INFO: MetricDef = gauge(
    "gpu_agent_build_info",
    "Always 1; the version label says which gpu-agent is running.",
    &["version"],
);
pub const REGISTRATIONS: MetricDef = counter(
    "gpu_agent_registrations_total",
    "Successful registrations of the resource with the kubelet (one per kubelet restart).",
    &["resource"],
);
pub const ALLOCATIONS: MetricDef = counter(
    "gpu_agent_allocations_total",
    "Container allocation requests served for the resource.",
    &["resource"],
);
pub const ALLOCATION_ERRORS: MetricDef = counter(
    "gpu_agent_allocation_errors_total",
    "Container allocation requests refused for the resource (unknown or unhealthy device IDs, too many replicas).",
    &["resource"],
);
pub const ADVERTISED_DEVICES: MetricDef = gauge(
    "gpu_agent_advertised_devices",
    "Devices the agent advertises to the kubelet for the resource, by health.",
    &["resource", "health"],
);
pub const RESOURCE_REGISTERED: MetricDef = gauge(
    "gpu_agent_resource_registered",
    "1 when the advertised resource is registered with the kubelet and its ListAndWatch stream is open (what /readyz reads), else 0.",
    &["resource"],
);
pub const CONFIG_RELOADS: MetricDef = counter(
    "gpu_agent_config_reloads_total",
    "Config file changes applied since the agent started.",
    &[],
);
pub const CONFIG_RELOAD_FAILURES: MetricDef = counter(
    "gpu_agent_config_reload_failures_total",
    "Config file changes rejected (invalid, unreadable, or not buildable on this node); the last good config stays.",
    &[],
);
pub const POD_RESOURCES_UP: MetricDef = gauge(
    "gpu_agent_pod_resources_up",
    "1 when the last List call to the kubelet pod-resources API succeeded (attribution is current), else 0.",
    &[],
);

/// Every family, in the order they are documented.
pub const ALL: &[MetricDef] = &[
    GPU_UTILIZATION,
    GPU_MEMORY_UTILIZATION,
    GPU_MEMORY_CONTROLLER_UTILIZATION,
    GPU_ENCODER_UTILIZATION,
    GPU_DECODER_UTILIZATION,
    GPU_MEMORY_USED,
    GPU_MEMORY_FREE,
    GPU_MEMORY_RESERVED,
    GPU_MEMORY_TOTAL,
    GPU_TEMPERATURE,
    GPU_MEMORY_TEMPERATURE,
    GPU_POWER,
    GPU_ENERGY,
    GPU_SM_CLOCK,
    GPU_MEMORY_CLOCK,
    GPU_CLOCK_THROTTLED,
    GPU_PCIE_REPLAYS,
    GPU_NVLINK_BYTES,
    GPU_ECC_ERRORS,
    GPU_REMAPPED_ROWS,
    GPU_ROW_REMAP_FAILURE,
    GPU_VGPU_LICENSE_STATUS,
    GPU_PROF_GR_ENGINE_ACTIVE,
    GPU_PROF_SM_ACTIVE,
    GPU_PROF_SM_OCCUPANCY,
    GPU_PROF_TENSOR_ACTIVE,
    GPU_PROF_FP64_ACTIVE,
    GPU_PROF_FP32_ACTIVE,
    GPU_PROF_FP16_ACTIVE,
    GPU_PROF_DRAM_ACTIVE,
    GPU_PROF_PCIE_TX,
    GPU_PROF_PCIE_RX,
    GPU_PROF_NVLINK_TX,
    GPU_PROF_NVLINK_RX,
    GPU_HEALTHY,
    GPU_XID_ERRORS,
    GPU_XID_EVENTS,
    GPU_XID_CRITICAL_ERRORS,
    CONTAINER_ALLOCATION,
    MPS_ACTIVE_THREAD_PERCENT,
    BUILD_INFO,
    REGISTRATIONS,
    ALLOCATIONS,
    ALLOCATION_ERRORS,
    ADVERTISED_DEVICES,
    RESOURCE_REGISTERED,
    CONFIG_RELOADS,
    CONFIG_RELOAD_FAILURES,
    POD_RESOURCES_UP,
];

/// The definition of `name`, if we export it under gpu-agent's names (agent metrics included).
pub fn find(name: &str) -> Option<&'static MetricDef> {
    ALL.iter().find(|d| d.name == name)
}

/// The agent's own metrics (`gpu_agent_*`): served under every naming.
pub fn is_agent(def: &MetricDef) -> bool {
    def.name.starts_with("gpu_agent_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        let mut seen = std::collections::BTreeSet::new();
        for def in ALL {
            assert!(seen.insert(def.name), "duplicate {}", def.name);
            assert!(!def.help.is_empty(), "{} has no help", def.name);
            assert_eq!(
                def.kind == Kind::Counter,
                def.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                def.name
            );
        }
        assert_eq!(find("gpu_healthy"), Some(&GPU_HEALTHY));
        assert_eq!(find("gpu_nope"), None);
    }
}
