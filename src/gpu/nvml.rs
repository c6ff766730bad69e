//! The NVML backend (nvml-wrapper; libnvidia-ml is loaded at run time).
//!
//! The library is `dlopen`ed by [`NvmlBackend::open`], never linked, so the same binary starts on
//! nodes without a driver and can then be told `--backend mock`.
//!
//! Layout of this file: the backend and its NVML reads first, then the event watcher, then pure
//! helpers (bus ids, MIG profile names, CUDA versions, NVLink peers, event classification) that
//! are unit-tested here because CI has no GPU.
//!
//! NVLink topology on NVSwitch systems (HGX/DGX): every active link of a GPU ends at an NVSwitch,
//! whose PCI bus id is no GPU's, so no GPU-to-GPU link can be read. Such a GPU ("switched": all
//! of its active links lead to non-GPU endpoints) is recorded as NVLink-connected to every other
//! switched GPU, with the link count of the pair = the smaller of the two GPUs' active link
//! counts (18 on H100/H200 HGX, symmetric even when one GPU runs with a link down). A GPU with
//! at least one direct GPU link keeps only its direct links.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::{Device, EventSet, Nvml};
use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlEventData_t, nvmlReturn_t, NVML_DEVICE_MIG_ENABLE, NVML_NVLINK_MAX_LINKS,
};
use tracing::{debug, info, warn};

use super::backend::{BackendError, BackendEvents, GpuBackend};
use super::{DeviceTelemetry, Gpu, HealthEvent, Inventory, MigDevice, Telemetry};
use crate::health::policy::XID_FALLEN_OFF_BUS;

/// Library names tried in order. Nodes normally ship only the versioned soname (the unversioned
/// `libnvidia-ml.so` comes with the dev package), so it goes first; the second is the fallback
/// for hosts that only have the dev symlink.
const NVML_LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// Where Linux exposes PCI devices (`<busid>/numa_node`).
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

const MIB: u64 = 1024 * 1024;

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

/// GPUs as NVML reports them.
///
/// NVML is thread-safe; the backend is shared between the agent's blocking threads and the
/// `nvml-events` watcher thread.
pub struct NvmlBackend {
    nvml: Nvml,
    state: Mutex<State>,
}

/// What the last passes learned, for `lost_gpus()` and for keeping lost GPUs in the layout.
#[derive(Default, Clone)]
struct State {
    /// The last inventory, to keep a GPU that stops answering in place instead of dropping it.
    last_inventory: Option<Inventory>,
    /// UUIDs of GPUs the last inventory or telemetry pass could not query.
    lost: BTreeSet<String>,
}

impl NvmlBackend {
    /// Load libnvidia-ml at run time and initialise it.
    ///
    /// Fails with [`BackendError::NvmlInit`] (whose message points at `--backend mock`) when the
    /// library is missing or the driver refuses; never panics.
    pub fn open() -> Result<Self, BackendError> {
        let nvml = init_nvml()?;
        let driver = nvml.sys_driver_version().unwrap_or_default();
        info!(driver = %driver, "NVML initialised");
        Ok(Self {
            nvml,
            state: Mutex::new(State::default()),
        })
    }

