//! A gRPC server kept on a unix socket path: bound mode 0600 (only root, the kubelet, may
//! connect), bound again when the file is deleted or replaced (the kubelet's plugin watcher
//! learns of a plugin only from a socket being created in its directory, so a deleted
//! registration socket must come back), and removed on shutdown.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;

/// Socket mode.
pub const SOCKET_MODE: u32 = 0o600;
/// How often the socket file is checked.
pub const POLL: Duration = Duration::from_millis(100);
/// Wait after a failed bind.
const RETRY: Duration = Duration::from_secs(1);
/// How long a stopping server may take before it is aborted.
const STOP_GRACE: Duration = Duration::from_millis(250);

/// (device, inode) of the socket at `path`, if it is a socket.
pub fn inode_at(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino()))
}

/// Replace whatever socket is at `path` with ours, mode [`SOCKET_MODE`]; the directory is created
/// if missing.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(m) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket ({:?}); not replacing it",
                path.display(),
                m.file_type()
            )))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok(listener)
}

/// Serve `routes()` on `path` until `shutdown`, then remove the socket (if it is still ours).
/// `what` names the socket in logs.
pub async fn serve(
    what: &'static str,
    path: PathBuf,
    routes: impl Fn() -> Routes,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let listener = match bind(&path) {
            Ok(l) => l,
            Err(error) => {
                tracing::error!(socket = %path.display(), what, %error, retry_in = ?RETRY, "cannot bind");
                tokio::select! {
                    _ = crate::sync::until_true(&mut shutdown) => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let Some(inode) = inode_at(&path) else {
            continue;
        };
        if first {
            tracing::info!(socket = %path.display(), what, "serving");
        } else {
            tracing::info!(socket = %path.display(), what, "socket was deleted or replaced; serving on a new one");
        }
        first = false;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut handle = tokio::spawn(
            Server::builder()
                .add_routes(routes())
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    crate::sync::until_true(&mut stop_rx).await
                }),
        );
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopping = loop {
            tokio::select! {
                _ = crate::sync::until_true(&mut shutdown) => break true,
                r = &mut handle => {
                    tracing::error!(socket = %path.display(), what, result = ?r, "server exited; serving again");
                    break false;
                }
                _ = ticker.tick() => {
                    if inode_at(&path) != Some(inode) {
                        break false;
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        if !handle.is_finished() && tokio::time::timeout(STOP_GRACE, &mut handle).await.is_err() {
            handle.abort();
        }
        if stopping {
            if inode_at(&path) == Some(inode) {
                let _ = std::fs::remove_file(&path);
            }
            tracing::info!(socket = %path.display(), what, "stopped; socket removed");
            return;
        }
    }
}
