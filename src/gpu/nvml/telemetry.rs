//! Sampling: what each GPU and MIG device measures now, into [`DeviceTelemetry`].
//!
//! A GPU is read with the calls DCGM uses for the same dcgm-exporter fields: utilization,
//! encoder/decoder utilization, memory info v2, temperature, power, clocks, clocks-event
//! reasons, vGPU licensing, one batch of field values (`fields`), and GPM profiling (`gpm`).
//! A MIG device is read as dcgm-exporter reports a GPU instance: its framebuffer (memory info
//! v2 of the MIG device) and its GPU instance's GPM profiling; utilization, temperature, power
//! and clocks belong to the parent GPU and stay `None`.
//!
//! A call that fails leaves its field `None` (logged once per device and call); GpuLost marks
//! the GPU lost for the pass, as the inventory does.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::MemoryInfo;
use nvml_wrapper::Device;
use tracing::{debug, warn};

use super::fields::{
    apply_fields, nvlink_dcgm_rate, vgpu_license_status, FieldReading, NvlinkCount, GPU_FIELDS,
};
use super::gpm::Gpm;
use super::history::SampleHistory;
use super::{raw, NvmlBackend, MIB};
use crate::gpu::{DeviceTelemetry, Gpu, MigDevice, Telemetry};

/// What sampling keeps from one collection cycle to the next.
pub(super) struct Sampling {
    /// GPM samples (the start of each device's next interval) and GPM support per GPU.
    pub gpm: Gpm,
    /// The NVLink data counter of each GPU at the last cycle, for the DCGM bandwidth rate.
    nvlink: SampleHistory<String, NvlinkCount>,
    /// (device UUID, NVML call) failures already logged, so that an unsupported value is
    /// reported once, not every interval.
    reported: BTreeSet<(String, &'static str)>,
}

impl Sampling {
    pub(super) fn new() -> Self {
        Self {
            gpm: Gpm::new(),
            nvlink: SampleHistory::new(),
            reported: BTreeSet::new(),
        }
    }

    /// End a cycle over `sampled`: forget the state of devices that were not sampled in it.
    pub(super) fn end_cycle(&mut self, nvml: &nvml_wrapper::Nvml, sampled: &Telemetry) {
        self.gpm.end_cycle(nvml);
        self.nvlink.end_cycle();
        self.reported.retain(|(uuid, _)| sampled.contains_key(uuid));
    }

    /// Log `sampler`'s failures for `device` that were not logged before.
    fn report(&mut self, device: &str, sampler: Sampler) {
        for (call, error) in sampler.failures {
            if !self.reported.insert((device.to_string(), call)) {
                continue;
            }
            match error {
                NvmlError::NotSupported => {
                    debug!(device, call, "not supported; its series is omitted")
                }
                error => {
                    warn!(device, call, error = %error, "NVML read failed; its series is omitted until it succeeds")
                }
            }
        }
    }
}

impl NvmlBackend {
    /// Sample one GPU and its MIG devices into `out`; returns false when the GPU is lost.
    /// `was_lost` only lowers the log level, so that a lost GPU does not warn on every pass.
    pub(super) fn sample_gpu(
        &self,
        gpu: &Gpu,
        was_lost: bool,
        sampling: &mut Sampling,
        out: &mut Telemetry,
    ) -> bool {
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
        let mut sampler = Sampler::default();
        let (mut sample, nvlink) = sample_whole_gpu(&device, &mut sampler);
        if sampler.lost {
            if !was_lost {
                warn!(gpu = %gpu.uuid, "GPU lost while sampling telemetry");
            }
            return false;
        }
        sampling.report(&gpu.uuid, sampler);
        let previous = sampling.nvlink.take(&gpu.uuid);
        if let Some(now) = nvlink {
            sample.nvlink_bandwidth_mb_per_second = nvlink_dcgm_rate(previous, now);
            sampling.nvlink.keep(gpu.uuid.clone(), now);
        }
        let gpm = sampling.gpm.supported(&device, gpu);
        if gpm {
            sample.profiling = sampling.gpm.gpu(&self.nvml, &device, gpu);
        }
        out.insert(gpu.uuid.clone(), sample);
        for mig in &gpu.mig_devices {
            let Some(handle) = find_mig_handle(&device, mig) else {
                debug!(gpu = %gpu.uuid, mig = %mig.uuid, "MIG device gone; no telemetry");
                continue;
            };
            let mut sampler = Sampler::default();
            let mut sample = sample_mig(&handle, &mut sampler);
            sampling.report(&mig.uuid, sampler);
            if gpm {
                sample.profiling = first_of_instance(gpu, mig)
                    .map(|first| out.get(&first.uuid).and_then(|t| t.profiling.clone()))
                    .unwrap_or_else(|| {
                        let gi = mig.gpu_instance_id;
                        sampling
                            .gpm
                            .instance(&self.nvml, &device, gpu, gi, &mig.uuid)
                    });
            }
            out.insert(mig.uuid.clone(), sample);
        }
        true
    }
}

/// The MIG device sampled before `mig` in the same GPU instance, if any: GPM samples a GPU
/// instance, so its compute instances share one profiling, sampled once (at its first device).
fn first_of_instance<'g>(gpu: &'g Gpu, mig: &MigDevice) -> Option<&'g MigDevice> {
    gpu.mig_devices
        .iter()
        .take_while(|m| m.uuid != mig.uuid)
        .find(|m| m.gpu_instance_id == mig.gpu_instance_id)
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

