//! The event watcher: XID and double-bit ECC events become health events, and a periodic
//! re-enumeration publishes layout changes (MIG re-partitions) and lost/recovered GPUs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::{Device, EventSet, Nvml};
use nvml_wrapper_sys::bindings::{nvmlDevice_t, nvmlEventData_t};
use tracing::{info, warn};

use super::NvmlBackend;
use crate::gpu::backend::{BackendEvents, GpuBackend};
use crate::gpu::{Gpu, HealthEvent, Inventory};
use crate::health::policy::XID_FALLEN_OFF_BUS;

/// `gpuInstanceId` / `computeInstanceId` of an event that is not scoped to a MIG instance.
const NO_INSTANCE: u32 = 0xFFFF_FFFF;

/// How long one `nvmlEventSetWait` blocks; also bounds how late the watcher notices shutdown.
const EVENT_WAIT_MS: u32 = 1000;

/// How often the watcher re-enumerates to notice MIG re-partitions and lost/recovered GPUs.
const RELAYOUT_INTERVAL: Duration = Duration::from_secs(5);

/// Pause after a failed wait, so that a lost GPU cannot make the watcher spin.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// The health events the watcher registers for.
fn watched_events() -> EventTypes {
    EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR
}

/// A GPU whose events the watcher receives: its raw handle (to recognise events) and UUID.
struct Registered {
    handle: usize,
    uuid: String,
}

/// The watcher's state between events.
struct Watcher<'a> {
    backend: &'a NvmlBackend,
    events: &'a BackendEvents,
    /// The layout last published (or found at start), to map events to MIG devices.
    current: Arc<Inventory>,
    /// GPUs already reported lost, so that each loss is published once.
    reported_lost: BTreeSet<String>,
    /// The watched GPUs changed (layout, lost, found): the event set must be rebuilt, so that a
    /// lost GPU cannot keep failing every wait and a recovered one is watched again.
    registration_stale: bool,
}

impl NvmlBackend {
    pub(super) fn run_watcher(&self, events: &BackendEvents) {
        let current = events.inventory.borrow().clone();
        let mut watcher = Watcher {
            backend: self,
            events,
            current,
            reported_lost: BTreeSet::new(),
            registration_stale: true,
        };
        watcher.refresh();
        let mut registration = None;
        let mut last_refresh = Instant::now();
        while !events.health.is_closed() {
            if watcher.registration_stale {
                drop(registration.take()); // free the old set before building the new one
                registration = register_all(&self.nvml, &watcher.watchable());
                watcher.registration_stale = false;
            }
            match &registration {
                Some((set, registered)) => watcher.wait_once(set, registered),
                None => std::thread::sleep(Duration::from_millis(u64::from(EVENT_WAIT_MS))),
            }
            if last_refresh.elapsed() >= RELAYOUT_INTERVAL {
                watcher.refresh();
                last_refresh = Instant::now();
            }
        }
        info!("health task stopped; NVML watcher stops");
    }
}

