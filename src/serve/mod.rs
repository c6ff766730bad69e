//! Bounded HTTP/1 serving, shared by `/metrics` and the admission webhook: every connection lives
//! under [`Limits`], so neither many clients nor slow ones can grow memory or hold the server.
//!
//! - HTTP/1.1 only, with hyper's http1 connection builder: an HTTP/2 preface is answered 505
//!   and closed (axum's `serve` would switch to HTTP/2 cleartext as soon as any crate in the
//!   build enables hyper's `http2`, which tonic does).
//! - The request head must arrive within [`Limits::header_timeout`] of accept and of the end of
//!   the previous response (the idle keep-alive bound), and fit [`Limits::max_head_bytes`].
//! - A write stalled for [`Limits::write_timeout`] ends the connection ([`deadline`]).
//! - At most [`Limits::max_connections`] connections ([`slots`]).
//!
//! Request bodies are the handler's business (`/metrics` reads none; the webhook bounds its own
//! size and time).

pub mod deadline;
pub mod limits;
pub mod slots;
mod trim;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use deadline::WriteDeadline;
pub use limits::Limits;
pub use slots::{SlotHandle, Slots};

/// What a connection goes through between accept and HTTP (TLS for the webhook).
pub trait Handshake: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(
        &self,
        tcp: WriteDeadline<TcpStream>,
    ) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain HTTP: the socket as accepted.
pub struct Plain;

impl Handshake for Plain {
    type Io = WriteDeadline<TcpStream>;
    async fn handshake(&self, tcp: WriteDeadline<TcpStream>) -> io::Result<Self::Io> {
        Ok(tcp)
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Kernel accept queue for our listeners: deep enough that a connection flood waits there (where
/// it costs us nothing) instead of overflowing it, which makes the kernel drop SYNs and a
/// scraper's connect then waits out a 1 s SYN retransmit. Capped by `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

/// Listen on every address `addr` resolves to, trying each in turn, with [`ACCEPT_BACKLOG`].
pub async fn listen(addr: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std and tokio's own bind do: a restarted agent can take the port at once.
        socket.set_reuseaddr(true)?;
        match socket
            .bind(resolved)
            .and_then(|()| socket.listen(ACCEPT_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// Serve `listener` under `limits` until `shutdown` turns true, with a service per connection
/// from `service(peer)`; then stop accepting, let requests in progress finish, close idle
/// connections, and return once every connection has ended. `what` names the server in logs.
pub async fn serve<H, F, S, B>(
    what: &'static str,
    listener: TcpListener,
    limits: Limits,
    handshake: H,
    service: F,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Handshake,
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let slots = Slots::new(limits.max_connections, slots::EVICTION_GRACE, what);
    let handshake = Arc::new(handshake);
    let trimmer = trim::after_floods(slots.clone(), what);
    tracing::debug!(server = what, ?limits, "connection limits");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(server = what, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = crate::sync::until_true(&mut shutdown) => break,
        };
        // Hold this one connection (and accept no other) while every slot has a request in
        // progress; the next ones wait in the kernel's backlog, not in our memory.
        let slot = tokio::select! {
            slot = slots.admit() => slot,
            () = crate::sync::until_true(&mut shutdown) => break,
        };
        let connection = Connection {
            what,
            peer,
            limits,
            slot,
        };
        tokio::spawn(connection.run(tcp, handshake.clone(), service(peer), shutdown.clone()));
    }
    // Connections see the shutdown themselves; wait for them to end.
    drop(listener);
    trimmer.abort();
    slots.all_closed().await;
}

/// One accepted connection and its slot.
struct Connection {
    what: &'static str,
    peer: SocketAddr,
    limits: Limits,
    slot: slots::Slot,
}

impl Connection {
    async fn run<H, S, B>(
        mut self,
        tcp: TcpStream,
        handshake: Arc<H>,
        service: S,
        mut shutdown: watch::Receiver<bool>,
    ) where
        H: Handshake,
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (what, peer, limits) = (self.what, self.peer, self.limits);
        let tcp = WriteDeadline::new(tcp, limits.write_timeout);
        let io = tokio::select! {
            io = tokio::time::timeout(limits.header_timeout, handshake.handshake(tcp)) => match io {
                Ok(Ok(io)) => io,
                Ok(Err(error)) => {
                    tracing::debug!(server = what, %peer, %error, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(server = what, %peer, "handshake timed out");
                    return;
                }
            },
            _ = &mut self.slot.evicted => return,
            () = crate::sync::until_true(&mut shutdown) => return,
        };
        let service = Tracked {
            inner: service,
            slot: self.slot.handle(),
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_head_bytes)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut stopping = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(server = what, %peer, %error, "connection ended with an error");
                    }
                    return;
                }
                _ = &mut self.slot.evicted => {
                    tracing::debug!(server = what, %peer, "idle connection closed to make room");
                    return;
                }
                () = crate::sync::until_true(&mut shutdown), if !stopping => {
                    // Finish the request in progress, if any, then close.
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A service that marks its connection busy while a request is in progress, so that the
/// connection is not evicted in the middle of it.
struct Tracked<S> {
    inner: S,
    slot: SlotHandle,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let busy = self.slot.busy();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(busy);
            response
        })
    }
}
