//! The scheduler's view of a DRA device selector: a CEL expression evaluated against one device of
//! a ResourceSlice, on the `cel` crate (a real CEL implementation), with the environment the
//! Kubernetes allocator gives it.
//!
//! Written from kubernetes `staging/src/k8s.io/dynamic-resource-allocation/cel/compile.go`
//! (`DeviceMatches`, `getAttributeValue`, `parseQualifiedName`, `newCompiler`) and the Kubernetes
//! CEL libraries it loads (`staging/src/k8s.io/apiserver/pkg/cel/library/quantity.go` and
//! `semver.go`, `apiserver/pkg/cel/quantity.go`):
//!
//! - `device.driver`, `device.attributes[domain][id]`, `device.capacity[domain][id]`; a name
//!   without a `domain/` prefix belongs to the driver's domain;
//! - attribute values: int, bool, string, or version (a semver object; one that does not parse is
//!   an error for the device, as there);
//! - capacities are quantities: `quantity("40Gi")`, `compareTo`, `isGreaterThan`, `isLessThan`,
//!   `asInteger`; `<` and friends are not defined on quantities (CEL type error), as there;
//! - `semver("1.2.3")`, `compareTo`, `isGreaterThan`, `isLessThan`, `major`, `minor`, `patch`;
//! - the result must be a bool.
//!
//! Stricter than the real one in one place: a lookup of a domain the device does not have is an
//! error here, while Kubernetes returns an empty map (so `has(...)` on it is false there). A
//! selector that relies on that fails our tests rather than passing them.

#![allow(dead_code)]

use std::any::Any;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use cel::extractors::This;
use cel::objects::{Key, Map, Opaque};
use cel::{Context, ExecutionError, Program, Value};
use serde_json::Value as Json;

/// A capacity: an exact amount in nano-units (every Kubernetes quantity suffix is a whole number
/// of nano-units, and 2^63 Ei of them still fit an i128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    nanos: i128,
}

impl Opaque for Quantity {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Quantity"
    }
}

/// A semantic version, as `github.com/blang/semver` parses it (what the API server validates
/// version attributes with): MAJOR.MINOR.PATCH, no leading zeros, optional pre-release and
/// build (compared as semver does: build ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Semver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<String>,
}

impl Opaque for Semver {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Semver"
    }
}

