//! `/metrics`: the Prometheus exposition, rendered from caches only, under gpu-agent's metric
//! names, dcgm-exporter's, or both ([`Naming`], `--metrics-names`).
//!
//! A scrape reads the latest telemetry sample, pod attribution, snapshot, plugin status and
//! counters — each a cheap clone of an `Arc` or a small copy — and never calls NVML or the
//! kubelet. The series set follows those inputs on every scrape, so a device that is gone
//! (re-partitioned, removed) disappears from the next scrape instead of lingering. The same
//! families are also available as a [`prometheus::core::Collector`] ([`AgentCollector`]).
//!
//! Cost: labels are what is expensive to build (thousands of series on a big node), so
//! [`Metrics::scrape`] keeps the last rendering's text template and, while the series set is
//! unchanged, only writes new values into it.

mod agent;
mod dcgm;
pub mod dcgm_fields;
pub mod families;
mod gpu_agent;
pub mod names;
#[cfg(test)]
mod render_tests;
mod sink;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::Registry;

use crate::agent::Handles;
use crate::health::policy::XidTally;
use crate::plugin::PluginStatus;
use crate::podresources::{PodAllocations, PodCache};
use crate::snapshot::Snapshot;
use crate::telemetry::{TelemetryCache, TelemetrySample};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The version reported by `gpu_agent_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which metric names `/metrics` serves (`--metrics-names`). The agent's own `gpu_agent_*`
/// metrics are served under every naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Naming {
    /// gpu-agent's names (`gpu_*`, SI units, promtool-clean).
    #[default]
    GpuAgent,
    /// dcgm-exporter 4.x's (`DCGM_FI_*`, its labels and units).
    Dcgm,
    /// Both sets side by side.
    Both,
}

impl Naming {
    /// Serves gpu-agent's device names.
    pub fn gpu_agent(self) -> bool {
        matches!(self, Naming::GpuAgent | Naming::Both)
    }

    /// Serves dcgm-exporter's names.
    pub fn dcgm(self) -> bool {
        matches!(self, Naming::Dcgm | Naming::Both)
    }

    /// Every family this naming may serve.
    pub fn definitions(self) -> impl Iterator<Item = &'static names::MetricDef> {
        let own = names::ALL
            .iter()
            .filter(move |d| self.gpu_agent() || names::is_agent(d));
        let dcgm = dcgm_fields::ALL.iter().filter(move |_| self.dcgm());
        own.chain(dcgm)
    }
}

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
    naming: Naming,
    descs: Vec<Desc>,
}

impl AgentCollector {
    /// A collector over `sources` under `naming`; fails only if a metric definition were
    /// invalid.
    pub fn new(sources: Sources, naming: Naming) -> prometheus::Result<Self> {
        let descs = naming
            .definitions()
            .map(|def| {
                Desc::new(
                    def.name.to_string(),
                    def.help.to_string(),
                    def.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(Self {
            sources,
            naming,
            descs,
        })
    }
}

impl Collector for AgentCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let inputs = Inputs::read(&self.sources);
        families::build(&inputs.view(&self.sources.handles.node, self.naming))
    }
}

/// Everything a rendering depends on, read once per scrape.
struct Inputs {
    snapshot: Arc<Snapshot>,
    telemetry: Arc<TelemetrySample>,
    pods: Arc<PodAllocations>,
    xids: XidTally,
    plugins: BTreeMap<String, PluginStatus>,
    config_reloads: u64,
    config_reload_failures: u64,
}

impl Inputs {
    fn read(sources: &Sources) -> Self {
        let h = &sources.handles;
        Self {
            snapshot: h.snapshots.borrow().clone(),
            telemetry: sources.telemetry.borrow().clone(),
            pods: sources.pods.borrow().clone(),
            xids: h.xid_counts.snapshot(),
            plugins: h.status.snapshot(),
            config_reloads: h.stats.config_reloads.load(Ordering::Relaxed),
            config_reload_failures: h.stats.config_reload_failures.load(Ordering::Relaxed),
        }
    }

    fn view<'a>(&'a self, node: &'a str, naming: Naming) -> families::View<'a> {
        families::View {
            node,
            version: VERSION,
            naming,
            snapshot: &self.snapshot,
            telemetry: &self.telemetry.devices,
            xids: &self.xids,
            pods: &self.pods,
            plugins: &self.plugins,
            config_reloads: self.config_reloads,
            config_reload_failures: self.config_reload_failures,
        }
    }

    /// Same values as `other`. The caches hand out a new `Arc` only when they change, so pointer
    /// equality is enough for the big parts.
    fn same(&self, other: &Inputs) -> bool {
        self.same_series(other)
            && Arc::ptr_eq(&self.telemetry, &other.telemetry)
            && self.xids == other.xids
            && self.plugins == other.plugins
            && self.config_reloads == other.config_reloads
            && self.config_reload_failures == other.config_reload_failures
    }

    /// Inputs that decide the series set, apart from which devices report which values (the
    /// template notices those itself).
    fn same_series(&self, other: &Inputs) -> bool {
        Arc::ptr_eq(&self.snapshot, &other.snapshot)
            && Arc::ptr_eq(&self.pods, &other.pods)
            && self.xids.same_labels(&other.xids)
            && self.plugins.keys().eq(other.plugins.keys())
    }
}

/// What the last scrape rendered, and from what.
struct Rendered {
    inputs: Inputs,
    template: sink::Template,
    text: Bytes,
}

/// `/metrics`: renders the caches, reusing the last rendering where the inputs allow.
#[derive(Clone)]
pub struct Metrics {
    sources: Sources,
    naming: Naming,
    last: Arc<Mutex<Option<Rendered>>>,
}

impl Metrics {
    /// A renderer over `sources` with gpu-agent's names; fails only if a metric definition were
    /// invalid.
    pub fn new(sources: Sources) -> prometheus::Result<Self> {
        Self::with_naming(sources, Naming::default())
    }

    /// A renderer over `sources` with `naming`'s names.
    pub fn with_naming(sources: Sources, naming: Naming) -> prometheus::Result<Self> {
        // Registering the collector validates every name and help text once, at start.
        Registry::new().register(Box::new(AgentCollector::new(sources.clone(), naming)?))?;
        Ok(Self {
            sources,
            naming,
            last: Arc::new(Mutex::new(None)),
        })
    }

    /// The naming this renderer serves.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// The text exposition of every metric now, built from scratch.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let inputs = Inputs::read(&self.sources);
        let view = inputs.view(&self.sources.handles.node, self.naming);
        Ok(families::template(&view).encode())
    }

    /// The text exposition for a scrape. Unchanged inputs get the last text again; changed
    /// values with the same series set (the usual case: a new telemetry sample) are written into
    /// the last families; anything else is built from scratch.
    pub fn scrape(&self) -> Result<Bytes, prometheus::Error> {
        let inputs = Inputs::read(&self.sources);
        let node = &self.sources.handles.node;
        let naming = self.naming;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut buffer = Vec::new();
        if let Some(r) = last.as_mut() {
            if r.inputs.same(&inputs) {
                return Ok(r.text.clone());
            }
            buffer = reuse(std::mem::take(&mut r.text));
            if r.inputs.same_series(&inputs)
                && families::refresh(&mut r.template, &inputs.view(node, naming))
            {
                r.template.encode_into(&mut buffer);
                r.text = Bytes::from(buffer);
                r.inputs = inputs;
                return Ok(r.text.clone());
            }
        }
        let mut template = families::template(&inputs.view(node, naming));
        template.encode_into(&mut buffer);
        let text = Bytes::from(buffer);
        *last = Some(Rendered {
            inputs,
            template,
            text: text.clone(),
        });
        Ok(text)
    }
}

/// The buffer of the last text, emptied, when no response holds it any more (a scrape then
/// allocates nothing, and the allocator keeps no stray megabytes); else a new one.
fn reuse(last: Bytes) -> Vec<u8> {
    if !last.is_unique() {
        return Vec::new();
    }
    let mut buffer = Vec::from(last);
    buffer.clear();
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentStats;
    use crate::config::Config;
    use crate::gpu::mock::MockBackend;
    use crate::gpu::GpuBackend;
    use crate::health::watcher::XidCounts;
    use crate::health::HealthState;
    use crate::plugin::StatusBoard;
    use tokio::sync::watch;

    #[test]
    fn a_scrape_renders_again_only_when_an_input_changed() {
        let backend = MockBackend::from_text("gpus: [{model: X, memoryMiB: 100}]").unwrap();
        let inventory = Arc::new(backend.inventory().unwrap());
        let devices = backend.telemetry(&inventory);
        let snapshot = Snapshot::build(
            inventory.clone(),
            Arc::new(Config::default()),
            Arc::new(HealthState::default()),
        )
        .unwrap();
        let status = StatusBoard::default();
        let (_snap_tx, snapshots) = watch::channel(Arc::new(snapshot));
        let (tel_tx, telemetry) = watch::channel(Arc::new(TelemetrySample {
            inventory: inventory.clone(),
            devices: devices.clone(),
        }));
        let (_pods_tx, pods) = watch::channel(Arc::new(PodAllocations::default()));
        let metrics = Metrics::new(Sources {
            handles: Handles {
                node: "n".into(),
                snapshots,
                status: status.clone(),
                stats: Arc::new(AgentStats::default()),
                xid_counts: XidCounts::default(),
            },
            telemetry,
            pods,
        })
        .unwrap();

        let first = metrics.scrape().unwrap();
        let again = metrics.scrape().unwrap();
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "unchanged inputs: the same bytes"
        );
        assert_eq!(first, metrics.render().unwrap().as_bytes());

        status.allocation("nvidia.com/gpu", true);
        let counted = metrics.scrape().unwrap();
        let text = std::str::from_utf8(&counted).unwrap();
        assert!(
            text.contains("gpu_agent_allocations_total{resource=\"nvidia.com/gpu\"} 1"),
            "{text}"
        );

        // A new sample with the same values is a new input: rendered again (same text).
        tel_tx.send_replace(Arc::new(TelemetrySample { inventory, devices }));
        let resampled = metrics.scrape().unwrap();
        assert_ne!(resampled.as_ptr(), counted.as_ptr());
        assert_eq!(resampled, counted);

        // Once no response holds the last text, the next rendering writes into its buffer.
        let buffer = resampled.as_ptr();
        drop(resampled);
        let sample = TelemetrySample::clone(&tel_tx.borrow());
        tel_tx.send_replace(Arc::new(sample));
        let reused = metrics.scrape().unwrap();
        assert_eq!(reused.as_ptr(), buffer);
        assert_eq!(reused, counted);
    }
}
