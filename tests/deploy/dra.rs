//! The DRA overlay (`daemonset/overlays/dra`) and its examples (`daemonset/examples/dra`): the
//! Kubernetes 1.34+ schemas, the agent's mounts and token, RBAC no wider than DRA needs, the
//! admission policy that keeps each node's agent to its own ResourceSlices (its CEL evaluated
//! with a real CEL implementation), egress only to the API server.

use std::collections::BTreeSet;

use serde_json::json;

use crate::agent::agent_container;
use crate::cel::Selector;
use crate::common::kubectl;
use crate::render::{render_overlay, validate_for, validator, Rendered, DRA_KUBERNETES_VERSIONS};
use crate::yaml::{env_values, get, named, seq_at, str_at, strings};

pub const DRA: &str = "overlays/dra";
pub const DRA_EXAMPLES: &str = "examples/dra";

/// The driver name the overlay's classes and the agent's default agree on (SPEC §8).
pub const DRIVER: &str = "gpu.gpu-agent.io";

fn rendered() -> Option<(Rendered, Rendered)> {
    let kubectl = kubectl()?;
    Some((
        render_overlay(&kubectl, DRA),
        render_overlay(&kubectl, DRA_EXAMPLES),
    ))
}

#[test]
fn the_dra_overlay_and_examples_pass_the_kubernetes_1_34_schemas() {
    let Some((overlay, examples)) = rendered() else {
        return;
    };
    for r in [&overlay, &examples] {
        for object in &r.objects {
            assert!(!str_at(object, "apiVersion").is_empty(), "{}", r.name);
        }
    }
    let Some(validator) = validator() else { return };
    validate_for(&validator, &overlay, DRA_KUBERNETES_VERSIONS);
    validate_for(&validator, &examples, DRA_KUBERNETES_VERSIONS);
}

