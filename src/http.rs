//! The HTTP side (`--metrics-addr`): `/metrics`, `/healthz` (and `/health`, dcgm-exporter's
//! path), `/readyz`, served over HTTP/1.1 only under [`Limits::METRICS`] (see [`crate::serve`]):
//! the port is open to the node's network without authentication, so no client may hold it or
//! grow the agent's memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::plugin::{PluginStatus, StatusBoard};
use crate::serve::{self, Limits, Plain};
use crate::snapshot::Snapshot;

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on --metrics-addr {addr:?}: {source} (use another address, or \"\" to disable HTTP)")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub status: StatusBoard,
}

/// Bind `addr` (`host:port`; a bare `:port` means every interface, as in Go manifests).
pub async fn bind(addr: &str) -> Result<TcpListener, HttpError> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    crate::serve::listen(&full)
        .await
        .map_err(|source| HttpError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        // dcgm-exporter's liveness path, for probes written against it.
        .route("/health", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serve on `listener` until `shutdown` turns true, under [`Limits::METRICS`] (with the
/// test-only overrides).
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: watch::Receiver<bool>) {
    let limits = Limits::METRICS.with_test_overrides();
    let local = listener.local_addr().ok();
    tracing::info!(
        addr = ?local,
        max_connections = limits.max_connections,
        header_timeout = ?limits.header_timeout,
        "serving /metrics, /healthz and /readyz (HTTP/1.1)"
    );
    let router = router(state);
    serve::serve(
        "metrics",
        listener,
        limits,
        Plain,
        move |_peer| TowerToHyperService::new(router.clone()),
        shutdown,
    )
    .await;
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match state.metrics.scrape() {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {e}\n"),
            )
                .into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    match not_ready(&snapshot, &state.status.snapshot()) {
        waiting if waiting.is_empty() => (StatusCode::OK, "ready\n".to_string()).into_response(),
        waiting => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not registered with the kubelet or no open ListAndWatch stream: {}\n",
                waiting.join(", ")
            ),
        )
            .into_response(),
    }
}

/// Resources the agent advertises that the kubelet does not see yet (not registered, or no
/// ListAndWatch stream open). Empty = ready, also when nothing is advertised. Pure.
pub fn not_ready(snapshot: &Snapshot, status: &BTreeMap<String, PluginStatus>) -> Vec<String> {
    snapshot
        .resources
        .names()
        .filter(|name| !status.get(*name).is_some_and(|s| s.active && s.ready()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::gpu::mock::MockBackend;
    use crate::gpu::GpuBackend;
    use crate::health::HealthState;

    fn snapshot(fixture: &str) -> Snapshot {
        let inventory = MockBackend::from_text(fixture)
            .unwrap()
            .inventory()
            .unwrap();
        Snapshot::build(
            Arc::new(inventory),
            Arc::new(Config::default()),
            Arc::new(HealthState::default()),
        )
        .unwrap()
    }

    #[test]
    fn ready_only_when_every_advertised_resource_is_registered_and_streaming() {
        let s = snapshot("gpus: [{model: X, memoryMiB: 100}]");
        let mut status = BTreeMap::new();
        // Before the plugin manager has even started the plugin.
        assert_eq!(not_ready(&s, &status), ["nvidia.com/gpu"]);
        let mut st = PluginStatus {
            active: true,
            registered: true,
            ..PluginStatus::default()
        };
        status.insert("nvidia.com/gpu".to_string(), st.clone());
        assert_eq!(not_ready(&s, &status), ["nvidia.com/gpu"], "no stream yet");
        st.open_streams = 1;
        status.insert("nvidia.com/gpu".to_string(), st);
        assert!(not_ready(&s, &status).is_empty());
    }

    #[test]
    fn ready_when_nothing_is_advertised() {
        let s = snapshot("gpus: []");
        assert!(not_ready(&s, &BTreeMap::new()).is_empty());
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = bind(&addr).await.unwrap_err().to_string();
        assert!(err.contains(&addr), "{err}");
        assert!(
            bind(":0").await.is_ok(),
            "a bare :port binds every interface"
        );
    }
}
