//! What the manifests do for the cluster's security: NetworkPolicies that let only Prometheus
//! and the nodes reach the agent's metrics port and only the control plane the webhook's port
//! (with no egress for either), their two documented knobs, and images pinnable by digest.

use std::path::Path;

use serde_yaml_ng::Value;

use crate::agent::agent_container;
use crate::common::kubectl;
use crate::render::{daemonset_dir, render_overlay, render_with, Rendered};
use crate::yaml::{assert_selects, get, named, seq_at, str_at, strings};
use crate::{OVERLAYS, WEBHOOK};

/// A well-formed IPv4 CIDR.
fn assert_cidr(cidr: &str, what: &str) {
    let (addr, bits) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("{what}: {cidr:?} is not a CIDR"));
    assert!(
        addr.parse::<std::net::Ipv4Addr>().is_ok(),
        "{what}: {cidr:?}"
    );
    assert!(
        bits.parse::<u8>().is_ok_and(|b| b <= 32),
        "{what}: {cidr:?}"
    );
}

/// The one NetworkPolicy named `name`: it selects the pods of `pod_template` in its namespace,
/// lets in TCP on `port` only, from exactly these peers (a namespace by name, then an ipBlock),
/// and denies every egress. Returns the ipBlock's CIDR.
fn assert_policy(
    r: &Rendered,
    name: &str,
    workload: &Value,
    port: u64,
    from_namespace: &str,
) -> String {
    let what = format!("{}: NetworkPolicy {name}", r.name);
    let policies = r.of_kind("NetworkPolicy");
    assert_eq!(policies.len(), 1, "{what}: one NetworkPolicy");
    let np = r.object("NetworkPolicy", name);
    assert_eq!(str_at(np, "apiVersion"), "networking.k8s.io/v1", "{what}");
    assert_eq!(
        str_at(np, "metadata.namespace"),
        str_at(workload, "metadata.namespace"),
        "{what}: in the workload's namespace"
    );
    assert_selects(
        get(np, "spec.podSelector.matchLabels"),
        get(workload, "spec.template.metadata.labels"),
        &format!("{what} → {} pods", str_at(workload, "metadata.name")),
    );
    assert!(
        get(np, "spec.podSelector.matchExpressions").is_null(),
        "{what}"
    );
    assert_eq!(
        strings(get(np, "spec.policyTypes")),
        ["Ingress", "Egress"],
        "{what}"
    );
    assert_eq!(
        get(np, "spec.egress").as_sequence().map(Vec::len),
        Some(0),
        "{what}: no egress at all"
    );
    let rules = seq_at(np, "spec.ingress");
    assert_eq!(rules.len(), 1, "{what}: one ingress rule");
    let ports = seq_at(&rules[0], "ports");
    assert_eq!(ports.len(), 1, "{what}: one port");
    assert_eq!(get(&ports[0], "port").as_u64(), Some(port), "{what}");
    assert_eq!(str_at(&ports[0], "protocol"), "TCP", "{what}");
    assert!(get(&ports[0], "endPort").is_null(), "{what}");
    let from = seq_at(&rules[0], "from");
    assert_eq!(from.len(), 2, "{what}: two peers");
    assert_eq!(
        get(&from[0], "namespaceSelector.matchLabels")
            .get("kubernetes.io/metadata.name")
            .and_then(Value::as_str),
        Some(from_namespace),
        "{what}: the first peer is the namespace {from_namespace}"
    );
    assert!(
        get(&from[0], "podSelector").is_null() && get(&from[0], "ipBlock").is_null(),
        "{what}: every pod of that namespace, nothing else"
    );
    let cidr = str_at(&from[1], "ipBlock.cidr");
    assert_cidr(cidr, &what);
    assert!(
        !cidr.ends_with("/0"),
        "{what}: {cidr} lets the whole network in"
    );
    assert!(
        get(&from[1], "namespaceSelector").is_null() && get(&from[1], "podSelector").is_null(),
        "{what}"
    );
    cidr.to_string()
}

/// The agent's one container port by name.
fn container_port(container: &Value, name: &str) -> u64 {
    let port = named(seq_at(container, "ports"), name)
        .unwrap_or_else(|| panic!("no container port {name}"));
    get(port, "containerPort").as_u64().expect("containerPort")
}

