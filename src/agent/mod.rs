//! `gpu-agent run`: wires the backend, health, config, snapshot and plugin tasks together.
//!
//! ```text
//! backend ──inventory──┐
//! config file ─config──┼─► assemble ─► Snapshot (watch) ─► plugin manager ─► one server per resource
//! backend ─events─► health ┘                          ├─► HTTP, labels
//!                                                      └─► CDI spec file (cdi-* strategies)
//! backend ─telemetry (collect interval)─► cache ─┐
//! kubelet pod-resources ─List (collect interval)─► cache ─┴─► /metrics
//! ```

pub mod assemble;
mod config_watch;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::cdi;
use crate::cli::RunArgs;
use crate::commands::{load_node, Fatal, NodeView};
use crate::gpu::backend::BackendEvents;
use crate::health::queue;
use crate::health::watcher::{self, XidCounts};
use crate::http::{self, HttpState};
use crate::metrics::{Metrics, Sources};
use crate::plugin::{kubelet_watch, manager, PluginContext, StatusBoard};
use crate::snapshot::Snapshot;
use crate::{labels, podresources, telemetry};

/// Agent-wide counters.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Config changes applied.
    pub config_reloads: AtomicU64,
    /// Config changes rejected (invalid, unreadable, or not buildable on this node).
    pub config_reload_failures: AtomicU64,
}

/// Shared handles the HTTP side and tests read.
#[derive(Clone)]
pub struct Handles {
    pub node: String,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub status: StatusBoard,
    pub stats: Arc<AgentStats>,
    pub xid_counts: XidCounts,
}

