//! The kubelet's side of the device-plugin directory: whether the directory exists (until the
//! kubelet has created it, plugins wait for it) and which `kubelet.sock` is in it. A starting kubelet creates the directory, deletes what earlier kubelets
//! and plugins left in it, then binds a new `kubelet.sock`; a new socket identity is therefore the
//! one reliable sign of a kubelet (re)start. Plugins compare identities themselves (see
//! [`super::lifecycle`]), so that each compares an identity it read against the file as it is now.
//!
//! Only these two paths are looked at, never the directory's listing: the kubelet rewrites its
//! checkpoint (`kubelet_internal_checkpoint`, through a temp file and a rename) after every
//! ListAndWatch message and allocation, and that churn must not look like anything.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// How often these paths are looked at (by the plugins, and by [`log_changes`]). A `stat` every
/// 100 ms costs nothing and keeps re-registration well within the one-second goal.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Which file a path names right now: (device, inode, change time s, change time ns). A kubelet
/// start makes a new socket, so a new identity (the change time tells a reused inode number apart).
pub type SocketIdentity = (u64, u64, i64, i64);

/// The identity of the socket at `path`, `None` when there is none (or it is not a socket).
pub fn identity(path: &Path) -> Option<SocketIdentity> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Whether anything accepts connections on a unix socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A connection was accepted: a kubelet is listening.
    Listening,
    /// The file is there but nobody listens (ECONNREFUSED): a kubelet that exited left it
    /// behind, and it stays until the next kubelet deletes it.
    Stale,
    /// No such file.
    Absent,
    /// Something else went wrong (permissions, not a socket): treated like "not listening".
    Unusable,
}

/// Connect once to `socket` and hang up. Used after our stream was dropped, to tell a kubelet
/// that dropped it (still listening: register again) from a kubelet that exited (its socket is
/// stale: wait for the next one).
pub async fn probe(socket: &Path) -> Probe {
    match tokio::net::UnixStream::connect(socket).await {
        Ok(_) => Probe::Listening,
        Err(e) => probe_error(e.kind()),
    }
}

/// How a failed connect reads (shared with registration, which classifies its own errors).
pub fn probe_error(kind: ErrorKind) -> Probe {
    match kind {
        ErrorKind::ConnectionRefused => Probe::Stale,
        ErrorKind::NotFound => Probe::Absent,
        _ => Probe::Unusable,
    }
}

/// Log, once per node rather than once per plugin, when the device-plugin directory is missing
/// or appears and when a `kubelet.sock` comes or goes, until `shutdown` turns true.
pub async fn log_changes(
    dir: PathBuf,
    socket: Option<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = socket.unwrap_or_default();
    let mut last = read(&dir, &socket);
    let mut starts = u64::from(last.1.is_some());
    log_dir(&dir, last.0, true);
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::sync::until_true(&mut shutdown) => break,
            _ = ticker.tick() => {}
        }
        let now = read(&dir, &socket);
        if now.0 != last.0 {
            log_dir(&dir, now.0, false);
        }
        if now.1 != last.1 {
            match now.1 {
                Some(_) => {
                    starts += 1;
                    tracing::info!(socket = %socket.display(), starts, "kubelet socket (re)created");
                }
                None => tracing::info!(socket = %socket.display(), "kubelet socket gone"),
            }
        }
        last = now;
    }
}

/// (directory exists, identity of kubelet.sock if it is a socket).
fn read(dir: &Path, socket: &Path) -> (bool, Option<SocketIdentity>) {
    let dir_present = std::fs::metadata(dir).is_ok_and(|m| m.is_dir());
    (dir_present, identity(socket))
}

/// One line when the directory is missing (at start, or when it goes away) and one when it is
/// there again; nothing in between.
fn log_dir(dir: &Path, present: bool, at_start: bool) {
    match (present, at_start) {
        (true, true) => {}
        (true, false) => tracing::info!(dir = %dir.display(), "device-plugin directory created"),
        (false, _) => tracing::warn!(
            dir = %dir.display(),
            "device-plugin directory does not exist (yet); waiting for the kubelet to create it \
             (check --device-plugin-dir and, in the DaemonSet, the hostPath mount of /var/lib/kubelet/device-plugins)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_tells_listening_stale_and_absent_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.sock");
        assert_eq!(probe(&path).await, Probe::Absent);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        assert_eq!(probe(&path).await, Probe::Listening);
        // The process that bound it is gone: the file stays, nobody accepts.
        drop(listener);
        assert!(path.exists());
        assert_eq!(probe(&path).await, Probe::Stale);
    }

    #[test]
    fn read_sees_only_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.sock");
        assert_eq!(read(dir.path(), &path), (true, None));
        std::fs::write(&path, "not a socket").unwrap();
        assert_eq!(read(dir.path(), &path), (true, None));
        std::fs::remove_file(&path).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(read(dir.path(), &path).1.is_some());
        assert!(!read(&dir.path().join("missing"), &path).0);
    }
}