    /// The shared state; a panic elsewhere must not take the backend down with it.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Read GPU `index`: its facts plus the remote bus ids of its active NVLinks.
    fn read_gpu(&self, index: u32) -> Result<GpuProbe, ReadFailure> {
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(|e| ReadFailure::new("nvmlDeviceGetHandleByIndex", None, e))?;
        let uuid = device
            .uuid()
            .map_err(|e| ReadFailure::new("nvmlDeviceGetUUID", None, e))?;
        let fail = |call: &'static str, e| ReadFailure::new(call, Some(uuid.clone()), e);
        let model = device.name().map_err(|e| fail("nvmlDeviceGetName", e))?;
        let memory = device
            .memory_info()
            .map_err(|e| fail("nvmlDeviceGetMemoryInfo_v2", e))?;
        let minor_number = device
            .minor_number()
            .map_err(|e| fail("nvmlDeviceGetMinorNumber", e))?;
        let pci_bus_id = optional(&uuid, "nvmlDeviceGetPciInfo_v3", device.pci_info())
            .and_then(|pci| normalize_bus_id(&pci.bus_id));
        let numa_node = pci_bus_id
            .as_deref()
            .and_then(|bus| read_numa_node(Path::new(SYSFS_PCI_DEVICES), bus));
        let mig_enabled = optional(&uuid, "nvmlDeviceGetMigMode", device.mig_mode())
            .is_some_and(|mode| mode.current == NVML_DEVICE_MIG_ENABLE);
        let mig_devices = if mig_enabled {
            read_mig_devices(&device, &uuid)
        } else {
            Vec::new()
        };
        let remote_links = read_nvlink_remotes(&device, &uuid);
        let gpu = Gpu {
            index,
            uuid,
            model,
            memory_mib: memory.total / MIB,
            numa_node,
            pci_bus_id,
            minor_number,
            mig_enabled,
            mig_devices,
            nvlinks: BTreeMap::new(),
        };
        Ok(GpuProbe {
            gpu,
            remote_links: Some(remote_links),
        })
    }

    /// Handle a GPU that could not be read: remember it as lost and, when an earlier inventory
    /// knew it, keep that entry so the device stays advertised (as unhealthy) instead of
    /// vanishing from the layout.
    fn carry_forward(
        index: u32,
        failure: &ReadFailure,
        previous: &State,
        lost: &mut BTreeSet<String>,
    ) -> Option<Gpu> {
        let known = previous
            .last_inventory
            .as_ref()
            .and_then(|inv| match &failure.uuid {
                Some(uuid) => inv.gpu_by_uuid(uuid),
                None => inv.gpu_by_index(index),
            });
        let uuid = failure
            .uuid
            .clone()
            .or_else(|| known.map(|g| g.uuid.clone()));
        let gpu = uuid.as_deref().unwrap_or("unknown");
        let error = &failure.error;
        if uuid.as_ref().is_some_and(|u| previous.lost.contains(u)) {
            debug!(index, gpu, call = failure.call, error = %error, "GPU still lost");
        } else {
            warn!(index, gpu, call = failure.call, error = %error, kept = known.is_some(), "cannot read GPU; treating it as lost");
        }
        if let Some(uuid) = uuid {
            lost.insert(uuid);
        }
        known.cloned()
    }

    /// Sample one GPU and its MIG devices into `out`; returns false when the GPU is lost.
    /// `was_lost` only lowers the log level, so that a lost GPU does not warn on every pass.
    fn sample_gpu(&self, gpu: &Gpu, was_lost: bool, out: &mut Telemetry) -> bool {
        let device = match self.nvml.device_by_uuid(gpu.uuid.as_str()) {
            Ok(device) => device,
            Err(error) if was_lost => {
                debug!(gpu = %gpu.uuid, error = %error, "GPU still lost");
                return false;
            }
            Err(error) => {
                warn!(gpu = %gpu.uuid, error = %error, "cannot open GPU for telemetry");
                return false;
            }
        };
        let (sample, lost) = sample_device(&device);
        if lost {
            if !was_lost {
                warn!(gpu = %gpu.uuid, "GPU lost while sampling telemetry");
            }
            return false;
        }
        out.insert(gpu.uuid.clone(), sample);
        for mig in &gpu.mig_devices {
            match find_mig_handle(&device, mig) {
                Some(handle) => {
                    out.insert(mig.uuid.clone(), sample_device(&handle).0);
                }
                None => debug!(gpu = %gpu.uuid, mig = %mig.uuid, "MIG device gone; no telemetry"),
            }
        }
        true
    }
}

