//! The shape of the config file as a static table, walked over the parsed YAML before serde sees
//! it. The walk reads the document the way NVIDIA's plugin does (sigs.k8s.io/yaml turns the YAML
//! into JSON, then Go's `encoding/json` fills its structs), reports every unknown field and wrong
//! type with its full path, and rewrites the tree into the one shape `super::file` deserializes:
//!
//! - **Key case.** Sections Go decodes into structs match keys case-insensitively
//!   (`flags: {MigStrategy: mixed}` works; of two spellings the one that sorts last wins, as in
//!   Go). The objects NVIDIA decodes through a `map[string]json.RawMessage` — a sharing block
//!   (`timeSlicing`, `mps`), its `resources[]` entries, `resources.gpus[]` — match exactly; a key
//!   in another case there is an unknown field (and `Replicas:` leaves `replicas` missing).
//!   Matched keys are rewritten to their canonical spelling.
//! - **Numbers.** An integral float (`replicas: 2.0`, `devices: [1.0]`) is an integer, as after
//!   Go's YAML→JSON step; `2.5` is not.
//! - **Booleans.** YAML 1.1's `yes`/`no`/`on`/`off` (NVIDIA's YAML parser) are booleans.
//! - **Nulls.** `key:` with nothing after it is an absent optional field, except where NVIDIA
//!   rejects an explicit null (`timeSlicing: null`, `rename: null`, …): [`Field::non_null`].
//! - **Unknown fields** are removed and reported as [`Finding::Unknown`]: NVIDIA ignores them, so
//!   `run` warns and goes on, while `check-config` reports them as errors.
//!
//! Clean-up rules, chosen so that later errors keep their paths:
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
    /// A mapping Go decodes into a struct: keys match case-insensitively.
    Struct(&'static [Field]),
    /// A mapping NVIDIA decodes through a map: keys match exactly.
    Object(&'static [Field]),
}

/// One key of a mapping.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Absent (or null) is an error, with this message.
    pub required: Option<&'static str>,
    /// An explicit `null` is an error (with this message) rather than an absent value.
    pub non_null: Option<&'static str>,
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: None,
        non_null: None,
    }
}

/// A required field; `missing` is the error when it is absent (NVIDIA's words where it has them).
const fn req(name: &'static str, kind: Kind, missing: &'static str) -> Field {
    Field {
        name,
        kind,
        required: Some(missing),
        non_null: None,
    }
}

const MISSING: &str = "required field missing";

impl Field {
    /// The same field, with an explicit `null` refused as NVIDIA refuses it.
    const fn non_null(self, message: &'static str) -> Field {
        Field {
            non_null: Some(message),
            ..self
        }
    }
}

const PLUGIN: &[Field] = &[
    opt("passDeviceSpecs", Kind::Bool),
    opt("deviceListStrategy", Kind::Any),
    opt("deviceIDStrategy", Kind::Str),
    opt("cdiAnnotationPrefix", Kind::Str),
    opt("nvidiaCTKPath", Kind::Str),
    opt("containerDriverRoot", Kind::Str),
    opt("sharedDevicesAllocationPolicy", Kind::Str),
];

const GFD: &[Field] = &[
    opt("oneshot", Kind::Bool),
    opt("noTimestamp", Kind::Bool),
    opt("sleepInterval", Kind::Any),
    opt("outputFile", Kind::Str),
    opt("machineTypeFile", Kind::Str),
];

const FLAGS: &[Field] = &[
    opt("migStrategy", Kind::Str),
    opt("failOnInitError", Kind::Bool),
    opt("mpsRoot", Kind::Str),
    opt("nvidiaDriverRoot", Kind::Str),
    opt("nvidiaDevRoot", Kind::Str),
    opt("gdrcopyEnabled", Kind::Bool),
    opt("gdsEnabled", Kind::Bool),
    opt("mofedEnabled", Kind::Bool),
    opt("useNodeFeatureAPI", Kind::Bool),
    opt("deviceDiscoveryStrategy", Kind::Str),
    opt("plugin", Kind::Struct(PLUGIN)),
    opt("gfd", Kind::Struct(GFD)),
];

/// `resources.gpus[]` / `resources.mig[]` (NVIDIA's `Resource`, decoded through a map).
const NAMED_RESOURCE: &[Field] = &[
    req(
        "pattern",
        Kind::Str,
        "resources must have a 'pattern' field set",
    ),
    req("name", Kind::Str, "resources must have a 'name' field set"),
];

