//! The shape of the config file as a static table, walked over the parsed YAML before serde sees
//! it. Serde stops at the first unknown field or wrong type; this walk reports every one of them
//! with its full path, strips what it reported, and leaves a document that deserializes into
//! [`super::file::ConfigFile`] so that the semantic checks run too and `check-config` prints
//! everything at once.
//!
//! Clean-up rules, chosen so that later errors keep their paths:
//! - an unknown key is removed;
//! - a value of the wrong type is removed (its field becomes absent);
//! - an element of a list of mappings that has lost a required field becomes `null` (the list
//!   keeps its length; `file` reads such elements as `None` and `validate` skips them);
//! - a list of scalars with a wrong element is removed as a whole, after every wrong element has
//!   been reported.

use serde_yaml_ng::{Mapping, Value};

use super::ConfigError;

/// What a field may hold.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool,
    Str,
    Int,
    /// Integer or float.
    Number,
    /// Anything: the value's shape is checked later (`devices`, durations, NVIDIA-only sections).
    Any,
    Seq(&'static Kind),
    Map(&'static [Field]),
}

/// One key of a mapping.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const PLUGIN: &[Field] = &[
    opt("passDeviceSpecs", Kind::Bool),
    opt("deviceListStrategy", Kind::Any),
    opt("deviceIDStrategy", Kind::Str),
    opt("cdiAnnotationPrefix", Kind::Str),
    opt("nvidiaCTKPath", Kind::Str),
    opt("containerDriverRoot", Kind::Str),
];

const FLAGS: &[Field] = &[
    opt("migStrategy", Kind::Str),
    opt("failOnInitError", Kind::Bool),
    opt("mpsRoot", Kind::Str),
    opt("nvidiaDriverRoot", Kind::Str),
    opt("nvidiaDevRoot", Kind::Str),
    opt("gdsEnabled", Kind::Bool),
    opt("mofedEnabled", Kind::Bool),
    opt("useNodeFeatureAPI", Kind::Bool),
    opt("deviceDiscoveryStrategy", Kind::Str),
    opt("plugin", Kind::Map(PLUGIN)),
    opt("gfd", Kind::Any),
];

const NAMED_RESOURCES: &[Field] = &[
    opt("gpus", Kind::Seq(&Kind::Any)),
    opt("mig", Kind::Seq(&Kind::Any)),
];

const REPLICATED_RESOURCE: &[Field] = &[
    req("name", Kind::Str),
    opt("rename", Kind::Str),
    opt("devices", Kind::Any),
    req("replicas", Kind::Int),
];

const TIME_SLICING: &[Field] = &[
    opt("renameByDefault", Kind::Bool),
    opt("failRequestsGreaterThanOne", Kind::Bool),
    opt("resources", Kind::Seq(&Kind::Map(REPLICATED_RESOURCE))),
];

const VGPU_RESOURCE: &[Field] = &[
    req("name", Kind::Str),
    opt("rename", Kind::Str),
    req("memoryMiB", Kind::Int),
    opt("computePercent", Kind::Int),
    opt("devices", Kind::Any),
];

const VGPU: &[Field] = &[opt("resources", Kind::Seq(&Kind::Map(VGPU_RESOURCE)))];

const SHARING: &[Field] = &[
    opt("timeSlicing", Kind::Map(TIME_SLICING)),
    opt("mps", Kind::Map(TIME_SLICING)),
    opt("vgpu", Kind::Map(VGPU)),
    opt("placement", Kind::Str),
];

const HEALTH: &[Field] = &[
    opt("ignoredXids", Kind::Seq(&Kind::Int)),
    opt("recoverAfter", Kind::Any),
];

const STRATEGY: &[Field] = &[
    opt("trainingExclusiveAboveGiB", Kind::Number),
    opt("inferenceSharedBelowGiB", Kind::Number),
    opt("migRangeGiB", Kind::Seq(&Kind::Number)),
];

/// The whole file.
pub const CONFIG: Kind = Kind::Map(&[
    opt("version", Kind::Str),
    opt("flags", Kind::Map(FLAGS)),
    opt("resources", Kind::Map(NAMED_RESOURCES)),
    opt("sharing", Kind::Map(SHARING)),
    opt("imex", Kind::Any),
    opt("health", Kind::Map(HEALTH)),
    opt("strategy", Kind::Map(STRATEGY)),
]);