impl GpuBackend for NvmlBackend {
    fn name(&self) -> &'static str {
        "nvml"
    }

    /// Enumerate every GPU; a GPU that cannot be read is reported by `lost_gpus()` and, when an
    /// earlier pass knew it, kept with its last known facts. Only a failing device count fails
    /// the whole call.
    fn inventory(&self) -> Result<Inventory, BackendError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| call_error("nvmlDeviceGetCount", &e))?;
        let previous = self.state().clone();
        let mut lost = BTreeSet::new();
        let mut probes = Vec::new();
        for index in 0..count {
            match self.read_gpu(index) {
                Ok(probe) => probes.push(probe),
                Err(failure) => {
                    if let Some(gpu) = Self::carry_forward(index, &failure, &previous, &mut lost) {
                        probes.push(GpuProbe {
                            gpu,
                            remote_links: None,
                        });
                    }
                }
            }
        }
        let inventory = Inventory {
            node: None,
            driver_version: self.driver_version(),
            cuda_driver_version: self.cuda_driver_version(),
            gpus: with_nvlink_peers(probes),
        };
        let mut state = self.state();
        state.lost = lost;
        state.last_inventory = Some(inventory.clone());
        Ok(inventory)
    }

    fn lost_gpus(&self) -> Vec<String> {
        self.state().lost.iter().cloned().collect()
    }

    /// Sample every GPU and MIG device of `inventory`. A value NVML does not support (or fails to
    /// read) is `None`; a GPU that cannot be opened is left out and counted as lost.
    fn telemetry(&self, inventory: &Inventory) -> Telemetry {
        let mut out = Telemetry::new();
        let was_lost = self.state().lost.clone();
        let mut lost = BTreeSet::new();
        for gpu in &inventory.gpus {
            if !self.sample_gpu(gpu, was_lost.contains(&gpu.uuid), &mut out) {
                lost.insert(gpu.uuid.clone());
            }
        }
        self.state().lost = lost;
        out
    }

    /// Start the `nvml-events` thread: XID and double-bit ECC events become health events, and a
    /// re-enumeration every 5 s publishes layout changes (MIG re-partitions).
    ///
    /// Events of MIG-enabled GPUs (and XIDs scoped to MIG instances) are only delivered when the
    /// container may monitor MIG devices: NVIDIA's device plugin gets that by running with
    /// `NVIDIA_MIG_MONITOR_DEVICES=all`, which makes the container runtime expose the MIG
    /// `monitor` capability (`/dev/nvidia-caps`). Without it, registration on MIG-enabled GPUs
    /// may be refused; such GPUs are logged and not watched.
    fn watch(self: Arc<Self>, events: BackendEvents) -> Result<(), BackendError> {
        std::thread::Builder::new()
            .name("nvml-events".into())
            .spawn(move || self.run_watcher(&events))
            .map_err(|source| BackendError::WatchThread {
                thread: "nvml-events",
                source,
            })?;
        Ok(())
    }
}

impl NvmlBackend {
    fn driver_version(&self) -> Option<String> {
        self.nvml
            .sys_driver_version()
            .map_err(|e| warn!(error = %e, "cannot read the driver version"))
            .ok()
    }

    fn cuda_driver_version(&self) -> Option<String> {
        self.nvml
            .sys_cuda_driver_version()
            .map_err(|e| warn!(error = %e, "cannot read the CUDA driver version"))
            .ok()
            .and_then(cuda_version_string)
    }
}

/// Try each library name; fall back to the next only when the library could not be loaded
/// (a loaded library whose `nvmlInit` fails reports the driver's reason instead).
fn init_nvml() -> Result<Nvml, BackendError> {
    let mut reasons = Vec::new();
    for library in NVML_LIBRARIES {
        match Nvml::builder().lib_path(OsStr::new(library)).init() {
            Ok(nvml) => {
                debug!(library, "NVML loaded");
                return Ok(nvml);
            }
            Err(NvmlError::LibloadingError(e)) => {
                debug!(library, error = %e, "cannot load NVML library");
                reasons.push(format!("cannot load {library}: {e}"));
            }
            Err(e) => {
                return Err(BackendError::NvmlInit {
                    reason: format!("{library}: {e}"),
                })
            }
        }
    }
    Err(BackendError::NvmlInit {
        reason: reasons.join("; "),
    })
}

