//! The NVML backend (nvml-wrapper; libnvidia-ml is loaded at run time).
//!
//! The library is `dlopen`ed by [`NvmlBackend::open`], never linked, so the same binary starts on
//! nodes without a driver and can then be told `--backend mock`.
//!
//! One concern per module, each with the pure helpers it needs unit-tested next to it (CI has no
//! GPU): `enumerate` (the inventory: GPUs, MIG devices, bus ids, versions), `topology` (NVLink
//! peers), `telemetry` (sampling, with `fields` for NVML field values, `gpm` for profiling,
//! `history` for what is kept between cycles and `raw` for the calls nvml-wrapper lacks),
//! `events` (the XID/ECC watcher and re-enumeration). This file holds the backend itself:
//! loading NVML and wiring the [`GpuBackend`] calls to those modules.

mod enumerate;
mod events;
mod fields;
mod gpm;
mod history;
mod raw;
mod telemetry;
mod topology;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use tracing::{debug, info, warn};

use super::backend::{BackendError, BackendEvents, GpuBackend};
use super::{Inventory, Telemetry};
use enumerate::{cuda_version_string, GpuProbe};
use telemetry::Sampling;
use topology::with_nvlink_peers;

/// Library names tried in order. Nodes normally ship only the versioned soname (the unversioned
/// `libnvidia-ml.so` comes with the dev package), so it goes first; the second is the fallback
/// for hosts that only have the dev symlink.
const NVML_LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

const MIB: u64 = 1024 * 1024;

/// GPUs as NVML reports them.
///
/// NVML is thread-safe; the backend is shared between the agent's blocking threads and the
/// `nvml-events` watcher thread.
pub struct NvmlBackend {
    nvml: Nvml,
    state: Mutex<State>,
    /// What telemetry keeps between collection cycles (GPM samples, NVLink counters). Held for
    /// a whole pass, so that two passes never interleave their GPM samples.
    sampling: Mutex<Sampling>,
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
            sampling: Mutex::new(Sampling::new()),
        })
    }

    /// The shared state; a panic elsewhere must not take the backend down with it.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sampling(&self) -> MutexGuard<'_, Sampling> {
        self.sampling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for NvmlBackend {
    /// Free the GPM samples kept between cycles while the library they came from is loaded.
    fn drop(&mut self) {
        self.sampling().gpm.release(&self.nvml);
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
        let mut sampling = self.sampling();
        for gpu in &inventory.gpus {
            if !self.sample_gpu(gpu, was_lost.contains(&gpu.uuid), &mut sampling, &mut out) {
                lost.insert(gpu.uuid.clone());
            }
        }
        sampling.end_cycle(&self.nvml, &out);
        drop(sampling);
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

#[cfg(test)]
mod tests {
    use super::*;

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
