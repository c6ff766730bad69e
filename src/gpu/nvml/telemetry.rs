//! Sampling: what each GPU and MIG device measures now, into [`DeviceTelemetry`].

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Device;
use tracing::{debug, warn};

use super::{NvmlBackend, MIB};
use crate::gpu::{DeviceTelemetry, Gpu, MigDevice, Telemetry};

impl NvmlBackend {
    /// Sample one GPU and its MIG devices into `out`; returns false when the GPU is lost.
    /// `was_lost` only lowers the log level, so that a lost GPU does not warn on every pass.
    pub(super) fn sample_gpu(&self, gpu: &Gpu, was_lost: bool, out: &mut Telemetry) -> bool {
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
