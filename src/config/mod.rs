//! The sharing / plugin config (SPEC.md section 3): NVIDIA's `version: v1` schema plus our
//! `sharing.vgpu`, `health` and `strategy` extensions.
//!
//! [`parse`] reads the YAML into a tree, checks it against a static `schema` (every unknown field
//! and wrong type, with its path), deserializes the cleaned tree into `file` structs, and
//! validates those into a [`Config`] — collecting every error with its field path; [`Overrides`] are the flag / env values
//! that win over the file (precedence: flag > env > file > default).

mod file;
mod model;
mod schema;
mod validate;

use std::path::Path;

pub use model::*;
pub use validate::hook_path::check_applied as check_hook_path;
pub use validate::parse_device_list_strategy;

/// One problem in a config, with the field path it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Field path, e.g. `sharing.timeSlicing.resources[0].replicas`.
    pub path: String,
    /// What is wrong, with the value found, e.g. `must be >= 2, got 1`.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A config that could not be loaded: every error, for printing all at once.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}:\n{}", .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        errors: Vec<ConfigError>,
    },
}

/// Values from flags or environment variables; `Some` wins over the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub mig_strategy: Option<MigStrategy>,
    pub fail_on_init_error: Option<bool>,
    pub device_list_strategies: Option<Vec<DeviceListStrategy>>,
    pub device_id_strategy: Option<DeviceIdStrategy>,
    pub pass_device_specs: Option<bool>,
    pub nvidia_driver_root: Option<String>,
    pub nvidia_dev_root: Option<String>,
    pub gdrcopy_enabled: Option<bool>,
    pub gds_enabled: Option<bool>,
    pub mofed_enabled: Option<bool>,
    pub cdi_annotation_prefix: Option<String>,
    pub nvidia_ctk_path: Option<String>,
    pub container_driver_root: Option<String>,
    pub mps_root: Option<String>,
    pub shared_placement: Option<SharedPlacement>,
    pub imex_channel_ids: Option<Vec<u32>>,
    pub imex_required: Option<bool>,
}

impl Config {
    /// Apply flag / env overrides.
    pub fn with_overrides(mut self, o: &Overrides) -> Self {
        fn set<T: Clone>(from: &Option<T>, into: &mut T) {
            if let Some(v) = from {
                *into = v.clone();
            }
        }
        set(&o.mig_strategy, &mut self.mig_strategy);
        set(&o.fail_on_init_error, &mut self.fail_on_init_error);
        let p = &mut self.plugin;
        set(&o.device_list_strategies, &mut p.device_list_strategies);
        set(&o.device_id_strategy, &mut p.device_id_strategy);
        set(&o.pass_device_specs, &mut p.pass_device_specs);
        if let Some(root) = &o.nvidia_driver_root {
            // NVIDIA: the dev root is the driver root unless it was given.
            if p.nvidia_dev_root == p.nvidia_driver_root {
                p.nvidia_dev_root = root.clone();
            }
            p.nvidia_driver_root = root.clone();
        }
        set(&o.nvidia_dev_root, &mut p.nvidia_dev_root);
        set(&o.gdrcopy_enabled, &mut p.gdrcopy_enabled);
        set(&o.gds_enabled, &mut p.gds_enabled);
        set(&o.mofed_enabled, &mut p.mofed_enabled);
        set(&o.cdi_annotation_prefix, &mut p.cdi_annotation_prefix);
        if o.nvidia_ctk_path.is_some() {
            p.nvidia_ctk_path = o.nvidia_ctk_path.clone();
        }
        if o.container_driver_root.is_some() {
            p.container_driver_root = o.container_driver_root.clone();
        }
        set(&o.imex_channel_ids, &mut p.imex.channel_ids);
        set(&o.imex_required, &mut p.imex.required);
        if let Some(root) = &o.mps_root {
            p.mps_root = Some(root.clone()).filter(|r| !r.is_empty());
        }
        set(&o.shared_placement, &mut self.shared_placement);
        self
    }

    /// One-line summary for `check-config` and logs.
    pub fn summary(&self) -> String {
        let strategies: Vec<&str> = self
            .plugin
            .device_list_strategies
            .iter()
            .map(|s| s.as_str())
            .collect();
        format!(
            "migStrategy={}, deviceListStrategy={}, timeSlicing={} resource(s), mps={} resource(s), vgpu={} resource(s), recoverAfter={}",
            self.mig_strategy.as_str(),
            strategies.join("+"),
            self.time_slicing.resources.len(),
            self.mps.resources.len(),
            self.vgpu.len(),
            crate::units::format_duration(self.health.recover_after),
        )
    }
}

/// Something in a config that does not stop it from loading but that an operator should know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigWarning {
    /// Field path, as in [`ConfigError`].
    pub path: String,
    pub message: String,
    pub kind: WarningKind,
}

