//! A value loaded from files and re-loaded when they change: checked on use (one `stat` per
//! file), so a renewed certificate or an edited ConfigMap takes effect on the next connection or
//! request without a restart or a watcher. A change that fails to load is logged once and the
//! last good value stays in force, as the agent does with its config.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What identifies one version of a file: modification time, size and inode (a Secret or
/// ConfigMap volume swaps a symlink, which changes all three); None when it cannot be read.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

type Loader<T, E> = Box<dyn Fn() -> Result<T, E> + Send + Sync>;

/// A value kept in step with `paths`.
pub struct Reloading<T, E> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T, E>,
    state: Mutex<(Arc<T>, Vec<Stamp>)>,
}

impl<T, E: Display> Reloading<T, E> {
    /// Load once now (the error is the caller's to report) and remember the files' stamps.
    /// `what` names the value in logs (`catalog`, `TLS certificate`).
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        let stamps = paths.iter().map(stamp).collect();
        let value = load()?;
        Ok(Self {
            what,
            paths,
            load: Box::new(load),
            state: Mutex::new((Arc::new(value), stamps)),
        })
    }

    /// The current value, re-loaded first if a file changed since the last look.
    pub fn current(&self) -> Arc<T> {
        let stamps: Vec<Stamp> = self.paths.iter().map(stamp).collect();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if stamps != state.1 {
            // Remember the stamps whatever the result: a bad file is reported once, and tried
            // again when it changes again.
            state.1 = stamps;
            match (self.load)() {
                Ok(value) => {
                    tracing::info!(what = self.what, "reloaded after a file change");
                    state.0 = Arc::new(value);
                }
                Err(error) => tracing::warn!(
                    what = self.what,
                    %error,
                    "a changed file does not load; keeping the previous one"
                ),
            }
        }
        state.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number_file(dir: &std::path::Path) -> (PathBuf, Reloading<u64, String>) {
        let path = dir.join("n");
        std::fs::write(&path, "1").unwrap();
        let p = path.clone();
        let r = Reloading::new("number", vec![path.clone()], move || {
            let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
            text.trim().parse::<u64>().map_err(|e| e.to_string())
        })
        .unwrap();
        (path, r)
    }

    /// Replace the file by a rename, as Kubernetes volume updates do (new inode every time).
    fn replace(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn reloads_on_change_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let (path, r) = number_file(dir.path());
        assert_eq!(*r.current(), 1);
        replace(&path, "2");
        assert_eq!(*r.current(), 2);
        replace(&path, "not a number");
        assert_eq!(*r.current(), 2);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(*r.current(), 2);
        replace(&path, "3");
        assert_eq!(*r.current(), 3);
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
