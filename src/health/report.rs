//! Which advertised devices changed health between two snapshots, for the logs: operators see
//! `nvidia.com/gpu.shared: GPU-…::0..3 Unhealthy` next to the XID that caused it.

use crate::resources::{Health, ResourceSet};

/// Devices of one resource that went to `health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    pub resource: String,
    pub health: Health,
    pub devices: Vec<String>,
}

/// Devices advertised in both `old` and `new` whose health differs, grouped by resource and new
/// health. Devices that appear or disappear (layout or config changes) are not health changes.
pub fn changes(old: &ResourceSet, new: &ResourceSet) -> Vec<HealthChange> {
    let mut out = Vec::new();
    for (name, resource) in &new.resources {
        let Some(before) = old.get(name) else {
            continue;
        };
        for health in [Health::Unhealthy, Health::Healthy] {
            let devices: Vec<String> = resource
                .devices
                .iter()
                .filter(|d| d.health == health)
                .filter(|d| before.device(&d.id).is_some_and(|b| b.health != health))
                .map(|d| d.id.clone())
                .collect();
            if !devices.is_empty() {
                out.push(HealthChange {
                    resource: name.clone(),
                    health,
                    devices,
                });
            }
        }
    }
    out
}

/// Log [`changes`] between `old` and `new`.
pub fn log_changes(old: &ResourceSet, new: &ResourceSet) {
    for change in changes(old, new) {
        match change.health {
            Health::Unhealthy => tracing::warn!(
                resource = %change.resource,
                devices = ?change.devices,
                count = change.devices.len(),
                "advertised devices unhealthy"
            ),
            Health::Healthy => tracing::info!(
                resource = %change.resource,
                devices = ?change.devices,
                count = change.devices.len(),
                "advertised devices healthy again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::gpu::fixture;
    use crate::health::{HealthState, Unhealthy};
    use crate::resources::build;

    #[test]
    fn reports_every_replica_that_flipped_once_per_resource() {
        let inventory =
            fixture::parse("gpus: [{model: X, memoryMiB: 80}, {model: X, memoryMiB: 80}]")
                .unwrap()
                .inventory;
        let config = config::parse(
            "version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}",
        )
        .unwrap();
        let healthy = build(&inventory, &config, &HealthState::default())
            .unwrap()
            .resources;
        let mut state = HealthState::default();
        state.gpus.insert(
            inventory.gpus[1].uuid.clone(),
            Unhealthy {
                reason: "XID 48".into(),
            },
        );
        let sick = build(&inventory, &config, &state).unwrap().resources;
        let uuid = &inventory.gpus[1].uuid;
        assert_eq!(
            changes(&healthy, &sick),
            vec![HealthChange {
                resource: "nvidia.com/gpu".into(),
                health: Health::Unhealthy,
                devices: vec![format!("{uuid}::0"), format!("{uuid}::1")],
            }]
        );
        assert_eq!(changes(&sick, &healthy)[0].health, Health::Healthy);
        assert!(changes(&sick, &sick).is_empty());
    }
}