const NAMED_RESOURCES: &[Field] = &[
    opt("gpus", Kind::Seq(&Kind::Object(NAMED_RESOURCE))),
    opt("mig", Kind::Seq(&Kind::Object(NAMED_RESOURCE))),
];

const NO_NAME: &str = "no resource name specified";

const REPLICATED_RESOURCE: &[Field] = &[
    req("name", Kind::Str, NO_NAME).non_null(NO_NAME),
    opt("rename", Kind::Str).non_null("must be a resource name, got null"),
    opt("devices", Kind::Any).non_null("must be all, a count or a list, got null"),
    req("replicas", Kind::Int, "no replicas specified")
        .non_null("number of replicas must be >= 2, got null"),
];

const NO_RESOURCES: &str = "no resources specified";

const REPLICATED_RESOURCES: &[Field] = &[
    opt("renameByDefault", Kind::Bool),
    opt("failRequestsGreaterThanOne", Kind::Bool),
    req(
        "resources",
        Kind::Seq(&Kind::Object(REPLICATED_RESOURCE)),
        NO_RESOURCES,
    )
    .non_null(NO_RESOURCES),
];

const VGPU_RESOURCE: &[Field] = &[
    req("name", Kind::Str, NO_NAME).non_null(NO_NAME),
    opt("rename", Kind::Str).non_null("must be a resource name, got null"),
    req("memoryMiB", Kind::Int, MISSING),
    opt("computePercent", Kind::Int),
    opt("devices", Kind::Any).non_null("must be all, a count or a list, got null"),
];

const VGPU: &[Field] = &[req(
    "resources",
    Kind::Seq(&Kind::Object(VGPU_RESOURCE)),
    NO_RESOURCES,
)];

const SHARING: &[Field] = &[
    // NVIDIA decodes timeSlicing as a value: `timeSlicing:` (null) reaches its decoder and fails.
    opt("timeSlicing", Kind::Object(REPLICATED_RESOURCES)).non_null(NO_RESOURCES),
    opt("mps", Kind::Object(REPLICATED_RESOURCES)),
    opt("vgpu", Kind::Object(VGPU)),
    opt("placement", Kind::Str),
];

const IMEX: &[Field] = &[
    opt("channelIDs", Kind::Seq(&Kind::Int)),
    opt("required", Kind::Bool),
];

const HEALTH: &[Field] = &[
    opt("ignoredXids", Kind::Seq(&Kind::Int)),
    opt("recoverAfter", Kind::Any),
];

const DRA: &[Field] = &[
    opt("enabled", Kind::Bool),
    opt("driverName", Kind::Str),
    opt("devices", Kind::Any),
];

const STRATEGY: &[Field] = &[
    opt("trainingExclusiveAboveGiB", Kind::Number),
    opt("inferenceSharedBelowGiB", Kind::Number),
    opt("migRangeGiB", Kind::Seq(&Kind::Number)),
];

/// The whole file.
pub const CONFIG: Kind = Kind::Struct(&[
    opt("version", Kind::Str),
    opt("flags", Kind::Struct(FLAGS)),
    opt("resources", Kind::Struct(NAMED_RESOURCES)),
    opt("sharing", Kind::Struct(SHARING)),
    opt("imex", Kind::Struct(IMEX)),
    opt("health", Kind::Struct(HEALTH)),
    opt("strategy", Kind::Struct(STRATEGY)),
    opt("dra", Kind::Struct(DRA)),
]);

/// What the walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The document cannot be used as it is.
    Error(ConfigError),
    /// A field the schema does not know (NVIDIA ignores those): removed.
    Unknown(ConfigError),
}

struct Walk<'a> {
    findings: &'a mut Vec<Finding>,
}

impl Walk<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.findings
            .push(Finding::Error(ConfigError::new(path, message)));
    }

    fn has_error_at(&self, path: &str) -> bool {
        self.findings
            .iter()
            .any(|f| matches!(f, Finding::Error(e) if e.path == path))
    }
}

