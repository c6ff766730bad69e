//! The alerts component (`daemonset/components/alerts/`): a PrometheusRule with the alerts of
//! issue 14, each with a severity and annotations that tell an operator what to do, on metrics
//! the agent exports; rendered with `kubectl kustomize` next to the agent; and every alert unit
//! tested by `promtool test rules` (`alerts.test.yaml`), firing and staying quiet.
//!
//! The PrometheusRule is the one source of the rules: the tests write its `spec` (the rule
//! groups) to a temp file for promtool. kubectl and promtool are external tools (`.ci/run`
//! installs promtool, Debian's `prometheus`); where one is missing, the tests that need it print
//! why and return, and the promtool tests read the PrometheusRule file without kubectl.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use gpu_agent::metrics::names;
use serde_yaml_ng::Value;

use common::{kubectl, kustomize, kustomize_with_components};

const COMPONENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/daemonset/components/alerts");

/// Every alert and its severity (contract section 5 of issue 14).
const ALERTS: &[(&str, &str)] = &[
    ("GpuUnhealthy", "critical"),
    ("GpuCriticalXid", "critical"),
    ("GpuXidErrors", "info"),
    ("GpuEccUncorrectable", "critical"),
    ("GpuRowRemapFailure", "critical"),
    ("GpuTemperatureHigh", "warning"),
    ("GpuThermalThrottling", "warning"),
    ("GpuAgentNotRegistered", "warning"),
    ("GpuAgentDown", "warning"),
];

/// The job GpuAgentDown watches, which the ServiceMonitors set through `jobLabel`.
const JOB: &str = "gpu-agent";

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    v.get(key).unwrap_or(&NULL)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    get(v, key).as_str().unwrap_or("")
}

fn seq_of<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    get(v, key).as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The PrometheusRule as written in the component.
fn source_rule() -> Value {
    read_yaml(&Path::new(COMPONENT).join("prometheusrule.yaml"))
}

/// The rules of the one group, `gpu-agent`.
fn rules(rule: &Value) -> &[Value] {
    let groups = seq_of(get(rule, "spec"), "groups");
    assert_eq!(groups.len(), 1, "one rule group");
    assert_eq!(str_of(&groups[0], "name"), "gpu-agent");
    seq_of(&groups[0], "rules")
}

/// The PrometheusRule as a user deploys it: the base with the ServiceMonitor and alerts
/// components.
fn rendered(kubectl: &Path) -> (Vec<Value>, Value) {
    let (_, objects) = kustomize_with_components(
        kubectl,
        &["base"],
        &["components/servicemonitor", "components/alerts"],
    );
    let rules: Vec<&Value> = objects
        .iter()
        .filter(|o| str_of(o, "kind") == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    let rule = rules[0].clone();
    (objects, rule)
}

/// The rule groups promtool reads: from the rendered PrometheusRule, or from the file when
/// kubectl is missing (kustomize only adds metadata to it).
fn rule_groups() -> Value {
    let rule = match kubectl() {
        Some(kubectl) => rendered(&kubectl).1,
        None => {
            eprintln!("reading prometheusrule.yaml unrendered");
            source_rule()
        }
    };
    get(&rule, "spec").clone()
}

/// A temp dir holding the rule groups as `gpu-agent.rules.yaml` and a copy of the unit tests.
fn promtool_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("gpu-agent.rules.yaml");
    let text = serde_yaml_ng::to_string(&rule_groups()).expect("serialize the rule groups");
    std::fs::write(&rules, text).expect("write the rules");
    let tests = dir.path().join("alerts.test.yaml");
    std::fs::copy(Path::new(COMPONENT).join("alerts.test.yaml"), &tests).expect("copy the tests");
    (dir, rules, tests)
}

/// promtool, if it runs; otherwise `None` with the reason printed.
fn promtool() -> Option<()> {
    match Command::new("promtool").arg("--version").output() {
        Ok(out) if out.status.success() => Some(()),
        _ => {
            eprintln!("skipping: promtool not installed (Debian package `prometheus`; .ci/run installs it)");
            None
        }
    }
}

fn run_promtool(args: &[&str], file: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .current_dir(file.parent().expect("a directory"))
        .output()
        .expect("run promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {}:\n{report}",
        args.join(" ")
    );
    report
}

/// Identifiers outside string literals, label matchers and range selectors: metric names,
/// functions, keywords.
fn identifiers(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut current = String::new();
    let (mut in_string, mut in_braces) = (false, false);
    for c in expr.chars().chain([' ']) {
        match c {
            '"' => in_string = !in_string,
            '{' | '[' if !in_string => in_braces = true,
            '}' | ']' if !in_string => in_braces = false,
            _ => {}
        }
        if !in_string && !in_braces && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            current.push(c);
        } else if !current.is_empty() {
            out.insert(std::mem::take(&mut current));
        }
    }
    out
}

