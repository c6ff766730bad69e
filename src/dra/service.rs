//! NodePrepareResources / NodeUnprepareResources: the claims' state on this node, and the gRPC
//! adapters for the two wire versions the kubelet may pick (`v1.DRAPlugin`, `v1beta1.DRAPlugin`;
//! the same messages, the same logic).
//!
//! - Prepare, per claim: already prepared (checkpoint) → the same answer, nothing rewritten;
//!   else read the claim ([`ClaimSource`]), [`prepare`] it against the latest snapshot, write
//!   its CDI spec, remember it in the checkpoint. Every failure is that claim's error; the call
//!   itself only fails on a request that is not one.
//! - Unprepare, per claim: delete its spec (the checkpoint's path, else the one its UID gives:
//!   unprepare needs neither the API server nor the checkpoint) and forget it. Unknown claims
//!   unprepare fine: the kubelet retries until it hears success.
//! - One call at a time (a lock around the state): the kubelet sends one pod's claims per call,
//!   and a claim's spec and checkpoint entry change together.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};
use tonic::{Request, Response, Status};

use super::cdi;
use super::checkpoint::{Checkpoint, PreparedClaim};
use super::claims::ClaimSource;
use super::partition::{DraDevices, Partition};
use super::prepare::{self, Node, PreparedDevice};
use crate::cdi::driver::{self, Driver, Query};
use crate::proto::{dra_v1, dra_v1beta1};
use crate::snapshot::Snapshot;

/// What the service needs to know about this node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub driver_name: String,
    /// Our pool: the node name.
    pub pool: String,
    /// `--cdi-spec-dir`.
    pub cdi_dir: PathBuf,
    /// `<plugins dir>/<driver>/checkpoint.json`.
    pub checkpoint: PathBuf,
    /// `--dra-devices`.
    pub devices: DraDevices,
}

/// A claim as the kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub uid: String,
    pub name: String,
}

/// Per claim UID: the devices, or why not.
pub type PrepareResults = BTreeMap<String, Result<Vec<PreparedDevice>, String>>;
/// Per claim UID: done, or why not.
pub type UnprepareResults = BTreeMap<String, Result<(), String>>;

struct State {
    checkpoint: Checkpoint,
    /// The last driver-file discovery: what was looked for and what was found.
    driver: Option<(Query, Option<Driver>)>,
}

/// The claims' state on this node.
pub struct Claims {
    settings: Settings,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    source: Arc<dyn ClaimSource>,
    state: Mutex<State>,
}