/// Run the agent until SIGTERM / SIGINT.
pub async fn run(mut args: RunArgs) -> Result<(), Fatal> {
    let signals = Signals::install()?;
    let NodeView {
        node,
        backend,
        snapshot,
        tracker,
        health_env,
    } = load_node(&args.inventory)?;
    // The file's dra: section fills what no flag or env variable set; read once, at start.
    *args.dra = args.dra.with_file(&snapshot.config.dra);
    let dra_devices = args.dra.selection();
    let snapshot = partition_first(snapshot, &dra_devices)?;
    let mps_down = crate::mps::readiness::check(&snapshot.config);
    let snapshot = mps_first(snapshot, &mps_down, &dra_devices)?;
    let inventory = snapshot.inventory.clone();
    let config = snapshot.config.clone();
    let health = snapshot.health.clone();
    let policy = tracker.policy().clone();
    tracing::info!(
        node = %node,
        backend = backend.name(),
        gpus = inventory.gpus.len(),
        resources = ?snapshot.resources.names().collect::<Vec<_>>(),
        config = %config.summary(),
        "starting"
    );
    if snapshot.resources.is_empty() {
        tracing::warn!("no GPU resources to advertise on this node");
    }
    // Bind before anything else starts, so a taken address is a clear fatal error.
    let listener = match args.metrics_addr.as_str() {
        "" => None,
        addr => Some(
            http::bind(addr)
                .await
                .map_err(|e| Fatal::Other(e.to_string()))?,
        ),
    };

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (inventory_tx, inventory_rx) = watch::channel(inventory);
    let (config_tx, config_rx) = watch::channel(config);
    let (health_tx, health_rx) = watch::channel(health);
    let (mps_tx, mps_rx) = watch::channel(Arc::new(mps_down));
    // Always: a reloaded config may add MPS resources (with none, a tick looks at no file).
    tokio::spawn(crate::mps::readiness::run(
        config_rx.clone(),
        mps_tx,
        crate::mps::readiness::POLL_INTERVAL,
        shutdown.clone(),
    ));
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(snapshot));
    let (policy_tx, policy_rx) = watch::channel(policy);
    let (event_tx, event_rx) = queue::channel();
    let stats = Arc::new(AgentStats::default());
    let status = StatusBoard::default();
    let xid_counts = XidCounts::default();

    backend
        .clone()
        .watch(BackendEvents {
            inventory: inventory_tx.clone(),
            health: event_tx.clone(),
        })
        .map_err(|e| Fatal::Other(e.to_string()))?;
    tokio::spawn(watcher::run(
        tracker,
        event_rx,
        policy_rx,
        health_tx,
        xid_counts.clone(),
    ));

    let (hup_tx, hup_rx) = mpsc::channel(1);
    if let Some(path) = args.inventory.config_path() {
        tokio::spawn(config_watch::run(
            path.clone(),
            args.inventory.overrides(),
            hup_rx,
            config_tx,
            stats.clone(),
            shutdown.clone(),
        ));
    } else {
        // No file: SIGHUP has nothing to re-read, and the config stays the defaults.
        tokio::spawn(async move {
            let _keep = (config_tx, hup_rx);
            std::future::pending::<()>().await
        });
    }
    tokio::spawn(assemble::run(
        assemble::Inputs {
            inventory: inventory_rx,
            config: config_rx,
            health: health_rx,
            mps: mps_rx,
            probe: crate::extras::discover::Probe::host(),
            dra: dra_devices.clone(),
        },
        snapshot_tx,
        policy_tx,
        health_env,
        stats.clone(),
        shutdown.clone(),
    ));

    // The CDI spec is on disk before the first plugin registers, and follows every change.
    let cdi_writer = cdi::writer::SpecWriter::new(&args.cdi_spec_dir);
    let first = snapshots.borrow().clone();
    if let Some((cdi_writer, _)) = cdi::writer::sync_off_runtime(cdi_writer, first).await {
        tokio::spawn(cdi::writer::run(
            cdi_writer,
            snapshots.clone(),
            shutdown.clone(),
        ));
    }

    let kubelet_socket = args.kubelet_socket();
    tokio::spawn(kubelet_watch::log_changes(
        args.device_plugin_dir.clone(),
        kubelet_socket.clone(),
        shutdown.clone(),
    ));
    let ctx = PluginContext {
        dir: args.device_plugin_dir.clone(),
        kubelet_socket,
        snapshots: snapshots.clone(),
        status: status.clone(),
    };
    let handles = Handles {
        node,
        snapshots,
        status,
        stats,
        xid_counts,
    };
    let plugins = tokio::spawn(manager::run(ctx, shutdown.clone()));
    let dra = if args.dra.enabled() {
        let api = dra_api_client(&args).await?;
        if let Some(client) = &api {
            spawn_slice_publisher(client.clone(), &args, &handles, &dra_devices, &shutdown);
        }
        Some(tokio::spawn(crate::dra::run(
            dra_context(&args, &handles, dra_devices.clone(), shutdown.clone()),
            claim_source(&args, api),
        )))
    } else {
        None
    };
    let http = match listener {
        Some(listener) => Some(spawn_metrics(
            listener,
            &args,
            backend.clone(),
            inventory_tx.subscribe(),
            handles.clone(),
            shutdown.clone(),
        )?),
        None => None,
    };
    if !args.nfd_features_file.is_empty() {
        tokio::spawn(labels::run(
            args.nfd_features_file.clone().into(),
            handles.snapshots.clone(),
            shutdown.clone(),
        ));
    }

    signals.wait_for_termination(hup_tx).await;
    tracing::info!("shutting down: stopping plugins and removing their sockets");
    let _ = shutdown_tx.send(true);
    drop(event_tx);
    drop(inventory_tx);
    let _ = plugins.await;
    if let Some(dra) = dra {
        let _ = dra.await;
    }
    if let Some(http) = http {
        // Idle keep-alive connections could hold a graceful shutdown open; do not wait for them.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), http).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The first snapshot with DRA's GPUs left out of the device plugin's resources (the snapshot
/// `load_node` built advertises every GPU).
fn partition_first(
    snapshot: Snapshot,
    dra: &crate::dra::partition::DraDevices,
) -> Result<Snapshot, Fatal> {
    if *dra == crate::dra::partition::DraDevices::None {
        return Ok(snapshot);
    }
    let part = crate::dra::partition::Partition::new(&snapshot.inventory, dra);
    if !part.unknown.is_empty() {
        tracing::warn!(unknown = ?part.unknown, "--dra-devices names GPUs this node does not have");
    }
    let snapshot = Snapshot::build_partitioned(
        snapshot.inventory.clone(),
        snapshot.config.clone(),
        snapshot.health.clone(),
        snapshot.extras.clone(),
        dra,
    )
    .map_err(crate::commands::build_failure)?;
    tracing::info!(
        dra_gpus = part.uuids().count(),
        device_plugin_gpus = snapshot.inventory.gpus.len() - part.uuids().count(),
        "GPUs split between DRA and the device plugin"
    );
    Ok(snapshot)
}

/// The first snapshot with the replicas of MPS resources whose daemon is not ready Unhealthy,
/// so that none is advertised Healthy before the readiness watcher's first look.
fn mps_first(
    snapshot: Snapshot,
    not_ready: &crate::mps::readiness::NotReady,
    dra: &crate::dra::partition::DraDevices,
) -> Result<Snapshot, Fatal> {
    if not_ready.is_empty() {
        return Ok(snapshot);
    }
    for (resource, why) in not_ready {
        tracing::warn!(%resource, reason = %why.reason, "MPS resource not ready; its replicas are Unhealthy");
    }
    let health = assemble::with_mps(snapshot.health.clone(), not_ready);
    Snapshot::build_partitioned(
        snapshot.inventory.clone(),
        snapshot.config.clone(),
        health,
        snapshot.extras.clone(),
        dra,
    )
    .map_err(crate::commands::build_failure)
}

/// Where the DRA driver runs.
fn dra_context(
    args: &RunArgs,
    handles: &Handles,
    devices: crate::dra::partition::DraDevices,
    shutdown: watch::Receiver<bool>,
) -> crate::dra::DraContext {
    crate::dra::DraContext {
        driver_name: args.dra.driver_name().to_string(),
        node: handles.node.clone(),
        registry_dir: args.dra.registry_dir.clone(),
        plugins_dir: args.dra.plugins_dir.clone(),
        cdi_dir: args.cdi_spec_dir.clone(),
        devices,
        snapshots: handles.snapshots.clone(),
        shutdown,
    }
}

/// The API-server client for DRA: from `--kubeconfig` / `KUBECONFIG`, else the pod's service
/// account. None only in the test-only mode where claims come from a file and no kubeconfig is
/// given (no ResourceSlices are published then). A missing or broken configuration is fatal at
/// start: a DRA driver that cannot publish its devices offers nothing.
async fn dra_api_client(args: &RunArgs) -> Result<Option<kube::Client>, Fatal> {
    if args.dra.claims_file.is_some() && args.dra.kubeconfig.is_none() {
        tracing::warn!("test only: no API server configured; ResourceSlices are not published");
        return Ok(None);
    }
    crate::dra_api::client(args.dra.kubeconfig.as_deref())
        .await
        .map(Some)
        .map_err(|e| Fatal::Other(format!("--dra: no usable API server configuration: {e}")))
}

/// Keep this node's ResourceSlices in the API server in step with the snapshots: the GPUs handed
/// to DRA and their MIG devices, healthy ones only (an XID takes a device out of the slice).
fn spawn_slice_publisher(
    client: kube::Client,
    args: &RunArgs,
    handles: &Handles,
    dra_devices: &crate::dra::partition::DraDevices,
    shutdown: &watch::Receiver<bool>,
) {
    let first = handles.snapshots.borrow().clone();
    // resource.kubernetes.io/pcieRoot from sysfs, once: PCI addresses do not move while we run.
    let roots = crate::dra_api::pcie::roots(
        std::path::Path::new("/sys"),
        first
            .inventory
            .gpus
            .iter()
            .filter_map(|g| g.pci_bus_id.as_deref()),
    );
    let selection = dra_devices.clone();
    let devices = crate::dra_api::follow(handles.snapshots.clone(), move |s: &Arc<Snapshot>| {
        let partition = crate::dra::partition::Partition::new(&s.inventory, &selection);
        crate::dra_api::devices_of(s, &roots, |g| partition.owns(g))
    });
    let config = crate::dra_api::PublisherConfig::new(args.dra.driver_name(), handles.node.clone());
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        let done = async move { crate::sync::until_true(&mut stop).await };
        match crate::dra_api::publish(client, config, devices, done).await {
            Ok(stats) => tracing::info!(?stats, "ResourceSlice publisher stopped"),
            Err(error) => tracing::warn!(%error, "ResourceSlice publisher stopped with an error"),
        }
    });
}