impl Semver {
    pub fn parse(text: &str) -> Result<Semver, String> {
        let without_build = text.split('+').next().unwrap_or_default();
        let (core, pre) = match without_build.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (without_build, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 {
            return Err(format!("{text:?}: not MAJOR.MINOR.PATCH"));
        }
        let number = |p: &str| -> Result<u64, String> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{text:?}: {p:?} is not a number"));
            }
            if p.len() > 1 && p.starts_with('0') {
                return Err(format!("{text:?}: {p:?} has a leading zero"));
            }
            p.parse().map_err(|e| format!("{text:?}: {e}"))
        };
        let pre = match pre {
            Some(pre) => {
                let ids: Vec<String> = pre.split('.').map(str::to_string).collect();
                if ids.iter().any(|id| id.is_empty()) {
                    return Err(format!("{text:?}: empty pre-release identifier"));
                }
                ids
            }
            None => Vec::new(),
        };
        Ok(Semver {
            major: number(parts[0])?,
            minor: number(parts[1])?,
            patch: number(parts[2])?,
            pre,
        })
    }

    fn compare(&self, other: &Semver) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let order = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(x), Ok(y)) => x.cmp(&y),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.cmp(b),
                        };
                        if order != Ordering::Equal {
                            return order;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

/// Parse a Kubernetes quantity (`resource.Quantity`'s grammar): a signed decimal number with an
/// optional binary suffix (Ki … Ei), decimal suffix (n u m k M G T P E) or exponent (e3, E-2).
pub fn parse_quantity(text: &str) -> Result<Quantity, String> {
    let bad = || format!("{text:?} is not a quantity");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // The number as an integer of `10^-fraction.len()` units.
    let mantissa: i128 = format!("{whole}{fraction}").parse().map_err(|_| bad())?;
    let scale = fraction.len() as u32;
    let (multiplier, exponent10): (i128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        other => {
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .ok_or_else(bad)?;
            (1, exp.parse::<i32>().map_err(|_| bad())?)
        }
    };
    // nanos = mantissa * 10^-scale * multiplier * 10^exponent10 * 10^9
    let power = exponent10 + 9 - scale as i32;
    let mut nanos = mantissa.checked_mul(multiplier).ok_or_else(bad)?;
    if power >= 0 {
        nanos = nanos
            .checked_mul(10i128.checked_pow(power as u32).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    } else {
        // Below a nano-unit: Kubernetes rounds up to its smallest scale; so do we.
        let divisor = 10i128.checked_pow((-power) as u32).ok_or_else(bad)?;
        nanos = (nanos + divisor - 1) / divisor;
    }
    Ok(Quantity {
        nanos: if negative { -nanos } else { nanos },
    })
}

fn downcast<T: 'static>(value: &Arc<dyn Opaque>) -> Option<&T> {
    let any: &dyn Any = &**value;
    any.downcast_ref::<T>()
}

fn ordering_value(order: Ordering) -> Value {
    Value::Int(match order {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    })
}

fn fail(function: &str, message: impl ToString) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

/// `a.<function>(b)` for two quantities or two semvers; anything else is a type error.
fn compare(
    function: &str,
    a: &Arc<dyn Opaque>,
    b: &Arc<dyn Opaque>,
) -> Result<Ordering, ExecutionError> {
    if let (Some(x), Some(y)) = (downcast::<Quantity>(a), downcast::<Quantity>(b)) {
        return Ok(x.cmp(y));
    }
    if let (Some(x), Some(y)) = (downcast::<Semver>(a), downcast::<Semver>(b)) {
        return Ok(x.compare(y));
    }
    Err(fail(
        function,
        format!(
            "no such overload: {} with {}",
            a.runtime_type_name(),
            b.runtime_type_name()
        ),
    ))
}

/// Evaluate `expression` (optional syntax on, as in Kubernetes admission policies) with the
/// top-level fields of `input` as variables and `bound` as `variables.<name>`: how the API
/// server evaluates a ValidatingAdmissionPolicy's conditions, variables and validations.
pub fn evaluate(
    expression: &str,
    input: &Json,
    bound: &[(String, Value)],
) -> Result<Value, String> {
    let env = Arc::new(cel::Env::stdlib());
    let program = env
        .compile(expression)
        .map_err(|e| format!("{expression:?}: compilation failed: {e}"))?;
    let mut context = Context::with_env(env);
    if let Some(fields) = input.as_object() {
        for (name, value) in fields {
            let value = cel::to_value(value).map_err(|e| format!("{name}: {e}"))?;
            context.add_variable_from_value(name.clone(), value);
        }
    }
    let variables: HashMap<Key, Value> = bound
        .iter()
        .map(|(name, value)| (Key::String(Arc::new(name.clone())), value.clone()))
        .collect();
    context.add_variable_from_value(
        "variables",
        Value::Map(Map {
            map: Arc::new(variables),
        }),
    );
    program
        .execute(&context)
        .map_err(|e| format!("{expression:?}: {e}"))
}

/// [`evaluate`], which must give a bool.
pub fn evaluate_bool(
    expression: &str,
    input: &Json,
    bound: &[(String, Value)],
) -> Result<bool, String> {
    match evaluate(expression, input, bound)? {
        Value::Bool(b) => Ok(b),
        other => Err(format!(
            "{expression:?}: must evaluate to bool, not {other:?}"
        )),
    }
}

/// A compiled selector.
pub struct Selector {
    expression: String,
    program: Program,
}

impl Selector {
    /// Compile `expression`; a syntax error is an error, as the API server's validation would
    /// refuse it.
    pub fn compile(expression: &str) -> Result<Selector, String> {
        let program = Program::compile(expression)
            .map_err(|e| format!("{expression:?}: compilation failed: {e}"))?;
        Ok(Selector {
            expression: expression.to_string(),
            program,
        })
    }

    /// Whether the device (`driver` and one entry of a ResourceSlice's `spec.devices`, as JSON)
    /// matches. An evaluation error is an error, as it fails the allocation there.
    pub fn matches(&self, driver: &str, device: &Json) -> Result<bool, String> {
        let variable = device_variable(driver, device)?;
        let mut context = Context::default();
        context.add_variable_from_value("device", variable);
        context
            .add_function(
                "quantity",
                |text: Arc<String>| -> Result<Value, ExecutionError> {
                    parse_quantity(&text)
                        .map(|q| Value::Opaque(Arc::new(q)))
                        .map_err(|e| fail("quantity", e))
                },
            )
            .map_err(|e| format!("{e:?}"))?;
        context
            .add_function(
                "semver",
                |text: Arc<String>| -> Result<Value, ExecutionError> {
                    Semver::parse(&text)
                        .map(|v| Value::Opaque(Arc::new(v)))
                        .map_err(|e| fail("semver", e))
                },
            )
            .map_err(|e| format!("{e:?}"))?;
        for (name, pick) in [
            ("compareTo", None),
            ("isGreaterThan", Some(Ordering::Greater)),
            ("isLessThan", Some(Ordering::Less)),
        ] {
            context
                .add_function(
                    name,
                    move |This(this): This<Arc<dyn Opaque>>,
                          other: Arc<dyn Opaque>|
                          -> Result<Value, ExecutionError> {
                        let order = compare(name, &this, &other)?;
                        Ok(match pick {
                            None => ordering_value(order),
                            Some(wanted) => Value::Bool(order == wanted),
                        })
                    },
                )
                .map_err(|e| format!("{e:?}"))?;
        }
        context
            .add_function(
                "asInteger",
                |This(this): This<Arc<dyn Opaque>>| -> Result<Value, ExecutionError> {
                    let q = downcast::<Quantity>(&this)
                        .ok_or_else(|| fail("asInteger", "needs a quantity"))?;
                    if q.nanos % 1_000_000_000 != 0 {
                        return Err(fail("asInteger", "a fractional quantity is not an integer"));
                    }
                    i64::try_from(q.nanos / 1_000_000_000)
                        .map(Value::Int)
                        .map_err(|_| fail("asInteger", "the quantity overflows an int"))
                },
            )
            .map_err(|e| format!("{e:?}"))?;
        for (name, part) in [("major", 0usize), ("minor", 1), ("patch", 2)] {
            context
                .add_function(
                    name,
                    move |This(this): This<Arc<dyn Opaque>>| -> Result<Value, ExecutionError> {
                        let v = downcast::<Semver>(&this)
                            .ok_or_else(|| fail(name, "needs a semver"))?;
                        Ok(Value::Int([v.major, v.minor, v.patch][part] as i64))
                    },
                )
                .map_err(|e| format!("{e:?}"))?;
        }
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "{:?}: must evaluate to bool, not {other:?}",
                self.expression
            )),
            Err(e) => Err(format!("{:?}: {e}", self.expression)),
        }
    }
}

