//! Small accessors over rendered Kubernetes objects (`serde_yaml_ng::Value`).

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

/// The value at a dotted path of plain keys, `Null` where absent (keys containing dots need
/// `Value::get`).
pub fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    path.split('.')
        .fold(v, |v, key| v.get(key).unwrap_or(&NULL))
}

pub fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path).as_str().unwrap_or("")
}

pub fn seq_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path).as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

pub fn kind(v: &Value) -> &str {
    str_at(v, "kind")
}

/// The item of a list whose `name` is `name` (containers, volumes, env, ports).
pub fn named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items.iter().find(|i| str_at(i, "name") == name)
}

/// A sequence of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Literal `env` values of a container (`valueFrom` entries left out).
pub fn env_values(container: &Value) -> BTreeMap<String, String> {
    seq_at(container, "env")
        .iter()
        .filter_map(|e| {
            let value = e.get("value")?.as_str()?;
            Some((str_at(e, "name").to_string(), value.to_string()))
        })
        .collect()
}

/// A Kubernetes quantity (string or number) in base units: cores, bytes. Enough of the grammar
/// for these manifests; anything else panics with the value.
pub fn quantity(v: &Value) -> f64 {
    let q = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a quantity: {other:?}"),
    };
    let suffixes: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("", 1.0),
    ];
    suffixes
        .iter()
        .find_map(|(suffix, factor)| Some(q.strip_suffix(suffix)?.parse::<f64>().ok()? * factor))
        .unwrap_or_else(|| panic!("not a quantity: {q:?}"))
}

/// Every `key: value` of `selector` is among `labels`.
pub fn assert_selects(selector: &Value, labels: &Value, what: &str) {
    let selector = selector
        .as_mapping()
        .unwrap_or_else(|| panic!("{what}: no selector"));
    assert!(!selector.is_empty(), "{what}: empty selector");
    for (k, v) in selector {
        let key = k.as_str().unwrap_or("");
        assert_eq!(labels.get(key), Some(v), "{what}: label {key}");
    }
}

#[test]
fn quantities_parse() {
    assert_eq!(quantity(&Value::from("20m")), 0.02);
    assert_eq!(quantity(&Value::from("32Mi")), 32.0 * 1024.0 * 1024.0);
    assert_eq!(quantity(&Value::from(2)), 2.0);
}
