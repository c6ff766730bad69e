//! The Grafana dashboard (daemonset/dashboards/gpu-agent.json) parses, has a node variable, and
//! queries only metrics the agent exports; `promtool check rules` parses every query when
//! promtool is installed.

use std::collections::BTreeSet;
use std::process::Command;

use gpu_agent::metrics::names;
use serde_json::Value;

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/daemonset/dashboards/gpu-agent.json"
    );
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every PromQL expression: panel targets and variable queries.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) | ("definition", Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| queries(i, out)),
        _ => {}
    }
}

/// Identifiers in a query that look like ours (`gpu_…`), outside string literals.
fn identifiers(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_string = false;
    for c in query.chars() {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            current.push(c);
        } else {
            if current.starts_with("gpu_") {
                out.push(current.clone());
            }
            current.clear();
        }
    }
    if current.starts_with("gpu_") {
        out.push(current);
    }
    out
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let d = dashboard();
    let variables: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"node"), "{variables:?}");

    let mut all = Vec::new();
    queries(&d, &mut all);
    assert!(all.len() > 10, "{all:?}");
    let label_names: BTreeSet<&str> = names::ALL
        .iter()
        .flat_map(|def| def.labels.iter().copied())
        .chain(names::MIG_LABELS.iter().copied())
        .collect();
    let mut used = BTreeSet::new();
    for q in &all {
        for id in identifiers(q) {
            if label_names.contains(id.as_str()) {
                continue;
            }
            assert!(
                names::find(&id).is_some(),
                "{id} in {q:?} is not a metric we export"
            );
            used.insert(id);
        }
    }
    for wanted in [
        "gpu_utilization_percent",
        "gpu_memory_used_bytes",
        "gpu_temperature_celsius",
        "gpu_power_watts",
        "gpu_container_allocation",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    // The per-pod view joins the device gauges through the allocation metric on uuid.
    assert!(all
        .iter()
        .any(|q| q.contains("gpu_container_allocation") && q.contains("on(uuid)")));
}

#[test]
fn promtool_parses_every_dashboard_query() {
    if Command::new("promtool").arg("--version").output().is_err() {
        println!("SKIPPED: promtool not installed (Debian package `prometheus`)");
        return;
    }
    let mut all = Vec::new();
    queries(&dashboard(), &mut all);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    // label_values(…) is Grafana's, not PromQL; its metric is checked by the test above.
    let promql = all.iter().filter(|q| !q.starts_with("label_values("));
    for (i, q) in promql.enumerate() {
        let q = q.replace("$node", ".*");
        let q = serde_json::to_string(&q).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {q}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