/// Check `root` against [`CONFIG`], reporting every unknown field and wrong type, and clean it up
/// (see the module docs) so that it deserializes.
pub fn check(root: &mut Value, errors: &mut Vec<ConfigError>) {
    if let Kind::Map(fields) = CONFIG {
        if let Value::Mapping(map) = root {
            check_map(map, fields, "", errors);
        } else {
            errors.push(ConfigError::new(
                "config",
                format!(
                    "expected a mapping of sections (version, flags, sharing, …), got {}",
                    describe(root)
                ),
            ));
            *root = Value::Mapping(Mapping::new());
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Check one mapping in place. Returns false when a required field is missing (after removals).
fn check_map(
    map: &mut Mapping,
    fields: &[Field],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> bool {
    let keys: Vec<Value> = map.keys().cloned().collect();
    for key in keys {
        let known = key
            .as_str()
            .and_then(|k| fields.iter().find(|f| f.name == k));
        let Some(field) = known else {
            // An empty key (`"": 1`, `!!str : 1`) is shown quoted, so that the path still says something.
            let shown = key
                .as_str()
                .filter(|k| !k.is_empty())
                .map_or_else(|| short(&key), str::to_string);
            let expected: Vec<&str> = fields.iter().map(|f| f.name).collect();
            errors.push(ConfigError::new(
                join(path, &shown),
                format!("unknown field, expected one of {}", expected.join(", ")),
            ));
            map.remove(&key);
            continue;
        };
        let field_path = join(path, field.name);
        let keep = match map.get_mut(&key) {
            Some(value) => check_value(value, field.kind, &field_path, errors),
            None => true,
        };
        if !keep {
            map.remove(&key);
        }
    }
    let mut complete = true;
    for field in fields.iter().filter(|f| f.required) {
        let present = map
            .get(field.name)
            .is_some_and(|v| !matches!(v, Value::Null));
        if !present {
            complete = false;
            if !errors.iter().any(|e| e.path == join(path, field.name)) {
                errors.push(ConfigError::new(
                    join(path, field.name),
                    "required field missing",
                ));
            }
        }
    }
    complete
}

/// Check one value in place. Returns false when the value must be removed from its parent.
fn check_value(value: &mut Value, kind: Kind, path: &str, errors: &mut Vec<ConfigError>) -> bool {
    // `key:` with nothing after it is an absent optional value, as serde reads it.
    if matches!(value, Value::Null) {
        return true;
    }
    let mismatch = |errors: &mut Vec<ConfigError>, value: &Value| {
        mismatch_at(errors, path, value, expected(kind));
        false
    };
    match kind {
        Kind::Any => true,
        Kind::Bool => matches!(value, Value::Bool(_)) || mismatch(errors, value),
        Kind::Str => matches!(value, Value::String(_)) || mismatch(errors, value),
        Kind::Int => match value {
            Value::Number(n) if n.is_i64() || n.is_u64() => true,
            _ => mismatch(errors, value),
        },
        Kind::Number => matches!(value, Value::Number(_)) || mismatch(errors, value),
        Kind::Map(fields) => match value {
            Value::Mapping(map) => {
                check_map(map, fields, path, errors);
                true
            }
            _ => mismatch(errors, value),
        },
        Kind::Seq(element) => {
            let Value::Sequence(items) = value else {
                return mismatch(errors, value);
            };
            match element {
                Kind::Map(fields) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        let complete = match &mut *item {
                            Value::Mapping(map) => check_map(map, fields, &item_path, errors),
                            other => {
                                mismatch_at(errors, &item_path, other, expected(*element));
                                false
                            }
                        };
                        if !complete {
                            *item = Value::Null;
                        }
                    }
                    true
                }
                Kind::Any => true,
                scalar => {
                    let mut ok = true;
                    for (i, item) in items.iter_mut().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        if matches!(item, Value::Null) {
                            mismatch_at(errors, &item_path, item, expected(*scalar));
                            ok = false;
                        } else {
                            ok &= check_value(item, *scalar, &item_path, errors);
                        }
                    }
                    ok
                }
            }
        }
    }
}

/// What a kind is called in messages.
fn expected(kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "true or false",
        Kind::Str => "a string",
        Kind::Int => "an integer",
        Kind::Number => "a number",
        Kind::Any => "a value",
        Kind::Seq(_) => "a list",
        Kind::Map(_) => "a mapping",
    }
}

fn mismatch_at(errors: &mut Vec<ConfigError>, path: &str, value: &Value, expected: &str) {
    errors.push(ConfigError::new(
        path,
        format!("expected {expected}, got {}", describe(value)),
    ));
}

/// `a string "yes"`, `a list [1, 2]`: the value's kind and a short rendering of it.
fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    };
    format!("{kind} {}", short(value))
}

/// One-line YAML rendering, cut at 60 characters.
pub fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) => format!("{s:?}"),
        other => serde_yaml_ng::to_string(other)
            .map(|s| {
                let lines: Vec<&str> = s.lines().map(str::trim).collect();
                lines.join(" ")
            })
            .unwrap_or_else(|_| "?".into()),
    };
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}