/// A GPU as read in one pass, plus what is needed to compute its NVLink peers.
struct GpuProbe {
    gpu: Gpu,
    /// Remote bus id of each active NVLink (`None` = unreadable). `None` for a GPU carried
    /// forward from an earlier inventory, which keeps its earlier peers.
    remote_links: Option<Vec<Option<String>>>,
}

/// Why one GPU could not be read.
struct ReadFailure {
    call: &'static str,
    uuid: Option<String>,
    error: NvmlError,
}

impl ReadFailure {
    fn new(call: &'static str, uuid: Option<String>, error: NvmlError) -> Self {
        Self { call, uuid, error }
    }
}

fn call_error(call: &str, error: &NvmlError) -> BackendError {
    BackendError::Nvml {
        call: call.to_string(),
        reason: error.to_string(),
    }
}

/// A value that is nice to have: `NotSupported` is normal (debug), anything else is a warning.
fn optional<T>(uuid: &str, call: &'static str, result: Result<T, NvmlError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(NvmlError::NotSupported) => {
            debug!(gpu = %uuid, call, "not supported");
            None
        }
        Err(error) => {
            warn!(gpu = %uuid, call, error = %error, "NVML read failed; field left empty");
            None
        }
    }
}

/// Fill each GPU's `nvlinks` from the probes' remote bus ids (see the module doc for NVSwitch).
fn with_nvlink_peers(probes: Vec<GpuProbe>) -> Vec<Gpu> {
    let links: Vec<LinkProbe> = probes
        .iter()
        .filter_map(|p| {
            Some(LinkProbe {
                index: p.gpu.index,
                bus_id: p.gpu.pci_bus_id.clone(),
                remotes: p.remote_links.clone()?,
            })
        })
        .collect();
    let carried_bus_ids: Vec<(u32, String)> = probes
        .iter()
        .filter(|p| p.remote_links.is_none())
        .filter_map(|p| Some((p.gpu.index, p.gpu.pci_bus_id.clone()?)))
        .collect();
    let mut peers = nvlink_peers(&links, &carried_bus_ids);
    probes
        .into_iter()
        .map(|probe| {
            let mut gpu = probe.gpu;
            if probe.remote_links.is_some() {
                gpu.nvlinks = peers.remove(&gpu.index).unwrap_or_default();
            }
            gpu
        })
        .collect()
}

/// The MIG devices of a MIG-enabled GPU, in NVML index order; unpopulated slots are skipped.
fn read_mig_devices(parent: &Device<'_>, parent_uuid: &str) -> Vec<MigDevice> {
    let Some(max) = optional(
        parent_uuid,
        "nvmlDeviceGetMaxMigDeviceCount",
        parent.mig_device_count(),
    ) else {
        return Vec::new();
    };
    (0..max)
        .filter_map(|index| match parent.mig_device_by_index(index) {
            Ok(mig) => read_mig_device(&mig, index, parent_uuid),
            Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => None,
            Err(error) => {
                warn!(gpu = %parent_uuid, index, error = %error, "cannot open MIG device");
                None
            }
        })
        .collect()
}