/// Why a [`ConfigWarning`] was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningKind {
    /// A field gpu-agent does not know. NVIDIA's plugin ignores those (a field from a newer
    /// release must not stop a node), so `run`, `list` and `plan` warn and go on; `check-config`,
    /// the linter, reports them as errors.
    Unknown,
    /// A setting that has no effect: NVIDIA's plugin ignores it too (`resources.gpus`, `devices`
    /// without `rename`), or it selects nothing.
    Ignored,
    /// Where gpu-agent deliberately goes further than NVIDIA's plugin (it honours `rename`, and
    /// `devices` with `rename`): the message says what NVIDIA would advertise instead.
    Difference,
}

impl WarningKind {
    /// How `check-config` labels it.
    pub fn label(self) -> &'static str {
        match self {
            WarningKind::Unknown => "unknown field",
            WarningKind::Ignored => "ignored",
            WarningKind::Difference => "differs from NVIDIA",
        }
    }
}

impl ConfigWarning {
    pub(crate) fn new(
        kind: WarningKind,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            kind,
        }
    }
}

/// A config that loaded, and what was noticed on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

impl Parsed {
    /// Log every warning once, with its path (`run`, `list`, `plan`, and each reload).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            match w.kind {
                WarningKind::Unknown => tracing::warn!(
                    field = %w.path,
                    "{}; ignored, as NVIDIA's plugin ignores unknown fields",
                    w.message
                ),
                WarningKind::Ignored => tracing::warn!(field = %w.path, "{}", w.message),
                WarningKind::Difference => tracing::warn!(field = %w.path, "{}", w.message),
            }
        }
    }
}

/// Parse and validate config text as NVIDIA's plugin reads it (see `schema`): every error found,
/// or the config with its warnings. An empty or comment-only text is all defaults (NVIDIA's
/// config-manager points the file at `/dev/null` for its "empty" config); only the first YAML
/// document counts.
pub fn read(text: &str) -> Result<Parsed, Vec<ConfigError>> {
    read_as(text, false)
}

/// [`read`] for `check-config`, the linter: unknown fields are errors.
pub fn read_strict(text: &str) -> Result<Parsed, Vec<ConfigError>> {
    read_as(text, true)
}

fn read_as(text: &str, strict: bool) -> Result<Parsed, Vec<ConfigError>> {
    // Before serde_yaml_ng, whose cost grows with the square of the nesting.
    if let Err(limit) = crate::yaml_limits::check(text) {
        return Err(vec![ConfigError::new("config", limit.to_string())]);
    }
    let first = serde_yaml_ng::Deserializer::from_str(text).next();
    let mut tree: serde_yaml_ng::Value = match first {
        None => serde_yaml_ng::Value::Null,
        Some(document) => {
            serde::Deserialize::deserialize(document).map_err(|e| vec![file::yaml_error(&e)])?
        }
    };
    if tree.is_null() {
        return Ok(Parsed {
            config: Config::default(),
            warnings: Vec::new(),
        });
    }
    let mut findings = Vec::new();
    schema::check(&mut tree, &mut findings);
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for finding in findings {
        match finding {
            schema::Finding::Error(e) => errors.push(e),
            schema::Finding::Unknown(e) if strict => errors.push(e),
            schema::Finding::Unknown(e) => {
                warnings.push(ConfigWarning::new(WarningKind::Unknown, e.path, e.message))
            }
        }
    }
    let raw: file::ConfigFile = match serde_yaml_ng::from_value(tree) {
        Ok(raw) => raw,
        Err(e) => {
            // Only reachable if `schema` and `file` disagree; still report it with its path.
            errors.push(file::yaml_error(&e));
            return Err(errors);
        }
    };
    let validated = validate::validate(raw);
    warnings.extend(validated.warnings);
    match validated.config {
        Ok(config) if errors.is_empty() => Ok(Parsed { config, warnings }),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// [`read`], keeping only the config: for callers that do not report warnings.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    read(text).map(|p| p.config)
}

/// Read and validate the config file at `path` (a symlink, to `/dev/null` too, is followed; a
/// FIFO or device is not read; a file over the document limit is invalid).
pub fn load(path: &Path) -> Result<Parsed, LoadError> {
    load_with(path, read)
}

/// [`load`] for `check-config`: unknown fields are errors.
pub fn load_strict(path: &Path) -> Result<Parsed, LoadError> {
    load_with(path, read_strict)
}

fn load_with(
    path: &Path,
    read: fn(&str) -> Result<Parsed, Vec<ConfigError>>,
) -> Result<Parsed, LoadError> {
    use crate::yaml_limits::{read_text, DocumentError};
    let text = read_text(path).map_err(|e| match e {
        DocumentError::Read(source) => LoadError::Read {
            path: path.display().to_string(),
            source,
        },
        DocumentError::Limit(limit) => LoadError::Invalid {
            path: path.display().to_string(),
            errors: vec![ConfigError::new("config", limit.to_string())],
        },
    })?;
    read(&text).map_err(|errors| LoadError::Invalid {
        path: path.display().to_string(),
        errors,
    })
}