impl Watcher<'_> {
    /// GPUs to register for events: the current layout minus the ones reported lost.
    fn watchable(&self) -> Vec<&Gpu> {
        self.current
            .gpus
            .iter()
            .filter(|g| !self.reported_lost.contains(&g.uuid))
            .collect()
    }

    /// Re-enumerate: publish a changed layout, and report GPUs that were lost or came back.
    fn refresh(&mut self) {
        match self.backend.inventory() {
            Ok(new) if !self.current.same_layout(&new) => {
                info!(
                    gpus = new.gpus.len(),
                    "GPU layout changed; publishing the new inventory"
                );
                let new = Arc::new(new);
                self.events.inventory.send_replace(new.clone());
                self.current = new;
                self.registration_stale = true;
            }
            Ok(_) => {}
            Err(error) => warn!(error = %error, "re-enumeration failed; keeping the last layout"),
        }
        let now_lost: BTreeSet<String> = self.backend.lost_gpus().into_iter().collect();
        let (newly_lost, found) = lost_transitions(&self.reported_lost, &now_lost);
        for gpu_uuid in newly_lost {
            self.report_lost(gpu_uuid);
        }
        for gpu_uuid in found {
            info!(gpu = %gpu_uuid, "GPU answers again");
            self.reported_lost.remove(&gpu_uuid);
            self.registration_stale = true;
            self.emit(HealthEvent::Found { gpu_uuid });
        }
    }

    /// Wait up to `EVENT_WAIT_MS` for one event and publish what it means.
    fn wait_once(&mut self, set: &EventSet<'_>, registered: &[Registered]) {
        match wait_event(set, EVENT_WAIT_MS) {
            Ok(event) => self.handle_event(set.nvml, &event, registered),
            Err(NvmlError::Timeout) => {}
            Err(NvmlError::GpuLost) => {
                self.probe_lost(registered);
                std::thread::sleep(ERROR_BACKOFF);
            }
            Err(error) => {
                warn!(error = %error, "waiting for NVML events failed");
                std::thread::sleep(ERROR_BACKOFF);
            }
        }
    }

    fn handle_event(&mut self, nvml: &Nvml, event: &RawEvent, registered: &[Registered]) {
        let Some(gpu_uuid) = event_gpu_uuid(nvml, event, registered) else {
            warn!(
                event_type = event.event_type,
                data = event.data,
                "event from an unknown device; ignored"
            );
            return;
        };
        for health in classify_event(event, &gpu_uuid, &self.current) {
            warn!(gpu = %gpu_uuid, event = ?health, "GPU health event");
            match health {
                HealthEvent::Lost { gpu_uuid } => self.report_lost(gpu_uuid),
                other => self.emit(other),
            }
        }
    }

    /// The wait said a GPU fell off the bus without saying which: ask each watched GPU.
    fn probe_lost(&mut self, registered: &[Registered]) {
        let nvml = &self.backend.nvml;
        for gpu in registered {
            let answer = nvml
                .device_by_uuid(gpu.uuid.as_str())
                .and_then(|d| d.uuid());
            if let Err(NvmlError::GpuLost) = answer {
                self.report_lost(gpu.uuid.clone());
            }
        }
    }

    fn report_lost(&mut self, gpu_uuid: String) {
        if self.reported_lost.insert(gpu_uuid.clone()) {
            warn!(gpu = %gpu_uuid, "GPU lost");
            self.registration_stale = true;
            self.emit(HealthEvent::Lost { gpu_uuid });
        }
    }

    /// Publish without blocking (the mailbox coalesces); fails only when the agent is stopping.
    fn emit(&mut self, event: HealthEvent) {
        let _ = self.events.health.send(event);
    }
}

/// An event set registered on every GPU that accepts registration (`None` when none does). A
/// refused registration frees the set (nvml-wrapper), so the set is rebuilt without the refusing
/// GPU; at most one rebuild per GPU.
fn register_all<'n>(nvml: &'n Nvml, gpus: &[&Gpu]) -> Option<(EventSet<'n>, Vec<Registered>)> {
    let mut candidates = gpus.to_vec();
    loop {
        match try_register(nvml, &candidates) {
            Ok((_, registered)) if registered.is_empty() => {
                warn!("no GPU accepted NVML event registration; health events are not watched");
                return None;
            }
            Ok(done) => {
                info!(gpus = done.1.len(), "watching NVML health events");
                return Some(done);
            }
            Err(Refusal::Gpu { position, error }) => {
                let gpu = candidates.remove(position);
                warn!(
                    gpu = %gpu.uuid,
                    mig_enabled = gpu.mig_enabled,
                    error = %error,
                    "GPU refused NVML event registration; its XIDs are not watched \
                     (MIG-enabled GPUs need NVIDIA_MIG_MONITOR_DEVICES=all)"
                );
            }
            Err(Refusal::Set(error)) => {
                warn!(error = %error, "cannot create an NVML event set; health events are not watched");
                return None;
            }
        }
    }
}

enum Refusal {
    Set(NvmlError),
    Gpu { position: usize, error: NvmlError },
}

