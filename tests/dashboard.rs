//! The Grafana dashboard (daemonset/dashboards/gpu-agent.json) parses, has a node variable, and
//! queries only metrics the agent exports; its joins survive two scrape jobs and every panel
//! honours `$node`; `promtool check rules` parses every query when promtool is installed.
//! (tests/prometheus.rs runs the queries in a real Prometheus scraping the agent twice.)

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

/// The text after `marker(...)` in `query`, each time it occurs.
fn after_call<'q>(query: &'q str, marker: &str) -> Vec<&'q str> {
    query
        .match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = &query[at + marker.len()..];
            let close = rest.find(')')?;
            Some(rest[close + 1..].trim_start())
        })
        .collect()
}

#[test]
fn joins_aggregate_both_sides_so_two_scrape_jobs_do_not_break_them() {
    // Scraped by two jobs (the Service annotations and the ServiceMonitor), every device series
    // exists twice, differing in `job`: the side of a join that is matched "one" must be
    // aggregated to the join labels, or Prometheus answers "many-to-many matching not allowed".
    let mut all = Vec::new();
    queries(&dashboard(), &mut all);
    let joins: Vec<&String> = all.iter().filter(|q| q.contains("group_left")).collect();
    assert!(joins.len() >= 5, "{joins:?}");
    for q in joins {
        for right in after_call(q, "group_left(") {
            assert!(
                right.starts_with("max by (uuid"),
                "the right side of the join is not aggregated by uuid: {q}"
            );
        }
        if q.starts_with("max by (namespace, pod, uuid) (gpu_container_allocation)") {
            continue;
        }
        assert!(
            q.contains("max by (namespace, pod, container")
                || q.starts_with("count(count by (namespace, pod, container)"),
            "the allocation side is not aggregated: {q}"
        );
    }
}

#[test]
fn every_panel_honours_the_node_variable() {
    // Agent metrics carry `node` from the scrape (the ServiceMonitor's relabeling), device
    // metrics from the agent: every selector of either filters on it.
    let d = dashboard();
    for panel in d["panels"].as_array().unwrap() {
        let mut exprs = Vec::new();
        queries(panel, &mut exprs);
        for q in exprs {
            for id in identifiers(&q) {
                if id == "gpu_container_allocation" || names::find(&id).is_none() {
                    continue; // Joined to a node-filtered side; labels.
                }
                let selector = format!("{id}{{node=~\"$node\"");
                assert!(
                    q.contains(&selector),
                    "panel {:?}: {id} without node=~\"$node\": {q}",
                    panel["title"]
                );
            }
        }
    }
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
