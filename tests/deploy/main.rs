//! The deployment an operator applies: every kustomization under `daemonset/` renders with
//! `kubectl kustomize`, every rendered object passes the Kubernetes OpenAPI schemas
//! (`kubernetes-validate`, installed by `.ci/run` into `.venv/`), the DaemonSet keeps the
//! security and node wiring the agent needs (the host's CDI directory only where a CDI strategy
//! is configured), the NetworkPolicies admit only what they should, images can be pinned by
//! digest, the ConfigMaps hold configs the agent accepts, the examples ask only for resources the
//! agent advertises, the image builds the way CI builds, and CI's `cargo audit` step never fails
//! the build.
//!
//! kubectl and kubernetes-validate are external tools: where one is missing, the tests that need
//! it print why and return.

mod agent;
#[path = "../common/apiserver.rs"]
mod apiserver;
mod audit;
#[path = "../common/cel.rs"]
mod cel;
#[path = "../common/mod.rs"]
mod common;
mod dra;
mod hardening;
mod image;
mod mps;
mod render;
mod yaml;

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use agent::{agent_container, gpu_resources, start_like_the_daemonset, AgentInputs};
use common::{arg, kubectl, run_cli};
use render::{
    render_overlay, render_with_components, render_with_servicemonitor, validator, Rendered,
};
use yaml::{assert_selects, env_values, get, named, quantity, seq_at, str_at, strings};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const AGENT: &str = env!("CARGO_BIN_EXE_gpu-agent");

/// Every deployable kustomization, relative to `daemonset/`.
pub const OVERLAYS: &[&str] = &[
    "base",
    "overlays/time-slicing",
    "overlays/mig-mixed",
    "overlays/vgpu",
    "overlays/mock",
    "overlays/dcgm",
    "overlays/cdi",
    "overlays/mps",
];
const MIG_MIXED: &str = "overlays/mig-mixed";
const CDI: &str = "overlays/cdi";
/// The webhook's kustomizations, relative to `daemonset/`.
pub const WEBHOOK: &[&str] = &["webhook/base", "webhook"];
const MOCK: &str = "overlays/mock";
const DCGM: &str = "overlays/dcgm";

/// The job GpuAgentDown (components/alerts) watches: `up{job="gpu-agent"}`.
const JOB: &str = "gpu-agent";

/// Host directories every overlay's agent needs, and whether it only reads them.
const HOST_MOUNTS: &[(&str, bool)] = &[
    ("/var/lib/kubelet/device-plugins", false),
    ("/var/lib/kubelet/pod-resources", true),
    ("/etc/kubernetes/node-feature-discovery/features.d", false),
];

/// The host's CDI spec directory: mounted (read-write) exactly where a CDI strategy is
/// configured.
const CDI_DIR: &str = "/var/run/cdi";

/// Every overlay's DaemonSet, with the pod spec and the agent container.
fn each_daemonset(
    kubectl: &std::path::Path,
    mut check: impl FnMut(&str, &Rendered, &Value, &Value),
) {
    for overlay in OVERLAYS {
        let r = render_overlay(kubectl, overlay);
        let ds = r.one("DaemonSet");
        check(
            overlay,
            &r,
            get(ds, "spec.template.spec"),
            agent_container(ds),
        );
    }
}

#[test]
fn every_kustomization_renders_and_passes_the_kubernetes_schemas() {
    let Some(kubectl) = kubectl() else { return };
    let mut all: Vec<Rendered> = OVERLAYS
        .iter()
        .chain(&["examples"])
        .map(|overlay| render_overlay(&kubectl, overlay))
        .collect();
    all.push(render_with_components(
        &kubectl,
        &["base"],
        &["components/servicemonitor", "components/alerts"],
    ));
    all.push(render_with_components(
        &kubectl,
        &[DCGM],
        &["components/alerts"],
    ));
    // dcgm names on a sharing overlay.
    all.push(render_with_components(
        &kubectl,
        &["overlays/time-slicing"],
        &["components/dcgm", "components/alerts"],
    ));
    // The CDI mount on a sharing overlay.
    all.push(render_with_components(
        &kubectl,
        &["overlays/time-slicing"],
        &["components/cdi"],
    ));
    all.extend(WEBHOOK.iter().map(|k| render_overlay(&kubectl, k)));
    for r in &all {
        for object in &r.objects {
            assert!(
                !str_at(object, "apiVersion").is_empty()
                    && !str_at(object, "metadata.name").is_empty(),
                "{}: object without apiVersion or name:\n{}",
                r.name,
                r.text
            );
        }
    }
    let Some(validator) = validator() else { return };
    for r in &all {
        render::validate(&validator, r);
    }
}

