//! The webhook's manifests (`daemonset/webhook/`) agree with the binary and with each other: the
//! ConfigMap holds a catalog and config the webhook accepts, the Deployment's env names and file
//! paths are ones the binary reads, the Service and webhook configuration point at the right
//! port and path, and the kustomizations render (where kubectl is installed).

mod common;

use std::path::Path;

use common::{kubectl, kustomize};
use gpu_agent::strategy::Catalog;
use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn base(file: &str) -> Value {
    let path = Path::new(ROOT).join("daemonset/webhook/base").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for key in path {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*key],
        };
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    s(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("no string at {path:?}"))
}

#[test]
fn the_configmap_holds_a_catalog_and_config_the_webhook_accepts() {
    let cm = base("configmap.yaml");
    let catalog = Catalog::parse(str_at(&cm, &["data", "catalog.yaml"])).expect("a valid catalog");
    assert!(catalog.offers.len() >= 3);
    let config =
        gpu_agent::config::parse(str_at(&cm, &["data", "config.yaml"])).expect("a valid config");
    assert_eq!(config.strategy, Default::default());
}

#[test]
fn the_deployment_uses_flags_and_files_the_binary_reads() {
    let deployment = base("deployment.yaml");
    let cm = base("configmap.yaml");
    let pod = s(&deployment, &["spec", "template", "spec"]);
    let container = s(pod, &["containers", "0"]);
    assert_eq!(s(container, &["args"]), &Value::from(vec!["webhook"]));

    let (code, help, err) = common::run_cli(&["webhook", "--help"]);
    assert_eq!(code, 0, "{err}");
    let env: Vec<(String, String)> = s(container, &["env"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                str_at(e, &["name"]).to_string(),
                str_at(e, &["value"]).to_string(),
            )
        })
        .collect();
    for (name, _) in &env {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "{name} is not read by `gpu-agent webhook`:\n{help}"
        );
    }
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} not set"))
    };

    // Every file the env names lies under a mounted volume that provides it.
    let mounts = s(container, &["volumeMounts"]).as_sequence().unwrap();
    let volumes = s(pod, &["volumes"]).as_sequence().unwrap();
    let source = |file: &str| -> (Value, String) {
        let mount = mounts
            .iter()
            .find(|m| file.starts_with(&format!("{}/", str_at(m, &["mountPath"]))))
            .unwrap_or_else(|| panic!("{file} is not under a mount"));
        let key = file[str_at(mount, &["mountPath"]).len() + 1..].to_string();
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume")
            .clone();
        (volume, key)
    };
    for name in ["GPU_AGENT_WEBHOOK_CATALOG", "GPU_AGENT_WEBHOOK_CONFIG"] {
        let (volume, key) = source(&value(name));
        assert_eq!(
            s(&volume, &["configMap", "name"]),
            s(&cm, &["metadata", "name"])
        );
        assert!(
            cm["data"][key.as_str()].is_string(),
            "ConfigMap has no {key}"
        );
    }
    for (name, key) in [
        ("GPU_AGENT_WEBHOOK_TLS_CERT_FILE", "tls.crt"),
        ("GPU_AGENT_WEBHOOK_TLS_KEY_FILE", "tls.key"),
    ] {
        let (volume, file) = source(&value(name));
        assert_eq!(file, key);
        assert_eq!(
            str_at(&volume, &["secret", "secretName"]),
            "gpu-agent-webhook-tls"
        );
    }

    // The port the webhook listens on is the container port the probes and Service use.
    let port = value("GPU_AGENT_WEBHOOK_LISTEN_ADDR")
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let ports = s(container, &["ports"]).as_sequence().unwrap();
    let https = ports
        .iter()
        .find(|p| p["name"] == "https")
        .expect("an https port");
    assert_eq!(s(https, &["containerPort"]).as_u64(), Some(port));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(str_at(container, &[probe, "httpGet", "path"]), "/healthz");
        assert_eq!(str_at(container, &[probe, "httpGet", "scheme"]), "HTTPS");
    }
    // Restricted Pod Security: non-root, read-only, nothing extra.
    assert_eq!(
        s(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        s(container, &["securityContext", "readOnlyRootFilesystem"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        s(container, &["securityContext", "allowPrivilegeEscalation"]).as_bool(),
        Some(false)
    );
}

#[test]
fn the_webhook_configuration_is_safe_and_points_at_the_service() {
    let mwc = base("mutatingwebhookconfiguration.yaml");
    let service = base("service.yaml");
    let namespace = base("namespace.yaml");
    let hook = s(&mwc, &["webhooks", "0"]);
    assert_eq!(str_at(hook, &["failurePolicy"]), "Ignore");
    assert_eq!(str_at(hook, &["sideEffects"]), "None");
    assert_eq!(
        s(hook, &["admissionReviewVersions"]),
        &Value::from(vec!["v1"])
    );
    let timeout = s(hook, &["timeoutSeconds"]).as_u64().unwrap();
    assert!((1..=10).contains(&timeout), "timeoutSeconds {timeout}");
    let rule = s(hook, &["rules", "0"]);
    assert_eq!(s(rule, &["resources"]), &Value::from(vec!["pods"]));
    assert_eq!(s(rule, &["operations"]), &Value::from(vec!["CREATE"]));

    let target = s(hook, &["clientConfig", "service"]);
    assert_eq!(str_at(target, &["path"]), "/mutate");
    assert_eq!(s(target, &["name"]), s(&service, &["metadata", "name"]));
    assert_eq!(
        s(target, &["namespace"]),
        s(&namespace, &["metadata", "name"])
    );
    assert_eq!(
        s(target, &["port"]),
        s(&service, &["spec", "ports", "0", "port"])
    );
    assert_eq!(
        str_at(&service, &["spec", "ports", "0", "targetPort"]),
        "https"
    );

    // The webhook's own namespace and the control plane's are never sent to it.
    let excluded = s(hook, &["namespaceSelector", "matchExpressions", "0"]);
    assert_eq!(str_at(excluded, &["key"]), "kubernetes.io/metadata.name");
    assert_eq!(str_at(excluded, &["operator"]), "NotIn");
    let names: Vec<&str> = s(excluded, &["values"])
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for ns in ["kube-system", "gpu-agent-webhook"] {
        assert!(names.contains(&ns), "{ns} not excluded: {names:?}");
    }
}

/// The objects a kustomization (relative to the repository) renders to.
fn render(kubectl: &Path, dir: &str) -> Vec<Value> {
    kustomize(kubectl, &Path::new(ROOT).join(dir)).1
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn both_kustomizations_render_and_cert_manager_wires_the_certificate() {
    let Some(kubectl) = kubectl() else { return };
    let plain = render(&kubectl, "daemonset/webhook/base");
    for o in &plain {
        if o["kind"] != "Namespace" && o["kind"] != "MutatingWebhookConfiguration" {
            assert_eq!(o["metadata"]["namespace"], "gpu-agent-webhook", "{o:?}");
        }
    }
    let deployment = find(&plain, "Deployment");
    let image = str_at(
        deployment,
        &["spec", "template", "spec", "containers", "0", "image"],
    );
    assert_eq!(image, format!("gpu-agent:{}", env!("CARGO_PKG_VERSION")));
    assert!(plain.iter().all(|o| o["kind"] != "Certificate"));

    let managed = render(&kubectl, "daemonset/webhook");
    let cert = find(&managed, "Certificate");
    assert_eq!(
        str_at(cert, &["spec", "secretName"]),
        "gpu-agent-webhook-tls"
    );
    assert_eq!(cert["metadata"]["namespace"], "gpu-agent-webhook");
    let dns: Vec<&str> = s(cert, &["spec", "dnsNames"])
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        dns.contains(&"gpu-agent-webhook.gpu-agent-webhook.svc"),
        "{dns:?}"
    );
    let mwc = find(&managed, "MutatingWebhookConfiguration");
    let inject = str_at(
        mwc,
        &["metadata", "annotations", "cert-manager.io/inject-ca-from"],
    );
    assert_eq!(
        inject,
        format!(
            "{}/{}",
            str_at(cert, &["metadata", "namespace"]),
            str_at(cert, &["metadata", "name"])
        )
    );
}
