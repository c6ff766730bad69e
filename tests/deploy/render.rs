//! Rendering the kustomizations with `kubectl kustomize` and validating the result with
//! `kubernetes-validate`. Both are external tools; where one is missing, callers get `None` and a
//! printed reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml_ng::Value;

use crate::common::{kustomize, kustomize_with};
use crate::yaml::{kind, str_at};
use crate::ROOT;

/// Kinds defined by CustomResourceDefinitions, which the built-in schemas cannot know; their
/// fields are asserted by the tests instead.
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule", "Issuer", "Certificate"];

/// The oldest Kubernetes the README supports, and the validator's newest (its default).
const KUBERNETES_VERSIONS: &[Option<&str>] = &[Some("1.26.0"), None];

/// DRA (`resource.k8s.io/v1`) is GA from 1.34: the oldest Kubernetes the DRA overlay supports, and
/// the validator's newest.
pub const DRA_KUBERNETES_VERSIONS: &[Option<&str>] = &[Some("1.34.0"), None];

pub fn daemonset_dir() -> PathBuf {
    Path::new(ROOT).join("daemonset")
}

/// `kubernetes-validate` from `GPU_AGENT_KUBERNETES_VALIDATE` (set by `.ci/run`) or `.venv/`.
pub fn validator() -> Option<PathBuf> {
    let candidate = std::env::var_os("GPU_AGENT_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join(".venv/bin/kubernetes-validate"));
    if candidate.is_file() {
        return Some(candidate);
    }
    eprintln!(
        "skipping schema validation: {} not found (.ci/run installs it: \
         python3 -m venv .venv && .venv/bin/pip install kubernetes-validate)",
        candidate.display()
    );
    None
}

/// A kustomization rendered to YAML text and parsed objects.
pub struct Rendered {
    pub name: String,
    pub text: String,
    pub objects: Vec<Value>,
}

impl Rendered {
    pub fn of_kind(&self, k: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| kind(o) == k).collect()
    }

    pub fn one(&self, k: &str) -> &Value {
        let found = self.of_kind(k);
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {k}, found {}",
            self.name,
            found.len()
        );
        found[0]
    }

    /// The object of kind `k` named `name`.
    pub fn object(&self, k: &str, name: &str) -> &Value {
        self.of_kind(k)
            .into_iter()
            .find(|o| str_at(o, "metadata.name") == name)
            .unwrap_or_else(|| panic!("{}: no {k} {name}", self.name))
    }
}

/// `kubectl kustomize <dir>`, parsed; it must render something.
pub fn render(kubectl: &Path, dir: &Path, name: &str) -> Rendered {
    let (text, objects) = kustomize(kubectl, dir);
    assert!(!objects.is_empty(), "{name} renders nothing");
    Rendered {
        name: name.to_string(),
        text,
        objects,
    }
}

/// A kustomization under `daemonset/`, e.g. `overlays/mock`.
pub fn render_overlay(kubectl: &Path, overlay: &str) -> Rendered {
    render(kubectl, &daemonset_dir().join(overlay), overlay)
}

/// `resources` plus `components` (paths under `daemonset/`), as a user's own kustomization
/// combines them.
pub fn render_with_components(kubectl: &Path, resources: &[&str], components: &[&str]) -> Rendered {
    render_with(kubectl, resources, components, "")
}

/// [`render_with_components`] with `more` (`images:`, `patches:`, …) in the kustomization.
pub fn render_with(
    kubectl: &Path,
    resources: &[&str],
    components: &[&str],
    more: &str,
) -> Rendered {
    let name = format!("{} + {}", resources.join(" + "), components.join(" + "));
    let (text, objects) = kustomize_with(kubectl, resources, components, more);
    assert!(!objects.is_empty(), "{name} renders nothing");
    Rendered {
        name,
        text,
        objects,
    }
}

/// The base plus the ServiceMonitor component.
pub fn render_with_servicemonitor(kubectl: &Path) -> Rendered {
    render_with_components(kubectl, &["base"], &["components/servicemonitor"])
}

/// Validate every object but CRD kinds against the Kubernetes OpenAPI schemas, strictly (no
/// unknown fields), for the oldest supported and the newest Kubernetes.
pub fn validate(validator: &Path, r: &Rendered) {
    validate_for(validator, r, KUBERNETES_VERSIONS)
}

/// [`validate`] against `versions` (`None`: the validator's newest).
pub fn validate_for(validator: &Path, r: &Rendered, versions: &[Option<&str>]) {
    let documents: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| !CRD_KINDS.contains(&kind(o)))
        .collect();
    let mut yaml = String::new();
    for doc in &documents {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml_ng::to_string(doc).expect("serialize"));
    }
    for version in versions {
        let label = version.unwrap_or("latest");
        let mut command = Command::new(validator);
        command.arg("--strict");
        if let Some(version) = version {
            command.args(["--kubernetes-version", version]);
        }
        let mut child = command
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubernetes-validate");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("feed kubernetes-validate");
        let out = child.wait_with_output().expect("kubernetes-validate exits");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let name = &r.name;
        assert!(
            out.status.success(),
            "{name} fails the Kubernetes {label} schemas:\n{report}"
        );
        // A kind without a schema is only a warning to the validator: an error here, so that no
        // object passes unchecked.
        assert!(
            !report.contains("WARN") && !report.contains("ERROR"),
            "{name} (Kubernetes {label}):\n{report}"
        );
        assert_eq!(
            report.matches("passed for resource").count(),
            documents.len(),
            "{name}: every object is validated (Kubernetes {label}):\n{report}"
        );
    }
}
