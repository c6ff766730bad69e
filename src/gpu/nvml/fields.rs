//! NVML field values (`nvmlDeviceGetFieldValues`): which ones a GPU's sample reads, and how each
//! lands in [`DeviceTelemetry`]. One batched call per GPU per interval reads them all; the
//! mapping is pure so that it is tested without a GPU.
//!
//! The ids are the ones DCGM reads for the same dcgm-exporter fields (`MEMORY_TEMP`,
//! `TOTAL_ENERGY_CONSUMPTION`, `PCIE_REPLAY_COUNTER`, `ECC_SBE/DBE_VOL_TOTAL`, the remapped-rows
//! fields, and `NVLINK_BANDWIDTH_TOTAL` from the NVLink data throughput counters of all links).

use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings::field_id::{
    NVML_FI_DEV_ECC_DBE_VOL_TOTAL, NVML_FI_DEV_ECC_SBE_VOL_TOTAL, NVML_FI_DEV_MEMORY_TEMP,
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
    NVML_FI_DEV_PCIE_REPLAY_COUNTER, NVML_FI_DEV_REMAPPED_COR, NVML_FI_DEV_REMAPPED_FAILURE,
    NVML_FI_DEV_REMAPPED_UNC, NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
};

use crate::gpu::DeviceTelemetry;

/// `scopeId` that asks an NVLink field for the sum over all links of the GPU (what DCGM passes
/// for `NVLINK_BANDWIDTH_TOTAL`).
pub(super) const ALL_LINKS: u32 = u32::MAX;

/// One field to read: NVML field id and scope (link index for NVLink fields, else 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FieldRequest {
    pub id: u32,
    pub scope: u32,
}

/// The fields a GPU sample reads, in one call.
///
/// All ids are below 251, so nvml-wrapper's renumbering of ids 251-273 between driver branches
/// (CUDA 13.0 Update 1) does not concern them and they are passed to NVML as they are.
pub(super) const GPU_FIELDS: [FieldRequest; 10] = [
    field(NVML_FI_DEV_MEMORY_TEMP),
    field(NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION),
    field(NVML_FI_DEV_PCIE_REPLAY_COUNTER),
    field(NVML_FI_DEV_ECC_SBE_VOL_TOTAL),
    field(NVML_FI_DEV_ECC_DBE_VOL_TOTAL),
    field(NVML_FI_DEV_REMAPPED_COR),
    field(NVML_FI_DEV_REMAPPED_UNC),
    field(NVML_FI_DEV_REMAPPED_FAILURE),
    FieldRequest {
        id: NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
        scope: ALL_LINKS,
    },
    FieldRequest {
        id: NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        scope: ALL_LINKS,
    },
];

const fn field(id: u32) -> FieldRequest {
    FieldRequest { id, scope: 0 }
}

/// A field value as NVML typed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FieldValue {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl FieldValue {
    /// The value as a count; `None` when it is negative or not a finite number.
    fn count(self) -> Option<u64> {
        match self {
            FieldValue::Unsigned(v) => Some(v),
            FieldValue::Signed(v) => u64::try_from(v).ok(),
            FieldValue::Float(v) if v.is_finite() && v >= 0.0 => Some(v as u64),
            FieldValue::Float(_) => None,
        }
    }
}

/// What NVML answered for one requested field.
#[derive(Debug)]
pub(super) struct FieldReading {
    pub id: u32,
    /// NVML's CPU timestamp of the value, µs since the epoch (0 when it gave none).
    pub timestamp_us: i64,
    pub value: Result<FieldValue, NvmlError>,
}

/// Above this NVML's memory temperature is not a temperature (DCGM discards it the same way).
const MAX_MEMORY_TEMPERATURE_C: u64 = 200;

/// NVLink data counters are in KiB.
const KIB: u64 = 1024;

/// The sum of the NVLink data counters (TX + RX, all links) when NVML gave both, in KiB, with
/// the time it was read: the input of [`nvlink_dcgm_rate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct NvlinkCount {
    pub kib: u64,
    pub timestamp_us: i64,
}