/// `$labels.<name>` references of a template.
fn label_references(template: &str) -> BTreeSet<String> {
    template
        .split("$labels.")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_has_a_severity_and_says_what_to_do() {
    let rule = source_rule();
    assert_eq!(str_of(&rule, "apiVersion"), "monitoring.coreos.com/v1");
    assert_eq!(str_of(&rule, "kind"), "PrometheusRule");
    let rules = rules(&rule);
    let got: Vec<(&str, &str)> = rules
        .iter()
        .map(|r| (str_of(r, "alert"), str_of(get(r, "labels"), "severity")))
        .collect();
    assert_eq!(got, ALERTS, "alerts and severities");
    for r in rules {
        let alert = str_of(r, "alert");
        let annotations = get(r, "annotations");
        let summary = str_of(annotations, "summary");
        let description = str_of(annotations, "description");
        assert!(!summary.is_empty(), "{alert}: no summary");
        assert!(
            description.len() > 150,
            "{alert}: a description that says what to do: {description:?}"
        );
        assert!(
            !summary.contains('\n') && !description.contains('\n'),
            "{alert}: annotations are single lines (folded)"
        );
        let keys: BTreeSet<&str> = annotations
            .as_mapping()
            .expect("annotations")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(["summary", "description"]), "{alert}");
    }
}

#[test]
fn alerts_read_only_metrics_and_labels_the_agent_exports() {
    let rule = source_rule();
    // Labels a series of ours can carry: device and MIG labels, per-metric labels, and the
    // target labels Prometheus adds (instance, job; node from the ServiceMonitor).
    let mut known_labels: BTreeSet<&str> = names::DEVICE_LABELS
        .iter()
        .chain(names::MIG_LABELS)
        .copied()
        .collect();
    known_labels.extend(["xid", "type", "reason", "resource", "instance", "job"]);
    let functions = ["increase", "absent", "or"];
    let mut read = BTreeSet::new();
    for r in rules(&rule) {
        let alert = str_of(r, "alert");
        let expr = str_of(r, "expr");
        for id in identifiers(expr) {
            if id.parse::<f64>().is_ok() || functions.contains(&id.as_str()) {
                continue;
            }
            if id == "up" {
                assert!(
                    expr.contains(&format!("up{{job=\"{JOB}\"}}")),
                    "{alert}: up of the gpu-agent job only: {expr}"
                );
                continue;
            }
            assert!(
                names::find(&id).is_some(),
                "{alert} reads {id}, which the agent does not export"
            );
            read.insert(id);
        }
        for template in ["summary", "description"] {
            let text = str_of(get(r, "annotations"), template);
            for label in label_references(text) {
                assert!(
                    known_labels.contains(label.as_str()),
                    "{alert} {template} uses $labels.{label}, which no series of ours has"
                );
            }
            // The XID templates query the per-XID counters.
            if text.contains("query") {
                assert!(text.contains("gpu_xid_errors_total"), "{alert}");
                assert!(names::find("gpu_xid_errors_total").is_some());
            }
        }
    }
    assert!(read.contains("gpu_healthy"), "{read:?}");
}

#[test]
fn the_component_renders_a_prometheus_rule_next_to_the_agent() {
    let Some(kubectl) = kubectl() else { return };
    let (objects, rule) = rendered(&kubectl);
    let of_kind = |kind: &str| -> Vec<&Value> {
        objects
            .iter()
            .filter(|o| str_of(o, "kind") == kind)
            .collect()
    };
    let ds = of_kind("DaemonSet")[0];
    let monitor = of_kind("ServiceMonitor")[0];
    let namespace = str_of(get(&rule, "metadata"), "namespace");
    assert_eq!(namespace, str_of(get(ds, "metadata"), "namespace"));
    // The Prometheus that selects the ServiceMonitor by its release label selects the rules.
    let release = |o: &Value| str_of(get(get(o, "metadata"), "labels"), "release").to_string();
    assert!(!release(&rule).is_empty());
    assert_eq!(release(&rule), release(monitor));
    // kustomize changes nothing in the rules.
    assert_eq!(get(&rule, "spec"), get(&source_rule(), "spec"));

    // Only with the component: clusters without the Prometheus Operator lack the CRD.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset/base");
    let (_, plain) = kustomize(&kubectl, &base);
    assert!(!plain.iter().any(|o| str_of(o, "kind") == "PrometheusRule"));
}

