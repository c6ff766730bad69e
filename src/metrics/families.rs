//! Cached state → Prometheus metric families. Pure: no I/O, no locks; the scrape handler gathers
//! a [`View`] from the caches and builds a [`Template`] from it (or refreshes the last one's
//! values); [`build`] serves the [`prometheus::core::Collector`] path.
//!
//! One function, `emit`, walks every series in a fixed order, so building and refreshing can
//! never disagree about which value belongs to which series.

use std::collections::{BTreeMap, HashMap};

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::names::{self, Kind, MetricDef};
use crate::gpu::{DeviceTelemetry, Gpu, MigDevice, Telemetry};
use crate::plugin::PluginStatus;
use crate::podresources::PodAllocations;
use crate::resources::Health;
use crate::snapshot::Snapshot;

const MIB: f64 = 1024.0 * 1024.0;
const MHZ: f64 = 1_000_000.0;

/// Everything one scrape reports, borrowed from the caches.
pub struct View<'a> {
    pub node: &'a str,
    pub version: &'a str,
    pub snapshot: &'a Snapshot,
    pub telemetry: &'a Telemetry,
    /// XIDs delivered per (device UUID, XID).
    pub xids: &'a BTreeMap<(String, u64), u64>,
    pub pods: &'a PodAllocations,
    pub plugins: &'a BTreeMap<String, PluginStatus>,
    pub config_reloads: u64,
    pub config_reload_failures: u64,
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

fn family(def: &MetricDef) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(def.name.to_string());
    mf.set_help(def.help.to_string());
    mf.set_field_type(match def.kind {
        Kind::Gauge => MetricType::GAUGE,
        Kind::Counter => MetricType::COUNTER,
    });
    mf
}

fn set_value(metric: &mut Metric, kind: MetricType, value: f64) {
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(value);
        metric.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        metric.set_gauge(g);
    }
}

/// Where [`emit`] puts the series: new families ([`Builder`]) or the values of existing ones
/// ([`Refresher`]). Labels are a closure so that a refresh allocates none.
trait Sink {
    /// The next family starts.
    fn family(&mut self, def: &'static MetricDef);
    /// A series of the current family; `id` identifies it within the family for a given
    /// snapshot and attribution (so that a refresh can tell the series set changed).
    fn series(&mut self, id: u64, labels: impl FnOnce() -> Vec<LabelPair>, value: f64);
}

/// One GPU or MIG device.
struct Device<'a> {
    gpu: &'a Gpu,
    mig: Option<&'a MigDevice>,
    telemetry: Option<&'a DeviceTelemetry>,
    healthy: bool,
    /// From the inventory, for when the backend could not read the total.
    memory_total_mib: u64,
}

impl Device<'_> {
    fn uuid(&self) -> &str {
        self.mig.map_or(&self.gpu.uuid, |m| &m.uuid)
    }

    fn labels(&self, node: &str) -> Vec<LabelPair> {
        let mut labels =
            Vec::with_capacity(names::DEVICE_LABELS.len() + names::MIG_LABELS.len() + 1);
        labels.push(label("node", node));
        labels.push(label("gpu", &self.gpu.index.to_string()));
        labels.push(label("uuid", self.uuid()));
        labels.push(label("model", &self.gpu.model));
        if let Some(mig) = self.mig {
            labels.push(label("parent_uuid", &self.gpu.uuid));
            labels.push(label("mig_profile", &mig.profile));
            labels.push(label("gpu_instance_id", &mig.gpu_instance_id.to_string()));
        }
        labels
    }
}