/// Collects readings: every failure leaves its field `None` and is noted for the log; GpuLost
/// is remembered.
#[derive(Default)]
struct Sampler {
    lost: bool,
    failures: Vec<(&'static str, NvmlError)>,
}

impl Sampler {
    fn take<T>(&mut self, call: &'static str, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(NvmlError::GpuLost) => {
                self.lost = true;
                None
            }
            Err(error) => {
                self.failures.push((call, error));
                None
            }
        }
    }
}

/// Sample a whole GPU; also returns its NVLink data counter, when it has one.
fn sample_whole_gpu(
    device: &Device<'_>,
    s: &mut Sampler,
) -> (DeviceTelemetry, Option<NvlinkCount>) {
    let memory = s.take("nvmlDeviceGetMemoryInfo_v2", device.memory_info());
    let utilization = s.take("nvmlDeviceGetUtilizationRates", device.utilization_rates());
    let licensing = s.take(
        "nvmlDeviceGetGridLicensableFeatures_v4",
        raw::licensable_features(device),
    );
    let mut sample = DeviceTelemetry {
        utilization_percent: utilization.as_ref().map(|u| f64::from(u.gpu)),
        memory_copy_utilization_percent: utilization.as_ref().map(|u| f64::from(u.memory)),
        encoder_utilization_percent: s
            .take(
                "nvmlDeviceGetEncoderUtilization",
                device.encoder_utilization(),
            )
            .map(|u| f64::from(u.utilization)),
        decoder_utilization_percent: s
            .take(
                "nvmlDeviceGetDecoderUtilization",
                device.decoder_utilization(),
            )
            .map(|u| f64::from(u.utilization)),
        temperature_celsius: s
            .take(
                "nvmlDeviceGetTemperature",
                device.temperature(TemperatureSensor::Gpu),
            )
            .map(f64::from),
        power_watts: s
            .take("nvmlDeviceGetPowerUsage", device.power_usage())
            .map(|mw| f64::from(mw) / 1000.0),
        sm_clock_mhz: s
            .take("nvmlDeviceGetClockInfo(SM)", device.clock_info(Clock::SM))
            .map(f64::from),
        memory_clock_mhz: s
            .take(
                "nvmlDeviceGetClockInfo(MEM)",
                device.clock_info(Clock::Memory),
            )
            .map(f64::from),
        clock_throttle_reasons: s.take(
            "nvmlDeviceGetCurrentClocksEventReasons",
            raw::clocks_event_reasons(device),
        ),
        vgpu_license_status: licensing
            .and_then(|(supported, features)| vgpu_license_status(supported, &features)),
        ..framebuffer(memory.as_ref())
    };
    let readings = read_fields(device, s);
    let nvlink = apply_fields(&readings, &mut sample).map(|mut count| {
        if count.timestamp_us == 0 {
            count.timestamp_us = now_us();
        }
        count
    });
    (sample, nvlink)
}