#[test]
fn the_agent_runs_without_privileges() {
    let Some(kubectl) = kubectl() else { return };
    each_daemonset(&kubectl, |overlay, r, pod, c| {
        let sc = get(c, "securityContext");
        let flag = |v: &Value, key: &str| get(v, key).as_bool();
        assert_eq!(
            flag(sc, "allowPrivilegeEscalation"),
            Some(false),
            "{overlay}"
        );
        assert_eq!(flag(sc, "readOnlyRootFilesystem"), Some(true), "{overlay}");
        assert_ne!(flag(sc, "privileged"), Some(true), "{overlay}");
        assert_eq!(strings(get(sc, "capabilities.drop")), ["ALL"], "{overlay}");
        assert_eq!(
            str_at(pod, "securityContext.seccompProfile.type"),
            "RuntimeDefault",
            "{overlay}"
        );
        assert_eq!(
            flag(pod, "automountServiceAccountToken"),
            Some(false),
            "{overlay}: no API token"
        );
        for host_namespace in ["hostNetwork", "hostPID", "hostIPC"] {
            assert_ne!(
                flag(pod, host_namespace),
                Some(true),
                "{overlay}: {host_namespace}"
            );
        }

        // SYS_ADMIN only where MIG monitoring asks for it.
        let added = strings(get(sc, "capabilities.add"));
        let env = env_values(c);
        let monitor = env.get("NVIDIA_MIG_MONITOR_DEVICES").map(String::as_str);
        if overlay == MIG_MIXED {
            assert_eq!(
                added,
                ["SYS_ADMIN"],
                "{overlay}: MIG monitoring needs SYS_ADMIN"
            );
            assert_eq!(monitor, Some("all"), "{overlay}");
            assert_eq!(
                env.get("MIG_STRATEGY").map(String::as_str),
                Some("mixed"),
                "{overlay}"
            );
        } else {
            assert!(added.is_empty(), "{overlay} adds capabilities {added:?}");
            assert_eq!(monitor, None, "{overlay}");
            assert!(
                !r.text.contains("SYS_ADMIN"),
                "{overlay} mentions SYS_ADMIN"
            );
        }
    });
}