fn devices<'a>(view: &View<'a>) -> Vec<Device<'a>> {
    let health = &view.snapshot.health;
    let mut out = Vec::new();
    for gpu in &view.snapshot.inventory.gpus {
        out.push(Device {
            gpu,
            mig: None,
            telemetry: view.telemetry.get(&gpu.uuid),
            healthy: health.gpu_healthy(&gpu.uuid),
            memory_total_mib: gpu.memory_mib,
        });
        for mig in &gpu.mig_devices {
            out.push(Device {
                gpu,
                mig: Some(mig),
                telemetry: view.telemetry.get(&mig.uuid),
                healthy: health.mig_healthy(&gpu.uuid, &mig.uuid),
                memory_total_mib: mig.memory_mib,
            });
        }
    }
    out
}

/// Device gauges: a value the device did not report is omitted, never 0.
type DeviceValue = fn(&Device<'_>) -> Option<f64>;
const DEVICE_GAUGES: [(&MetricDef, DeviceValue); 9] = [
    (&names::GPU_UTILIZATION, |d| {
        d.telemetry.and_then(|t| t.utilization_percent)
    }),
    (&names::GPU_MEMORY_UTILIZATION, |d| {
        let t = d.telemetry?;
        let used = t.memory_used_mib? as f64;
        let total = t.memory_total_mib.unwrap_or(d.memory_total_mib) as f64;
        (total > 0.0).then(|| used / total * 100.0)
    }),
    (&names::GPU_MEMORY_USED, |d| {
        d.telemetry
            .and_then(|t| t.memory_used_mib)
            .map(|m| m as f64 * MIB)
    }),
    (&names::GPU_MEMORY_TOTAL, |d| {
        let mib = d
            .telemetry
            .and_then(|t| t.memory_total_mib)
            .unwrap_or(d.memory_total_mib);
        (mib > 0).then_some(mib as f64 * MIB)
    }),
    (&names::GPU_TEMPERATURE, |d| {
        d.telemetry.and_then(|t| t.temperature_celsius)
    }),
    (&names::GPU_POWER, |d| {
        d.telemetry.and_then(|t| t.power_watts)
    }),
    (&names::GPU_SM_CLOCK, |d| {
        d.telemetry.and_then(|t| t.sm_clock_mhz).map(|c| c * MHZ)
    }),
    (&names::GPU_MEMORY_CLOCK, |d| {
        d.telemetry
            .and_then(|t| t.memory_clock_mhz)
            .map(|c| c * MHZ)
    }),
    (&names::GPU_HEALTHY, |d| {
        Some(if d.healthy { 1.0 } else { 0.0 })
    }),
];

/// Every series of `view`, family by family, in a fixed order.
fn emit(view: &View<'_>, sink: &mut impl Sink) {
    let devices = devices(view);
    let node = view.node;

    for (def, value) in DEVICE_GAUGES {
        sink.family(def);
        for (id, device) in devices.iter().enumerate() {
            if let Some(v) = value(device).filter(|v| v.is_finite()) {
                sink.series(id as u64, || device.labels(node), v);
            }
        }
    }

    // XIDs, for devices still in the inventory.
    let by_uuid: HashMap<&str, (usize, &Device<'_>)> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.uuid(), (i, d)))
        .collect();
    sink.family(&names::GPU_XID_ERRORS);
    for (id, ((uuid, xid), count)) in view.xids.iter().enumerate() {
        if let Some((_, device)) = by_uuid.get(uuid.as_str()) {
            let labels = || {
                let mut labels = device.labels(node);
                labels.push(label("xid", &xid.to_string()));
                labels
            };
            sink.series(id as u64, labels, *count as f64);
        }
    }

    // Attribution: every container on every device of ours, mapped to the GPU / MIG UUID.
    sink.family(&names::CONTAINER_ALLOCATION);
    for (id, held) in view.pods.devices.iter().enumerate() {
        let Some(device) = view
            .snapshot
            .resources
            .get(&held.resource)
            .and_then(|r| r.device_or_legacy(&held.device_id))
        else {
            continue;
        };
        let labels = || {
            vec![
                label("namespace", &held.namespace),
                label("pod", &held.pod),
                label("container", &held.container),
                label("resource", &held.resource),
                label("device_id", &held.device_id),
                label("uuid", device.target.device_uuid()),
            ]
        };
        sink.series(id as u64, labels, 1.0);
    }

    // Agent.
    sink.family(&names::BUILD_INFO);
    sink.series(0, || vec![label("version", view.version)], 1.0);

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
                || vec![label("resource", resource)],
                value(status) as f64,
            );
        }
    }

    sink.family(&names::ADVERTISED_DEVICES);
    for (id, (name, resource)) in view.snapshot.resources.resources.iter().enumerate() {
        for (h, health) in [Health::Healthy, Health::Unhealthy].into_iter().enumerate() {
            sink.series(
                (id * 2 + h) as u64,
                || vec![label("resource", name), label("health", health.as_str())],
                resource.count(health) as f64,
            );
        }
    }

    for (def, value) in [
        (&names::CONFIG_RELOADS, view.config_reloads),
        (&names::CONFIG_RELOAD_FAILURES, view.config_reload_failures),
    ] {
        sink.family(def);
        sink.series(0, Vec::new, value as f64);
    }

    sink.family(&names::POD_RESOURCES_UP);
    sink.series(0, Vec::new, if view.pods.up { 1.0 } else { 0.0 });
}