/// Sample a MIG device: its framebuffer only (see the module doc).
fn sample_mig(device: &Device<'_>, s: &mut Sampler) -> DeviceTelemetry {
    let memory = s.take("nvmlDeviceGetMemoryInfo_v2", device.memory_info());
    framebuffer(memory.as_ref())
}

/// The framebuffer fields from memory info v2, in whole MiB (as DCGM's `FB_*`).
fn framebuffer(memory: Option<&MemoryInfo>) -> DeviceTelemetry {
    DeviceTelemetry {
        memory_used_mib: memory.map(|m| m.used / MIB),
        memory_total_mib: memory.map(|m| m.total / MIB),
        memory_free_mib: memory.map(|m| m.free / MIB),
        memory_reserved_mib: memory.map(|m| m.reserved / MIB),
        ..DeviceTelemetry::default()
    }
}

/// The GPU's field values in one call. Should the batch fail as a whole (an old driver refusing
/// one id), each field is read on its own so that one field cannot hide the others.
fn read_fields(device: &Device<'_>, s: &mut Sampler) -> Vec<FieldReading> {
    let readings = match raw::field_values(device, &GPU_FIELDS) {
        Ok(readings) => readings,
        Err(NvmlError::GpuLost) => {
            s.lost = true;
            return Vec::new();
        }
        Err(error) => {
            s.failures.push(("nvmlDeviceGetFieldValues", error));
            GPU_FIELDS
                .iter()
                .filter_map(|f| raw::field_values(device, std::slice::from_ref(f)).ok())
                .flatten()
                .collect()
        }
    };
    if readings
        .iter()
        .any(|r| matches!(r.value, Err(NvmlError::GpuLost)))
    {
        s.lost = true;
    }
    readings
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framebuffer_is_memory_info_v2_in_whole_mib() {
        let info = MemoryInfo {
            free: 140_000 * MIB + 512 * 1024,
            reserved: 500 * MIB,
            total: 143_771 * MIB,
            used: 3_271 * MIB,
            version: 2,
        };
        let t = framebuffer(Some(&info));
        assert_eq!(t.memory_total_mib, Some(143_771));
        assert_eq!(t.memory_used_mib, Some(3_271));
        assert_eq!(t.memory_free_mib, Some(140_000));
        assert_eq!(t.memory_reserved_mib, Some(500));
        assert_eq!(t.utilization_percent, None);
        assert_eq!(framebuffer(None), DeviceTelemetry::default());
    }

    #[test]
    fn compute_instances_of_one_gpu_instance_share_its_first_device() {
        let mig = |uuid: &str, gi: u32, index: u32| MigDevice {
            uuid: uuid.into(),
            profile: "1g.18gb".into(),
            gpu_instance_id: gi,
            compute_instance_id: index,
            memory_mib: 16_384,
            index,
        };
        let gpu = Gpu {
            index: 0,
            uuid: "GPU-0".into(),
            model: "NVIDIA H200".into(),
            memory_mib: 143_771,
            numa_node: None,
            pci_bus_id: None,
            minor_number: 0,
            mig_enabled: true,
            mig_devices: vec![mig("MIG-a", 3, 0), mig("MIG-b", 5, 1), mig("MIG-c", 3, 2)],
            nvlinks: Default::default(),
        };
        let [a, b, c] = [0, 1, 2].map(|i| &gpu.mig_devices[i]);
        assert_eq!(first_of_instance(&gpu, a), None);
        assert_eq!(first_of_instance(&gpu, b), None);
        assert_eq!(
            first_of_instance(&gpu, c).map(|m| m.uuid.as_str()),
            Some("MIG-a")
        );
    }

    #[test]
    fn failures_are_noted_and_gpu_lost_is_remembered() {
        let mut s = Sampler::default();
        assert_eq!(s.take("a", Ok(1)), Some(1));
        assert_eq!(s.take::<u32>("b", Err(NvmlError::NotSupported)), None);
        assert!(!s.lost);
        assert_eq!(s.take::<u32>("c", Err(NvmlError::GpuLost)), None);
        assert!(s.lost);
        assert_eq!(s.failures.len(), 1);
        assert_eq!(s.failures[0].0, "b");
    }
}
