//! `gpu-agent webhook`: load the catalog, thresholds and certificate (exit 2 when one is invalid,
//! 1 when one cannot be read), then serve HTTPS until SIGTERM / SIGINT.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::Fatal;
use crate::cli::WebhookArgs;
use crate::config::{self, StrategyThresholds};
use crate::strategy::{Catalog, CatalogLoadError};
use crate::webhook::reload::{Reloading, POLL_INTERVAL};
use crate::webhook::server::{self, Inputs};
use crate::webhook::tls::{self, TlsError};

impl From<CatalogLoadError> for Fatal {
    fn from(e: CatalogLoadError) -> Self {
        match e {
            CatalogLoadError::Invalid { .. } => Fatal::Invalid(e.to_string()),
            CatalogLoadError::Read { .. } => Fatal::Other(e.to_string()),
        }
    }
}

impl From<TlsError> for Fatal {
    fn from(e: TlsError) -> Self {
        // Unreadable or unusable PEM files are the operator's input, like a bad config.
        Fatal::Invalid(e.to_string())
    }
}

/// Load the inputs, then serve on a small runtime (admission reviews are microseconds of CPU).
pub fn run(args: WebhookArgs) -> Result<(), Fatal> {
    let loaded = load(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gpu-agent-webhook")
        .enable_all()
        .build()
        .map_err(|e| Fatal::Other(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve(args, loaded))
}

/// The inputs, each with the files it is re-loaded from.
struct Loaded {
    catalog: Reloading<Catalog, CatalogLoadError>,
    thresholds: Reloading<StrategyThresholds, config::LoadError>,
    tls: Reloading<rustls::ServerConfig, TlsError>,
}

fn load(args: &WebhookArgs) -> Result<Loaded, Fatal> {
    let catalog_path = args.catalog.clone();
    let catalog = Reloading::new("catalog", vec![catalog_path.clone()], move || {
        Catalog::load(&catalog_path)
    })?;
    let thresholds = match args.config_path().cloned() {
        Some(path) => Reloading::new("config", vec![path.clone()], move || {
            config::load(&path).map(|p| p.config.strategy)
        })?,
        None => Reloading::new("config", Vec::new(), || Ok(StrategyThresholds::default()))?,
    };
    let (cert, key) = (args.tls_cert_file.clone(), args.tls_key_file.clone());
    let tls = Reloading::new(
        "TLS certificate",
        vec![cert.clone(), key.clone()],
        move || tls::server_config(&cert, &key),
    )?;
    let (offers, t) = (
        catalog.current().get().offers.len(),
        thresholds.current().get(),
    );
    tracing::info!(
        resources = offers,
        training_exclusive_above_gib = t.training_exclusive_above_gib,
        inference_shared_below_gib = t.inference_shared_below_gib,
        mig_range_gib = ?t.mig_range_gib,
        "catalog and thresholds loaded"
    );
    Ok(Loaded {
        catalog,
        thresholds,
        tls,
    })
}

async fn serve(args: WebhookArgs, loaded: Loaded) -> Result<(), Fatal> {
    let listener = crate::serve::listen(&args.listen_addr)
        .await
        .map_err(|e| Fatal::Other(format!("cannot listen on {}: {e}", args.listen_addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Fatal::Other(format!("cannot read the listening address: {e}")))?;
    tracing::info!(addr = %addr, "webhook listening (POST /mutate, GET /healthz)");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let inputs = Arc::new(Inputs {
        catalog: loaded.catalog.current(),
        thresholds: loaded.thresholds.current(),
        tls: loaded.tls.current(),
    });
    // Re-loads run in the background: a request only ever reads the last loaded value.
    tokio::spawn(loaded.catalog.watch(POLL_INTERVAL, stop_rx.clone()));
    tokio::spawn(loaded.thresholds.watch(POLL_INTERVAL, stop_rx.clone()));
    tokio::spawn(loaded.tls.watch(POLL_INTERVAL, stop_rx.clone()));
    let server = tokio::spawn(server::serve(listener, inputs, stop_rx));

    let install = |kind: SignalKind| {
        signal(kind).map_err(|e| Fatal::Other(format!("cannot install signal handler: {e}")))
    };
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "received"),
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}