/// `device` as the allocator builds it: `driver`, and attributes and capacity grouped by domain.
fn device_variable(driver: &str, device: &Json) -> Result<Value, String> {
    let name = device["name"].as_str().unwrap_or("?");
    let mut attributes: HashMap<String, HashMap<Key, Value>> = HashMap::new();
    if let Some(map) = device["attributes"].as_object() {
        for (qualified, attribute) in map {
            let (domain, id) = split_qualified(qualified, driver);
            let value = attribute_value(attribute)
                .map_err(|e| format!("device {name}: attribute {qualified}: {e}"))?;
            attributes
                .entry(domain)
                .or_default()
                .insert(Key::String(Arc::new(id)), value);
        }
    }
    let mut capacity: HashMap<String, HashMap<Key, Value>> = HashMap::new();
    if let Some(map) = device["capacity"].as_object() {
        for (qualified, cap) in map {
            let (domain, id) = split_qualified(qualified, driver);
            let text = cap["value"]
                .as_str()
                .ok_or_else(|| format!("device {name}: capacity {qualified}: no value"))?;
            let q = parse_quantity(text)
                .map_err(|e| format!("device {name}: capacity {qualified}: {e}"))?;
            capacity
                .entry(domain)
                .or_default()
                .insert(Key::String(Arc::new(id)), Value::Opaque(Arc::new(q)));
        }
    }
    let nest = |outer: HashMap<String, HashMap<Key, Value>>| -> Value {
        let map: HashMap<Key, Value> = outer
            .into_iter()
            .map(|(domain, inner)| {
                (
                    Key::String(Arc::new(domain)),
                    Value::Map(Map {
                        map: Arc::new(inner),
                    }),
                )
            })
            .collect();
        Value::Map(Map { map: Arc::new(map) })
    };
    let mut top: HashMap<Key, Value> = HashMap::new();
    top.insert(
        Key::String(Arc::new("driver".into())),
        Value::String(Arc::new(driver.into())),
    );
    top.insert(Key::String(Arc::new("attributes".into())), nest(attributes));
    top.insert(Key::String(Arc::new("capacity".into())), nest(capacity));
    Ok(Value::Map(Map { map: Arc::new(top) }))
}

fn split_qualified(name: &str, driver: &str) -> (String, String) {
    match name.split_once('/') {
        Some((domain, id)) => (domain.to_string(), id.to_string()),
        None => (driver.to_string(), name.to_string()),
    }
}

