//! The mock backend: a YAML fixture (or the built-in 8 × H100 node), watched for changes.
//!
//! The fixture is re-read every [`POLL_INTERVAL`]: telemetry, newly appended `xids` and `lost`
//! take effect within a second, a changed GPU list or MIG layout is published as a new inventory
//! (like a MIG re-partition), and an invalid edit is logged while the last good fixture stays.
//!
//! A fixture's telemetry stays as written. The built-in node's moves: each GPU follows a slow,
//! deterministic load wave ([`animate`]), so that a demo's dashboards show something alive.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::backend::{BackendError, BackendEvents, GpuBackend};
use super::fixture::{self, Fixture, DEFAULT_FIXTURE};
use super::{DeviceTelemetry, HealthEvent, Inventory, Telemetry};
use crate::yaml_limits::{self, DocumentError};

/// How often the fixture file is re-read. Small files: a read is a few microseconds.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// GPUs described by a fixture file.
pub struct MockBackend {
    path: Option<PathBuf>,
    state: Mutex<Fixture>,
    /// The built-in node: when it started, for the load wave.
    animated_since: Option<Instant>,
}

impl MockBackend {
    /// Read `fixture`, or use the built-in node when `None`.
    pub fn open(fixture: Option<PathBuf>) -> Result<Self, BackendError> {
        let state = match &fixture {
            None => parse_fixture(DEFAULT_FIXTURE, "<built-in>")?,
            Some(path) => read_fixture(path)?,
        };
        Ok(Self {
            animated_since: fixture.is_none().then(Instant::now),
            path: fixture,
            state: Mutex::new(state),
        })
    }

    /// Build a backend from fixture text (tests, benches).
    pub fn from_text(text: &str) -> Result<Self, BackendError> {
        Ok(Self {
            path: None,
            state: Mutex::new(parse_fixture(text, "<text>")?),
            animated_since: None,
        })
    }

    fn with_state<T>(&self, f: impl FnOnce(&Fixture) -> T) -> T {
        // A poisoned lock only means a panic elsewhere mid-update; the data is still a whole fixture.
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Apply a newly read fixture: publish what changed, then keep it as the current state. Any
    /// change of the inventory is published, versions and node name included (a fixture edit is
    /// deliberate, unlike an NVML read that failed once).
    fn apply(&self, new: Fixture, events: &BackendEvents) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *guard, new);
        let new = &*guard;
        for event in health_changes(&old, new) {
            // Fails only when the agent is stopping.
            let _ = events.health.send(event);
        }
        if old.inventory != new.inventory {
            tracing::info!(
                gpus = new.inventory.gpus.len(),
                "mock fixture layout changed"
            );
            events
                .inventory
                .send_replace(Arc::new(new.inventory.clone()));
        }
    }
}

fn read_fixture(path: &Path) -> Result<Fixture, BackendError> {
    let text = yaml_limits::read_text(path).map_err(|e| match e {
        DocumentError::Read(source) => BackendError::FixtureRead {
            path: path.to_path_buf(),
            source,
        },
        DocumentError::Limit(limit) => BackendError::FixtureInvalid {
            path: path.display().to_string(),
            errors: vec![fixture::FixtureError::new("fixture", limit.to_string())],
        },
    })?;
    parse_fixture(&text, &path.display().to_string())
}

/// Parse fixture text; `origin` (a path, `<built-in>`) names it in the error.
fn parse_fixture(text: &str, origin: &str) -> Result<Fixture, BackendError> {
    fixture::parse(text).map_err(|errors| BackendError::FixtureInvalid {
        path: origin.to_string(),
        errors,
    })
}

/// The XIDs of `new` that `old` did not have: what follows their common prefix. Appending
/// delivers the appended ones; replacing the list delivers the replacement; truncating nothing.
fn new_xids<'a>(old: Option<&Vec<u64>>, new: Option<&'a Vec<u64>>) -> &'a [u64] {
    let new = new.map_or(&[][..], Vec::as_slice);
    let old = old.map_or(&[][..], Vec::as_slice);
    let common = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    &new[common..]
}

