//! The MPS overlay: the mps-control container shares MPS_ROOT with the agent through one
//! hostPath, /dev/shm is MPS_ROOT/shm rather than the host's IPC namespace, and mps-control has
//! no privilege beyond what it needs (root, SETUID / SETGID, nothing else).

use serde_yaml_ng::Value;

use crate::agent::agent_container;
use crate::common::kubectl;
use crate::render::{daemonset_dir, render_overlay, validate, validator};
use crate::yaml::{env_values, get, named, seq_at, str_at, strings};

const MPS: &str = "overlays/mps";
const MPS_ROOT: &str = "/run/nvidia/mps";

/// The host path behind the container's mount at `mount_path`.
fn host_path_at<'a>(pod: &'a Value, c: &Value, mount_path: &str) -> Option<(&'a str, bool)> {
    let mount = seq_at(c, "volumeMounts")
        .iter()
        .find(|m| str_at(m, "mountPath") == mount_path)?;
    let volume = named(seq_at(pod, "volumes"), str_at(mount, "name"))?;
    let read_only = get(mount, "readOnly").as_bool().unwrap_or(false);
    Some((str_at(volume, "hostPath.path"), read_only))
}

#[test]
fn the_mps_overlay_shares_mps_root_without_host_ipc_or_privilege() {
    let Some(kubectl) = kubectl() else { return };
    let r = render_overlay(&kubectl, MPS);
    if let Some(validator) = validator() {
        validate(&validator, &r);
    }
    let ds = r.one("DaemonSet");
    let pod = get(ds, "spec.template.spec");
    let agent = agent_container(ds);
    let control =
        named(seq_at(pod, "containers"), "mps-control").expect("an mps-control container");
    assert_eq!(strings(get(control, "args")), ["mps-control"]);

    // One hostPath, MPS_ROOT, seen at the same path by both; only mps-control writes there.
    assert_eq!(
        host_path_at(pod, control, MPS_ROOT),
        Some((MPS_ROOT, false))
    );
    assert_eq!(host_path_at(pod, agent, MPS_ROOT), Some((MPS_ROOT, true)));
    for c in [agent, control] {
        assert_eq!(
            env_values(c).get("MPS_ROOT").map(String::as_str),
            Some(MPS_ROOT)
        );
    }
    // The daemon's /dev/shm is MPS_ROOT/shm, the directory clients get as theirs.
    let shm = format!("{MPS_ROOT}/shm");
    assert_eq!(
        host_path_at(pod, control, "/dev/shm"),
        Some((shm.as_str(), false))
    );

    // No host namespaces, and the patch says why hostIPC is not needed.
    for host_namespace in ["hostIPC", "hostPID", "hostNetwork"] {
        assert_ne!(
            get(pod, host_namespace).as_bool(),
            Some(true),
            "{host_namespace}"
        );
    }
    let patch = std::fs::read_to_string(daemonset_dir().join(MPS).join("mps-control.yaml"))
        .expect("the overlay's patch");
    assert!(
        patch.contains("No hostIPC") && patch.contains("/dev/shm"),
        "the reason hostIPC is not set"
    );

    // mps-control: root (compute mode, MPS servers under the client's uid), SETUID / SETGID,
    // nothing more.
    let sc = get(control, "securityContext");
    assert_eq!(get(sc, "privileged").as_bool(), Some(false));
    assert_eq!(get(sc, "allowPrivilegeEscalation").as_bool(), Some(false));
    assert_eq!(get(sc, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(strings(get(sc, "capabilities.drop")), ["ALL"]);
    assert_eq!(strings(get(sc, "capabilities.add")), ["SETUID", "SETGID"]);
    assert!(
        seq_at(pod, "initContainers").is_empty(),
        "no privileged mount helper"
    );
    // The agent keeps the base's lock-down.
    let agent_sc = get(agent, "securityContext");
    assert!(strings(get(agent_sc, "capabilities.add")).is_empty());
    assert_eq!(get(agent_sc, "privileged").as_bool(), Some(false));

    // NVIDIA's README MPS config, handed to both.
    let config = r.object("ConfigMap", "gpu-agent-config");
    let text = get(config, "data")
        .get("config.yaml")
        .and_then(Value::as_str)
        .expect("config.yaml in the ConfigMap");
    let parsed: Value = serde_yaml_ng::from_str(text).expect("config.yaml");
    let resources = seq_at(&parsed, "sharing.mps.resources");
    assert_eq!(resources.len(), 1);
    assert_eq!(str_at(&resources[0], "name"), "nvidia.com/gpu");
    assert_eq!(get(&resources[0], "replicas").as_u64(), Some(10));
    for c in [agent, control] {
        assert_eq!(
            env_values(c).get("CONFIG_FILE").map(String::as_str),
            Some("/etc/gpu-agent/config/config.yaml")
        );
    }
}
