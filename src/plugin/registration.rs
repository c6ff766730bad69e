//! Register a plugin with the kubelet (`Registration.Register` on `kubelet.sock`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::v1beta1::{registration_client::RegistrationClient, RegisterRequest, VERSION};

/// How long one Register attempt may take. Inside Register the kubelet dials our socket with a
/// 10 s deadline (`pkg/kubelet/cm/devicemanager/plugin/v1beta1/client.go`, `dial`) and then asks
/// for our options; waiting a little longer than that lets its own error reach us instead of
/// our timeout. A Register that hangs on a socket that went away is cut short by the lifecycle,
/// which watches our socket and `kubelet.sock` while the call is in flight.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(12);

/// Why a Register call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot connect to the kubelet at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the kubelet at {socket} refused registration of {resource}: {status}")]
    Rejected {
        socket: PathBuf,
        resource: String,
        status: tonic::Status,
    },
}

impl RegisterError {
    /// Nobody accepts connections on `kubelet.sock` (refused: a stale socket an exited kubelet
    /// left behind; or gone): wait for the next kubelet rather than retrying.
    pub fn kubelet_unreachable(&self) -> bool {
        let RegisterError::Connect { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                return matches!(
                    super::kubelet_watch::probe_error(io.kind()),
                    super::kubelet_watch::Probe::Stale | super::kubelet_watch::Probe::Absent
                );
            }
            cause = error.source();
        }
        false
    }
}

/// Register `resource`, served on `endpoint` (a file name in the kubelet's device-plugin dir).
pub async fn register(
    kubelet_socket: &Path,
    resource: &str,
    endpoint: &str,
) -> Result<(), RegisterError> {
    let channel = super::uds::connect(kubelet_socket, REGISTER_TIMEOUT, Some(REGISTER_TIMEOUT))
        .await
        .map_err(|source| RegisterError::Connect {
            socket: kubelet_socket.to_path_buf(),
            source,
        })?;
    let request = RegisterRequest {
        version: VERSION.to_string(),
        endpoint: endpoint.to_string(),
        resource_name: resource.to_string(),
        options: Some(super::server::options()),
    };
    RegistrationClient::new(channel)
        .register(request)
        .await
        .map_err(|status| RegisterError::Rejected {
            socket: kubelet_socket.to_path_buf(),
            resource: resource.to_string(),
            status,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_or_missing_kubelet_socket_reads_as_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kubelet.sock");
        let missing = register(&socket, "nvidia.com/gpu", "x.sock")
            .await
            .unwrap_err();
        assert!(missing.kubelet_unreachable(), "{missing}");
        drop(tokio::net::UnixListener::bind(&socket).unwrap());
        let stale = register(&socket, "nvidia.com/gpu", "x.sock")
            .await
            .unwrap_err();
        assert!(stale.kubelet_unreachable(), "{stale}");
    }
}
