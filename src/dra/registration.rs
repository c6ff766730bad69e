//! The plugin-watcher side: `<registry dir>/<driver name>-reg.sock` serving pluginregistration v1.
//!
//! The kubelet (pkg/kubelet/pluginmanager) notices the socket being created, calls GetInfo (1 s
//! deadline), checks the type (`DRAPlugin`), then the DRA handler checks the supported versions:
//! it picks the first entry it knows among `v1.DRAPlugin` and `v1beta1.DRAPlugin` (1.34+), and
//! dials the endpoint. Then it calls NotifyRegistrationStatus with the outcome, which is logged
//! here: a refusal is the one place the kubelet says why DRA will not work on this node.

use std::path::PathBuf;

use tonic::{Request, Response, Status};

use crate::proto::pluginregistration::{
    registration_server::{Registration, RegistrationServer},
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse, DRA_PLUGIN,
};
use crate::proto::{dra_v1, dra_v1beta1};

/// The services our endpoint serves, most recent first, as the registration lists them.
pub fn supported_versions() -> Vec<String> {
    vec![
        dra_v1::SERVICE.to_string(),
        dra_v1beta1::SERVICE.to_string(),
    ]
}

/// The socket's file name in the registry directory.
pub fn socket_name(driver_name: &str) -> String {
    format!("{driver_name}-reg.sock")
}

/// The Registration service.
#[derive(Debug, Clone)]
pub struct Registrar {
    driver_name: String,
    endpoint: PathBuf,
}

impl Registrar {
    pub fn new(driver_name: String, endpoint: PathBuf) -> Self {
        Self {
            driver_name,
            endpoint,
        }
    }

    /// The tonic server for it.
    pub fn server(self) -> RegistrationServer<Self> {
        RegistrationServer::new(self)
    }
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::debug!(driver = %self.driver_name, "GetInfo from the kubelet's plugin watcher");
        Ok(Response::new(PluginInfo {
            r#type: DRA_PLUGIN.to_string(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint.to_string_lossy().into_owned(),
            supported_versions: supported_versions(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.driver_name, endpoint = %self.endpoint.display(), "registered with the kubelet as a DRA driver");
        } else {
            tracing::error!(driver = %self.driver_name, error = %status.error, "the kubelet refused the DRA driver registration");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
