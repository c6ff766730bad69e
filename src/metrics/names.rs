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

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// Label names, in the order series carry them (MIG device series add [`MIG_LABELS`]).
    pub labels: &'static [&'static str],
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
    }
}

/// A gauge with one series per device: labelled [`DEVICE_LABELS`] (plus [`MIG_LABELS`] on MIG
/// devices).
const fn device_gauge(name: &'static str, help: &'static str) -> MetricDef {
    gauge(name, help, DEVICE_LABELS)
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
pub const GPU_HEALTHY: MetricDef = device_gauge(
    "gpu_healthy",
    "1 when the device is healthy (allocatable), 0 when a fatal XID, ECC error or loss made it unhealthy.",
);
pub const GPU_XID_ERRORS: MetricDef = counter(
    "gpu_xid_errors_total",
    "XID errors delivered by the driver for the device since the agent started, ignored XIDs included.",
    &["node", "gpu", "uuid", "model", "xid"],
);
pub const CONTAINER_ALLOCATION: MetricDef = gauge(
    "gpu_container_allocation",
    "1 for every container the kubelet reports holding an advertised device; uuid joins the device gauges.",
    &["namespace", "pod", "container", "resource", "device_id", "uuid"],
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
    GPU_MEMORY_USED,
    GPU_MEMORY_TOTAL,
    GPU_TEMPERATURE,
    GPU_POWER,
    GPU_SM_CLOCK,
    GPU_MEMORY_CLOCK,
    GPU_HEALTHY,
    GPU_XID_ERRORS,
    CONTAINER_ALLOCATION,
    BUILD_INFO,
    REGISTRATIONS,
    ALLOCATIONS,
    ALLOCATION_ERRORS,
    ADVERTISED_DEVICES,
    CONFIG_RELOADS,
    CONFIG_RELOAD_FAILURES,
    POD_RESOURCES_UP,
];

/// The definition of `name`, if we export it.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    ALL.iter().find(|d| d.name == name)
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