fn read_mig_device(mig: &Device<'_>, index: u32, parent_uuid: &str) -> Option<MigDevice> {
    let read = |call: &'static str, e: NvmlError| {
        warn!(gpu = %parent_uuid, index, call, error = %e, "cannot read MIG device; skipped");
    };
    let uuid = mig.uuid().map_err(|e| read("nvmlDeviceGetUUID", e)).ok()?;
    let name = mig.name().map_err(|e| read("nvmlDeviceGetName", e)).ok()?;
    let gpu_instance_id = gpu_instance_id(mig)
        .map_err(|e| read("nvmlDeviceGetGpuInstanceId", e))
        .ok()?;
    let compute_instance_id = compute_instance_id(mig)
        .map_err(|e| read("nvmlDeviceGetComputeInstanceId", e))
        .ok()?;
    let memory = mig
        .memory_info()
        .map_err(|e| read("nvmlDeviceGetMemoryInfo_v2", e))
        .ok()?;
    let profile = match mig_profile_from_name(&name) {
        Some(profile) => profile.to_string(),
        None => {
            warn!(gpu = %parent_uuid, mig = %uuid, name = %name, "unexpected MIG device name; using it whole as the profile");
            name
        }
    };
    Some(MigDevice {
        uuid,
        profile,
        gpu_instance_id,
        compute_instance_id,
        memory_mib: memory.total / MIB,
        index,
    })
}

/// The C signature of NVML's MIG instance id getters.
type InstanceIdGetter = unsafe extern "C" fn(nvmlDevice_t, *mut u32) -> nvmlReturn_t;

/// Call `getter` (a symbol of the library `mig` was opened with) on the MIG device `mig`.
fn instance_id(mig: &Device<'_>, getter: &InstanceIdGetter) -> Result<u32, NvmlError> {
    let mut id: u32 = 0;
    // SAFETY: `getter` comes from the loaded NVML library with its C signature; the handle is a
    // live NVML device handle (it borrows the `Nvml` it came from) and `id` is a valid out pointer.
    nvml_try(unsafe { getter(mig.handle(), &mut id) })?;
    Ok(id)
}

/// `nvmlDeviceGetGpuInstanceId` of a MIG device handle (nvml-wrapper 0.13 has no wrapper).
fn gpu_instance_id(mig: &Device<'_>) -> Result<u32, NvmlError> {
    instance_id(
        mig,
        nvml_sym(mig.nvml().lib().nvmlDeviceGetGpuInstanceId.as_ref())?,
    )
}

/// `nvmlDeviceGetComputeInstanceId` of a MIG device handle (nvml-wrapper 0.13 has no wrapper).
fn compute_instance_id(mig: &Device<'_>) -> Result<u32, NvmlError> {
    instance_id(
        mig,
        nvml_sym(mig.nvml().lib().nvmlDeviceGetComputeInstanceId.as_ref())?,
    )
}

/// The normalised remote bus id of each active NVLink (`None` when NVML cannot tell).
fn read_nvlink_remotes(device: &Device<'_>, uuid: &str) -> Vec<Option<String>> {
    let mut remotes = Vec::new();
    for link in 0..NVML_NVLINK_MAX_LINKS {
        let nvlink = device.link_wrapper_for(link);
        match nvlink.is_active() {
            Ok(true) => {}
            Ok(false) => continue,
            // No NVLink at all (PCIe card): one answer is enough.
            Err(NvmlError::NotSupported) if link == 0 => break,
            Err(error) => {
                debug!(gpu = %uuid, link, error = %error, "NVLink state unreadable");
                continue;
            }
        }
        let remote = match nvlink.remote_pci_info() {
            Ok(pci) => normalize_bus_id(&pci.bus_id),
            Err(error) => {
                debug!(gpu = %uuid, link, error = %error, "NVLink remote unreadable");
                None
            }
        };
        remotes.push(remote);
    }
    remotes
}

/// The MIG device handle for `mig` under `parent`: its recorded index first, then a scan (the
/// index can shift after a re-partition the inventory has not seen yet).
fn find_mig_handle<'n>(parent: &Device<'n>, mig: &MigDevice) -> Option<Device<'n>> {
    let matches = |d: &Device<'n>| d.uuid().is_ok_and(|u| u == mig.uuid);
    if let Ok(device) = parent.mig_device_by_index(mig.index) {
        if matches(&device) {
            return Some(device);
        }
    }
    let max = parent.mig_device_count().ok()?;
    (0..max)
        .filter_map(|i| parent.mig_device_by_index(i).ok())
        .find(|d| matches(d))
}

