//! The config file as written: NVIDIA's `version: v1` schema (every field it defines is accepted)
//! plus our extensions. Values whose shape varies (`devices`, `deviceListStrategy`, durations)
//! are kept raw here and checked in `validate`, so that every error can name its field path and
//! all of them are reported at once.
//!
//! These structs only ever see a document that `schema` has already checked and cleaned, so
//! deserializing it does not fail on the first problem; `deny_unknown_fields` stays as a safety
//! net. A list element that `schema` found unusable is `null` here and reads as `None`.
//!
//! Fields NVIDIA's schema defines but gpu-agent has no use for (`gfd`, `useNodeFeatureAPI`, …)
//! are parsed so that an NVIDIA config is accepted unchanged, and otherwise ignored: those, and
//! only those, carry `#[allow(dead_code)]`.

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    pub version: Option<String>,
    #[serde(default)]
    pub flags: Flags,
    #[serde(default)]
    pub resources: NamedResources,
    #[serde(default)]
    pub sharing: Sharing,
    #[serde(default)]
    pub imex: Imex,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub dra: Dra,
}

/// `flags:` (NVIDIA's command-line flags, settable from the file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Flags {
    pub mig_strategy: Option<String>,
    pub fail_on_init_error: Option<bool>,
    pub mps_root: Option<String>,
    pub nvidia_driver_root: Option<String>,
    pub nvidia_dev_root: Option<String>,
    pub gdrcopy_enabled: Option<bool>,
    pub gds_enabled: Option<bool>,
    pub mofed_enabled: Option<bool>,
    #[allow(dead_code)]
    #[serde(rename = "useNodeFeatureAPI")]
    pub use_node_feature_api: Option<bool>,
    pub device_discovery_strategy: Option<String>,
    pub plugin: Option<PluginFlags>,
    #[allow(dead_code)]
    pub gfd: Option<Value>,
}

/// `flags.plugin:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginFlags {
    pub pass_device_specs: Option<bool>,
    pub device_list_strategy: Option<Value>,
    #[serde(rename = "deviceIDStrategy")]
    pub device_id_strategy: Option<String>,
    pub cdi_annotation_prefix: Option<String>,
    #[serde(rename = "nvidiaCTKPath")]
    pub nvidia_ctk_path: Option<String>,
    pub container_driver_root: Option<String>,
    pub shared_devices_allocation_policy: Option<String>,
}

/// `imex:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Imex {
    #[serde(rename = "channelIDs")]
    pub channel_ids: Option<Vec<i64>>,
    pub required: Option<bool>,
}

/// `resources:` (NVIDIA's pattern-based renaming of whole GPUs and MIG devices).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedResources {
    /// `None`: an element `schema` already reported as unusable.
    #[serde(default)]
    pub gpus: Vec<Option<NamedResource>>,
    #[serde(default)]
    pub mig: Vec<Option<NamedResource>>,
}

/// `resources.gpus[]` / `resources.mig[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedResource {
    /// Checked for presence only: NVIDIA ignores the section, and so does gpu-agent.
    #[allow(dead_code)]
    pub pattern: String,
    pub name: String,
}

/// `sharing:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sharing {
    pub time_slicing: Option<TimeSlicing>,
    pub mps: Option<TimeSlicing>,
    #[serde(default)]
    pub vgpu: Vgpu,
    /// Extension: `spread` (default) or `packed`.
    pub placement: Option<String>,
}

/// `sharing.timeSlicing:` (and the same shape for `sharing.mps:`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeSlicing {
    #[serde(default)]
    pub rename_by_default: Option<bool>,
    #[serde(default)]
    pub fail_requests_greater_than_one: Option<bool>,
    /// `None`: an element `schema` already reported as unusable (kept so indexes stay right).
    #[serde(default)]
    pub resources: Vec<Option<ReplicatedResource>>,
}

/// `sharing.timeSlicing.resources[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatedResource {
    pub name: String,
    pub rename: Option<String>,
    pub devices: Option<Value>,
    pub replicas: i64,
}

/// `sharing.vgpu:` (extension).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vgpu {
    /// `None`: an element `schema` already reported as unusable.
    #[serde(default)]
    pub resources: Vec<Option<VgpuResource>>,
}

/// `sharing.vgpu.resources[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VgpuResource {
    pub name: String,
    pub rename: Option<String>,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: i64,
    pub compute_percent: Option<i64>,
    pub devices: Option<Value>,
}

/// `health:` (extension).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Health {
    pub ignored_xids: Option<Vec<i64>>,
    pub recover_after: Option<Value>,
}

/// `dra:` (extension): the DRA driver, as `--dra`, `--dra-driver-name` and `--dra-devices`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dra {
    pub enabled: Option<bool>,
    pub driver_name: Option<String>,
    pub devices: Option<Value>,
}

/// `strategy:` (extension).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Strategy {
    #[serde(rename = "trainingExclusiveAboveGiB")]
    pub training_exclusive_above_gib: Option<f64>,
    #[serde(rename = "inferenceSharedBelowGiB")]
    pub inference_shared_below_gib: Option<f64>,
    #[serde(rename = "migRangeGiB")]
    pub mig_range_gib: Option<Vec<f64>>,
}

/// A YAML syntax or shape error, with the field path serde_yaml_ng puts first.
pub fn yaml_error(error: &serde_yaml_ng::Error) -> ConfigError {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') && !path.is_empty() => {
            ConfigError::new(path, message)
        }
        _ => ConfigError::new("config", text),
    }
}