/// The ServiceMonitor among `objects` names the job after a Service label whose value is
/// [`JOB`].
fn assert_job_is_watched(name: &str, objects: &[Value]) {
    let find = |kind: &str| {
        objects
            .iter()
            .find(|o| str_of(o, "kind") == kind)
            .unwrap_or_else(|| panic!("{name}: no {kind}"))
    };
    let job_label = str_of(get(find("ServiceMonitor"), "spec"), "jobLabel");
    let service_labels = get(get(find("Service"), "metadata"), "labels");
    assert_eq!(
        str_of(service_labels, job_label),
        JOB,
        "{name}: the job label comes from the Service's {job_label:?}"
    );
}

#[test]
fn gpu_agent_down_watches_the_job_the_servicemonitors_set() {
    let Some(kubectl) = kubectl() else { return };
    let (_, objects) =
        kustomize_with_components(&kubectl, &["base"], &["components/servicemonitor"]);
    assert_job_is_watched("components/servicemonitor", &objects);
    let dcgm = Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset/overlays/dcgm");
    assert_job_is_watched("overlays/dcgm", &kustomize(&kubectl, &dcgm).1);
}

/// The kustomization docs/migrating-from-dcgm-exporter.md shows for the alerts with the dcgm
/// overlay renders, with both namings served and the PrometheusRule in it.
#[test]
fn the_documented_dcgm_overlay_with_alerts_renders() {
    let Some(kubectl) = kubectl() else { return };
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/migrating-from-dcgm-exporter.md"
    ))
    .expect("read the migration guide");
    let block = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        .find(|block| block.contains("components/alerts"))
        .expect("a kustomization with components/alerts in the guide");
    let dir = tempfile::tempdir().expect("tempdir");
    let repository = common::repository_from(dir.path());
    let text = block.replace("<path to gpu-agent>", &repository.display().to_string());
    std::fs::write(dir.path().join("kustomization.yaml"), text).expect("write");
    let (_, objects) = kustomize(&kubectl, dir.path());
    let find = |kind: &str| {
        objects
            .iter()
            .find(|o| str_of(o, "kind") == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    assert_eq!(
        get(find("PrometheusRule"), "spec"),
        get(&source_rule(), "spec")
    );
    let containers = seq_of(
        get(get(get(find("DaemonSet"), "spec"), "template"), "spec"),
        "containers",
    );
    let env = seq_of(&containers[0], "env");
    let names: Vec<(&str, &str)> = env
        .iter()
        .filter(|e| str_of(e, "name") == "GPU_AGENT_METRICS_NAMES")
        .map(|e| (str_of(e, "name"), str_of(e, "value")))
        .collect();
    assert_eq!(names, [("GPU_AGENT_METRICS_NAMES", "both")]);
}

#[test]
fn promtool_checks_the_rules() {
    let Some(()) = promtool() else { return };
    let (_dir, rules, _) = promtool_dir();
    let report = run_promtool(&["check", "rules"], &rules);
    assert!(
        report.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{report}"
    );
}

/// Every alert of the rules has a unit test case where it fires and one where it must not,
/// and the cases name only alerts that exist (promtool passes a case for an unknown alert that
/// expects nothing).
#[test]
fn unit_tests_cover_every_alert_firing_and_quiet() {
    let tests = read_yaml(&Path::new(COMPONENT).join("alerts.test.yaml"));
    assert_eq!(
        seq_of(&tests, "rule_files"),
        [Value::from("gpu-agent.rules.yaml")]
    );
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for group in seq_of(&tests, "tests") {
        for case in seq_of(group, "alert_rule_test") {
            let alert = str_of(case, "alertname").to_string();
            let entry = cases.entry(alert).or_default();
            if seq_of(case, "exp_alerts").is_empty() {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
    }
    let names: BTreeSet<&str> = ALERTS.iter().map(|(name, _)| *name).collect();
    for (alert, (firing, quiet)) in &cases {
        assert!(
            names.contains(alert.as_str()),
            "a test of unknown alert {alert}"
        );
        assert!(*firing > 0, "{alert} is never tested firing");
        assert!(*quiet > 0, "{alert} is never tested staying quiet");
    }
    for name in names {
        assert!(cases.contains_key(name), "{name} has no unit test");
    }
}

#[test]
fn promtool_unit_tests_pass() {
    let Some(()) = promtool() else { return };
    let (_dir, _, tests) = promtool_dir();
    let report = run_promtool(&["test", "rules"], &tests);
    assert!(report.contains("SUCCESS"), "{report}");
}