/// Collects readings: every failure leaves its field `None`; GpuLost is remembered.
#[derive(Default)]
struct Sampler {
    lost: bool,
}

impl Sampler {
    fn take<T>(&mut self, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(NvmlError::GpuLost) => {
                self.lost = true;
                None
            }
            Err(_) => None,
        }
    }
}

/// Sample one device (GPU or MIG); the flag is true when NVML said GpuLost.
fn sample_device(device: &Device<'_>) -> (DeviceTelemetry, bool) {
    let mut s = Sampler::default();
    let memory = s.take(device.memory_info());
    let sample = DeviceTelemetry {
        utilization_percent: s.take(device.utilization_rates()).map(|u| f64::from(u.gpu)),
        memory_used_mib: memory.as_ref().map(|m| m.used / MIB),
        memory_total_mib: memory.as_ref().map(|m| m.total / MIB),
        temperature_celsius: s
            .take(device.temperature(TemperatureSensor::Gpu))
            .map(f64::from),
        power_watts: s
            .take(device.power_usage())
            .map(|mw| f64::from(mw) / 1000.0),
        sm_clock_mhz: s.take(device.clock_info(Clock::SM)).map(f64::from),
        memory_clock_mhz: s.take(device.clock_info(Clock::Memory)).map(f64::from),
        ..DeviceTelemetry::default()
    };
    (sample, s.lost)
}

