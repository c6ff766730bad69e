//! Dynamic Resource Allocation, kubelet side (SPEC.md section 8, docs/dra.md).
//!
//! ```text
//! kubelet plugin watcher ──GetInfo──► <registry dir>/<driver>-reg.sock        (registration)
//! kubelet DRA manager ──NodePrepareResources──► <plugins dir>/<driver>/dra.sock (service)
//!                          │  ClaimSource (API server) ─► prepare (pure) ─► per-claim CDI spec
//!                          └─ <plugins dir>/<driver>/checkpoint.json: prepared claims
//! ```
//!
//! [`run`] takes the [`claims::ClaimSource`] to read ResourceClaims from, so that wiring in the
//! API-server client is one argument.

pub mod cdi;
pub mod checkpoint;
pub mod claims;
pub mod names;
pub mod partition;
pub mod prepare;
pub mod registration;
pub mod service;
pub mod socket;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tonic::service::Routes;

use crate::snapshot::Snapshot;
use claims::ClaimSource;
use partition::DraDevices;

/// `--dra-driver-name`'s default.
pub const DEFAULT_DRIVER_NAME: &str = "gpu.gpu-agent.io";
/// The DRA service socket's name in `<plugins dir>/<driver>/`.
pub const ENDPOINT_NAME: &str = "dra.sock";

/// Where and what the DRA driver runs as.
#[derive(Clone)]
pub struct DraContext {
    pub driver_name: String,
    /// Node name: our ResourceSlice pool.
    pub node: String,
    /// `--kubelet-registry-dir`.
    pub registry_dir: PathBuf,
    /// `--kubelet-plugins-dir`.
    pub plugins_dir: PathBuf,
    /// `--cdi-spec-dir`.
    pub cdi_dir: PathBuf,
    /// `--dra-devices`.
    pub devices: DraDevices,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub shutdown: watch::Receiver<bool>,
}

impl DraContext {
    /// `<plugins dir>/<driver>/`.
    pub fn driver_dir(&self) -> PathBuf {
        self.plugins_dir.join(&self.driver_name)
    }
    /// `<plugins dir>/<driver>/dra.sock`.
    pub fn endpoint(&self) -> PathBuf {
        self.driver_dir().join(ENDPOINT_NAME)
    }
    /// `<registry dir>/<driver>-reg.sock`.
    pub fn registration_socket(&self) -> PathBuf {
        self.registry_dir
            .join(registration::socket_name(&self.driver_name))
    }
    /// `<plugins dir>/<driver>/checkpoint.json`.
    pub fn checkpoint(&self) -> PathBuf {
        self.driver_dir().join(checkpoint::FILE_NAME)
    }
}

/// Serve the DRA service, then the registration socket (the kubelet dials the endpoint as soon as
/// it sees the registration), until `ctx.shutdown`; both sockets are removed on the way out.
pub async fn run(ctx: DraContext, claim_source: Arc<dyn ClaimSource>) {
    let settings = service::Settings {
        driver_name: ctx.driver_name.clone(),
        pool: ctx.node.clone(),
        cdi_dir: ctx.cdi_dir.clone(),
        checkpoint: ctx.checkpoint(),
        devices: ctx.devices.clone(),
    };
    let claims =
        Arc::new(service::Claims::open(settings, ctx.snapshots.clone(), claim_source).await);
    tracing::info!(
        driver = %ctx.driver_name,
        pool = %ctx.node,
        endpoint = %ctx.endpoint().display(),
        registration = %ctx.registration_socket().display(),
        "DRA driver starting"
    );
    let dra_claims = claims.clone();
    let service = tokio::spawn(socket::serve(
        "DRA service",
        ctx.endpoint(),
        move || {
            Routes::new(service::V1::server(dra_claims.clone()))
                .add_service(service::V1beta1::server(dra_claims.clone()))
        },
        ctx.shutdown.clone(),
    ));
    // The endpoint first: a kubelet that registers us dials it right away.
    let endpoint = ctx.endpoint();
    for _ in 0..50 {
        if socket::inode_at(&endpoint).is_some() {
            break;
        }
        tokio::time::sleep(socket::POLL / 10).await;
    }
    let registrar = registration::Registrar::new(ctx.driver_name.clone(), ctx.endpoint());
    let registration = tokio::spawn(socket::serve(
        "DRA registration",
        ctx.registration_socket(),
        move || Routes::new(registrar.clone().server()),
        ctx.shutdown.clone(),
    ));
    let _ = registration.await;
    let _ = service.await;
}