/// Builds new families.
#[derive(Default)]
struct Builder {
    families: Vec<MetricFamily>,
    ids: Vec<Vec<u64>>,
}

impl Sink for Builder {
    fn family(&mut self, def: &'static MetricDef) {
        self.families.push(family(def));
        self.ids.push(Vec::new());
    }

    fn series(&mut self, id: u64, labels: impl FnOnce() -> Vec<LabelPair>, value: f64) {
        if let (Some(mf), Some(ids)) = (self.families.last_mut(), self.ids.last_mut()) {
            let mut metric = Metric::from_label(labels());
            set_value(&mut metric, mf.get_field_type(), value);
            mf.mut_metric().push(metric);
            ids.push(id);
        }
    }
}

/// Writes new values into families built for the same series set; notices when the set
/// differs (a device stopped reporting a value, an XID appeared) so the caller rebuilds.
struct Refresher<'t> {
    families: &'t mut [MetricFamily],
    ids: &'t [Vec<u64>],
    current: Option<usize>,
    next: usize,
    same: bool,
}

impl Refresher<'_> {
    /// The series of the current family are all accounted for.
    fn close(&mut self) {
        if let Some(f) = self.current {
            if self.next != self.ids[f].len() {
                self.same = false;
            }
        }
    }
}

impl Sink for Refresher<'_> {
    fn family(&mut self, def: &'static MetricDef) {
        self.close();
        let f = self.current.map_or(0, |f| f + 1);
        self.current = Some(f);
        self.next = 0;
        if self.families.get(f).is_none_or(|mf| mf.name() != def.name) {
            self.same = false;
        }
    }

    fn series(&mut self, id: u64, _labels: impl FnOnce() -> Vec<LabelPair>, value: f64) {
        if !self.same {
            return;
        }
        let Some(f) = self.current else {
            self.same = false;
            return;
        };
        let i = self.next;
        self.next += 1;
        if self.ids[f].get(i) != Some(&id) {
            self.same = false;
            return;
        }
        let kind = self.families[f].get_field_type();
        if let Some(metric) = self.families[f].mut_metric().get_mut(i) {
            set_value(metric, kind, value);
        }
    }
}

/// Build every family, empty ones included (a registry prunes them).
pub fn build(view: &View<'_>) -> Vec<MetricFamily> {
    Template::new(view).families
}

/// Families kept between scrapes: while the series set stays the same (same snapshot, same
/// attribution, same devices reporting), a scrape only writes new values into them instead of
/// allocating every label again.
pub struct Template {
    families: Vec<MetricFamily>,
    ids: Vec<Vec<u64>>,
}

impl Template {
    /// Build the families for `view`.
    pub fn new(view: &View<'_>) -> Self {
        let mut builder = Builder::default();
        emit(view, &mut builder);
        Self {
            families: builder.families,
            ids: builder.ids,
        }
    }