/// Check `root` against [`CONFIG`], reporting every unknown field and wrong type, and clean it up
/// (see the module docs) so that it deserializes.
pub fn check(root: &mut Value, findings: &mut Vec<Finding>) {
    let mut walk = Walk { findings };
    let Kind::Struct(fields) = CONFIG else {
        unreachable!("the config is a struct")
    };
    if let Value::Mapping(map) = root {
        check_map(&mut walk, map, fields, true, "");
    } else {
        walk.error(
            "config",
            format!(
                "expected a mapping of sections (version, flags, sharing, …), got {}",
                describe(root)
            ),
        );
        *root = Value::Mapping(Mapping::new());
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The field `key` names: its exact spelling, or (in a struct) any spelling that equals it
/// ignoring case.
fn field_for<'f>(fields: &'f [Field], key: &str, fold_case: bool) -> Option<&'f Field> {
    fields.iter().find(|f| f.name == key).or_else(|| {
        fold_case
            .then(|| fields.iter().find(|f| f.name.eq_ignore_ascii_case(key)))
            .flatten()
    })
}

/// Check one mapping in place. Returns false when a required field is missing (after removals).
fn check_map(
    walk: &mut Walk,
    map: &mut Mapping,
    fields: &[Field],
    fold_case: bool,
    path: &str,
) -> bool {
    // Go fills a struct in key order after sigs.k8s.io/yaml has sorted the keys: of two
    // spellings of one field, the one that sorts last wins. Rebuild the mapping that way.
    let mut entries: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
    entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
    for (key, mut value) in entries {
        let Some(field) = key.as_str().and_then(|k| field_for(fields, k, fold_case)) else {
            // An empty key (`"": 1`, `!!str : 1`) is shown quoted, so that the path still says something.
            let shown = key
                .as_str()
                .filter(|k| !k.is_empty())
                .map_or_else(|| short(&key), str::to_string);
            let expected: Vec<&str> = fields.iter().map(|f| f.name).collect();
            walk.findings.push(Finding::Unknown(ConfigError::new(
                join(path, &shown),
                format!("unknown field, expected one of {}", expected.join(", ")),
            )));
            continue;
        };
        let field_path = join(path, field.name);
        if matches!(value, Value::Null) {
            if let Some(message) = field.non_null {
                walk.error(&field_path, message);
                continue;
            }
        }
        if check_value(walk, &mut value, field.kind, &field_path) {
            map.insert(Value::String(field.name.to_string()), value);
        } else {
            map.remove(field.name);
        }
    }
    let mut complete = true;
    for field in fields {
        let Some(missing) = field.required else {
            continue;
        };
        let present = map
            .get(field.name)
            .is_some_and(|v| !matches!(v, Value::Null));
        if !present {
            complete = false;
            let field_path = join(path, field.name);
            if !walk.has_error_at(&field_path) {
                walk.error(field_path, missing);
            }
        }
    }
    complete
}

/// `yes`/`no`/`on`/`off` and their capitalisations: booleans in YAML 1.1, which NVIDIA's parser
/// speaks (serde_yaml_ng speaks 1.2, where they are strings).
fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// Check one value in place. Returns false when the value must be removed from its parent.
fn check_value(walk: &mut Walk, value: &mut Value, kind: Kind, path: &str) -> bool {
    // `key:` with nothing after it is an absent optional value, as Go reads a pointer field.
    if matches!(value, Value::Null) {
        return true;
    }
    let mismatch = |walk: &mut Walk, value: &Value| {
        mismatch_at(walk, path, value, expected(kind));
        false
    };
    match kind {
        Kind::Any => true,
        Kind::Bool => match value {
            Value::Bool(_) => true,
            Value::String(s) => match yaml11_bool(s) {
                Some(b) => {
                    *value = Value::Bool(b);
                    true
                }
                None => mismatch(walk, value),
            },
            _ => mismatch(walk, value),
        },
        Kind::Str => matches!(value, Value::String(_)) || mismatch(walk, value),
        Kind::Int => match integer(value) {
            Some(n) => {
                *value = n;
                true
            }
            None => mismatch(walk, value),
        },
        Kind::Number => matches!(value, Value::Number(_)) || mismatch(walk, value),
        Kind::Struct(fields) | Kind::Object(fields) => match value {
            Value::Mapping(map) => {
                check_map(walk, map, fields, matches!(kind, Kind::Struct(_)), path);
                true
            }
            _ => mismatch(walk, value),
        },
        Kind::Seq(element) => {
            let Value::Sequence(items) = value else {
                return mismatch(walk, value);
            };
            match element {
                Kind::Struct(fields) | Kind::Object(fields) => {
                    let fold_case = matches!(element, Kind::Struct(_));
                    for (i, item) in items.iter_mut().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        let complete = match &mut *item {
                            Value::Mapping(map) => {
                                check_map(walk, map, fields, fold_case, &item_path)
                            }
                            other => {
                                mismatch_at(walk, &item_path, other, expected(*element));
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
                            mismatch_at(walk, &item_path, item, expected(*scalar));
                            ok = false;
                        } else {
                            ok &= check_value(walk, item, *scalar, &item_path);
                        }
                    }
                    ok
                }
            }
        }
    }
}

