//! NVML calls that nvml-wrapper 0.13 does not offer in the form telemetry needs, made directly
//! on the symbols of the library the wrapper loaded:
//!
//! - `nvmlDeviceGetFieldValues` with a `scopeId` (the wrapper leaves it 0, so an NVLink field
//!   reads link 0 only, never the all-links total);
//! - `nvmlDeviceGetCurrentClocksEventReasons` (the wrapper calls the deprecated throttle-reasons
//!   name and drops the bits it has no flag for);
//! - `nvmlDeviceGetGridLicensableFeatures_v4` (not wrapped).
//!
//! Each returns plain data; the mapping into telemetry is in `fields`.

use std::mem;

use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings::{
    nvmlFieldValue_t, nvmlGridLicensableFeatures_t,
    nvmlValueType_enum_NVML_VALUE_TYPE_DOUBLE as DOUBLE,
    nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_INT as SIGNED_INT,
    nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_LONG_LONG as SIGNED_LONG_LONG,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT as UNSIGNED_INT,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG as UNSIGNED_LONG,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG as UNSIGNED_LONG_LONG,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_SHORT as UNSIGNED_SHORT,
};

use super::fields::{FieldReading, FieldRequest, FieldValue, LicensableFeature};

/// Read `requests` in one `nvmlDeviceGetFieldValues` call. The outer error is the call's (e.g.
/// GpuLost); each reading carries its own field's result.
pub(super) fn field_values(
    device: &Device<'_>,
    requests: &[FieldRequest],
) -> Result<Vec<FieldReading>, NvmlError> {
    let sym = nvml_sym(device.nvml().lib().nvmlDeviceGetFieldValues.as_ref())?;
    let mut values: Vec<nvmlFieldValue_t> = requests
        .iter()
        .map(|request| {
            // SAFETY: nvmlFieldValue_t is plain C data (integers and a union of numbers), for
            // which all-zero bytes are a valid value.
            let mut value: nvmlFieldValue_t = unsafe { mem::zeroed() };
            value.fieldId = request.id;
            value.scopeId = request.scope;
            value
        })
        .collect();
    let count = i32::try_from(values.len()).map_err(|_| NvmlError::InvalidArg)?;
    // SAFETY: `sym` has the C signature of nvmlDeviceGetFieldValues; the device handle is live
    // for the borrow of `device`, and `values` holds `count` initialised entries NVML fills in.
    nvml_try(unsafe { sym(device.handle(), count, values.as_mut_ptr()) })?;
    Ok(values.iter().map(reading).collect())
}

/// One filled-in `nvmlFieldValue_t` as plain data.
fn reading(value: &nvmlFieldValue_t) -> FieldReading {
    FieldReading {
        id: value.fieldId,
        timestamp_us: value.timestamp,
        value: nvml_try(value.nvmlReturn).and_then(|()| decode(value)),
    }
}

/// The union member `valueType` names.
// `c_ulong` is u64 here but u32 on 32-bit targets, hence a conversion that is a no-op here.
#[allow(clippy::useless_conversion)]
fn decode(value: &nvmlFieldValue_t) -> Result<FieldValue, NvmlError> {
    let v = &value.value;
    // SAFETY: each arm reads the union member that NVML's `valueType` says it wrote; all members
    // are plain numbers, so even a mismatch could only give a wrong number, never UB-prone data.
    let decoded = unsafe {
        match value.valueType {
            DOUBLE => FieldValue::Float(v.dVal),
            UNSIGNED_INT => FieldValue::Unsigned(v.uiVal.into()),
            UNSIGNED_LONG => FieldValue::Unsigned(u64::from(v.ulVal)),
            UNSIGNED_LONG_LONG => FieldValue::Unsigned(v.ullVal),
            SIGNED_LONG_LONG => FieldValue::Signed(v.sllVal),
            SIGNED_INT => FieldValue::Signed(v.siVal.into()),
            UNSIGNED_SHORT => FieldValue::Unsigned(v.usVal.into()),
            other => return Err(NvmlError::UnexpectedVariant(other)),
        }
    };
    Ok(decoded)
}

/// `nvmlDeviceGetCurrentClocksEventReasons`: the full bitmask of why clocks are held down now.
/// Falls back to the wrapper's (deprecated-name) call on drivers without the new symbol.
pub(super) fn clocks_event_reasons(device: &Device<'_>) -> Result<u64, NvmlError> {
    let sym = match nvml_sym(
        device
            .nvml()
            .lib()
            .nvmlDeviceGetCurrentClocksEventReasons
            .as_ref(),
    ) {
        Ok(sym) => sym,
        Err(NvmlError::FailedToLoadSymbol(_)) => {
            return device.current_throttle_reasons().map(|r| r.bits())
        }
        Err(error) => return Err(error),
    };
    let mut reasons: u64 = 0;
    // SAFETY: `sym` has the C signature of nvmlDeviceGetCurrentClocksEventReasons; the handle is
    // live for the borrow of `device` and `reasons` is a valid out pointer.
    nvml_try(unsafe { sym(device.handle(), &mut reasons) })?;
    Ok(reasons)
}

/// `nvmlDeviceGetGridLicensableFeatures_v4`: whether the GPU has vGPU licensing at all, and each
/// licensable feature's code and state.
pub(super) fn licensable_features(
    device: &Device<'_>,
) -> Result<(bool, Vec<LicensableFeature>), NvmlError> {
    let sym = nvml_sym(
        device
            .nvml()
            .lib()
            .nvmlDeviceGetGridLicensableFeatures_v4
            .as_ref(),
    )?;
    // SAFETY: plain C data (integers, char arrays, a small struct of integers); zero is valid.
    let mut features: nvmlGridLicensableFeatures_t = unsafe { mem::zeroed() };
    // SAFETY: `sym` has the C signature of nvmlDeviceGetGridLicensableFeatures_v4; the handle is
    // live for the borrow of `device` and `features` is a valid out struct.
    nvml_try(unsafe { sym(device.handle(), &mut features) })?;
    let listed =
        (features.licensableFeaturesCount as usize).min(features.gridLicensableFeatures.len());
    let list = features.gridLicensableFeatures[..listed]
        .iter()
        .map(|f| LicensableFeature {
            code: f.featureCode,
            state: f.featureState,
        })
        .collect();
    Ok((features.isGridLicenseSupported != 0, list))
}
