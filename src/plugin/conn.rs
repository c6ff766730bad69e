//! Connections to a plugin socket, numbered as they are accepted. The number reaches every
//! request on the connection (tonic puts [`ConnInfo`] in the request's extensions), which is how
//! the service tells the kubelet's connection from any other client's: see
//! [`super::server::StreamEvents`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// What a request knows about the connection it came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// 1 for the first connection a plugin accepted, then counting up; never reused, also not
    /// across the plugin's successive servers.
    pub id: u64,
    /// The peer's credentials when it connected (`SO_PEERCRED`), for the logs. Its pid is 0 for
    /// a process outside the agent's pid namespace (the kubelet, in a pod).
    pub peer: Option<UCred>,
}

/// An accepted connection and its [`ConnInfo`].
pub struct PluginConn {
    stream: UnixStream,
    info: ConnInfo,
}

impl PluginConn {
    fn new(stream: UnixStream, id: u64) -> Self {
        let peer = stream.peer_cred().ok();
        Self {
            stream,
            info: ConnInfo { id, peer },
        }
    }
}

/// The connections `listener` accepts, numbered from `next`: the first gets `next + 1`.
pub fn incoming(
    listener: UnixListener,
    next: Arc<AtomicU64>,
) -> impl Stream<Item = io::Result<PluginConn>> {
    UnixListenerStream::new(listener).map(move |accepted| {
        accepted.map(|stream| PluginConn::new(stream, next.fetch_add(1, Ordering::SeqCst) + 1))
    })
}

impl Connected for PluginConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info
    }
}

impl AsyncRead for PluginConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PluginConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_numbered_in_accept_order_and_carry_the_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let next = Arc::new(AtomicU64::new(41));
        let mut conns = Box::pin(incoming(listener, next.clone()));
        let _a = UnixStream::connect(&path).await.unwrap();
        let first = conns.next().await.unwrap().unwrap();
        let _b = UnixStream::connect(&path).await.unwrap();
        let second = conns.next().await.unwrap().unwrap();
        assert_eq!((first.info.id, second.info.id), (42, 43));
        assert_eq!(next.load(Ordering::SeqCst), 43);
        let peer = first.connect_info().peer.expect("SO_PEERCRED");
        // SAFETY: getuid(2) has no preconditions.
        assert_eq!(peer.uid(), unsafe { libc::getuid() });
    }
}