/// Health events implied by going from `old` to `new`: XIDs appended since, GPUs lost or back.
fn health_changes(old: &Fixture, new: &Fixture) -> Vec<HealthEvent> {
    let mut events = Vec::new();
    for gpu in &new.inventory.gpus {
        for &xid in new_xids(old.gpu_xids.get(&gpu.uuid), new.gpu_xids.get(&gpu.uuid)) {
            events.push(HealthEvent::Xid {
                gpu_uuid: gpu.uuid.clone(),
                mig_uuid: None,
                xid,
            });
        }
        for mig in &gpu.mig_devices {
            for &xid in new_xids(old.mig_xids.get(&mig.uuid), new.mig_xids.get(&mig.uuid)) {
                events.push(HealthEvent::Xid {
                    gpu_uuid: gpu.uuid.clone(),
                    mig_uuid: Some(mig.uuid.clone()),
                    xid,
                });
            }
        }
        match (old.lost.contains(&gpu.uuid), new.lost.contains(&gpu.uuid)) {
            (false, true) => events.push(HealthEvent::Lost {
                gpu_uuid: gpu.uuid.clone(),
            }),
            (true, false) => events.push(HealthEvent::Found {
                gpu_uuid: gpu.uuid.clone(),
            }),
            _ => {}
        }
    }
    events
}

impl GpuBackend for MockBackend {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn inventory(&self) -> Result<Inventory, BackendError> {
        Ok(self.with_state(|s| s.inventory.clone()))
    }

    fn lost_gpus(&self) -> Vec<String> {
        self.with_state(|s| s.lost.iter().cloned().collect())
    }

    fn telemetry(&self, inventory: &Inventory) -> Telemetry {
        self.with_state(|s| {
            let mut out = Telemetry::new();
            for gpu in &inventory.gpus {
                // A lost GPU answers no NVML call: nothing to report for it or its MIG devices.
                if s.lost.contains(&gpu.uuid) {
                    continue;
                }
                let uuids =
                    std::iter::once(&gpu.uuid).chain(gpu.mig_devices.iter().map(|m| &m.uuid));
                for uuid in uuids {
                    if let Some(t) = s.telemetry.get(uuid) {
                        out.insert(uuid.clone(), t.clone());
                    }
                }
                if let (Some(since), Some(t)) = (self.animated_since, out.get_mut(&gpu.uuid)) {
                    animate(t, gpu.index, since.elapsed().as_secs_f64());
                }
            }
            out
        })
    }

    fn watch(self: Arc<Self>, events: BackendEvents) -> Result<(), BackendError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let mut last = yaml_limits::read_bytes(&path).ok();
        std::thread::Builder::new()
            .name("mock-fixture-watch".into())
            .spawn(move || {
                while !events.health.is_closed() {
                    std::thread::sleep(POLL_INTERVAL);
                    let bytes = match yaml_limits::read_bytes(&path) {
                        Ok(bytes) => bytes,
                        Err(DocumentError::Limit(limit)) => {
                            // Said once, until the file changes to something readable.
                            if last.take().is_some() {
                                tracing::warn!(path = %path.display(), errors = ?[format!("fixture: {limit}")], "invalid mock fixture ignored; the last good one stays in force");
                            }
                            continue;
                        }
                        // Mid-rename or deleted: keep the last good fixture and look again.
                        Err(DocumentError::Read(_)) => continue,
                    };
                    if last.as_deref() == Some(bytes.as_slice()) {
                        continue;
                    }
                    last = Some(bytes.clone());
                    let parsed = std::str::from_utf8(&bytes)
                        .map_err(|e| {
                            vec![fixture::FixtureError {
                                path: "fixture".into(),
                                message: format!("not UTF-8: {e}"),
                            }]
                        })
                        .and_then(fixture::parse);
                    match parsed {
                        Ok(new) => self.apply(new, &events),
                        Err(errors) => {
                            let errors: Vec<String> =
                                errors.iter().map(ToString::to_string).collect();
                            tracing::warn!(
                                path = %path.display(),
                                errors = ?errors,
                                "invalid mock fixture ignored; the last good one stays in force"
                            );
                        }
                    }
                }
            })
            .map_err(|source| BackendError::WatchThread {
                thread: "mock-fixture-watch",
                source,
            })?;
        Ok(())
    }
}

/// Period of the built-in node's load wave.
pub const WAVE_PERIOD: Duration = Duration::from_secs(600);

