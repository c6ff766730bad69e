//! `/metrics`: the Prometheus exposition, rendered from caches only.
//!
//! A scrape reads the latest telemetry sample, pod attribution, snapshot, plugin status and
//! counters — each a cheap clone of an `Arc` or a small copy — and never calls NVML or the
//! kubelet. Families are rebuilt on every scrape ([`AgentCollector`]), so a device that is gone
//! (re-partitioned, removed) disappears from the next scrape instead of lingering.

pub mod families;
pub mod names;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Registry, TextEncoder};

use crate::agent::Handles;
use crate::podresources::PodCache;
use crate::telemetry::TelemetryCache;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The version reported by `gpu_agent_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every cache a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub handles: Handles,
    pub telemetry: TelemetryCache,
    pub pods: PodCache,
}

/// A Prometheus collector over the agent's caches.
pub struct AgentCollector {
    sources: Sources,
    descs: Vec<Desc>,
}

impl AgentCollector {
    /// A collector over `sources`; fails only if a metric definition were invalid.
    pub fn new(sources: Sources) -> prometheus::Result<Self> {
        let descs = names::ALL
            .iter()
            .map(|def| {
                Desc::new(
                    def.name.to_string(),
                    def.help.to_string(),
                    def.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(Self { sources, descs })
    }
}

impl Collector for AgentCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let h = &self.sources.handles;
        let snapshot = h.snapshots.borrow().clone();
        let telemetry = self.sources.telemetry.borrow().clone();
        let pods = self.sources.pods.borrow().clone();
        let xids = h.xid_counts.snapshot();
        let plugins = h.status.snapshot();
        families::build(&families::View {
            node: &h.node,
            version: VERSION,
            snapshot: &snapshot,
            telemetry: &telemetry.devices,
            xids: &xids,
            pods: &pods,
            plugins: &plugins,
            config_reloads: h.stats.config_reloads.load(Ordering::Relaxed),
            config_reload_failures: h.stats.config_reload_failures.load(Ordering::Relaxed),
        })
    }
}

/// The registry `/metrics` renders.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry holding the agent's collector.
    pub fn new(sources: Sources) -> prometheus::Result<Self> {
        let registry = Registry::new();
        registry.register(Box::new(AgentCollector::new(sources)?))?;
        Ok(Self { registry })
    }

    /// The text exposition of every metric now.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        encode(&self.registry.gather())
    }
}

/// Encode families in the text format.
pub fn encode(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    let mut out = String::with_capacity(64 * 1024);
    TextEncoder::new().encode_utf8(families, &mut out)?;
    Ok(out)
}
