//! A directory tree read as somebody else's root filesystem: the host's driver root as the agent
//! sees it (`/` on the host, or wherever the DaemonSet mounted it).
//!
//! Paths in and out are *inner* paths (`/usr/lib/x86_64-linux-gnu/libcuda.so.1`), absolute as
//! seen from inside the tree. Symlinks are followed the way the host's loader would follow them
//! with that tree as `/`: an absolute target (`/usr/lib/…`) starts again at the tree's top, and
//! `..` stops there, so nothing resolves outside the tree (a driver root mounted at
//! `/driver-root` must not send us to the agent container's own `/usr/lib`).

use std::collections::VecDeque;
use std::fs::Metadata;
use std::path::PathBuf;

/// Symlinks followed per lookup before giving up (Linux's own limit is 40).
const MAX_LINKS: usize = 40;

/// Why an inner path does not lead to a file.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: more than {MAX_LINKS} symlinks (a loop?)")]
    TooManyLinks { path: String },
    #[error("{path}: not a UTF-8 path")]
    NotUtf8 { path: String },
}

/// One directory entry as [`RootFs::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_symlink: bool,
}

/// The tree under `top`, read with `top` as `/`.
#[derive(Debug, Clone)]
pub struct RootFs {
    top: PathBuf,
}

impl RootFs {
    pub fn new(top: impl Into<PathBuf>) -> Self {
        Self { top: top.into() }
    }

    /// Where inner path `inner` is for this process.
    pub fn outer(&self, inner: &str) -> PathBuf {
        self.top.join(inner.trim_start_matches('/'))
    }

    /// `inner` with every symlink resolved, as an inner path: the file the loader would open.
    pub fn resolve(&self, inner: &str) -> Result<String, ResolveError> {
        let mut done: Vec<String> = Vec::new();
        let mut todo: VecDeque<String> = components(inner).collect();
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            if part == ".." {
                done.pop();
                continue;
            }
            done.push(part);
            let here = join(&done);
            let meta = std::fs::symlink_metadata(self.outer(&here)).map_err(|source| {
                ResolveError::Io {
                    path: here.clone(),
                    source,
                }
            })?;
            if !meta.file_type().is_symlink() {
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(ResolveError::TooManyLinks {
                    path: inner.to_string(),
                });
            }
            let target =
                std::fs::read_link(self.outer(&here)).map_err(|source| ResolveError::Io {
                    path: here.clone(),
                    source,
                })?;
            let target = target
                .to_str()
                .ok_or_else(|| ResolveError::NotUtf8 { path: here.clone() })?;
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            for part in components(target).rev() {
                todo.push_front(part);
            }
        }
        Ok(join(&done))
    }

    /// Metadata of what `inner` (already resolved) names.
    pub fn metadata(&self, inner: &str) -> std::io::Result<Metadata> {
        std::fs::symlink_metadata(self.outer(inner))
    }

    /// `inner` resolved, if it ends at a regular file.
    pub fn regular_file(&self, inner: &str) -> Result<String, ResolveError> {
        let real = self.resolve(inner)?;
        let meta = self.metadata(&real).map_err(|source| ResolveError::Io {
            path: real.clone(),
            source,
        })?;
        if meta.is_file() {
            Ok(real)
        } else {
            Err(ResolveError::Io {
                path: real,
                source: std::io::Error::other("not a regular file"),
            })
        }
    }

    /// The entries of directory `inner` (resolved first), sorted by name; names that are not
    /// UTF-8 are left out (no driver file has one).
    pub fn list(&self, inner: &str) -> Result<Vec<Entry>, ResolveError> {
        let dir = self.resolve(inner)?;
        let io = |source| ResolveError::Io {
            path: dir.clone(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(self.outer(&dir)).map_err(io)? {
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let is_symlink = entry.file_type().is_ok_and(|t| t.is_symlink());
            entries.push(Entry { name, is_symlink });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

/// The non-empty, non-`.` components of `path`.
fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_string)
}

fn join(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, RootFs) {
        let dir = tempfile::tempdir().unwrap();
        let fs = RootFs::new(dir.path());
        std::fs::create_dir_all(fs.outer("/usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::write(
            fs.outer("/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05"),
            b"x",
        )
        .unwrap();
        (dir, fs)
    }

    #[test]
    fn relative_and_absolute_links_stay_inside_the_tree() {
        let (_dir, fs) = tree();
        let lib = "/usr/lib/x86_64-linux-gnu";
        symlink(
            "libcuda.so.580.95.05",
            fs.outer(&format!("{lib}/libcuda.so.1")),
        )
        .unwrap();
        // Absolute target: the tree's /usr/lib, not this machine's.
        symlink(
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            fs.outer(&format!("{lib}/libcuda.so")),
        )
        .unwrap();
        // Merged /usr: /lib -> usr/lib.
        symlink("usr/lib", fs.outer("/lib")).unwrap();
        assert_eq!(
            fs.resolve("/lib/x86_64-linux-gnu/libcuda.so").unwrap(),
            "/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05"
        );
        assert_eq!(
            fs.regular_file("/usr/lib/x86_64-linux-gnu/./libcuda.so.1")
                .unwrap(),
            "/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05"
        );
        // `..` stops at the top.
        symlink("../../../../../usr/lib", fs.outer("/up")).unwrap();
        assert_eq!(
            fs.resolve("/up/x86_64-linux-gnu/libcuda.so.1").unwrap(),
            "/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05"
        );
        let names: Vec<String> = fs
            .list("/lib/x86_64-linux-gnu")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            ["libcuda.so", "libcuda.so.1", "libcuda.so.580.95.05"]
        );
    }

    #[test]
    fn broken_and_looping_links_are_errors() {
        let (_dir, fs) = tree();
        symlink("nowhere", fs.outer("/usr/lib/dangling")).unwrap();
        symlink("b", fs.outer("/usr/lib/a")).unwrap();
        symlink("a", fs.outer("/usr/lib/b")).unwrap();
        assert!(matches!(
            fs.resolve("/usr/lib/dangling"),
            Err(ResolveError::Io { .. })
        ));
        assert!(matches!(
            fs.resolve("/usr/lib/a"),
            Err(ResolveError::TooManyLinks { .. })
        ));
        // A directory is not a regular file; a file is not a directory.
        assert!(fs.regular_file("/usr/lib").is_err());
        assert!(fs
            .list("/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05")
            .is_err());
        assert!(fs.list("/usr/lib/a").is_err());
    }
}