/// The built-in node's GPU `index` at `secs` after start: a load between 5 % and 95 % that
/// follows a sine of [`WAVE_PERIOD`], each GPU an eighth of a period behind the previous one,
/// and everything that follows from it (power, temperatures, clocks, memory, profiling). Energy
/// and NVLink bytes are the integrals of power and NVLink throughput, so they only grow.
/// Deterministic: the same `index` and `secs` give the same telemetry.
pub fn animate(t: &mut DeviceTelemetry, index: u32, secs: f64) {
    use std::f64::consts::TAU;
    let w = TAU / WAVE_PERIOD.as_secs_f64();
    let phase = TAU * f64::from(index % 8) / 8.0;
    let load = 0.5 + 0.45 * (w * secs + phase).sin();
    // ∫ load dt from 0 to secs.
    let load_integral = 0.5 * secs - 0.45 / w * ((w * secs + phase).cos() - phase.cos());

    const IDLE_W: f64 = 70.0;
    const SPAN_W: f64 = 600.0;
    const NVLINK_BYTES_PER_S: f64 = 200e9;
    let percent = |x: f64| (x * 100.0).round();
    t.utilization_percent = Some(percent(load));
    t.memory_copy_utilization_percent = Some(percent(0.6 * load));
    t.power_watts = Some(((IDLE_W + SPAN_W * load) * 10.0).round() / 10.0);
    t.temperature_celsius = Some((34.0 + 40.0 * load).round());
    t.memory_temperature_celsius = Some((38.0 + 36.0 * load).round());
    t.sm_clock_mhz = Some(if load < 0.1 { 345.0 } else { 1980.0 });
    t.clock_throttle_reasons = Some(match load {
        l if l < 0.1 => 0x1,
        l if l > 0.9 => 0x4,
        _ => 0,
    });
    let energy_joules = IDLE_W * secs + SPAN_W * load_integral;
    t.energy_millijoules =
        Some(t.energy_millijoules.unwrap_or(0) + (energy_joules * 1000.0) as u64);
    let nvlink_bytes = NVLINK_BYTES_PER_S * load_integral;
    t.nvlink_bytes_total = Some(t.nvlink_bytes_total.unwrap_or(0) + nvlink_bytes as u64);
    if let Some(total) = t.memory_total_mib {
        let used = (total as f64 * (0.1 + 0.6 * load)) as u64;
        let reserved = t.memory_reserved_mib.unwrap_or(0).min(total - used);
        t.memory_used_mib = Some(used);
        t.memory_free_mib = Some(total - used - reserved);
    }
    if let Some(p) = t.profiling.as_mut() {
        let ratio = |x: f64| Some((x * 1000.0).round() / 1000.0);
        p.gr_engine_active = ratio(load);
        p.sm_active = ratio(0.9 * load);
        p.sm_occupancy = ratio(0.5 * load);
        p.tensor_active = ratio(0.6 * load);
        p.fp64_active = ratio(0.05 * load);
        p.fp32_active = ratio(0.3 * load);
        p.fp16_active = ratio(0.4 * load);
        p.dram_active = ratio(0.5 * load);
        p.pcie_tx_bytes_per_second = Some((2e9 * load).round());
        p.pcie_rx_bytes_per_second = Some((4e9 * load).round());
        p.nvlink_tx_bytes_per_second = Some((NVLINK_BYTES_PER_S / 2.0 * load).round());
        p.nvlink_rx_bytes_per_second = Some((NVLINK_BYTES_PER_S / 2.0 * load).round());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(text: &str) -> Fixture {
        fixture::parse(text).unwrap()
    }

    #[test]
    fn appended_xids_and_lost_toggles_become_events() {
        let old =
            fixture("gpus: [{model: X, memoryMiB: 10, xids: [13]}, {model: X, memoryMiB: 10}]");
        let new = fixture(
            "gpus: [{model: X, memoryMiB: 10, xids: [13, 48, 63]}, {model: X, memoryMiB: 10, lost: true}]",
        );
        let uuid0 = new.inventory.gpus[0].uuid.clone();
        let uuid1 = new.inventory.gpus[1].uuid.clone();
        let events = health_changes(&old, &new);
        assert_eq!(
            events,
            vec![
                HealthEvent::Xid {
                    gpu_uuid: uuid0.clone(),
                    mig_uuid: None,
                    xid: 48
                },
                HealthEvent::Xid {
                    gpu_uuid: uuid0,
                    mig_uuid: None,
                    xid: 63
                },
                HealthEvent::Lost {
                    gpu_uuid: uuid1.clone()
                },
            ]
        );
        assert_eq!(
            health_changes(&new, &old).last(),
            Some(&HealthEvent::Found { gpu_uuid: uuid1 })
        );
        assert!(health_changes(&new, &new).is_empty());
    }

    #[test]
    fn replaced_lists_deliver_the_replacement_and_mig_xids_name_the_instance() {
        let old = fixture(
            "gpus: [{model: NVIDIA H100 80GB HBM3, xids: [13], mig: {devices: [3g.40gb, {profile: 3g.40gb, xids: [31]}]}}]",
        );
        let new = fixture(
            "gpus: [{model: NVIDIA H100 80GB HBM3, xids: [48], mig: {devices: [3g.40gb, {profile: 3g.40gb, xids: [31, 94]}]}}]",
        );
        let gpu = &new.inventory.gpus[0];
        assert_eq!(
            health_changes(&old, &new),
            vec![
                HealthEvent::Xid {
                    gpu_uuid: gpu.uuid.clone(),
                    mig_uuid: None,
                    xid: 48
                },
                HealthEvent::Xid {
                    gpu_uuid: gpu.uuid.clone(),
                    mig_uuid: Some(gpu.mig_devices[1].uuid.clone()),
                    xid: 94
                },
            ]
        );
        // Truncating a list delivers nothing.
        let cleared =
            fixture("gpus: [{model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 3g.40gb]}}]");
        assert!(health_changes(&new, &cleared).is_empty());
    }

    #[test]
    fn lost_gpus_report_no_telemetry() {
        let backend = MockBackend::from_text(
            "gpus: [{model: X, memoryMiB: 10, lost: true}, {model: X, memoryMiB: 10}]",
        )
        .unwrap();
        let inventory = backend.inventory().unwrap();
        let t = backend.telemetry(&inventory);
        assert!(!t.contains_key(&inventory.gpus[0].uuid));
        assert!(t.contains_key(&inventory.gpus[1].uuid));
        assert_eq!(backend.lost_gpus(), vec![inventory.gpus[0].uuid.clone()]);
    }

    #[test]
    fn the_built_in_node_moves_and_fixtures_stay_still() {
        let fixed = MockBackend::from_text(fixture::DEFAULT_FIXTURE).unwrap();
        let inventory = fixed.inventory().unwrap();
        assert_eq!(fixed.telemetry(&inventory), fixed.telemetry(&inventory));

        let base = fixed.telemetry(&inventory)[&inventory.gpus[0].uuid].clone();
        let at = |index: u32, secs: f64| {
            let mut t = base.clone();
            animate(&mut t, index, secs);
            t
        };
        // Deterministic, different per GPU, and moving.
        assert_eq!(at(0, 100.0), at(0, 100.0));
        assert_ne!(
            at(0, 100.0).utilization_percent,
            at(4, 100.0).utilization_percent
        );
        assert_ne!(at(0, 0.0).power_watts, at(0, 150.0).power_watts);
        // Counters only grow.
        let mut energy = 0;
        let mut nvlink = 0;
        for step in 0..200 {
            let t = at(3, f64::from(step) * 7.0);
            let u = t.utilization_percent.unwrap();
            assert!((5.0..=95.0).contains(&u), "{u}");
            assert!(t.energy_millijoules.unwrap() >= energy);
            assert!(t.nvlink_bytes_total.unwrap() >= nvlink);
            energy = t.energy_millijoules.unwrap();
            nvlink = t.nvlink_bytes_total.unwrap();
            let p = t.profiling.as_ref().expect("H100 has GPM");
            assert!((0.0..=1.0).contains(&p.gr_engine_active.unwrap()));
            let total = t.memory_total_mib.unwrap();
            assert_eq!(
                t.memory_free_mib.unwrap()
                    + t.memory_used_mib.unwrap()
                    + t.memory_reserved_mib.unwrap(),
                total
            );
        }
        assert!(energy > 0 && nvlink > 0);

        let built_in = MockBackend::open(None).unwrap();
        let t = &built_in.telemetry(&inventory)[&inventory.gpus[1].uuid];
        assert!(
            t.utilization_percent.unwrap() >= 5.0,
            "the built-in node is animated"
        );
    }
}