#[test]
fn the_dra_agent_has_the_kubelet_plugin_directories_the_cdi_directory_and_a_token() {
    let Some((r, _)) = rendered() else { return };
    let ds = r.one("DaemonSet");
    let pod = get(ds, "spec.template.spec");
    let agent = agent_container(ds);
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(true),
        "DRA talks to the API server: the one overlay with a token"
    );
    let env = env_values(agent);
    assert_eq!(env.get("GPU_AGENT_DRA").map(String::as_str), Some("true"));
    assert_eq!(
        env.get("GPU_AGENT_DRA_DEVICES").map(String::as_str),
        Some("all")
    );
    let node_name = named(seq_at(agent, "env"), "NODE_NAME").expect("NODE_NAME is set");
    assert_eq!(
        str_at(node_name, "valueFrom.fieldRef.fieldPath"),
        "spec.nodeName",
        "the pool is the node's name"
    );

    // host path -> (mounted at, read-only)
    let volumes = seq_at(pod, "volumes");
    let mounts: Vec<(String, String, bool)> = seq_at(agent, "volumeMounts")
        .iter()
        .map(|m| {
            let volume = named(volumes, str_at(m, "name")).expect("a mount names a volume");
            (
                str_at(volume, "hostPath.path").to_string(),
                str_at(m, "mountPath").to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    for (host, inside, read_only) in [
        (
            "/var/lib/kubelet/plugins_registry",
            "/var/lib/kubelet/plugins_registry",
            false,
        ),
        (
            "/var/lib/kubelet/plugins",
            "/var/lib/kubelet/plugins",
            false,
        ),
        ("/var/run/cdi", "/var/run/cdi", false),
        ("/", "/driver-root", true),
        (
            "/var/lib/kubelet/device-plugins",
            "/var/lib/kubelet/device-plugins",
            false,
        ),
    ] {
        assert!(
            mounts.contains(&(host.into(), inside.into(), read_only)),
            "{host} at {inside} (read-only {read_only}) in {mounts:?}"
        );
    }
    // Still the base's hardening.
    let security = &agent["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
}

#[test]
fn rbac_grants_what_dra_needs_and_nothing_else() {
    let Some((r, _)) = rendered() else { return };
    let role = r.object("ClusterRole", "gpu-agent-dra");
    let mut granted = BTreeSet::new();
    for rule in seq_at(role, "rules") {
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcards: {rule:?}"
                    );
                    granted.insert(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    let mut wanted: BTreeSet<String> = ["resource.k8s.io/resourceclaims:get", "/nodes:get"]
        .into_iter()
        .map(String::from)
        .collect();
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        wanted.insert(format!("resource.k8s.io/resourceslices:{verb}"));
    }
    assert_eq!(granted, wanted);

    let sa = r.one("ServiceAccount");
    let binding = r.object("ClusterRoleBinding", "gpu-agent-dra");
    assert_eq!(str_at(binding, "roleRef.name"), "gpu-agent-dra");
    let subjects = seq_at(binding, "subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(str_at(&subjects[0], "name"), str_at(sa, "metadata.name"));
    assert_eq!(
        str_at(&subjects[0], "namespace"),
        str_at(sa, "metadata.namespace")
    );
    let ds = r.one("DaemonSet");
    assert_eq!(
        str_at(ds, "spec.template.spec.serviceAccountName"),
        str_at(sa, "metadata.name")
    );
}

/// The policy's expressions, evaluated with a real CEL implementation for the agent of node-a
/// writing node-a's slice, node-b's slice, and from a token without a node.
#[test]
fn each_nodes_agent_may_write_only_its_own_resourceslices() {
    let Some((r, _)) = rendered() else { return };
    let policy = r.object("ValidatingAdmissionPolicy", "gpu-agent-dra-own-node-slices");
    let binding = r.object(
        "ValidatingAdmissionPolicyBinding",
        "gpu-agent-dra-own-node-slices",
    );
    assert_eq!(
        str_at(binding, "spec.policyName"),
        str_at(policy, "metadata.name")
    );
    assert_eq!(strings(get(binding, "spec.validationActions")), ["Deny"]);
    assert_eq!(str_at(policy, "spec.failurePolicy"), "Fail");
    let rules = seq_at(policy, "spec.matchConstraints.resourceRules");
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["resources"]), ["resourceslices"]);
    assert_eq!(strings(&rules[0]["apiGroups"]), ["resource.k8s.io"]);
    assert_eq!(
        strings(&rules[0]["operations"]),
        ["CREATE", "UPDATE", "DELETE"]
    );

    let sa = r.one("ServiceAccount");
    let agent_user = format!(
        "system:serviceaccount:{}:{}",
        str_at(sa, "metadata.namespace"),
        str_at(sa, "metadata.name")
    );
    let condition = str_at(&seq_at(policy, "spec.matchConditions")[0], "expression").to_string();
    let variables: Vec<(String, String)> = seq_at(policy, "spec.variables")
        .iter()
        .map(|v| {
            (
                str_at(v, "name").to_string(),
                str_at(v, "expression").to_string(),
            )
        })
        .collect();
    let validations: Vec<String> = seq_at(policy, "spec.validations")
        .iter()
        .map(|v| str_at(v, "expression").to_string())
        .collect();

    let request = |user: &str, token_node: Option<&str>, operation: &str, slice_node: &str| {
        let mut extra = json!({});
        if let Some(node) = token_node {
            extra["authentication.kubernetes.io/node-name"] = json!([node]);
        }
        let slice = json!({"spec": {"nodeName": slice_node, "driver": DRIVER}});
        json!({
            "request": {"userInfo": {"username": user, "extra": extra}, "operation": operation},
            "object": if operation == "DELETE" { json!(null) } else { slice.clone() },
            "oldObject": if operation == "CREATE" { json!(null) } else { slice },
        })
    };
    let admitted = |input: &serde_json::Value| -> Result<bool, String> {
        if !crate::cel::evaluate_bool(&condition, input, &[])? {
            return Ok(true); // not the agent: not this policy's business
        }
        let mut bound = Vec::new();
        for (name, expression) in &variables {
            let value = crate::cel::evaluate(expression, input, &bound)?;
            bound.push((name.clone(), value));
        }
        for v in &validations {
            if !crate::cel::evaluate_bool(v, input, &bound)? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    for operation in ["CREATE", "UPDATE", "DELETE"] {
        assert_eq!(
            admitted(&request(&agent_user, Some("node-a"), operation, "node-a")),
            Ok(true),
            "{operation} of its own node's slice"
        );
        assert_eq!(
            admitted(&request(&agent_user, Some("node-a"), operation, "node-b")),
            Ok(false),
            "{operation} of another node's slice"
        );
        assert_eq!(
            admitted(&request(&agent_user, None, operation, "node-a")),
            Ok(false),
            "{operation} from a token bound to no node"
        );
        assert_eq!(
            admitted(&request(
                "system:serviceaccount:kube-system:other",
                None,
                operation,
                "node-b"
            )),
            Ok(true),
            "{operation} by another user is left to RBAC"
        );
    }
}

#[test]
fn the_dra_agent_may_reach_only_the_api_server() {
    let Some((r, _)) = rendered() else { return };
    let np = r.object("NetworkPolicy", "gpu-agent");
    let egress = seq_at(np, "spec.egress");
    assert_eq!(egress.len(), 1, "{egress:?}");
    let ports: BTreeSet<i64> = seq_at(&egress[0], "ports")
        .iter()
        .map(|p| p["port"].as_i64().expect("a numeric port"))
        .collect();
    assert_eq!(ports, BTreeSet::from([443, 6443]));
    let to = seq_at(&egress[0], "to");
    assert!(
        to.iter().all(|peer| peer.get("ipBlock").is_some()),
        "addresses only, no namespace or pod selectors: {to:?}"
    );
    // The metrics port's ingress is the base's.
    assert!(!seq_at(np, "spec.ingress").is_empty());
}

/// Every selector the overlay and the examples ship, with the class each request uses.
pub fn shipped_selectors(overlay: &Rendered, examples: &Rendered) -> Vec<(String, Vec<Selector>)> {
    let class_selectors = |class: &str| -> Vec<String> {
        seq_at(overlay.object("DeviceClass", class), "spec.selectors")
            .iter()
            .map(|s| str_at(s, "cel.expression").to_string())
            .collect()
    };
    let mut out = Vec::new();
    for class in overlay.of_kind("DeviceClass") {
        let name = str_at(class, "metadata.name");
        out.push((
            format!("DeviceClass {name}"),
            class_selectors(name).iter().map(|e| compile(e)).collect(),
        ));
    }
    for object in &examples.objects {
        let spec = match str_at(object, "kind") {
            "ResourceClaimTemplate" => get(object, "spec.spec"),
            "ResourceClaim" => get(object, "spec"),
            _ => continue,
        };
        for request in seq_at(spec, "devices.requests") {
            let exactly = &request["exactly"];
            let class = str_at(exactly, "deviceClassName");
            let mut expressions = class_selectors(class);
            if let Some(selectors) = exactly["selectors"].as_sequence() {
                expressions.extend(
                    selectors
                        .iter()
                        .map(|s| str_at(s, "cel.expression").to_string()),
                );
            }
            out.push((
                format!(
                    "{} {} request {}",
                    str_at(object, "kind"),
                    str_at(object, "metadata.name"),
                    str_at(request, "name")
                ),
                expressions.iter().map(|e| compile(e)).collect(),
            ));
        }
    }
    out
}

fn compile(expression: &str) -> Selector {
    Selector::compile(expression).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `device` (a ResourceSlice entry of `driver`) passes every selector.
pub fn passes(selectors: &[Selector], driver: &str, device: &serde_json::Value) -> bool {
    selectors.iter().all(|s| {
        s.matches(driver, device)
            .unwrap_or_else(|e| panic!("device {}: {e}", device["name"]))
    })
}

/// A node for the end-to-end test: two whole GPUs of different memory, and one in MIG mode.
const E2E_FIXTURE: &str = r#"
driverVersion: "580.95.05"
cudaDriverVersion: "13.0"
gpus:
  - model: NVIDIA H100 80GB HBM3
    pciBusId: "0000:18:00.0"
  - model: NVIDIA A10
    memoryMiB: 23028
    pciBusId: "0000:2a:00.0"
  - model: NVIDIA H100 80GB HBM3
    pciBusId: "0000:3a:00.0"
    mig:
      devices: [3g.40gb, 1g.10gb, 1g.10gb]
"#;

const E2E_NODE: &str = "gpu-node-1";

/// What the shipped classes and examples select among the devices the agent really publishes,
/// then the claim the "≥ 40 GiB" example asks for, allocated as the scheduler would and prepared
/// as the kubelet would: the agent (real binary, mock backend, `--dra`) against the test API
/// server and the test DRA kubelet.
#[tokio::test]
async fn the_shipped_selectors_match_what_the_agent_publishes_and_a_claim_prepares() {
    let Some((overlay, examples)) = rendered() else {
        return;
    };
    let server = crate::apiserver::TestApiServer::start().await;
    server.add_node(E2E_NODE);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path());
    let fixture = crate::common::write_file(dir.path(), "fixture.yaml", E2E_FIXTURE);
    let registry = dir.path().join("plugins_registry");
    let plugins = dir.path().join("plugins");
    let mut kubelet = crate::common::dra_kubelet::DraKubelet::start(&registry);
    let _agent = crate::common::Agent::spawn(
        dir.path(),
        &[
            "--mock-fixture",
            crate::common::arg(&fixture),
            "--dra",
            "--node-name",
            E2E_NODE,
            "--kubeconfig",
            crate::common::arg(&kubeconfig),
            "--kubelet-registry-dir",
            crate::common::arg(&registry),
            "--kubelet-plugins-dir",
            crate::common::arg(&plugins),
        ],
    );
    crate::common::eventually("the agent to publish its ResourceSlice", || {
        !server.slices().is_empty()
    })
    .await;
    let slices = server.slices();
    let devices: Vec<serde_json::Value> = slices
        .iter()
        .inspect(|s| {
            assert_eq!(s["spec"]["driver"], DRIVER);
            assert_eq!(s["spec"]["nodeName"], E2E_NODE);
            assert_eq!(s["spec"]["pool"]["name"], E2E_NODE);
        })
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .collect();
    let names = |selectors: &[Selector]| -> BTreeSet<String> {
        devices
            .iter()
            .filter(|d| passes(selectors, DRIVER, d))
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };
    let shipped = shipped_selectors(&overlay, &examples);
    let selected: std::collections::BTreeMap<String, BTreeSet<String>> = shipped
        .iter()
        .map(|(what, selectors)| (what.clone(), names(selectors)))
        .collect();
    for (what, devices) in &selected {
        assert!(
            !devices.is_empty(),
            "{what} selects nothing the agent publishes"
        );
    }
    let mig_names: BTreeSet<String> = devices
        .iter()
        .filter_map(|d| d["name"].as_str())
        .filter(|n| n.contains("-mig-"))
        .map(String::from)
        .collect();
    assert_eq!(mig_names.len(), 3, "{devices:?}");
    assert_eq!(
        selected["DeviceClass gpu.gpu-agent.io"],
        set(&["gpu-0", "gpu-1"])
    );
    assert_eq!(selected["DeviceClass mig.gpu-agent.io"], mig_names);
    assert_eq!(
        selected["ResourceClaimTemplate one-gpu-40gi request gpu"],
        set(&["gpu-0"]),
        "the A10's 23 GiB is under 40 GiB"
    );
    let one_g: BTreeSet<String> = devices
        .iter()
        .filter(|d| d["attributes"]["profile"]["string"] == "1g.10gb")
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(one_g.len(), 2);
    assert_eq!(
        selected["ResourceClaimTemplate one-mig-1g-10gb request mig"],
        one_g
    );

    // The scheduler allocates the "≥ 40 GiB" request; the kubelet prepares it.
    let device = selected["ResourceClaimTemplate one-gpu-40gi request gpu"]
        .first()
        .unwrap()
        .clone();
    let stored = server.insert_claim(json!({
        "metadata": {"name": "big-memory-gpu", "namespace": "gpu-dra-examples"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}},
        "status": {"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": DRIVER, "pool": E2E_NODE, "device": device}
        ]}}}
    }));
    let uid = stored["metadata"]["uid"].as_str().unwrap().to_string();
    let plugin = kubelet.next_registration().await;
    let client = crate::common::dra_kubelet::DraClient::connect(&plugin).await;
    let claim = ("gpu-dra-examples", uid.as_str(), "big-memory-gpu");
    let answer = client.prepare(&[claim]).await;
    let prepared = &answer[&uid];
    assert_eq!(prepared.error, "");
    assert_eq!(prepared.devices.len(), 1);
    assert_eq!(
        prepared.devices[0].cdi_device_ids,
        [format!("k8s.gpu-agent.io/claim={uid}-{device}")]
    );
    let spec = dir
        .path()
        .join("cdi")
        .join(format!("k8s.gpu-agent.io-claim_{uid}.json"));
    assert!(spec.exists(), "{}", spec.display());
    let unprepared = client.unprepare(&[claim]).await;
    assert_eq!(unprepared[&uid], "");
    assert!(!spec.exists());
}