fn try_register<'n>(
    nvml: &'n Nvml,
    gpus: &[&Gpu],
) -> Result<(EventSet<'n>, Vec<Registered>), Refusal> {
    let mut set = nvml.create_event_set().map_err(Refusal::Set)?;
    let mut registered = Vec::new();
    for (position, gpu) in gpus.iter().enumerate() {
        let refuse = |error| Refusal::Gpu { position, error };
        let device = nvml.device_by_uuid(gpu.uuid.as_str()).map_err(refuse)?;
        let mask = match device.supported_event_types() {
            Ok(supported) => supported & watched_events(),
            Err(_) => watched_events(),
        };
        if mask.is_empty() {
            return Err(refuse(NvmlError::NotSupported));
        }
        set = device
            .register_events(mask, set)
            .map_err(|e| refuse(e.error))?;
        registered.push(Registered {
            // SAFETY: the handle is only compared with event handles, never dereferenced here.
            handle: unsafe { device.handle() } as usize,
            uuid: gpu.uuid.clone(),
        });
    }
    Ok((set, registered))
}

/// The fields of `nvmlEventData_t` the watcher needs, as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawEvent {
    device: nvmlDevice_t,
    event_type: u64,
    data: u64,
    gpu_instance_id: u32,
    compute_instance_id: u32,
}

/// `nvmlEventSetWait_v2`, called directly because nvml-wrapper 0.13's `EventSet::wait` drops the
/// GPU/compute instance ids that scope an XID to a MIG device.
fn wait_event(set: &EventSet<'_>, timeout_ms: u32) -> Result<RawEvent, NvmlError> {
    let sym = nvml_sym(set.nvml.lib().nvmlEventSetWait_v2.as_ref())?;
    let mut data = nvmlEventData_t {
        device: std::ptr::null_mut(),
        eventType: 0,
        eventData: 0,
        gpuInstanceId: NO_INSTANCE,
        computeInstanceId: NO_INSTANCE,
    };
    // SAFETY: `sym` has the C signature of nvmlEventSetWait_v2; the set handle is live for the
    // borrow of `set`, and `data` is a valid, initialised out struct.
    nvml_try(unsafe { sym(set.handle(), &mut data, timeout_ms) })?;
    Ok(RawEvent {
        device: data.device,
        event_type: data.eventType,
        data: data.eventData,
        gpu_instance_id: data.gpuInstanceId,
        compute_instance_id: data.computeInstanceId,
    })
}

/// UUID of the GPU an event came from: by registered handle, else by asking NVML.
fn event_gpu_uuid(nvml: &Nvml, event: &RawEvent, registered: &[Registered]) -> Option<String> {
    if let Some(gpu) = registered
        .iter()
        .find(|r| r.handle == event.device as usize)
    {
        return Some(gpu.uuid.clone());
    }
    if event.device.is_null() {
        return None;
    }
    // SAFETY: a non-null device in event data is a handle NVML produced for this library.
    let device = unsafe { Device::new(event.device, nvml) };
    device.uuid().ok()
}

/// The MIG device of GPU `gpu_uuid` with GPU instance `gi` (and compute instance `ci`, unless
/// the event did not scope one).
fn mig_uuid_for(inventory: &Inventory, gpu_uuid: &str, gi: u32, ci: u32) -> Option<String> {
    let gpu = inventory.gpu_by_uuid(gpu_uuid)?;
    gpu.mig_devices
        .iter()
        .find(|m| m.gpu_instance_id == gi && (ci == NO_INSTANCE || m.compute_instance_id == ci))
        .map(|m| m.uuid.clone())
}

/// What an NVML event means. An XID carries the MIG device when the driver scoped it to a GPU
/// instance; XID 79 (fallen off the bus) is also reported as `Lost`.
fn classify_event(event: &RawEvent, gpu_uuid: &str, inventory: &Inventory) -> Vec<HealthEvent> {
    let types = EventTypes::from_bits_truncate(event.event_type);
    let mut out = Vec::new();
    if types.contains(EventTypes::CRITICAL_XID_ERROR) {
        let mig_uuid = (event.gpu_instance_id != NO_INSTANCE)
            .then(|| {
                mig_uuid_for(
                    inventory,
                    gpu_uuid,
                    event.gpu_instance_id,
                    event.compute_instance_id,
                )
            })
            .flatten();
        out.push(HealthEvent::Xid {
            gpu_uuid: gpu_uuid.to_string(),
            mig_uuid,
            xid: event.data,
        });
        if event.data == XID_FALLEN_OFF_BUS {
            out.push(HealthEvent::Lost {
                gpu_uuid: gpu_uuid.to_string(),
            });
        }
    }
    if types.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
        out.push(HealthEvent::DoubleBitEcc {
            gpu_uuid: gpu_uuid.to_string(),
        });
    }
    out
}