/// Put the readings into `out`. Fields that failed (NotSupported on this GPU, ECC disabled, no
/// NVLink) stay `None`. Returns the NVLink counter for the rate, when NVML gave both directions.
pub(super) fn apply_fields(
    readings: &[FieldReading],
    out: &mut DeviceTelemetry,
) -> Option<NvlinkCount> {
    let mut nvlink_tx = None;
    let mut nvlink_rx = None;
    for reading in readings {
        let Ok(value) = reading.value else { continue };
        let Some(count) = value.count() else { continue };
        match reading.id {
            NVML_FI_DEV_MEMORY_TEMP => {
                out.memory_temperature_celsius =
                    (count <= MAX_MEMORY_TEMPERATURE_C).then_some(count as f64)
            }
            NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION => out.energy_millijoules = Some(count),
            NVML_FI_DEV_PCIE_REPLAY_COUNTER => out.pcie_replay_count = Some(count),
            NVML_FI_DEV_ECC_SBE_VOL_TOTAL => out.ecc_corrected_total = Some(count),
            NVML_FI_DEV_ECC_DBE_VOL_TOTAL => out.ecc_uncorrected_total = Some(count),
            NVML_FI_DEV_REMAPPED_COR => out.remapped_rows_correctable = Some(count),
            NVML_FI_DEV_REMAPPED_UNC => out.remapped_rows_uncorrectable = Some(count),
            NVML_FI_DEV_REMAPPED_FAILURE => out.row_remap_failure = Some(count != 0),
            NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX => {
                nvlink_tx = Some((count, reading.timestamp_us))
            }
            NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX => {
                nvlink_rx = Some((count, reading.timestamp_us))
            }
            _ => {}
        }
    }
    let ((tx, tx_at), (rx, rx_at)) = (nvlink_tx?, nvlink_rx?);
    let kib = tx.saturating_add(rx);
    out.nvlink_bytes_total = Some(kib.saturating_mul(KIB));
    Some(NvlinkCount {
        kib,
        timestamp_us: tx_at.max(rx_at),
    })
}

/// dcgm-exporter's `DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`, computed as DCGM computes it: the
/// NVLink data counters' growth between two reads, KiB per second divided by 1000 (DCGM calls
/// the unit MB/s). `None` on the first read, when the counter went back (driver reload) or when
/// no time passed.
pub(super) fn nvlink_dcgm_rate(previous: Option<NvlinkCount>, now: NvlinkCount) -> Option<f64> {
    let previous = previous?;
    let grown = now.kib.checked_sub(previous.kib)?;
    let seconds = (now.timestamp_us - previous.timestamp_us) as f64 / 1e6;
    (seconds > 0.0).then(|| grown as f64 / seconds / 1000.0)
}

/// `DCGM_FI_DEV_VGPU_LICENSE_STATUS` from `nvmlDeviceGetGridLicensableFeatures`, as DCGM reads
/// it: 0 when the GPU has no vGPU licensing, else 1 when the vGPU feature's state is licensed
/// and 0 when not; `None` when the vGPU feature is not listed.
pub(super) fn vgpu_license_status(supported: bool, features: &[LicensableFeature]) -> Option<u64> {
    if !supported {
        return Some(0);
    }
    features
        .iter()
        .find(|f| f.code == VGPU_FEATURE_CODE)
        .map(|f| u64::from(f.state > 0))
}

/// `NVML_GRID_LICENSE_FEATURE_CODE_VGPU`.
pub(super) const VGPU_FEATURE_CODE: u32 =
    nvml_wrapper_sys::bindings::nvmlGridLicenseFeatureCode_t_NVML_GRID_LICENSE_FEATURE_CODE_VGPU;

