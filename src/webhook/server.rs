//! The HTTPS shell: accept, TLS with the current certificate, HTTP/1.1 under
//! [`Limits::WEBHOOK`] (see [`crate::serve`]), two routes.
//!
//! - `POST /mutate` (also `/`): an AdmissionReview; the answer is a JSON AdmissionReview with
//!   HTTP 200, refusals included, so the API server reports our message rather than a transport
//!   error. Two exceptions, for requests the API server never sends: a body over
//!   [`MAX_BODY_BYTES`] is answered 413, and one that does not arrive within the body timeout 408.
//! - `GET /healthz`: `ok` once serving.
//!
//! Memory stays bounded whatever clients send: at most [`Limits::WEBHOOK`]`.max_connections`
//! reviews at once (one per HTTP/1 connection), bodies of at most [`MAX_BODY_BYTES`] and of at
//! most [`BODY_BUDGET_BYTES`] all together, parsed into typed structs that keep a few strings.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::admission::{self, Outcome};
use super::reload::Current;
use crate::config::StrategyThresholds;
use crate::serve::{self, Handshake, Limits, WriteDeadline};
use crate::strategy::Catalog;

/// Largest AdmissionReview accepted: the API server's own limit on a request body (3 MiB), so no
/// review it sends is refused.
pub const MAX_BODY_BYTES: usize = 3 << 20;

/// Request bodies held at once, all reviews together. A review reserves its declared length (or
/// [`MAX_BODY_BYTES`] when it declares none) before reading, waiting within the body timeout:
/// 32 reviews of 3 MiB would otherwise be 96 MiB, most of the pod's 128 Mi.
pub const BODY_BUDGET_BYTES: usize = 16 << 20;

/// The budget is counted in units of this many bytes.
const BUDGET_UNIT: usize = 64 << 10;

/// Everything a request reads, each kept current with its files by a background reload.
pub struct Inputs {
    pub catalog: Current<Catalog>,
    pub thresholds: Current<StrategyThresholds>,
    pub tls: Current<ServerConfig>,
}

/// Serve until `shutdown` turns true. Each connection gets the certificate current when it
/// arrives.
pub async fn serve(listener: TcpListener, inputs: Arc<Inputs>, shutdown: watch::Receiver<bool>) {
    let limits = Limits::WEBHOOK.with_test_overrides();
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout = ?limits.header_timeout,
        body_timeout = ?limits.body_timeout,
        max_body_bytes = MAX_BODY_BYTES,
        "webhook limits"
    );
    let reviewer = Arc::new(Reviewer {
        budget: Semaphore::new(BODY_BUDGET_BYTES / BUDGET_UNIT),
        limits,
        inputs: inputs.clone(),
    });
    serve::serve(
        "webhook",
        listener,
        limits,
        Tls(inputs.tls.clone()),
        move |peer| {
            let reviewer = reviewer.clone();
            hyper::service::service_fn(move |req| {
                let reviewer = reviewer.clone();
                async move { Ok::<_, Infallible>(reviewer.handle(req, peer).await) }
            })
        },
        shutdown,
    )
    .await;
}

/// TLS with the certificate current when the connection arrives.
struct Tls(Current<ServerConfig>);

impl Handshake for Tls {
    type Io = TlsStream<WriteDeadline<TcpStream>>;
    async fn handshake(&self, tcp: WriteDeadline<TcpStream>) -> io::Result<Self::Io> {
        TlsAcceptor::from(self.0.get()).accept(tcp).await
    }
}

struct Reviewer {
    inputs: Arc<Inputs>,
    limits: Limits,
    budget: Semaphore,
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is over {MAX_BODY_BYTES} bytes (3 MiB, the API server's own limit)")]
    TooLarge,
    #[error("cannot read the request body: {0}")]
    Read(String),
}

impl Reviewer {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::POST, "/mutate" | "/") => self.mutate(req.into_body(), peer).await,
            (_, "/healthz" | "/mutate" | "/") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: use POST /mutate or GET /healthz\n".into(),
            ),
        }
    }

    async fn mutate(&self, body: Incoming, peer: SocketAddr) -> Response<Full<Bytes>> {
        let declared = body.size_hint().exact();
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            tracing::warn!(%peer, declared, "request body too large");
            return closing(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{}\n", BodyError::TooLarge),
            ));
        }
        let reserve = declared.map_or(MAX_BODY_BYTES, |n| n as usize);
        let units = reserve.div_ceil(BUDGET_UNIT).max(1) as u32;
        let timeout = self.limits.body_timeout;
        let read = tokio::time::timeout(timeout, async {
            let permit = self.budget.acquire_many(units).await;
            (permit, read_body(body, declared).await)
        })
        .await;
        let (_permit, body) = match read {
            Ok(read) => read,
            Err(_) => {
                tracing::warn!(%peer, ?timeout, "request body timed out");
                return closing(text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body did not arrive within {timeout:?}\n"),
                ));
            }
        };
        let reviewed = match body {
            Ok(body) => {
                let catalog = self.inputs.catalog.get();
                let thresholds = self.inputs.thresholds.get();
                admission::review(&body, &catalog, &thresholds)
            }
            Err(error @ BodyError::TooLarge) => {
                tracing::warn!(%peer, "request body too large");
                return closing(text(StatusCode::PAYLOAD_TOO_LARGE, format!("{error}\n")));
            }
            Err(error) => admission::malformed(String::new(), error.to_string()),
        };
        log(&reviewed, peer);
        json(&reviewed.review)
    }
}

/// Read `body` into one buffer, refusing it as soon as it passes [`MAX_BODY_BYTES`]. The buffer
/// is allocated once, of the declared length or else of the cap: it never grows by copying, and
/// the pages of a large allocation that are never written never become resident.
pub async fn read_body<B>(mut body: B, declared: Option<u64>) -> Result<Vec<u8>, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let capacity = declared.map_or(MAX_BODY_BYTES, |n| (n as usize).min(MAX_BODY_BYTES));
    let mut bytes = Vec::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY_BYTES {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
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

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `response`, telling the client the connection ends with it (its body was not read).
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    /// A body of `chunks` chunks of `size` bytes, with no declared length.
    fn chunked(chunks: usize, size: usize) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames = (0..chunks)
            .map(move |_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; size]))));
        StreamBody::new(tokio_stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_is_refused_as_soon_as_it_passes_the_cap() {
        let read = read_body(chunked(4, 1 << 20), None).await;
        assert!(matches!(read, Err(BodyError::TooLarge)), "{read:?}");
        let read = read_body(chunked(3, 1 << 20), None).await.unwrap();
        assert_eq!(read.len(), MAX_BODY_BYTES);
    }

    #[tokio::test]
    async fn a_declared_length_sizes_the_buffer_once() {
        let body = Full::new(Bytes::from(vec![b'x'; 100_000]));
        let read = read_body(body, Some(100_000)).await.unwrap();
        assert_eq!(read.len(), 100_000);
        assert_eq!(read.capacity(), 100_000);
    }
}
