//! Register a plugin with the kubelet (`Registration.Register` on `kubelet.sock`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::v1beta1::{registration_client::RegistrationClient, RegisterRequest, VERSION};

/// How long one Register attempt may take.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

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