/// Where ResourceClaims are read from: the API server, or the test-only claims file.
fn claim_source(
    args: &RunArgs,
    api: Option<kube::Client>,
) -> Arc<dyn crate::dra::claims::ClaimSource> {
    match (&args.dra.claims_file, api) {
        (Some(path), _) => {
            tracing::warn!(path = %path.display(), "test only: ResourceClaims are read from a file, not the API server");
            Arc::new(crate::dra::claims::FileClaims::new(path.clone()))
        }
        (None, Some(client)) => Arc::new(crate::dra_api::ClaimSource::new(client)),
        (None, None) => Arc::new(crate::dra::claims::NoApiServer),
    }
}

/// Start the telemetry collector, the pod-resources poller and the HTTP server: the caches only
/// have a reader when HTTP is on.
fn spawn_metrics(
    listener: tokio::net::TcpListener,
    args: &RunArgs,
    backend: Arc<dyn crate::gpu::GpuBackend>,
    inventory: watch::Receiver<Arc<crate::gpu::Inventory>>,
    handles: Handles,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, Fatal> {
    let (telemetry_tx, telemetry_cache) = telemetry::cache();
    tokio::spawn(telemetry::run(
        backend,
        inventory,
        args.collect_interval,
        telemetry_tx,
        shutdown.clone(),
    ));
    let (pods_tx, pods_cache) = podresources::cache();
    tokio::spawn(podresources::run(
        args.pod_resources_socket.clone(),
        args.collect_interval,
        handles.snapshots.clone(),
        args.dra.enabled().then(|| podresources::DraIdentity {
            driver: args.dra.driver_name().to_string(),
            pool: handles.node.clone(),
        }),
        pods_tx,
        shutdown.clone(),
    ));
    let state = HttpState {
        snapshots: handles.snapshots.clone(),
        status: handles.status.clone(),
        metrics: Metrics::with_naming(
            Sources {
                handles,
                telemetry: telemetry_cache,
                pods: pods_cache,
            },
            args.metrics_names,
        )
        .map_err(|e| Fatal::Other(format!("cannot set up metrics: {e}")))?,
    };
    Ok(tokio::spawn(http::serve(listener, state, shutdown)))
}

/// The signals the agent handles, installed before anything starts so that a SIGTERM at any
/// moment still stops the plugins and removes their sockets.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, Fatal> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| Fatal::Other(format!("cannot install signal handler: {e}")))
        };
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hangup: install(SignalKind::hangup())?,
        })
    }

    /// Wait for SIGTERM or SIGINT; forward SIGHUP as a config re-read.
    async fn wait_for_termination(mut self, hup: mpsc::Sender<()>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!(signal = "SIGTERM", "received"); return }
                _ = self.int.recv() => { tracing::info!(signal = "SIGINT", "received"); return }
                _ = self.hangup.recv() => {
                    tracing::info!(signal = "SIGHUP", "re-reading the config");
                    let _ = hup.try_send(());
                }
            }
        }
    }
}
