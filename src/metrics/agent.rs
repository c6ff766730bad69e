//! The agent's own families (`gpu_agent_*`), served under every naming.

use super::names::{self, MetricDef};
use super::sink::Sink;
use super::view::View;
use crate::plugin::PluginStatus;
use crate::resources::Health;

/// Every agent family.
pub fn emit(view: &View<'_>, sink: &mut impl Sink) {
    sink.family(&names::BUILD_INFO);
    sink.series(
        0,
        |l| {
            l.add("version", view.version);
        },
        1.0,
    );

    type Counted = fn(&PluginStatus) -> u64;
    let counters: [(&'static MetricDef, Counted); 3] = [
        (&names::REGISTRATIONS, |s| s.registrations),
        (&names::ALLOCATIONS, |s| s.allocations),
        (&names::ALLOCATION_ERRORS, |s| s.allocation_errors),
    ];
    for (def, value) in counters {
        sink.family(def);
        for (id, (resource, status)) in view.plugins.iter().enumerate() {
            sink.series(
                id as u64,
                |l| {
                    l.add("resource", resource);
                },
                value(status) as f64,
            );
        }
    }

    sink.family(&names::ADVERTISED_DEVICES);
    for (id, (name, resource)) in view.snapshot.resources.resources.iter().enumerate() {
        for (h, health) in [Health::Healthy, Health::Unhealthy].into_iter().enumerate() {
            sink.series(
                (id * 2 + h) as u64,
                |l| {
                    l.add("resource", name).add("health", health.as_str());
                },
                resource.count(health) as f64,
            );
        }
    }

    // What /readyz reads, per advertised resource.
    sink.family(&names::RESOURCE_REGISTERED);
    for (id, name) in view.snapshot.resources.names().enumerate() {
        let ready = view
            .plugins
            .get(name)
            .is_some_and(|s| s.active && s.ready());
        sink.series(
            id as u64,
            |l| {
                l.add("resource", name);
            },
            if ready { 1.0 } else { 0.0 },
        );
    }

    for (def, value) in [
        (&names::CONFIG_RELOADS, view.config_reloads),
        (&names::CONFIG_RELOAD_FAILURES, view.config_reload_failures),
    ] {
        sink.family(def);
        sink.series(0, |_| {}, value as f64);
    }

    sink.family(&names::POD_RESOURCES_UP);
    sink.series(0, |_| {}, if view.pods.up { 1.0 } else { 0.0 });
}
