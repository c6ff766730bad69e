//! Cached state → metric families, under the naming `--metrics-names` chose. Pure: no I/O, no
//! locks. The scrape handler gathers a [`View`] from the caches and builds a [`Template`] from it
//! (or refreshes the last one's values); [`build`] serves the [`prometheus::core::Collector`]
//! path.
//!
//! One function, [`emit`], walks every series in a fixed order, so building and refreshing can
//! never disagree about which value belongs to which series. The families themselves live by
//! concern: [`super::gpu_agent`] (our device names), [`super::dcgm`] (dcgm-exporter's),
//! [`super::agent`] (the agent's own, under every naming).

use prometheus::proto::MetricFamily;

use super::sink::{ProtoBuilder, Sink, Template};
pub use super::view::View;
use super::view::{devices, holders};
use super::{agent, dcgm, gpu_agent};

/// Every series of `view`, family by family, in a fixed order: gpu-agent's device families,
/// dcgm-exporter's, then the agent's.
pub fn emit(view: &View<'_>, sink: &mut impl Sink) {
    let devices = devices(view);
    let holders = holders(view, &devices);
    if view.naming.gpu_agent() {
        gpu_agent::emit(view, &devices, &holders, sink);
    }
    if view.naming.dcgm() {
        dcgm::emit(view, &devices, &holders, sink);
    }
    agent::emit(view, sink);
}

/// Build every family, empty ones included (a registry prunes them).
pub fn build(view: &View<'_>) -> Vec<MetricFamily> {
    let mut builder = ProtoBuilder::default();
    emit(view, &mut builder);
    builder.families
}

/// The text template of `view`.
pub fn template(view: &View<'_>) -> Template {
    Template::new(|builder| emit(view, builder))
}

/// Write `view`'s values into `template`. False when `view` has a different series set (the
/// template is then unusable: build a new one). The caller must only pass views of the same
/// snapshot, attribution, plugin names and XID labels as the one it was built from.
pub fn refresh(template: &mut Template, view: &View<'_>) -> bool {
    template.refresh(|refresher| emit(view, refresher))
}
