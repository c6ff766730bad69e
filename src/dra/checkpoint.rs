//! The claims this node has prepared, on disk (`<plugins dir>/<driver>/checkpoint.json`), so that
//! after an agent restart a repeated prepare answers as before and an unprepare still removes the
//! claim's CDI spec, even when the claim is gone from the API server. Written atomically through
//! [`crate::hostfs::write`] after every change; read through [`crate::hostfs::read`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::prepare::PreparedDevice;
use crate::hostfs::{self, Links};

/// File name inside `<plugins dir>/<driver>/`.
pub const FILE_NAME: &str = "checkpoint.json";

/// Format version written; a file of another version is not read.
pub const VERSION: u32 = 1;

/// The checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u32,
    /// Prepared claims by UID.
    pub claims: BTreeMap<String, PreparedClaim>,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self {
            version: VERSION,
            claims: BTreeMap::new(),
        }
    }
}

/// One prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedClaim {
    pub namespace: String,
    pub name: String,
    /// The claim's CDI spec file.
    pub spec_file: PathBuf,
    /// What NodePrepareResources returned.
    pub devices: Vec<PreparedDevice>,
}

/// A checkpoint that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] hostfs::ReadError),
    #[error("{path}: not a gpu-agent DRA checkpoint: {reason}")]
    Invalid { path: String, reason: String },
}

impl Checkpoint {
    /// The checkpoint at `path`; empty when there is none. Blocking.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let bytes = match hostfs::read(path, Links::Refuse, hostfs::MAX_HOST_FILE) {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(Self::default()),
            Err(e) => return Err(e.into()),
        };
        let invalid = |reason: String| LoadError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let checkpoint: Checkpoint =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if checkpoint.version != VERSION {
            return Err(invalid(format!(
                "version {} (this agent reads {VERSION})",
                checkpoint.version
            )));
        }
        Ok(checkpoint)
    }

    /// Write it to `path`, atomically. Blocking.
    pub fn save(&self, path: &Path) -> Result<(), hostfs::WriteError> {
        // Plain maps of strings: serialization cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        hostfs::write(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("driver").join(FILE_NAME);
        assert_eq!(Checkpoint::load(&path).unwrap(), Checkpoint::default());
        let mut c = Checkpoint::default();
        c.claims.insert(
            "uid-1".into(),
            PreparedClaim {
                namespace: "ns".into(),
                name: "c".into(),
                spec_file: "/var/run/cdi/k8s.gpu-agent.io-claim_uid-1.json".into(),
                devices: vec![PreparedDevice {
                    requests: vec!["gpu".into()],
                    pool: "node".into(),
                    device: "gpu-0".into(),
                    cdi_ids: vec!["k8s.gpu-agent.io/claim=uid-1-gpu-0".into()],
                }],
            },
        );
        c.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), c);
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            Checkpoint::load(&path),
            Err(LoadError::Invalid { .. })
        ));
        std::fs::write(&path, r#"{"version": 2, "claims": {}}"#).unwrap();
        let err = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
    }
}
