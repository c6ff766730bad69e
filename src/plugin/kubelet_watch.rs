//! Notices kubelet restarts: the kubelet re-creates `kubelet.sock` when it starts. A change of
//! the socket's identity (device, inode, change time) bumps a generation number that every plugin
//! watches; a plugin re-registers when the identity differs from the one it registered with.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// How often the socket is looked at. A `stat` every 100 ms costs nothing and keeps re-registration
/// well within the one-second goal.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What is known about the kubelet's registration socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KubeletState {
    /// Bumped every time a new `kubelet.sock` appears (a kubelet start).
    pub generation: u64,
    /// Identity of the socket last seen; `None` while it is absent.
    pub identity: Option<SocketIdentity>,
}

impl KubeletState {
    /// `kubelet.sock` exists.
    pub fn present(&self) -> bool {
        self.identity.is_some()
    }
}

/// Which file a path names right now: (device, inode, change time s, change time ns). A kubelet
/// start makes a new socket, so a new identity.
pub type SocketIdentity = (u64, u64, i64, i64);

/// The identity of the file at `path`, `None` when there is none.
pub fn identity(path: &Path) -> Option<SocketIdentity> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Watch `socket` until the returned receiver's last clone is dropped.
pub fn spawn(socket: PathBuf) -> watch::Receiver<KubeletState> {
    let mut last = identity(&socket);
    let initial = KubeletState {
        generation: u64::from(last.is_some()),
        identity: last,
    };
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                _ = ticker.tick() => {}
            }
            let now = identity(&socket);
            if now == last {
                continue;
            }
            match now {
                Some(_) => {
                    tx.send_modify(|s| {
                        s.generation += 1;
                        s.identity = now;
                    });
                    tracing::info!(socket = %socket.display(), generation = tx.borrow().generation, "kubelet socket (re)created");
                }
                None => {
                    tx.send_modify(|s| s.identity = None);
                    tracing::warn!(socket = %socket.display(), "kubelet socket gone; waiting for the kubelet to come back");
                }
            }
            last = now;
        }
    });
    rx
}