#[test]
fn only_prometheus_and_the_nodes_reach_the_agent_and_it_reaches_nothing() {
    let Some(kubectl) = kubectl() else { return };
    for overlay in OVERLAYS {
        let r = render_overlay(&kubectl, overlay);
        let ds = r.one("DaemonSet");
        let metrics = container_port(agent_container(ds), "metrics");
        assert_eq!(metrics, 9400);
        let cidr = assert_policy(&r, "gpu-agent", ds, metrics, "monitoring");
        assert_eq!(
            cidr, "192.0.2.0/24",
            "{overlay}: the documented placeholder"
        );
        // The agent's only port is that one: nothing else is left open by omission.
        assert_eq!(seq_at(agent_container(ds), "ports").len(), 1, "{overlay}");
    }
}

#[test]
fn only_the_control_plane_reaches_the_webhook_and_it_reaches_nothing() {
    let Some(kubectl) = kubectl() else { return };
    for kustomization in WEBHOOK {
        let r = render_overlay(&kubectl, kustomization);
        let deployment = r.one("Deployment");
        let container = &seq_at(deployment, "spec.template.spec.containers")[0];
        let https = container_port(container, "https");
        assert_eq!(https, 8443);
        // The Service the API server calls forwards to that port.
        let service = r.one("Service");
        let port = &seq_at(service, "spec.ports")[0];
        assert_eq!(str_at(port, "targetPort"), "https", "{kustomization}");
        let cidr = assert_policy(&r, "gpu-agent-webhook", deployment, https, "kube-system");
        assert_eq!(cidr, "192.0.2.0/24", "{kustomization}");
    }
}

/// The `patches:` block a manifest's comments document, uncommented: from the line
/// `#   patches:` to the last line indented under it.
fn documented_patch(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read manifest");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == "#   patches:" {
            inside = true;
        } else if inside && !line.starts_with("#     ") {
            break;
        }
        if inside {
            out.push_str(&line["#   ".len()..]);
            out.push('\n');
        }
    }
    assert!(
        !out.is_empty(),
        "{}: no documented patches block",
        file.display()
    );
    out
}

/// The knobs as the manifests' comments (and docs/security.md) document them.
#[test]
fn the_documented_knobs_set_the_namespace_and_the_address_ranges() {
    let Some(kubectl) = kubectl() else { return };
    let dir = daemonset_dir();

    let patch = documented_patch(&dir.join("base/networkpolicy.yaml"));
    let r = render_with(&kubectl, &["base"], &[], &patch);
    let ds = r.one("DaemonSet");
    let cidr = assert_policy(&r, "gpu-agent", ds, 9400, "prometheus");
    assert_eq!(cidr, "10.0.0.0/16");

    let patch = documented_patch(&dir.join("webhook/base/networkpolicy.yaml"));
    let r = render_with(&kubectl, &["webhook"], &[], &patch);
    let deployment = r.one("Deployment");
    let cidr = assert_policy(&r, "gpu-agent-webhook", deployment, 8443, "kube-system");
    assert_eq!(cidr, "10.0.0.10/32");
}

/// `images: [{name: gpu-agent, digest: sha256:…}]` in a user's kustomization replaces the tag with
/// the digest, for the agent and the webhook alike.
#[test]
fn images_can_be_pinned_by_digest() {
    let Some(kubectl) = kubectl() else { return };
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let pin = format!(
        "images:\n  - name: gpu-agent\n    newName: registry.example.com/gpu-agent\n    digest: {digest}\n"
    );
    let expected = format!("registry.example.com/gpu-agent@{digest}");
    for (resources, kind) in [
        (&["base"][..], "DaemonSet"),
        (&["overlays/cdi"][..], "DaemonSet"),
        (&["webhook"][..], "Deployment"),
    ] {
        let r = render_with(&kubectl, resources, &[], &pin);
        let containers = seq_at(r.one(kind), "spec.template.spec.containers");
        assert!(!containers.is_empty());
        for c in containers {
            assert_eq!(str_at(c, "image"), expected, "{}", r.name);
        }
        assert!(!r.text.contains(":0.1.0"), "{}: the tag is gone", r.name);
    }
    // The documented form is in the base's kustomization.
    let base = std::fs::read_to_string(daemonset_dir().join("base/kustomization.yaml")).unwrap();
    assert!(base.contains("#       digest: sha256:"), "{base}");
}