/// One of `int`, `bool`, `string`, `version`: exactly one must be set.
fn attribute_value(attribute: &Json) -> Result<Value, String> {
    let set: Vec<(&String, &Json)> = attribute
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    match set.as_slice() {
        [(kind, value)] => match (kind.as_str(), value) {
            ("int", Json::Number(n)) => n
                .as_i64()
                .map(Value::Int)
                .ok_or_else(|| format!("{n} is not an int64")),
            ("bool", Json::Bool(b)) => Ok(Value::Bool(*b)),
            ("string", Json::String(s)) => Ok(Value::String(Arc::new(s.clone()))),
            ("version", Json::String(s)) => Semver::parse(s)
                .map(|v| Value::Opaque(Arc::new(v)))
                .map_err(|e| format!("parse semantic version: {e}")),
            _ => Err(format!("unsupported attribute value {attribute}")),
        },
        _ => Err(format!(
            "exactly one of int, bool, string, version must be set: {attribute}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gpu(memory: &str, arch: &str, driver_version: &str) -> Json {
        json!({
            "name": "gpu-0",
            "attributes": {
                "type": {"string": "gpu"},
                "architecture": {"string": arch},
                "index": {"int": 0},
                "driverVersion": {"version": driver_version},
                "resource.kubernetes.io/pcieRoot": {"string": "pci0000:00"},
            },
            "capacity": {"memory": {"value": memory}},
        })
    }

    fn matches(expression: &str, device: &Json) -> Result<bool, String> {
        Selector::compile(expression)?.matches("gpu.example.com", device)
    }

    #[test]
    fn quantities_parse_as_kubernetes_does() {
        let q = |s| parse_quantity(s).unwrap();
        assert_eq!(q("40Gi"), q("40960Mi"));
        assert_eq!(q("1k"), q("1000"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("500m"), q("0.5"));
        assert!(q("81559Mi") > q("40Gi"));
        assert!(q("-1") < q("0"));
        for bad in ["", "Gi", "1.2.3", "1Xi", "1e", "abc"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn semvers_parse_and_order_as_blang_semver() {
        let v = |s| Semver::parse(s).unwrap();
        assert!(v("580.95.5").compare(&v("580.95.10")) == Ordering::Less);
        assert!(v("1.0.0-alpha").compare(&v("1.0.0")) == Ordering::Less);
        assert!(v("1.0.0-alpha.1").compare(&v("1.0.0-alpha.beta")) == Ordering::Less);
        for bad in ["580.95.05", "13.0", "1.2", "v1.2.3", "1.2.3-"] {
            assert!(Semver::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn selectors_see_the_device_as_the_allocator_builds_it() {
        let h100 = gpu("81559Mi", "Hopper", "580.95.5");
        let l4 = gpu("23034Mi", "Ada Lovelace", "535.1.0");
        let at_least_40 =
            r#"device.capacity["gpu.example.com"].memory.compareTo(quantity("40Gi")) >= 0"#;
        assert_eq!(matches(at_least_40, &h100), Ok(true));
        assert_eq!(matches(at_least_40, &l4), Ok(false));
        assert_eq!(
            matches(r#"device.driver == "gpu.example.com""#, &h100),
            Ok(true)
        );
        assert_eq!(
            matches(
                r#"device.attributes["gpu.example.com"].type == "gpu""#,
                &h100
            ),
            Ok(true)
        );
        assert_eq!(
            matches(
                r#"device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:00""#,
                &h100
            ),
            Ok(true)
        );
        assert_eq!(
            matches(
                r#"device.attributes["gpu.example.com"].driverVersion.isGreaterThan(semver("550.0.0"))"#,
                &h100
            ),
            Ok(true)
        );
        assert_eq!(
            matches(
                r#"device.attributes["gpu.example.com"].driverVersion.major() == 535"#,
                &l4
            ),
            Ok(true)
        );
        // && stops at false before a lookup that would fail.
        assert_eq!(
            matches(
                r#"device.driver == "other" && device.attributes["other"].type == "gpu""#,
                &h100
            ),
            Ok(false)
        );
    }

    #[test]
    fn what_the_allocator_refuses_is_an_error() {
        let h100 = gpu("81559Mi", "Hopper", "580.95.5");
        // A missing attribute.
        assert!(matches(r#"device.attributes["gpu.example.com"].nosuch == 1"#, &h100).is_err());
        // Quantities have no < operator, only compareTo.
        assert!(matches(
            r#"device.capacity["gpu.example.com"].memory > quantity("1Gi")"#,
            &h100
        )
        .is_err());
        // Not a bool.
        assert!(matches(r#"device.driver"#, &h100).is_err());
        // Syntax.
        assert!(Selector::compile(r#"device.driver =="#).is_err());
        // A version attribute that is not semver fails the device.
        let bad = gpu("1Gi", "Hopper", "580.95.05");
        assert!(matches("true", &bad).is_err());
    }
}