/// (newly lost, found again) between what was reported and what the last pass saw.
fn lost_transitions(
    reported: &BTreeSet<String>,
    now: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    (
        now.difference(reported).cloned().collect(),
        reported.difference(now).cloned().collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::gpu::MigDevice;

    fn mig_inventory() -> Inventory {
        let mig = |uuid: &str, gi: u32, ci: u32, index: u32| MigDevice {
            uuid: uuid.to_string(),
            profile: "3g.40gb".to_string(),
            gpu_instance_id: gi,
            compute_instance_id: ci,
            memory_mib: 40192,
            index,
        };
        Inventory {
            gpus: vec![Gpu {
                index: 0,
                uuid: "GPU-0".to_string(),
                model: "NVIDIA H100 80GB HBM3".to_string(),
                memory_mib: 81559,
                numa_node: Some(0),
                pci_bus_id: Some("0000:18:00.0".to_string()),
                minor_number: 0,
                mig_enabled: true,
                mig_devices: vec![mig("MIG-a", 1, 0, 0), mig("MIG-b", 2, 0, 1)],
                nvlinks: BTreeMap::new(),
            }],
            ..Inventory::default()
        }
    }

    fn event(types: EventTypes, data: u64, gi: u32, ci: u32) -> RawEvent {
        RawEvent {
            device: std::ptr::null_mut(),
            event_type: types.bits(),
            data,
            gpu_instance_id: gi,
            compute_instance_id: ci,
        }
    }

    #[test]
    fn mig_devices_are_found_by_instance_ids() {
        let inv = mig_inventory();
        assert_eq!(mig_uuid_for(&inv, "GPU-0", 2, 0).as_deref(), Some("MIG-b"));
        assert_eq!(
            mig_uuid_for(&inv, "GPU-0", 1, NO_INSTANCE).as_deref(),
            Some("MIG-a")
        );
        assert_eq!(mig_uuid_for(&inv, "GPU-0", 3, 0), None);
        assert_eq!(mig_uuid_for(&inv, "GPU-9", 1, 0), None);
    }

    #[test]
    fn xids_are_scoped_to_mig_devices_when_the_driver_says_so() {
        let inv = mig_inventory();
        let xid = EventTypes::CRITICAL_XID_ERROR;
        assert_eq!(
            classify_event(&event(xid, 43, 2, 0), "GPU-0", &inv),
            vec![HealthEvent::Xid {
                gpu_uuid: "GPU-0".into(),
                mig_uuid: Some("MIG-b".into()),
                xid: 43
            }]
        );
        assert_eq!(
            classify_event(&event(xid, 48, NO_INSTANCE, NO_INSTANCE), "GPU-0", &inv),
            vec![HealthEvent::Xid {
                gpu_uuid: "GPU-0".into(),
                mig_uuid: None,
                xid: 48
            }]
        );
    }

    #[test]
    fn xid_79_means_lost_and_dbe_is_reported() {
        let inv = mig_inventory();
        let lost = classify_event(
            &event(EventTypes::CRITICAL_XID_ERROR, 79, NO_INSTANCE, NO_INSTANCE),
            "GPU-0",
            &inv,
        );
        assert_eq!(
            lost[1],
            HealthEvent::Lost {
                gpu_uuid: "GPU-0".into()
            }
        );
        let dbe = classify_event(
            &event(
                EventTypes::DOUBLE_BIT_ECC_ERROR,
                0,
                NO_INSTANCE,
                NO_INSTANCE,
            ),
            "GPU-0",
            &inv,
        );
        assert_eq!(
            dbe,
            vec![HealthEvent::DoubleBitEcc {
                gpu_uuid: "GPU-0".into()
            }]
        );
    }

    #[test]
    fn lost_transitions_report_each_change_once() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let (lost, found) = lost_transitions(&set(&["GPU-a", "GPU-b"]), &set(&["GPU-b", "GPU-c"]));
        assert_eq!(lost, vec!["GPU-c".to_string()]);
        assert_eq!(found, vec!["GPU-a".to_string()]);
    }
}