impl Claims {
    /// Start from the checkpoint on disk (empty, with an error logged, when it cannot be read:
    /// unprepare still finds specs by their UID).
    pub async fn open(
        settings: Settings,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        source: Arc<dyn ClaimSource>,
    ) -> Self {
        let path = settings.checkpoint.clone();
        let loaded = tokio::task::spawn_blocking(move || Checkpoint::load(&path)).await;
        let checkpoint = match loaded {
            Ok(Ok(c)) => {
                tracing::info!(path = %settings.checkpoint.display(), claims = c.claims.len(), "DRA checkpoint loaded");
                c
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "DRA checkpoint not usable; starting with no prepared claims (unprepare still removes specs by claim UID)");
                Checkpoint::default()
            }
            Err(error) => {
                tracing::error!(%error, "reading the DRA checkpoint failed");
                Checkpoint::default()
            }
        };
        Self {
            settings,
            snapshots,
            source,
            state: Mutex::new(State {
                checkpoint,
                driver: None,
            }),
        }
    }

    /// The UIDs of the claims prepared now.
    pub async fn prepared(&self) -> Vec<String> {
        self.state
            .lock()
            .await
            .checkpoint
            .claims
            .keys()
            .cloned()
            .collect()
    }

    /// NodePrepareResources.
    pub async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let mut state = self.state.lock().await;
        let mut results = PrepareResults::new();
        let mut added: Vec<String> = Vec::new();
        for claim in claims {
            if results.contains_key(&claim.uid) {
                continue;
            }
            if let Some(done) = state.checkpoint.claims.get(&claim.uid) {
                tracing::debug!(uid = %claim.uid, "claim already prepared");
                results.insert(claim.uid.clone(), Ok(done.devices.clone()));
                continue;
            }
            let outcome = self.prepare_one(&mut state, &claim).await;
            match &outcome {
                Ok(prepared) => {
                    tracing::info!(
                        uid = %claim.uid, namespace = %claim.namespace, name = %claim.name,
                        devices = ?prepared.devices.iter().map(|d| d.device.as_str()).collect::<Vec<_>>(),
                        "claim prepared"
                    );
                    results.insert(claim.uid.clone(), Ok(prepared.devices.clone()));
                    state
                        .checkpoint
                        .claims
                        .insert(claim.uid.clone(), prepared.clone());
                    added.push(claim.uid.clone());
                }
                Err(error) => {
                    tracing::warn!(uid = %claim.uid, namespace = %claim.namespace, name = %claim.name, %error, "claim not prepared");
                    results.insert(claim.uid.clone(), Err(error.clone()));
                }
            }
        }
        if !added.is_empty() {
            if let Err(error) = self.save(&state.checkpoint).await {
                // Not remembered means unprepare after a restart could miss it: undo and let
                // the kubelet retry.
                tracing::error!(%error, "cannot write the DRA checkpoint; the claims prepared in this call are undone");
                for uid in added {
                    if let Some(claim) = state.checkpoint.claims.remove(&uid) {
                        let _ = remove_spec(claim.spec_file).await;
                    }
                    results.insert(uid, Err(format!("cannot write the checkpoint: {error}")));
                }
            }
        }
        results
    }

    async fn prepare_one(
        &self,
        state: &mut State,
        claim: &ClaimRef,
    ) -> Result<PreparedClaim, String> {
        if !cdi::valid_uid(&claim.uid) {
            return Err(format!(
                "claim UID {:?} is not a Kubernetes UID",
                crate::resources::ids::shown(&claim.uid)
            ));
        }
        let read = self
            .source
            .get(&claim.namespace, &claim.name)
            .await
            .map_err(|e| e.to_string())?;
        let snapshot = self.snapshots.borrow().clone();
        let driver = driver_files(state, &snapshot).await;
        let partition = Partition::new(&snapshot.inventory, &self.settings.devices);
        let node = Node {
            driver_name: &self.settings.driver_name,
            pool: &self.settings.pool,
            inventory: &snapshot.inventory,
            partition: &partition,
            health: &snapshot.health,
            plugin: &snapshot.config.plugin,
            driver_files: driver.as_ref(),
            extras: &snapshot.extras,
        };
        let prepared = prepare::prepare(&read, &claim.uid, &node).map_err(|e| e.to_string())?;
        let spec_file = self.settings.cdi_dir.join(cdi::file_name(&claim.uid));
        if !prepared.spec.devices.is_empty() {
            let path = spec_file.clone();
            let bytes = prepared.spec.to_bytes();
            tokio::task::spawn_blocking(move || crate::hostfs::write(&path, &bytes))
                .await
                .map_err(|e| format!("writing the CDI spec: {e}"))?
                .map_err(|e| e.to_string())?;
        }
        Ok(PreparedClaim {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            spec_file,
            devices: prepared.devices,
        })
    }

    /// NodeUnprepareResources.
    pub async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let mut state = self.state.lock().await;
        let mut results = UnprepareResults::new();
        let mut changed = false;
        for claim in claims {
            if !cdi::valid_uid(&claim.uid) {
                results.insert(
                    claim.uid.clone(),
                    Err(format!(
                        "claim UID {:?} is not a Kubernetes UID",
                        crate::resources::ids::shown(&claim.uid)
                    )),
                );
                continue;
            }
            let by_uid = self.settings.cdi_dir.join(cdi::file_name(&claim.uid));
            let spec_file = state
                .checkpoint
                .claims
                .get(&claim.uid)
                .map(|c| c.spec_file.clone());
            let mut outcome = remove_spec(by_uid.clone()).await;
            if let Some(path) = spec_file.filter(|p| *p != by_uid) {
                outcome = outcome.and(remove_spec(path).await);
            }
            match outcome {
                Ok(()) => {
                    if state.checkpoint.claims.remove(&claim.uid).is_some() {
                        changed = true;
                    }
                    tracing::info!(uid = %claim.uid, namespace = %claim.namespace, name = %claim.name, "claim unprepared");
                    results.insert(claim.uid, Ok(()));
                }
                Err(error) => {
                    tracing::warn!(uid = %claim.uid, %error, "claim not unprepared");
                    results.insert(claim.uid, Err(error));
                }
            }
        }
        if changed {
            if let Err(error) = self.save(&state.checkpoint).await {
                // The specs are gone; a stale entry only makes a later unprepare a no-op.
                tracing::error!(%error, "cannot write the DRA checkpoint after unprepare");
            }
        }
        results
    }

    async fn save(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        let path = self.settings.checkpoint.clone();
        let checkpoint = checkpoint.clone();
        tokio::task::spawn_blocking(move || checkpoint.save(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// The driver's files for this snapshot, discovered again only when what to look for changed.
async fn driver_files(state: &mut State, snapshot: &Snapshot) -> Option<Driver> {
    let query = Query::new(&snapshot.config.plugin, &snapshot.inventory);
    if state.driver.as_ref().is_none_or(|(last, _)| *last != query) {
        let q = query.clone();
        let found = tokio::task::spawn_blocking(move || driver::discover(&q).ok())
            .await
            .ok()
            .flatten();
        state.driver = Some((query, found));
    }
    state.driver.as_ref().and_then(|(_, d)| d.clone())
}

/// Delete a claim spec; one that is not there is fine. Unlinks the name, never follows it.
async fn remove_spec(path: PathBuf) -> Result<(), String> {
    tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The gRPC service for one wire version; both share [`Claims`].
macro_rules! service {
    ($name:ident, $pb:ident) => {
        /// The DRAPlugin service of this wire version.
        #[derive(Clone)]
        pub struct $name(pub Arc<Claims>);

        impl $name {
            /// The tonic server for it.
            pub fn server(claims: Arc<Claims>) -> $pb::dra_plugin_server::DraPluginServer<Self> {
                $pb::dra_plugin_server::DraPluginServer::new(Self(claims))
            }
        }

        #[tonic::async_trait]
        impl $pb::dra_plugin_server::DraPlugin for $name {
            async fn node_prepare_resources(
                &self,
                request: Request<$pb::NodePrepareResourcesRequest>,
            ) -> Result<Response<$pb::NodePrepareResourcesResponse>, Status> {
                let claims = request
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|c| ClaimRef {
                        namespace: c.namespace,
                        uid: c.uid,
                        name: c.name,
                    })
                    .collect();
                let results = self.0.prepare(claims).await;
                let claims = results
                    .into_iter()
                    .map(|(uid, result)| {
                        let response = match result {
                            Ok(devices) => $pb::NodePrepareResourceResponse {
                                devices: devices
                                    .into_iter()
                                    .map(|d| $pb::Device {
                                        request_names: d.requests,
                                        pool_name: d.pool,
                                        device_name: d.device,
                                        cdi_device_ids: d.cdi_ids,
                                    })
                                    .collect(),
                                error: String::new(),
                            },
                            Err(error) => $pb::NodePrepareResourceResponse {
                                devices: Vec::new(),
                                error,
                            },
                        };
                        (uid, response)
                    })
                    .collect();
                Ok(Response::new($pb::NodePrepareResourcesResponse { claims }))
            }

            async fn node_unprepare_resources(
                &self,
                request: Request<$pb::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<$pb::NodeUnprepareResourcesResponse>, Status> {
                let claims = request
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|c| ClaimRef {
                        namespace: c.namespace,
                        uid: c.uid,
                        name: c.name,
                    })
                    .collect();
                let results = self.0.unprepare(claims).await;
                let claims = results
                    .into_iter()
                    .map(|(uid, result)| {
                        let error = result.err().unwrap_or_default();
                        (uid, $pb::NodeUnprepareResourceResponse { error })
                    })
                    .collect();
                Ok(Response::new($pb::NodeUnprepareResourcesResponse {
                    claims,
                }))
            }
        }
    };
}

service!(V1, dra_v1);
service!(V1beta1, dra_v1beta1);