// ---------------------------------------------------------------------------------------------
// The event watcher
// ---------------------------------------------------------------------------------------------

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
    fn run_watcher(&self, events: &BackendEvents) {
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

// ---------------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------------

/// NVML's bus id (`00000000:18:00.0`, upper-case hex, 8-digit domain) in the Linux sysfs form
/// `dddd:bb:dd.f` (lower-case; the domain keeps at least 4 digits, more only when it needs them,
/// as Linux prints it for VMD domains). `None` when the text is not a bus id.
fn normalize_bus_id(raw: &str) -> Option<String> {
    let mut parts = raw.trim().split(':');
    let (domain, bus, devfn) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (device, function) = devfn.split_once('.')?;
    let hex = |s: &str, max_len: usize| {
        (!s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    let domain = hex(domain, 8)?;
    let bus = hex(bus, 2)?;
    let device = hex(device, 2)?;
    let function = hex(function, 1).filter(|f| *f <= 7)?;
    Some(format!("{domain:04x}:{bus:02x}:{device:02x}.{function}"))
}

/// The MIG profile in an NVML MIG device name: `NVIDIA H100 80GB HBM3 MIG 3g.40gb` → `3g.40gb`,
/// `NVIDIA A100-SXM4-40GB MIG 1g.5gb+me` → `1g.5gb+me`.
fn mig_profile_from_name(name: &str) -> Option<&str> {
    let profile = match name.rsplit_once(" MIG ") {
        Some((_, profile)) => profile,
        None => name.strip_prefix("MIG ")?,
    };
    let profile = profile.trim();
    (!profile.is_empty()).then_some(profile)
}

/// `nvmlSystemGetCudaDriverVersion` as `major.minor`: 12080 → `12.8`, 13000 → `13.0`.
fn cuda_version_string(version: i32) -> Option<String> {
    (version > 0).then(|| format!("{}.{}", version / 1000, (version % 1000) / 10))
}

/// The content of a sysfs `numa_node` file: `-1` (no affinity) or garbage → `None`.
fn parse_numa_node(text: &str) -> Option<u32> {
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// NUMA node of PCI device `bus_id` from `<pci_devices>/<bus_id>/numa_node`.
fn read_numa_node(pci_devices: &Path, bus_id: &str) -> Option<u32> {
    let path = pci_devices.join(bus_id).join("numa_node");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_numa_node(&text),
        Err(error) => {
            debug!(path = %path.display(), error = %error, "no NUMA node");
            None
        }
    }
}

/// The NVLinks of one GPU: its index, its bus id, and the remote bus id of each active link
/// (`None` when unreadable). Bus ids are normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkProbe {
    index: u32,
    bus_id: Option<String>,
    remotes: Vec<Option<String>>,
}

/// Peer GPU index → link count for each probed GPU.
///
/// A link whose remote bus id is another GPU's counts towards that GPU; links to itself are
/// ignored; links to anything else (NVSwitch, unknown) count as switch links. GPUs with switch
/// links and no direct GPU link are connected pairwise with `min` of their switch link counts
/// (see the module doc). `extra_gpus` are (index, bus id) of GPUs that were not probed (lost),
/// so that links to them still count as GPU links rather than switch links.
fn nvlink_peers(
    probes: &[LinkProbe],
    extra_gpus: &[(u32, String)],
) -> BTreeMap<u32, BTreeMap<u32, u32>> {
    let by_bus: HashMap<&str, u32> = probes
        .iter()
        .filter_map(|p| Some((p.bus_id.as_deref()?, p.index)))
        .chain(extra_gpus.iter().map(|(i, b)| (b.as_str(), *i)))
        .collect();
    let mut peers = BTreeMap::new();
    let mut switched = Vec::new();
    for probe in probes {
        let mut direct: BTreeMap<u32, u32> = BTreeMap::new();
        let mut switch_links = 0;
        for remote in &probe.remotes {
            match remote.as_deref().and_then(|b| by_bus.get(b)) {
                Some(&peer) if peer == probe.index => {}
                Some(&peer) => *direct.entry(peer).or_default() += 1,
                None => switch_links += 1,
            }
        }
        if direct.is_empty() && switch_links > 0 {
            switched.push((probe.index, switch_links));
        }
        peers.insert(probe.index, direct);
    }
    for &(a, links_a) in &switched {
        for &(b, links_b) in &switched {
            if a != b {
                peers.entry(a).or_default().insert(b, links_a.min(links_b));
            }
        }
    }
    peers
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
    use super::*;

    #[test]
    fn bus_ids_take_the_sysfs_form() {
        assert_eq!(
            normalize_bus_id("00000000:18:00.0").as_deref(),
            Some("0000:18:00.0")
        );
        assert_eq!(
            normalize_bus_id("00000000:B3:00.1").as_deref(),
            Some("0000:b3:00.1")
        );
        assert_eq!(
            normalize_bus_id("0000:9a:00.0").as_deref(),
            Some("0000:9a:00.0")
        );
        assert_eq!(
            normalize_bus_id("00010000:01:00.0").as_deref(),
            Some("10000:01:00.0")
        );
        for bad in [
            "",
            "garbage",
            "0000:18:00",
            "0000:18:00.8",
            "0000:1g:00.0",
            "a:b:c:d.0",
        ] {
            assert_eq!(normalize_bus_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mig_profiles_come_from_device_names() {
        assert_eq!(
            mig_profile_from_name("NVIDIA H100 80GB HBM3 MIG 3g.40gb"),
            Some("3g.40gb")
        );
        assert_eq!(
            mig_profile_from_name("NVIDIA A100-SXM4-40GB MIG 1g.5gb+me"),
            Some("1g.5gb+me")
        );
        assert_eq!(
            mig_profile_from_name("NVIDIA H200 MIG 1g.18gb"),
            Some("1g.18gb")
        );
        assert_eq!(mig_profile_from_name("MIG 7g.80gb"), Some("7g.80gb"));
        assert_eq!(mig_profile_from_name("NVIDIA H100 80GB HBM3"), None);
        assert_eq!(mig_profile_from_name("NVIDIA H100 MIG "), None);
    }

    #[test]
    fn cuda_versions_are_major_dot_minor() {
        assert_eq!(cuda_version_string(12080).as_deref(), Some("12.8"));
        assert_eq!(cuda_version_string(12020).as_deref(), Some("12.2"));
        assert_eq!(cuda_version_string(13000).as_deref(), Some("13.0"));
        assert_eq!(cuda_version_string(0), None);
    }

    #[test]
    fn numa_nodes_parse_and_minus_one_is_none() {
        assert_eq!(parse_numa_node("1\n"), Some(1));
        assert_eq!(parse_numa_node("0"), Some(0));
        assert_eq!(parse_numa_node("-1\n"), None);
        assert_eq!(parse_numa_node("x"), None);
    }

    #[test]
    fn numa_nodes_are_read_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("0000:18:00.0");
        std::fs::create_dir(&dev).unwrap();
        std::fs::write(dev.join("numa_node"), "1\n").unwrap();
        assert_eq!(read_numa_node(dir.path(), "0000:18:00.0"), Some(1));
        assert_eq!(read_numa_node(dir.path(), "0000:19:00.0"), None);
    }

    fn probe(index: u32, bus: &str, remotes: &[&str]) -> LinkProbe {
        LinkProbe {
            index,
            bus_id: Some(bus.to_string()),
            remotes: remotes
                .iter()
                .map(|r| (!r.is_empty()).then(|| r.to_string()))
                .collect(),
        }
    }

    #[test]
    fn direct_nvlinks_are_counted_per_peer() {
        // Two H100 NVL pairs over bridges (direct GPU links), one PCIe-only GPU.
        let a = "0000:18:00.0";
        let b = "0000:2a:00.0";
        let c = "0000:3a:00.0";
        let peers = nvlink_peers(
            &[
                probe(0, a, &[b, b, b, b, a]),
                probe(1, b, &[a, a, a, a]),
                probe(2, c, &[]),
            ],
            &[],
        );
        assert_eq!(peers[&0], BTreeMap::from([(1, 4)]));
        assert_eq!(peers[&1], BTreeMap::from([(0, 4)]));
        assert!(peers[&2].is_empty());
    }

    #[test]
    fn nvswitch_gpus_reach_every_other_nvswitch_gpu() {
        let sw = "0000:c1:00.0";
        let peers = nvlink_peers(
            &[
                probe(0, "0000:18:00.0", &[sw, sw, sw]),
                probe(1, "0000:2a:00.0", &[sw, "", sw]),
                probe(2, "0000:3a:00.0", &[sw, sw]),
                probe(3, "0000:4a:00.0", &[]),
            ],
            &[],
        );
        assert_eq!(peers[&0], BTreeMap::from([(1, 3), (2, 2)]));
        assert_eq!(peers[&1], BTreeMap::from([(0, 3), (2, 2)]));
        assert_eq!(peers[&2], BTreeMap::from([(0, 2), (1, 2)]));
        assert!(peers[&3].is_empty());
    }

    #[test]
    fn links_to_an_unprobed_gpu_are_gpu_links() {
        let peers = nvlink_peers(
            &[probe(0, "0000:18:00.0", &["0000:2a:00.0", "0000:2a:00.0"])],
            &[(1, "0000:2a:00.0".to_string())],
        );
        assert_eq!(peers[&0], BTreeMap::from([(1, 2)]));
    }

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

    #[test]
    fn open_without_nvml_points_at_the_mock_backend() {
        match NvmlBackend::open() {
            Ok(backend) => assert!(backend.inventory().is_ok()),
            Err(error) => {
                assert!(matches!(error, BackendError::NvmlInit { .. }), "{error:?}");
                assert!(error.to_string().contains("--backend mock"), "{error}");
            }
        }
    }
}
