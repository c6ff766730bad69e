//! A value loaded from files and re-loaded in the background when they change, so a renewed
//! certificate or an edited ConfigMap takes effect without a restart. Requests only ever clone
//! the current value: a load (a catalog can take long to parse) never runs inside a request nor
//! under a lock a request waits on. A change that fails to load is logged once and the last
//! good value stays in force, as the agent does with its config.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// How often the files are checked (one `stat` each).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What identifies one version of a file: modification time, size and inode (a Secret or
/// ConfigMap volume swaps a symlink, which changes all three); None when it cannot be read.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(stamp).collect()
}

type Loader<T, E> = Arc<dyn Fn() -> Result<T, E> + Send + Sync>;

/// A value kept in step with `paths` by [`Reloading::watch`].
pub struct Reloading<T, E> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T, E>,
    value: watch::Sender<Arc<T>>,
    /// The stamps the current value was loaded from.
    loaded: Vec<Stamp>,
}

impl<T, E> Reloading<T, E>
where
    T: Send + Sync + 'static,
    E: Display + Send + 'static,
{
    /// Load once now (the error is the caller's to report) and remember the files' stamps.
    /// `what` names the value in logs (`catalog`, `TLS certificate`).
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        let loaded = stamps(&paths);
        let value = load()?;
        Ok(Self {
            what,
            paths,
            load: Arc::new(load),
            value: watch::Sender::new(Arc::new(value)),
            loaded,
        })
    }

    /// A handle on the current value, for requests.
    pub fn current(&self) -> Current<T> {
        Current(self.value.subscribe())
    }

    /// Check the files every `interval` until `shutdown` turns true; when one changed, load on a
    /// blocking thread and publish the result if it loads.
    pub async fn watch(mut self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        if self.paths.is_empty() {
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = crate::sync::until_true(&mut shutdown) => return,
            }
            let now = stamps(&self.paths);
            if now == self.loaded {
                continue;
            }
            // Remember the stamps whatever the result: a bad file is reported once, and tried
            // again when it changes again.
            self.loaded = now;
            let load = self.load.clone();
            match tokio::task::spawn_blocking(move || load()).await {
                Ok(Ok(value)) => {
                    tracing::info!(what = self.what, "reloaded after a file change");
                    self.value.send_replace(Arc::new(value));
                }
                Ok(Err(error)) => tracing::warn!(
                    what = self.what,
                    %error,
                    "a changed file does not load; keeping the previous one"
                ),
                Err(error) => tracing::error!(what = self.what, %error, "reload task failed"),
            }
        }
    }
}

/// The current value of a [`Reloading`], readable without waiting on a load.
#[derive(Clone)]
pub struct Current<T>(watch::Receiver<Arc<T>>);

impl<T> Current<T> {
    pub fn get(&self) -> Arc<T> {
        self.0.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A `Reloading` of the number in `<dir>/n` (initially 1) and how many loads ran.
    fn number_file(dir: &std::path::Path) -> (PathBuf, Reloading<u64, String>, Arc<AtomicUsize>) {
        let path = dir.join("n");
        std::fs::write(&path, "1").unwrap();
        let p = path.clone();
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let r = Reloading::new("number", vec![path.clone()], move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
            text.trim().parse::<u64>().map_err(|e| e.to_string())
        })
        .unwrap();
        (path, r, loads)
    }

    /// Replace the file by a rename, as Kubernetes volume updates do (new inode every time).
    fn replace(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Wait until the value is `want` (the watcher polls every millisecond here).
    async fn until(current: &Current<u64>, want: u64) {
        let mut rx = current.0.clone();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| **v == want))
            .await
            .unwrap_or_else(|_| panic!("never became {want}, still {}", current.get()))
            .unwrap();
    }

    #[tokio::test]
    async fn reloads_on_change_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let (path, r, loads) = number_file(dir.path());
        let current = r.current();
        let (stop, shutdown) = watch::channel(false);
        let watcher = tokio::spawn(r.watch(Duration::from_millis(1), shutdown));
        assert_eq!(*current.get(), 1);
        replace(&path, "2");
        until(&current, 2).await;
        // A bad file is tried once and changes nothing.
        let before = loads.load(Ordering::SeqCst);
        replace(&path, "not a number");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while loads.load(Ordering::SeqCst) == before {
            assert!(std::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(*current.get(), 2);
        std::fs::remove_file(&path).unwrap();
        replace(&path, "3");
        until(&current, 3).await;
        stop.send_replace(true);
        watcher.await.unwrap();
    }

    #[tokio::test]
    async fn a_slow_load_never_blocks_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let p = path.clone();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new((entered_tx, release_rx));
        let r: Reloading<u64, String> = Reloading::new("slow", vec![path.clone()], move || {
            let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
            let n = text.trim().parse::<u64>().map_err(|e| e.to_string())?;
            if n == 2 {
                // The reload: hold it until the test has read the old value meanwhile.
                let gate = gate.lock().unwrap();
                let _ = gate.0.send(());
                let _ = gate.1.recv();
            }
            Ok(n)
        })
        .unwrap();
        let current = r.current();
        let (_stop, shutdown) = watch::channel(false);
        let watcher = tokio::spawn(r.watch(Duration::from_millis(1), shutdown));
        replace(&path, "2");
        tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
            .await
            .unwrap();
        // The load is in progress, blocked: readers get the previous value at once.
        assert_eq!(*current.get(), 1);
        release_tx.send(()).unwrap();
        until(&current, 2).await;
        watcher.abort();
    }

    #[test]
    fn the_first_load_error_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let p = path.clone();
        let r = Reloading::new("number", vec![path], move || {
            std::fs::read_to_string(&p).map_err(|e| e.to_string())
        });
        assert!(r.is_err());
    }
}
