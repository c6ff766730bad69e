//! A DevicePlugin gRPC server on our socket, and the socket's identity: the lifecycle registers
//! only while the file at our path is the very socket this server listens on.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use super::conn;
use super::lifecycle::PluginContext;
use super::server::{PluginService, StreamEvents};
use crate::proto::v1beta1::device_plugin_server::DevicePluginServer;

/// How often our socket is checked while registered or registering.
pub const SOCKET_POLL: Duration = Duration::from_millis(100);

/// The plugin socket's mode: only root (the kubelet) may connect. Connecting to a unix socket
/// needs write permission on it.
pub const SOCKET_MODE: u32 = 0o600;

/// HTTP/2 streams (calls) one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// How long a stopping server may take to end its streams and close its connections before it
/// is aborted.
const STOP_GRACE: Duration = Duration::from_millis(250);

/// (device, inode) of the socket we bound. The kubelet deletes it when it starts; someone else
/// may replace it. Either way the path then names another file, or none.
type Inode = (u64, u64);

fn inode_at(path: &Path) -> Option<Inode> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino()))
}

/// Bind a unix socket at `path` and make it [`SOCKET_MODE`]. The socket is created with the
/// process umask's mode (the image's default leaves it writable by its owner only) and tightened
/// right after.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok(listener)
}

/// A running gRPC server on the plugin socket.
pub struct Served {
    socket: PathBuf,
    inode: Inode,
    stopping: watch::Sender<bool>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Served {
    /// Bind `socket` (replacing whatever file is there: a socket of an earlier run) and serve.
    pub fn start(
        ctx: &PluginContext,
        resource: &str,
        socket: &Path,
        events: StreamEvents,
    ) -> std::io::Result<Self> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = bind_private(socket)?;
        let inode = inode_at(socket).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the socket vanished right after bind",
            )
        })?;
        let (stopping, stop_rx) = watch::channel(false);
        let service = PluginService::new(
            resource.to_string(),
            ctx.snapshots.clone(),
            ctx.status.clone(),
            stop_rx.clone(),
            events.clone(),
        );
        let mut shutdown = stop_rx;
        let incoming = conn::incoming(listener, events.connections.clone());
        let handle = tokio::spawn(
            Server::builder()
                // Per connection: the kubelet's carries one stream and Allocate /
                // GetPreferredAllocation calls, one pod admission at a time.
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(incoming, async move {
                    crate::sync::until_true(&mut shutdown).await
                }),
        );
        Ok(Self {
            socket: socket.to_path_buf(),
            inode,
            stopping,
            handle,
        })
    }

    /// Our path still names the socket this server listens on, and the server runs: the only
    /// state in which Register may be called.
    pub fn is_ours(&self) -> bool {
        !self.handle.is_finished() && inode_at(&self.socket) == Some(self.inode)
    }

    /// Resolves when [`Self::is_ours`] stops holding: the socket was deleted (a starting kubelet
    /// wipes the directory) or replaced, or the server exited.
    pub async fn lost(&self) {
        let mut ticker = tokio::time::interval(SOCKET_POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !self.is_ours() {
                return;
            }
        }
    }

    /// The server task ended on its own (not through [`Self::stop`]).
    pub fn exited(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stop serving: end open streams (so the kubelet sees the old stream end *before* any new
    /// registration), then wait briefly for the server to finish. The socket file is left to the
    /// caller: the next server replaces it, or the plugin's exit removes it.
    pub async fn stop(self) {
        let _ = self.stopping.send(true);
        let mut handle = self.handle;
        if tokio::time::timeout(STOP_GRACE, &mut handle).await.is_err() {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_changes_when_the_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        assert_eq!(inode_at(&path), None);
        let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let a = inode_at(&path).unwrap();
        // The second file is created while the first inode is still held, so it cannot reuse it.
        std::fs::remove_file(&path).unwrap();
        let _second = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_ne!(inode_at(&path), Some(a));
        drop(first);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "a regular file").unwrap();
        assert_eq!(inode_at(&path), None, "not a socket");
    }

    #[tokio::test]
    async fn the_socket_is_only_for_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        // Bound under the usual umask 022 the socket would be 0755 (0777 under umask 0).
        let _listener = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600, "{mode:o}");
    }
}