/// `value` as an integer: an integer, or a float with no fractional part (Go's YAML→JSON step
/// re-emits `2.0` as `2`).
pub fn integer(value: &Value) -> Option<Value> {
    let Value::Number(n) = value else {
        return None;
    };
    if n.is_i64() || n.is_u64() {
        return Some(value.clone());
    }
    let f = n.as_f64()?;
    if f.fract() != 0.0 || !f.is_finite() || f.abs() > 9.007_199_254_740_992e15 {
        return None;
    }
    Some(if f < 0.0 {
        Value::from(f as i64)
    } else {
        Value::from(f as u64)
    })
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
        Kind::Struct(_) | Kind::Object(_) => "a mapping",
    }
}

fn mismatch_at(walk: &mut Walk, path: &str, value: &Value, expected: &str) {
    walk.error(
        path,
        format!("expected {expected}, got {}", describe(value)),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(text: &str) -> (Value, Vec<Finding>) {
        let mut tree: Value = serde_yaml_ng::from_str(text).unwrap();
        let mut findings = Vec::new();
        check(&mut tree, &mut findings);
        (tree, findings)
    }

    #[test]
    fn struct_keys_fold_case_and_the_last_sorted_spelling_wins() {
        let (tree, findings) =
            walk("FLAGS: {MigStrategy: mixed, plugin: {deviceIdStrategy: index}}");
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(tree["flags"]["migStrategy"], Value::from("mixed"));
        assert_eq!(
            tree["flags"]["plugin"]["deviceIDStrategy"],
            Value::from("index")
        );
        // "MigStrategy" sorts before "migStrategy": the latter wins, as in Go.
        let (tree, _) = walk("flags: {migStrategy: single, MigStrategy: mixed}");
        assert_eq!(tree["flags"]["migStrategy"], Value::from("single"));
    }

    #[test]
    fn map_decoded_objects_match_exactly() {
        let (_, findings) =
            walk("sharing: {timeSlicing: {resources: [{name: gpu, Replicas: 2, Devices: all}]}}");
        let unknown: Vec<&str> = findings
            .iter()
            .filter_map(|f| match f {
                Finding::Unknown(e) => Some(e.path.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            unknown,
            [
                "sharing.timeSlicing.resources[0].Devices",
                "sharing.timeSlicing.resources[0].Replicas"
            ]
        );
        assert!(findings.contains(&Finding::Error(ConfigError::new(
            "sharing.timeSlicing.resources[0].replicas",
            "no replicas specified"
        ))));
    }

    #[test]
    fn integral_floats_are_integers_and_yaml_1_1_booleans_are_booleans() {
        let (tree, findings) = walk(
            "flags: {failOnInitError: no}\nsharing: {timeSlicing: {resources: [{name: gpu, replicas: 2.0}]}}",
        );
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(tree["flags"]["failOnInitError"], Value::Bool(false));
        assert_eq!(
            tree["sharing"]["timeSlicing"]["resources"][0]["replicas"],
            Value::from(2u64)
        );
        let (_, findings) =
            walk("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2.5}]}}");
        assert!(
            matches!(&findings[0], Finding::Error(e) if e.message == "expected an integer, got a number 2.5")
        );
    }

    #[test]
    fn nulls_nvidia_refuses_are_errors() {
        for (text, path, message) in [
            (
                "sharing: {timeSlicing: }",
                "sharing.timeSlicing",
                NO_RESOURCES,
            ),
            (
                "sharing: {timeSlicing: {resources: }}",
                "sharing.timeSlicing.resources",
                NO_RESOURCES,
            ),
            (
                "sharing: {timeSlicing: {}}",
                "sharing.timeSlicing.resources",
                NO_RESOURCES,
            ),
            (
                "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, rename: }]}}",
                "sharing.timeSlicing.resources[0].rename",
                "must be a resource name, got null",
            ),
        ] {
            let (_, findings) = walk(text);
            assert!(
                findings.contains(&Finding::Error(ConfigError::new(path, message))),
                "{text}: {findings:?}"
            );
        }
        // mps is a pointer in NVIDIA's struct: null turns it off.
        assert!(walk("sharing: {mps: }").1.is_empty());
    }
}
