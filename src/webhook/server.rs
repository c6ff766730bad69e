//! The HTTPS shell: accept, TLS with the current certificate, HTTP/1.1, two routes.
//!
//! - `POST /mutate` (also `/`): an AdmissionReview; the answer is always a JSON AdmissionReview
//!   with HTTP 200, refusals included, so the API server reports our message rather than a
//!   transport error.
//! - `GET /healthz`: `ok` once serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::admission::{self, Outcome};
use super::reload::Current;
use crate::config::StrategyThresholds;
use crate::strategy::Catalog;

/// Largest AdmissionReview accepted. The API server caps objects at about 1.5 MiB and a review
/// may carry two of them.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// How long a client may take to finish the TLS handshake or send request headers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request reads, each kept current with its files by a background reload.
pub struct Inputs {
    pub catalog: Current<Catalog>,
    pub thresholds: Current<StrategyThresholds>,
    pub tls: Current<ServerConfig>,
}

/// Serve until `shutdown` turns true. Each connection gets the certificate current when it
/// arrives.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = crate::sync::until_true(&mut shutdown) => return,
        };
        let acceptor = TlsAcceptor::from(inputs.tls.get());
        let inputs = inputs.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let inputs = inputs.clone();
                async move { Ok::<_, Infallible>(handle(req, &inputs, peer).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    inputs: &Inputs,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/mutate" | "/") => {
            let reviewed = match Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(body) => {
                    let body = body.to_bytes();
                    let catalog = inputs.catalog.get();
                    let thresholds = inputs.thresholds.get();
                    admission::review(&body, &catalog, &thresholds)
                }
                Err(error) => admission::malformed(
                    String::new(),
                    format!(
                        "cannot read the request body (at most {MAX_BODY_BYTES} bytes): {error}"
                    ),
                ),
            };
            log(&reviewed, peer);
            json(&reviewed.review)
        }
        (_, "/healthz" | "/mutate" | "/") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: use POST /mutate or GET /healthz\n",
        ),
    }
}

fn log(reviewed: &admission::Reviewed, peer: SocketAddr) {
    let uid = reviewed.uid.as_str();
    match &reviewed.outcome {
        Outcome::Patched { resource, fallback } => {
            tracing::info!(uid, %resource, fallback, "pod mutated")
        }
        Outcome::Unchanged(why) => tracing::debug!(uid, why = %why, "pod unchanged"),
        Outcome::Denied(message) => tracing::info!(uid, %message, "pod denied"),
        Outcome::Malformed(message) => {
            tracing::warn!(uid, %peer, %message, "malformed admission request")
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