/// One entry of `nvmlGridLicensableFeatures_t`: feature code and state (0 = unlicensed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LicensableFeature {
    pub code: u32,
    pub state: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(id: u32, value: FieldValue) -> FieldReading {
        FieldReading {
            id,
            timestamp_us: 1_000_000,
            value: Ok(value),
        }
    }

    fn failed(id: u32, error: NvmlError) -> FieldReading {
        FieldReading {
            id,
            timestamp_us: 0,
            value: Err(error),
        }
    }

    #[test]
    fn every_field_lands_in_its_telemetry_field() {
        let readings = [
            ok(NVML_FI_DEV_MEMORY_TEMP, FieldValue::Unsigned(41)),
            ok(
                NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
                FieldValue::Unsigned(123_456_789),
            ),
            ok(NVML_FI_DEV_PCIE_REPLAY_COUNTER, FieldValue::Unsigned(3)),
            ok(NVML_FI_DEV_ECC_SBE_VOL_TOTAL, FieldValue::Unsigned(7)),
            ok(NVML_FI_DEV_ECC_DBE_VOL_TOTAL, FieldValue::Unsigned(1)),
            ok(NVML_FI_DEV_REMAPPED_COR, FieldValue::Unsigned(2)),
            ok(NVML_FI_DEV_REMAPPED_UNC, FieldValue::Signed(5)),
            ok(NVML_FI_DEV_REMAPPED_FAILURE, FieldValue::Unsigned(1)),
            ok(
                NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                FieldValue::Unsigned(1000),
            ),
            ok(
                NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
                FieldValue::Unsigned(24),
            ),
        ];
        let mut t = DeviceTelemetry::default();
        let nvlink = apply_fields(&readings, &mut t);
        assert_eq!(t.memory_temperature_celsius, Some(41.0));
        assert_eq!(t.energy_millijoules, Some(123_456_789));
        assert_eq!(t.pcie_replay_count, Some(3));
        assert_eq!(t.ecc_corrected_total, Some(7));
        assert_eq!(t.ecc_uncorrected_total, Some(1));
        assert_eq!(t.remapped_rows_correctable, Some(2));
        assert_eq!(t.remapped_rows_uncorrectable, Some(5));
        assert_eq!(t.row_remap_failure, Some(true));
        // KiB → bytes, TX + RX.
        assert_eq!(t.nvlink_bytes_total, Some(1024 * 1024));
        assert_eq!(
            nvlink,
            Some(NvlinkCount {
                kib: 1024,
                timestamp_us: 1_000_000
            })
        );
    }

    #[test]
    fn every_requested_field_is_mapped_and_none_is_renumbered() {
        // A field requested but not mapped would be read every interval for nothing.
        for request in GPU_FIELDS {
            let mut t = DeviceTelemetry::default();
            let other = if request.id == NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX {
                NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
            } else {
                NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
            };
            let readings = [
                ok(request.id, FieldValue::Unsigned(1)),
                ok(other, FieldValue::Unsigned(1)),
            ];
            apply_fields(&readings, &mut t);
            let mut only_nvlink = DeviceTelemetry::default();
            apply_fields(&readings[1..], &mut only_nvlink);
            assert_ne!(t, only_nvlink, "field {} is not mapped", request.id);
            assert!(
                request.id < 251,
                "field {} is renumbered by drivers",
                request.id
            );
        }
    }

    #[test]
    fn unsupported_fields_stay_none() {
        let readings = [
            failed(NVML_FI_DEV_MEMORY_TEMP, NvmlError::NotSupported),
            failed(NVML_FI_DEV_ECC_SBE_VOL_TOTAL, NvmlError::NotSupported),
            ok(NVML_FI_DEV_PCIE_REPLAY_COUNTER, FieldValue::Unsigned(0)),
            // One NVLink direction only: no total.
            ok(
                NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                FieldValue::Unsigned(5),
            ),
            failed(
                NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
                NvmlError::NotSupported,
            ),
        ];
        let mut t = DeviceTelemetry::default();
        assert_eq!(apply_fields(&readings, &mut t), None);
        assert_eq!(
            t,
            DeviceTelemetry {
                pcie_replay_count: Some(0),
                ..DeviceTelemetry::default()
            }
        );
    }

    #[test]
    fn nonsense_values_are_dropped() {
        let readings = [
            ok(NVML_FI_DEV_MEMORY_TEMP, FieldValue::Unsigned(0xFFFF_FFFF)),
            ok(NVML_FI_DEV_ECC_SBE_VOL_TOTAL, FieldValue::Signed(-1)),
            ok(NVML_FI_DEV_ECC_DBE_VOL_TOTAL, FieldValue::Float(f64::NAN)),
            ok(NVML_FI_DEV_REMAPPED_FAILURE, FieldValue::Unsigned(0)),
        ];
        let mut t = DeviceTelemetry::default();
        apply_fields(&readings, &mut t);
        assert_eq!(t.memory_temperature_celsius, None);
        assert_eq!(t.ecc_corrected_total, None);
        assert_eq!(t.ecc_uncorrected_total, None);
        assert_eq!(t.row_remap_failure, Some(false));
    }

    #[test]
    fn nvlink_rate_is_dcgms_kib_per_second_over_1000() {
        let at = |kib, s: i64| NvlinkCount {
            kib,
            timestamp_us: s * 1_000_000,
        };
        assert_eq!(nvlink_dcgm_rate(None, at(10, 1)), None);
        // 2 000 000 KiB in 2 s → 1 000 000 KiB/s → 1000 "MB/s".
        assert_eq!(
            nvlink_dcgm_rate(Some(at(500, 10)), at(2_000_500, 12)),
            Some(1000.0)
        );
        assert_eq!(nvlink_dcgm_rate(Some(at(500, 10)), at(500, 20)), Some(0.0));
        // Counter reset, no time passed.
        assert_eq!(nvlink_dcgm_rate(Some(at(500, 10)), at(100, 20)), None);
        assert_eq!(nvlink_dcgm_rate(Some(at(500, 10)), at(600, 10)), None);
    }

    #[test]
    fn vgpu_license_status_is_read_as_dcgm_reads_it() {
        let vgpu = |state| LicensableFeature {
            code: VGPU_FEATURE_CODE,
            state,
        };
        let other = LicensableFeature {
            code: VGPU_FEATURE_CODE + 1,
            state: 1,
        };
        assert_eq!(vgpu_license_status(false, &[]), Some(0));
        assert_eq!(vgpu_license_status(true, &[other, vgpu(1)]), Some(1));
        assert_eq!(vgpu_license_status(true, &[vgpu(0)]), Some(0));
        assert_eq!(vgpu_license_status(true, &[other]), None);
    }
}