#[test]
fn the_agent_is_wired_to_the_kubelet_and_the_node() {
    let Some(kubectl) = kubectl() else { return };
    each_daemonset(&kubectl, |overlay, r, pod, c| {
        let ds = r.one("DaemonSet");
        assert_eq!(str_at(ds, "metadata.namespace"), "gpu-agent", "{overlay}");
        assert_eq!(
            str_at(pod, "priorityClassName"),
            "system-node-critical",
            "{overlay}"
        );

        let node_name = named(seq_at(c, "env"), "NODE_NAME").expect("NODE_NAME is set");
        let field = str_at(node_name, "valueFrom.fieldRef.fieldPath");
        assert_eq!(
            field, "spec.nodeName",
            "{overlay}: NODE_NAME from the downward API"
        );

        // Host paths, mounted where the agent's defaults look for them.
        for (path, read_only) in HOST_MOUNTS {
            let volume = seq_at(pod, "volumes")
                .iter()
                .find(|v| str_at(v, "hostPath.path") == *path)
                .unwrap_or_else(|| panic!("{overlay}: no hostPath volume for {path}"));
            let mount = named(seq_at(c, "volumeMounts"), str_at(volume, "name"))
                .unwrap_or_else(|| panic!("{overlay}: {path} is not mounted"));
            assert_eq!(str_at(mount, "mountPath"), *path, "{overlay}");
            let ro = get(mount, "readOnly").as_bool().unwrap_or(false);
            assert_eq!(ro, *read_only, "{overlay}: {path} readOnly");
        }

        // The CDI spec dir only where the agent writes CDI specs; nothing else under it.
        let cdi = AgentInputs::of(r).configures_cdi();
        assert_eq!(cdi, overlay == CDI, "{overlay}: CDI strategy");
        let cdi_volumes: Vec<&Value> = seq_at(pod, "volumes")
            .iter()
            .filter(|v| str_at(v, "hostPath.path").starts_with(CDI_DIR))
            .collect();
        let cdi_mounts: Vec<&Value> = seq_at(c, "volumeMounts")
            .iter()
            .filter(|m| str_at(m, "mountPath").starts_with(CDI_DIR))
            .collect();
        if cdi {
            assert_eq!(cdi_volumes.len(), 1, "{overlay}: the {CDI_DIR} volume");
            assert_eq!(cdi_mounts.len(), 1, "{overlay}: the {CDI_DIR} mount");
            assert_eq!(str_at(cdi_volumes[0], "hostPath.path"), CDI_DIR);
            assert_eq!(str_at(cdi_mounts[0], "mountPath"), CDI_DIR);
            assert_eq!(
                str_at(cdi_mounts[0], "name"),
                str_at(cdi_volumes[0], "name")
            );
            assert_ne!(
                get(cdi_mounts[0], "readOnly").as_bool(),
                Some(true),
                "{overlay}: the agent writes its specs there"
            );
        } else {
            assert!(
                cdi_volumes.is_empty() && cdi_mounts.is_empty() && !r.text.contains(CDI_DIR),
                "{overlay} configures no CDI strategy but mounts {CDI_DIR}"
            );
        }

        // Probes on the metrics port, which the agent serves on its default address.
        let port = named(seq_at(c, "ports"), "metrics").expect("a port named metrics");
        assert_eq!(get(port, "containerPort").as_u64(), Some(9400), "{overlay}");
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(
                str_at(c, &format!("{probe}.httpGet.path")),
                path,
                "{overlay}"
            );
            assert_eq!(
                str_at(c, &format!("{probe}.httpGet.port")),
                "metrics",
                "{overlay}"
            );
        }
        let args = strings(get(c, "args"));
        assert_eq!(args.first().map(String::as_str), Some("run"), "{overlay}");
        let env = env_values(c);
        // dcgm-exporter's metric names in the dcgm overlay only; the default elsewhere.
        assert_eq!(
            env.get("GPU_AGENT_METRICS_NAMES").map(String::as_str),
            (overlay == DCGM).then_some("dcgm"),
            "{overlay}: GPU_AGENT_METRICS_NAMES"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("--metrics-names")),
            "{overlay}: metric names by env"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("--metrics-addr"))
                && !env.contains_key("GPU_AGENT_METRICS_ADDR"),
            "{overlay}: the probes rely on the default metrics address 0.0.0.0:9400"
        );

        // Requests and limits for CPU and memory.
        for res in ["cpu", "memory"] {
            let request = quantity(get(c, &format!("resources.requests.{res}")));
            let limit = quantity(get(c, &format!("resources.limits.{res}")));
            assert!(
                request > 0.0 && limit >= request,
                "{overlay}: {res} {request} ≤ {limit}"
            );
        }
    });
}

/// A nodeSelectorTerm as (key, operator, values) triples.
type Term = Vec<(String, String, Vec<String>)>;

fn expr(key: &str, op: &str, values: &[&str]) -> (String, String, Vec<String>) {
    let values = values.iter().map(|s| s.to_string()).collect();
    (key.to_string(), op.to_string(), values)
}

#[test]
fn the_agent_runs_on_gpu_nodes_and_the_mock_only_where_asked() {
    let Some(kubectl) = kubectl() else { return };
    each_daemonset(&kubectl, |overlay, _, pod, c| {
        let tolerations = seq_at(pod, "tolerations");
        let toleration = |key: &str| {
            tolerations
                .iter()
                .find(|t| str_at(t, "key") == key)
                .unwrap_or_else(|| panic!("{overlay}: no toleration for {key}"))
        };
        assert_eq!(
            str_at(toleration("nvidia.com/gpu"), "operator"),
            "Exists",
            "{overlay}"
        );
        assert_eq!(
            str_at(toleration("nvidia.com/gpu"), "effect"),
            "NoSchedule",
            "{overlay}"
        );
        assert_eq!(
            str_at(toleration("CriticalAddonsOnly"), "operator"),
            "Exists",
            "{overlay}"
        );

        let terms: Vec<Term> = seq_at(
            pod,
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
        )
        .iter()
        .map(|t| {
            seq_at(t, "matchExpressions")
                .iter()
                .map(|e| {
                    let values = strings(get(e, "values"));
                    (str_at(e, "key").to_string(), str_at(e, "operator").to_string(), values)
                })
                .collect()
        })
        .collect();
        let nvidia_pci = "feature.node.kubernetes.io/pci-10de.present";
        let args = strings(get(c, "args"));
        let mock = args.windows(2).any(|w| w == ["--backend", "mock"]);
        assert!(
            !env_values(c).contains_key("GPU_AGENT_BACKEND"),
            "{overlay}: backend by args"
        );
        if overlay == MOCK {
            assert!(mock, "{overlay} runs --backend mock");
            let opted_in_without_nvidia = vec![
                expr("gpu-agent/mock", "In", &["true"]),
                expr(nvidia_pci, "DoesNotExist", &[]),
            ];
            assert_eq!(terms, [opted_in_without_nvidia], "{overlay}");
        } else {
            assert!(!mock, "{overlay} runs the real (NVML) backend");
            // Two terms: ORed.
            let gpu_nodes = [
                vec![expr("nvidia.com/gpu.present", "In", &["true"])],
                vec![expr(nvidia_pci, "In", &["true"])],
            ];
            assert_eq!(terms, gpu_nodes, "{overlay}");
        }
    });
}