    /// Write `view`'s values into the families. False when `view` has a different series set
    /// (the template is then unusable: build a new one). The caller must only pass views of the
    /// same snapshot, attribution, plugin names and XID keys as the one this was built from.
    pub fn refresh(&mut self, view: &View<'_>) -> bool {
        let mut refresher = Refresher {
            families: &mut self.families,
            ids: &self.ids,
            current: None,
            next: 0,
            same: true,
        };
        emit(view, &mut refresher);
        refresher.close();
        refresher.same && refresher.current.map_or(0, |f| f + 1) == self.families.len()
    }

    /// The text exposition of the non-empty families.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let encoder = prometheus::TextEncoder::new();
        let mut out = String::with_capacity(64 * 1024);
        for mf in self
            .families
            .iter()
            .filter(|mf| !mf.get_metric().is_empty())
        {
            encoder.encode_utf8(std::slice::from_ref(mf), &mut out)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{self, Config};
    use crate::gpu::mock::MockBackend;
    use crate::gpu::GpuBackend;
    use crate::health::HealthState;
    use crate::podresources::ContainerDevice;

    const FIXTURE: &str = r#"
gpus:
  - model: NVIDIA H100 80GB HBM3
    telemetry: {utilizationPercent: 87, memoryUsedMiB: 40000, temperatureCelsius: 61, powerWatts: 412.5, smClockMhz: 1980}
  - model: NVIDIA H100 80GB HBM3
    mig: {devices: [{profile: 3g.40gb, memoryUsedMiB: 1200}, 1g.10gb]}
"#;

    struct Fixture {
        snapshot: Snapshot,
        telemetry: Telemetry,
    }

    fn fixture(config: Option<&str>, health: HealthState) -> Fixture {
        let backend = MockBackend::from_text(FIXTURE).unwrap();
        let inventory = backend.inventory().unwrap();
        let telemetry = backend.telemetry(&inventory);
        let config = config.map_or_else(Config::default, |c| config::parse(c).unwrap());
        let snapshot =
            Snapshot::build(Arc::new(inventory), Arc::new(config), Arc::new(health)).unwrap();
        Fixture {
            snapshot,
            telemetry,
        }
    }

    fn view<'a>(
        f: &'a Fixture,
        xids: &'a BTreeMap<(String, u64), u64>,
        pods: &'a PodAllocations,
        plugins: &'a BTreeMap<String, PluginStatus>,
    ) -> View<'a> {
        View {
            node: "n1",
            version: "9.9.9",
            snapshot: &f.snapshot,
            telemetry: &f.telemetry,
            xids,
            pods,
            plugins,
            config_reloads: 3,
            config_reload_failures: 1,
        }
    }

    /// (labels as name=value, value) of every series of `name`.
    fn series(families: &[MetricFamily], name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let Some(mf) = families.iter().find(|f| f.name() == name) else {
            return Vec::new();
        };
        mf.get_metric()
            .iter()
            .map(|m| {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                let value = match mf.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                };
                (labels, value)
            })
            .collect()
    }

    fn value_for(families: &[MetricFamily], name: &str, uuid: &str) -> Option<f64> {
        series(families, name)
            .into_iter()
            .find(|(l, _)| l["uuid"] == uuid)
            .map(|(_, v)| v)
    }

    #[test]
    fn device_gauges_follow_the_telemetry() {
        let f = fixture(None, HealthState::default());
        let empty = (BTreeMap::new(), PodAllocations::default(), BTreeMap::new());
        let fams = build(&view(&f, &empty.0, &empty.1, &empty.2));
        let gpu0 = &f.snapshot.inventory.gpus[0];
        let uuid = gpu0.uuid.as_str();
        assert_eq!(
            value_for(&fams, "gpu_utilization_percent", uuid),
            Some(87.0)
        );
        assert_eq!(
            value_for(&fams, "gpu_memory_used_bytes", uuid),
            Some(40000.0 * MIB)
        );
        assert_eq!(
            value_for(&fams, "gpu_memory_total_bytes", uuid),
            Some(gpu0.memory_mib as f64 * MIB)
        );
        let expected = 40000.0 / gpu0.memory_mib as f64 * 100.0;
        assert_eq!(
            value_for(&fams, "gpu_memory_utilization_percent", uuid),
            Some(expected)
        );
        assert_eq!(
            value_for(&fams, "gpu_temperature_celsius", uuid),
            Some(61.0)
        );
        assert_eq!(value_for(&fams, "gpu_power_watts", uuid), Some(412.5));
        assert_eq!(value_for(&fams, "gpu_sm_clock_hertz", uuid), Some(1.98e9));
        // Not in the fixture: omitted, not 0.
        assert_eq!(value_for(&fams, "gpu_memory_clock_hertz", uuid), None);
        assert_eq!(value_for(&fams, "gpu_healthy", uuid), Some(1.0));
        let (labels, _) = series(&fams, "gpu_healthy")
            .into_iter()
            .find(|(l, _)| l["uuid"] == uuid)
            .unwrap();
        assert_eq!(labels["node"], "n1");
        assert_eq!(labels["gpu"], "0");
        assert_eq!(labels["model"], "NVIDIA H100 80GB HBM3");
        assert!(!labels.contains_key("parent_uuid"));
    }

    #[test]
    fn mig_devices_carry_their_parent_and_report_memory_only() {
        let f = fixture(None, HealthState::default());
        let empty = (BTreeMap::new(), PodAllocations::default(), BTreeMap::new());
        let fams = build(&view(&f, &empty.0, &empty.1, &empty.2));
        let gpu1 = &f.snapshot.inventory.gpus[1];
        let mig = &gpu1.mig_devices[0];
        let (labels, used) = series(&fams, "gpu_memory_used_bytes")
            .into_iter()
            .find(|(l, _)| l["uuid"] == mig.uuid)
            .expect("MIG memory series");
        assert_eq!(used, 1200.0 * MIB);
        assert_eq!(labels["parent_uuid"], gpu1.uuid);
        assert_eq!(labels["mig_profile"], "3g.40gb");
        assert_eq!(labels["gpu_instance_id"], mig.gpu_instance_id.to_string());
        assert_eq!(labels["gpu"], "1");
        assert_eq!(value_for(&fams, "gpu_utilization_percent", &mig.uuid), None);
        assert_eq!(value_for(&fams, "gpu_temperature_celsius", &mig.uuid), None);
        assert_eq!(value_for(&fams, "gpu_power_watts", &mig.uuid), None);
        assert_eq!(value_for(&fams, "gpu_healthy", &mig.uuid), Some(1.0));
    }

    #[test]
    fn a_device_without_telemetry_keeps_only_health_and_inventory_facts() {
        let mut f = fixture(None, HealthState::default());
        let uuid = f.snapshot.inventory.gpus[0].uuid.clone();
        f.telemetry.remove(&uuid);
        let health = HealthState::default().with_lost([uuid.clone()]);
        f.snapshot = Snapshot::build(
            f.snapshot.inventory.clone(),
            f.snapshot.config.clone(),
            Arc::new(health),
        )
        .unwrap();
        let empty = (BTreeMap::new(), PodAllocations::default(), BTreeMap::new());
        let fams = build(&view(&f, &empty.0, &empty.1, &empty.2));
        assert_eq!(value_for(&fams, "gpu_utilization_percent", &uuid), None);
        assert_eq!(value_for(&fams, "gpu_memory_used_bytes", &uuid), None);
        assert_eq!(value_for(&fams, "gpu_healthy", &uuid), Some(0.0));
        assert!(value_for(&fams, "gpu_memory_total_bytes", &uuid).is_some());
        // The other GPU is still reported.
        let other = &f.snapshot.inventory.gpus[1].uuid;
        assert_eq!(value_for(&fams, "gpu_healthy", other), Some(1.0));
    }

    #[test]
    fn xids_count_per_device_and_xid_for_known_devices_only() {
        let f = fixture(None, HealthState::default());
        let gpu0 = f.snapshot.inventory.gpus[0].uuid.clone();
        let mig = f.snapshot.inventory.gpus[1].mig_devices[1].uuid.clone();
        let xids: BTreeMap<(String, u64), u64> = [
            ((gpu0.clone(), 13), 2),
            ((gpu0.clone(), 79), 1),
            ((mig.clone(), 43), 5),
            (("GPU-gone".to_string(), 79), 1),
        ]
        .into_iter()
        .collect();
        let rest = (PodAllocations::default(), BTreeMap::new());
        let fams = build(&view(&f, &xids, &rest.0, &rest.1));
        let got: Vec<(String, String, f64)> = series(&fams, "gpu_xid_errors_total")
            .into_iter()
            .map(|(l, v)| (l["uuid"].clone(), l["xid"].clone(), v))
            .collect();
        assert_eq!(
            got,
            [
                (gpu0.clone(), "13".to_string(), 2.0),
                (gpu0, "79".to_string(), 1.0),
                (mig, "43".to_string(), 5.0)
            ]
        );
    }

    #[test]
    fn attribution_maps_every_sharer_to_the_device_uuid() {
        let f = fixture(
            Some("version: v1\nsharing:\n  timeSlicing:\n    resources:\n      - {name: nvidia.com/gpu, replicas: 2}\n"),
            HealthState::default(),
        );
        let gpu0 = f.snapshot.inventory.gpus[0].uuid.clone();
        let held = |pod: &str, id: String| ContainerDevice {
            namespace: "ml".into(),
            pod: pod.into(),
            container: "main".into(),
            resource: "nvidia.com/gpu".into(),
            device_id: id,
        };
        let pods = PodAllocations {
            devices: vec![
                held("a", format!("{gpu0}::0")),
                held("b", format!("{gpu0}::1")),
                held("c", "GPU-not-ours::0".into()),
                // Allocated by an agent that advertised index IDs, before an upgrade.
                held("d", "0::1".into()),
                held("e", "9::0".into()),
            ],
            up: true,
        };
        let rest = (BTreeMap::new(), BTreeMap::new());
        let fams = build(&view(&f, &rest.0, &pods, &rest.1));
        let got = series(&fams, "gpu_container_allocation");
        assert_eq!(got.len(), 3, "{got:?}");
        for (labels, value) in &got {
            assert_eq!(labels["uuid"], gpu0);
            assert_eq!(labels["resource"], "nvidia.com/gpu");
            assert_eq!(*value, 1.0);
        }
        assert_eq!(got[1].0["pod"], "b");
        assert_eq!(got[1].0["device_id"], format!("{gpu0}::1"));
        assert_eq!(got[2].0["pod"], "d");
        assert_eq!(got[2].0["device_id"], "0::1");
        assert_eq!(series(&fams, "gpu_agent_pod_resources_up")[0].1, 1.0);
    }

    #[test]
    fn agent_metrics_report_counters_and_advertised_devices() {
        let f = fixture(None, HealthState::default());
        let mut plugins = BTreeMap::new();
        plugins.insert(
            "nvidia.com/gpu".to_string(),
            PluginStatus {
                registrations: 2,
                allocations: 7,
                allocation_errors: 1,
                ..PluginStatus::default()
            },
        );
        let rest = (BTreeMap::new(), PodAllocations::default());
        let fams = build(&view(&f, &rest.0, &rest.1, &plugins));
        let one = |name: &str| series(&fams, name)[0].1;
        assert_eq!(one("gpu_agent_registrations_total"), 2.0);
        assert_eq!(one("gpu_agent_allocations_total"), 7.0);
        assert_eq!(one("gpu_agent_allocation_errors_total"), 1.0);
        assert_eq!(one("gpu_agent_config_reloads_total"), 3.0);
        assert_eq!(one("gpu_agent_config_reload_failures_total"), 1.0);
        assert_eq!(one("gpu_agent_pod_resources_up"), 0.0);
        let info = &series(&fams, "gpu_agent_build_info")[0];
        assert_eq!(info.0["version"], "9.9.9");
        let advertised: Vec<(String, f64)> = series(&fams, "gpu_agent_advertised_devices")
            .into_iter()
            .map(|(l, v)| (format!("{} {}", l["resource"], l["health"]), v))
            .collect();
        assert_eq!(
            advertised,
            [
                ("nvidia.com/gpu Healthy".to_string(), 2.0),
                ("nvidia.com/gpu Unhealthy".to_string(), 0.0)
            ]
        );
    }

    #[test]
    fn a_refreshed_template_matches_a_fresh_build() {
        let mut f = fixture(None, HealthState::default());
        let rest = (BTreeMap::new(), PodAllocations::default(), BTreeMap::new());
        let mut template = Template::new(&view(&f, &rest.0, &rest.1, &rest.2));
        let gpu0 = f.snapshot.inventory.gpus[0].uuid.clone();
        let gpu1 = f.snapshot.inventory.gpus[1].uuid.clone();

        // New values, same series: refreshed in place, identical to a fresh build.
        let t0 = f.telemetry.get_mut(&gpu0).unwrap();
        t0.utilization_percent = Some(3.0);
        t0.power_watts = Some(99.5);
        assert!(template.refresh(&view(&f, &rest.0, &rest.1, &rest.2)));
        let fresh = Template::new(&view(&f, &rest.0, &rest.1, &rest.2));
        assert_eq!(template.encode().unwrap(), fresh.encode().unwrap());
        assert!(template.encode().unwrap().contains(&format!(
            "gpu_utilization_percent{{node=\"n1\",gpu=\"0\",uuid=\"{gpu0}\",model=\"NVIDIA H100 80GB HBM3\"}} 3\n"
        )));

        // A value moves from one GPU to another: as many series, but not the same ones.
        f.telemetry.get_mut(&gpu0).unwrap().sm_clock_mhz = None;
        f.telemetry.get_mut(&gpu1).unwrap().sm_clock_mhz = Some(1000.0);
        assert!(!template.refresh(&view(&f, &rest.0, &rest.1, &rest.2)));

        // A device stops reporting altogether: fewer series.
        let mut template = Template::new(&view(&f, &rest.0, &rest.1, &rest.2));
        f.telemetry.remove(&gpu1);
        assert!(!template.refresh(&view(&f, &rest.0, &rest.1, &rest.2)));
    }

    #[test]
    fn every_family_has_its_documented_name_type_and_help() {
        let f = fixture(None, HealthState::default());
        let empty = (BTreeMap::new(), PodAllocations::default(), BTreeMap::new());
        for mf in build(&view(&f, &empty.0, &empty.1, &empty.2)) {
            let def = names::find(mf.name()).expect("documented");
            assert_eq!(mf.help(), def.help);
            let counter = mf.get_field_type() == MetricType::COUNTER;
            assert_eq!(counter, def.kind == Kind::Counter, "{}", def.name);
            for m in mf.get_metric() {
                let got: Vec<&str> = m.get_label().iter().map(|l| l.name()).collect();
                let mig = got.len() > def.labels.len();
                let mut want: Vec<&str> = def.labels.to_vec();
                if mig {
                    // MIG series: the device labels, the MIG labels, then the rest (xid).
                    want = names::DEVICE_LABELS
                        .iter()
                        .chain(names::MIG_LABELS)
                        .chain(&def.labels[names::DEVICE_LABELS.len()..])
                        .copied()
                        .collect();
                }
                assert_eq!(got, want, "{}", def.name);
            }
        }
    }
}
