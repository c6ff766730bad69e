//! What the agent makes of an overlay: the config and mock fixture its ConfigMaps hand it, and
//! the resource names `gpu-agent list` advertises with them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;

use crate::common::{send_signal, WAIT};
use crate::render::Rendered;
use crate::yaml::{env_values, get, named, seq_at, str_at, strings};
use crate::AGENT;

/// The NVIDIA-compatible overrides `run` reads from the environment.
const OVERRIDE_VARS: &[&str] = &[
    "MIG_STRATEGY",
    "FAIL_ON_INIT_ERROR",
    "DEVICE_LIST_STRATEGY",
    "DEVICE_ID_STRATEGY",
    "PASS_DEVICE_SPECS",
];

pub fn agent_container(ds: &Value) -> &Value {
    named(seq_at(ds, "spec.template.spec.containers"), "gpu-agent")
        .expect("the DaemonSet has a gpu-agent container")
}

/// The sharing config and mock fixture an overlay hands the agent, written to files, and the
/// container's literal environment.
pub struct AgentInputs {
    _dir: tempfile::TempDir,
    pub config: Option<PathBuf>,
    pub fixture: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

impl AgentInputs {
    pub fn of(r: &Rendered) -> Self {
        let ds = r.one("DaemonSet");
        let c = agent_container(ds);
        let dir = tempfile::tempdir().expect("tempdir");
        let env = env_values(c);
        let extract = |var: &str| {
            let path = env.get(var)?;
            let (configmap, key) = configmap_file(ds, c, path);
            let data = get(r.object("ConfigMap", &configmap), "data")
                .get(key.as_str())
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{}: ConfigMap {configmap} has no {key}", r.name));
            let file = dir.path().join(format!("{configmap}-{key}"));
            std::fs::write(&file, data).expect("write");
            Some(file)
        };
        let config = extract("CONFIG_FILE");
        let fixture = extract("GPU_AGENT_MOCK_FIXTURE");
        Self {
            _dir: dir,
            config,
            fixture,
            env,
        }
    }

    /// The agent writes CDI specs with these inputs: a CDI device-list strategy is configured
    /// (`DEVICE_LIST_STRATEGY`, which overrides the config, else the config's
    /// `flags.plugin.deviceListStrategy`).
    pub fn configures_cdi(&self) -> bool {
        if let Some(list) = self.env.get("DEVICE_LIST_STRATEGY") {
            return list
                .split(',')
                .any(|s| matches!(s.trim(), "cdi-annotations" | "cdi-cri"));
        }
        let Some(path) = &self.config else {
            return false;
        };
        let text = std::fs::read_to_string(path).expect("read config");
        let config =
            gpu_agent::config::parse(&text).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        config
            .plugin
            .device_list_strategies
            .iter()
            .any(|s| s.uses_cdi())
    }

    /// Resource names `gpu-agent list` advertises with these inputs on the node `fixture`.
    pub fn advertised(&self, fixture: &Path) -> BTreeSet<String> {
        let mut command = Command::new(AGENT);
        command
            .args([
                "list",
                "--output",
                "json",
                "--backend",
                "mock",
                "--mock-fixture",
            ])
            .arg(fixture)
            .env_clear();
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        for var in OVERRIDE_VARS {
            if let Some(value) = self.env.get(*var) {
                command.env(var, value);
            }
        }
        let out = command.output().expect("run gpu-agent list");
        assert!(
            out.status.success(),
            "gpu-agent list fails on these inputs:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("list --output json");
        doc["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["name"].as_str().expect("name").to_string())
            .collect()
    }
}

/// Start `gpu-agent` with the container's args and environment, host paths moved into a temp
/// dir, the real backend swapped for the mock on `fixture`. Returns once the agent serves its
/// sockets (it then waits for a kubelet); panics with its log if it exits or never serves.
pub fn start_like_the_daemonset(container: &Value, inputs: &AgentInputs, fixture: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("agent.log");
    let mut args = strings(get(container, "args"));
    if !args.windows(2).any(|w| w == ["--backend", "mock"]) {
        args.extend(["--backend".into(), "mock".into()]);
    }
    let mut command = Command::new(AGENT);
    command
        .args(&args)
        .arg("--mock-fixture")
        .arg(fixture)
        .arg("--device-plugin-dir")
        .arg(dir.path())
        .arg("--pod-resources-socket")
        .arg(dir.path().join("pod-resources.sock"))
        .arg("--cdi-spec-dir")
        .arg(dir.path().join("cdi"))
        .arg("--nfd-features-file")
        .arg(dir.path().join("features"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env_clear()
        .envs(&inputs.env)
        .env("NODE_NAME", "deploy-test-node")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    if let Some(config) = &inputs.config {
        command.env("CONFIG_FILE", config);
    }
    let mut child = command.spawn().expect("spawn gpu-agent");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + WAIT;
    let serving = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("gpu-agent {args:?} exited with {status}:\n{}", logs());
        }
        let socket = std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("gpu-agent-"));
        if socket || Instant::now() > deadline {
            break socket;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    send_signal(&child, libc::SIGTERM);
    let status = child.wait().expect("wait for gpu-agent");
    assert!(
        serving,
        "gpu-agent {args:?} never served a socket:\n{}",
        logs()
    );
    assert!(
        status.success(),
        "gpu-agent {args:?} stopped with {status}:\n{}",
        logs()
    );
    // The CDI dir does not exist here, as on a node whose DaemonSet does not mount it: without a
    // CDI strategy the agent starts all the same and never creates it; with one it writes the
    // spec there.
    let spec = dir.path().join("cdi/k8s.gpu-agent.io-gpu.json");
    if inputs.configures_cdi() {
        assert!(spec.is_file(), "no CDI spec written:\n{}", logs());
    } else {
        assert!(
            !dir.path().join("cdi").exists(),
            "the agent created the CDI dir without a CDI strategy:\n{}",
            logs()
        );
    }
}

/// The ConfigMap and key a volume puts at `path` inside the container. The mount must be the
/// whole directory, read-only: subPath mounts never see ConfigMap updates, and the agent watches
/// these files.
fn configmap_file(ds: &Value, container: &Value, path: &str) -> (String, String) {
    let (dir, key) = path.rsplit_once('/').expect("absolute path");
    let mount = seq_at(container, "volumeMounts")
        .iter()
        .find(|m| str_at(m, "mountPath") == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir} for {path}"));
    assert!(get(mount, "subPath").is_null(), "{dir} is a subPath mount");
    assert_eq!(
        get(mount, "readOnly").as_bool(),
        Some(true),
        "{dir} is read-only"
    );
    let volume = named(
        seq_at(ds, "spec.template.spec.volumes"),
        str_at(mount, "name"),
    )
    .expect("the mount's volume exists");
    let configmap = str_at(volume, "configMap.name");
    assert!(!configmap.is_empty(), "{dir} is not a ConfigMap volume");
    (configmap.to_string(), key.to_string())
}

/// Extended resource names (`nvidia.com/…`) a pod's containers ask for.
pub fn gpu_resources(pod: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for c in seq_at(pod, "spec.containers") {
        for section in ["resources.limits", "resources.requests"] {
            let keys = get(c, section)
                .as_mapping()
                .into_iter()
                .flat_map(|m| m.keys());
            names.extend(
                keys.filter_map(|k| k.as_str())
                    .filter(|k| k.starts_with("nvidia.com/"))
                    .map(String::from),
            );
        }
    }
    names
}