#[test]
fn metrics_are_scrapable_through_a_headless_service_and_a_servicemonitor() {
    let Some(kubectl) = kubectl() else { return };
    let r = render_with_servicemonitor(&kubectl);
    let ds = r.one("DaemonSet");
    let pod_labels = get(ds, "spec.template.metadata.labels");
    let service = r.one("Service");

    assert_eq!(
        str_at(service, "spec.clusterIP"),
        "None",
        "headless: every agent is scraped"
    );
    let port = named(seq_at(service, "spec.ports"), "metrics").expect("Service port metrics");
    assert_eq!(get(port, "port").as_u64(), Some(9400));
    assert_eq!(str_at(port, "targetPort"), "metrics");
    let annotations = get(service, "metadata.annotations");
    for (key, value) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "9400"),
        ("prometheus.io/path", "/metrics"),
    ] {
        let got = annotations.get(key).and_then(Value::as_str);
        assert_eq!(got, Some(value), "annotation {key}");
    }
    assert_selects(
        get(service, "spec.selector"),
        pod_labels,
        "Service → agent pods",
    );
    assert_selects(
        get(ds, "spec.selector.matchLabels"),
        pod_labels,
        "DaemonSet → its pods",
    );

    let endpoint = assert_scrapes_the_agent(&r);
    assert_eq!(
        get(endpoint, "honorLabels").as_bool(),
        Some(true),
        "gpu_container_allocation's namespace/pod/container must survive the scrape"
    );

    // Only with the component: clusters without the Prometheus Operator lack the CRD.
    assert!(render_overlay(&kubectl, "base")
        .of_kind("ServiceMonitor")
        .is_empty());
}

/// The rendered ServiceMonitor scrapes the agent's Service on its metrics port, under the job
/// the alerts expect, with the node as a label: its one endpoint.
fn assert_scrapes_the_agent(r: &Rendered) -> &Value {
    let name = &r.name;
    let service = r.one("Service");
    let monitor = r.one("ServiceMonitor");
    assert_eq!(str_at(monitor, "apiVersion"), "monitoring.coreos.com/v1");
    assert_eq!(
        str_at(monitor, "metadata.namespace"),
        str_at(service, "metadata.namespace"),
        "{name}"
    );
    let service_labels = get(service, "metadata.labels");
    assert_selects(
        get(monitor, "spec.selector.matchLabels"),
        service_labels,
        &format!("{name}: ServiceMonitor → Service"),
    );
    // The Prometheus Operator names the job after the Service label jobLabel names (without
    // one, after the Service: gpu-agent-metrics).
    let job_label = str_at(monitor, "spec.jobLabel");
    assert_eq!(
        service_labels.get(job_label).and_then(Value::as_str),
        Some(JOB),
        "{name}: the job is {JOB}, which GpuAgentDown watches"
    );
    let endpoints = seq_at(monitor, "spec.endpoints");
    assert_eq!(endpoints.len(), 1, "{name}");
    let endpoint = &endpoints[0];
    assert_eq!(str_at(endpoint, "port"), "metrics", "{name}");
    assert_eq!(str_at(endpoint, "path"), "/metrics", "{name}");
    assert!(
        seq_at(endpoint, "relabelings").iter().any(|r| {
            strings(get(r, "sourceLabels")) == ["__meta_kubernetes_pod_node_name"]
                && str_at(r, "targetLabel") == "node"
        }),
        "{name}: the node label on every series"
    );
    endpoint
}

