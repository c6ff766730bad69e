//! The per-claim CDI spec: kind `k8s.gpu-agent.io/claim`, one file per claim
//! (`k8s.gpu-agent.io-claim_<uid>.json` in `--cdi-spec-dir`), one CDI device per allocated
//! device, named `<claim uid>-<device name>`, so that the CDI IDs handed to the kubelet are
//! `k8s.gpu-agent.io/claim=<claim uid>-<device name>`. Device names are unique per claim and
//! claim UIDs per cluster, so no two specs define the same device. Pure.

use crate::cdi::spec::{ContainerEdits, Device, Spec};
use crate::cdi::{CDI_VERSION, VENDOR};

/// Class of the claim specs.
pub const CLASS: &str = "claim";

/// `k8s.gpu-agent.io/claim`.
pub fn kind() -> String {
    crate::cdi::kind(CLASS)
}

/// The CDI device name of `device` in claim `uid`.
pub fn device_name(uid: &str, device: &str) -> String {
    format!("{uid}-{device}")
}

/// The fully qualified CDI ID of `device` in claim `uid`.
pub fn cdi_id(uid: &str, device: &str) -> String {
    crate::cdi::qualified_name(CLASS, &device_name(uid, device))
}

/// File name of claim `uid`'s spec in the CDI dir.
pub fn file_name(uid: &str) -> String {
    format!("{VENDOR}-{CLASS}_{uid}.json")
}

/// Is `uid` safe in a file name and a CDI device name? Kubernetes UIDs are UUIDs; anything with
/// a `/`, a `..` or characters CDI refuses in names is rejected before it reaches a path.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 128
        && uid
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The spec of claim `uid`: `devices` as (device name, its own edits), `common` for the claim.
pub fn spec(uid: &str, devices: Vec<(String, ContainerEdits)>, common: ContainerEdits) -> Spec {
    Spec {
        cdi_version: CDI_VERSION.to_string(),
        kind: kind(),
        devices: devices
            .into_iter()
            .map(|(name, container_edits)| Device {
                name: device_name(uid, &name),
                container_edits,
            })
            .collect(),
        container_edits: common,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_files() {
        let uid = "0f5c2a6e-3b1d-4c8e-9a7f-2d4b6c8e0a1b";
        assert_eq!(kind(), "k8s.gpu-agent.io/claim");
        assert_eq!(
            cdi_id(uid, "gpu-3"),
            format!("k8s.gpu-agent.io/claim={uid}-gpu-3")
        );
        assert_eq!(file_name(uid), format!("k8s.gpu-agent.io-claim_{uid}.json"));
        assert!(valid_uid(uid));
        for bad in ["", "../x", "a/b", "-a", "a b", "a.json", &"a".repeat(129)] {
            assert!(!valid_uid(bad), "{bad}");
        }
        let s = spec(
            uid,
            vec![("gpu-0".into(), ContainerEdits::default())],
            ContainerEdits::default(),
        );
        assert_eq!(s.devices[0].name, format!("{uid}-gpu-0"));
        assert_eq!(s.kind, "k8s.gpu-agent.io/claim");
    }
}