#[test]
fn the_dcgm_overlay_is_scraped_as_dcgm_exporter_is() {
    let Some(kubectl) = kubectl() else { return };
    let overlay = render_overlay(&kubectl, DCGM);
    // The component does the same on a sharing overlay, which keeps its config.
    let shared = render_with_components(&kubectl, &["overlays/time-slicing"], &["components/dcgm"]);
    let shared_env = env_values(agent_container(shared.one("DaemonSet")));
    assert_eq!(
        shared_env
            .get("GPU_AGENT_METRICS_NAMES")
            .map(String::as_str),
        Some("dcgm")
    );
    assert!(shared_env.contains_key("CONFIG_FILE"));
    for r in [&overlay, &shared] {
        let name = &r.name;
        let endpoint = assert_scrapes_the_agent(r);
        // dcgm-exporter's helm chart: every 15s, 10s timeout, honorLabels false. The last is
        // what turns the workload's namespace/pod/container into exported_namespace/
        // exported_pod/exported_container, which dashboards and alerts written for
        // dcgm-exporter query.
        assert_eq!(str_at(endpoint, "interval"), "15s", "{name}");
        assert_eq!(str_at(endpoint, "scrapeTimeout"), "10s", "{name}");
        assert_eq!(
            get(endpoint, "honorLabels").as_bool(),
            Some(false),
            "{name}: exported_pod queries need honorLabels false"
        );
        let monitor = r.one("ServiceMonitor");
        assert_eq!(
            strings(get(monitor, "spec.namespaceSelector.matchNames")),
            ["gpu-agent"],
            "{name}"
        );
        // Scraped once, by the ServiceMonitor: not also through the Service annotations.
        let service = r.one("Service");
        assert_eq!(
            get(service, "metadata.annotations")
                .get("prometheus.io/scrape")
                .and_then(Value::as_str),
            Some("false"),
            "{name}"
        );
        // The same port as dcgm-exporter, 9400.
        let c = agent_container(r.one("DaemonSet"));
        let port = named(seq_at(c, "ports"), "metrics").expect("a port named metrics");
        assert_eq!(get(port, "containerPort").as_u64(), Some(9400), "{name}");
        // One ServiceMonitor name for both: components/dcgm and components/servicemonitor
        // cannot both end up in one kustomization.
        let component = render_with_servicemonitor(&kubectl);
        assert_eq!(
            str_at(monitor, "metadata.name"),
            str_at(component.one("ServiceMonitor"), "metadata.name"),
            "{name}"
        );
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn configmaps_hold_configs_and_fixtures_the_agent_accepts() {
    let Some(kubectl) = kubectl() else { return };
    for overlay in OVERLAYS {
        let inputs = AgentInputs::of(&render_overlay(&kubectl, overlay));
        let has_config = [
            "overlays/time-slicing",
            "overlays/vgpu",
            MOCK,
            CDI,
            "overlays/mps",
        ]
        .contains(overlay);
        assert_eq!(
            inputs.config.is_some(),
            has_config,
            "{overlay}: CONFIG_FILE"
        );
        assert_eq!(
            inputs.fixture.is_some(),
            *overlay == MOCK,
            "{overlay}: mock fixture"
        );
        if let Some(config) = &inputs.config {
            let (code, out, err) = run_cli(&["check-config", arg(config)]);
            assert_eq!(
                code, 0,
                "{overlay}: the agent refuses its config:\n{out}{err}"
            );
        }
    }

    // What each overlay advertises, on the mock overlay's node.
    let mock = AgentInputs::of(&render_overlay(&kubectl, MOCK));
    let fixture = mock.fixture.as_deref().expect("mock fixture");
    let advertises =
        |overlay: &str| AgentInputs::of(&render_overlay(&kubectl, overlay)).advertised(fixture);
    let mig = [
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/mig-2g.20gb",
        "nvidia.com/mig-3g.40gb",
    ];
    assert_eq!(advertises("base"), names(&["nvidia.com/gpu"]));
    assert_eq!(
        advertises("overlays/time-slicing"),
        names(&["nvidia.com/gpu.shared"])
    );
    assert_eq!(advertises("overlays/vgpu"), names(&["nvidia.com/gpu.vgpu"]));
    assert_eq!(advertises(DCGM), names(&["nvidia.com/gpu"]));
    assert_eq!(advertises(CDI), names(&["nvidia.com/gpu"]));
    assert_eq!(
        advertises(MIG_MIXED),
        names(&[&["nvidia.com/gpu"][..], &mig].concat())
    );
    // The fake node offers every kind of resource at once.
    let every = [
        &[
            "nvidia.com/gpu",
            "nvidia.com/gpu.shared",
            "nvidia.com/gpu.vgpu",
        ][..],
        &mig,
    ]
    .concat();
    assert_eq!(mock.advertised(fixture), names(&every));
}

#[test]
fn the_agent_starts_with_each_daemonsets_arguments_and_environment() {
    let Some(kubectl) = kubectl() else { return };
    let mock = AgentInputs::of(&render_overlay(&kubectl, MOCK));
    let fixture = mock.fixture.as_deref().expect("mock fixture");
    each_daemonset(&kubectl, |_, r, _, c| {
        start_like_the_daemonset(c, &AgentInputs::of(r), fixture);
    });
}

#[test]
fn examples_ask_only_for_resources_the_agent_advertises() {
    let Some(kubectl) = kubectl() else { return };
    let examples = render_overlay(&kubectl, "examples");
    let mock = AgentInputs::of(&render_overlay(&kubectl, MOCK));
    let fixture = mock.fixture.as_deref().expect("mock fixture");
    let on_mock = mock.advertised(fixture);

    let priority_classes: BTreeSet<String> = examples
        .of_kind("PriorityClass")
        .iter()
        .map(|p| str_at(p, "metadata.name").to_string())
        .collect();
    let expected = [
        "gpu-training",
        "gpu-inference-critical",
        "gpu-experimentation",
    ];
    assert_eq!(priority_classes, names(&expected));

    // Each example pod runs on the overlay its file names, and on the mock node.
    let pods = [
        ("gpu-exclusive", "base"),
        ("gpu-time-sliced", "overlays/time-slicing"),
        ("gpu-mig", MIG_MIXED),
        ("gpu-vgpu", "overlays/vgpu"),
    ];
    assert_eq!(
        examples.of_kind("Pod").len(),
        pods.len(),
        "one pod per strategy"
    );
    for (name, overlay) in pods {
        let pod = examples.object("Pod", name);
        let wanted = gpu_resources(pod);
        assert_eq!(
            wanted.len(),
            1,
            "{name} asks for one GPU resource: {wanted:?}"
        );
        let there = AgentInputs::of(&render_overlay(&kubectl, overlay)).advertised(fixture);
        assert!(
            wanted.is_subset(&there),
            "{name} wants {wanted:?}; {overlay} has {there:?}"
        );
        assert!(
            wanted.is_subset(&on_mock),
            "{name} does not schedule on the mock node"
        );
        let class = str_at(pod, "spec.priorityClassName");
        assert!(
            priority_classes.contains(class),
            "{name}: priority class {class:?}"
        );
    }

    // Quotas and limits name only advertised resources, and cover every example pod.
    let mut quota_names = BTreeSet::new();
    for quota in examples.of_kind("ResourceQuota") {
        for key in get(quota, "spec.hard").as_mapping().expect("hard").keys() {
            let key = key.as_str().expect("string key");
            let resource = key.strip_prefix("requests.").unwrap_or_else(|| {
                panic!("extended resources are quota'd as requests.<name>: {key}")
            });
            assert!(
                on_mock.contains(resource),
                "quota on {resource}, never advertised"
            );
            quota_names.insert(resource.to_string());
        }
    }
    for pod in examples.of_kind("Pod") {
        let name = str_at(pod, "metadata.name");
        assert!(
            gpu_resources(pod).is_subset(&quota_names),
            "the quota covers {name}"
        );
    }
    for limit_range in examples.of_kind("LimitRange") {
        for item in seq_at(limit_range, "spec.limits") {
            for section in ["max", "min", "default", "defaultRequest"] {
                let keys = get(item, section)
                    .as_mapping()
                    .into_iter()
                    .flat_map(|m| m.keys());
                for key in keys
                    .filter_map(Value::as_str)
                    .filter(|k| k.starts_with("nvidia.com/"))
                {
                    assert!(
                        on_mock.contains(key),
                        "LimitRange names {key}, never advertised"
                    );
                    assert!(
                        section == "max" || section == "min",
                        "a {section} of {key} would give every container a GPU"
                    );
                }
            }
        }
    }
}
