//! Replacing a file on the host so that neither a reader nor a planted link can get in the way.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::kind;

/// Mode of every file the agent writes: container runtimes and NFD (not root, in some setups)
/// read them; only the agent writes them.
const MODE: u32 = 0o644;

/// How many temp names are tried when one is taken (someone created it first).
const TEMP_TRIES: usize = 8;

/// A file that was not (re)written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refusing to replace {}: it is {kind}, not a regular file (the agent neither follows nor replaces what it did not write; remove it)", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Replace `path` with `bytes`, so that readers see the old file or the new one, never a mix:
///
/// 1. a temp file beside it under a random hidden name ending in `.tmp` (neither a CDI registry
///    nor NFD reads those), created with `O_CREAT|O_EXCL|O_NOFOLLOW`: a name someone planted, a
///    symlink above all, makes the create fail instead of writing through it;
/// 2. mode 0644, the bytes, `fsync`;
/// 3. `rename` over `path`, then `fsync` of the directory, so the new name survives a crash.
///
/// Refused, with nothing written, when `path` exists and is not a regular file: a symlink, a
/// FIFO, a directory. `rename` replaces a directory entry and never follows a link there, so
/// even a symlink planted between the check and the rename is replaced, not written through.
/// The directory is created if missing. Blocking I/O: call it off the async runtime.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let io = |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    refuse_non_regular(path)?;
    let (tmp, mut file) = create_temp(dir, path, random).map_err(io)?;
    let result = (|| {
        file.set_permissions(Permissions::from_mode(MODE))
            .map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        refuse_non_regular(path)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        // Unlinks the name; never follows it.
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(dir).map_err(io)
}

/// An error when something other than a regular file is at `path`.
fn refuse_non_regular(path: &Path) -> Result<(), WriteError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => Err(WriteError::NotRegular {
            path: path.to_path_buf(),
            kind: kind(meta.file_type()),
        }),
        _ => Ok(()),
    }
}

/// A new file `<dir>/.<name>.<random>.tmp`, created by us and no one else: a name that is taken
/// (by anything, a symlink too) is not opened; the next of `TEMP_TRIES` random names is tried.
pub(super) fn create_temp(
    dir: &Path,
    path: &Path,
    mut random: impl FnMut() -> u64,
) -> std::io::Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let tmp = dir.join(temp_name(&name, random()));
        match create_new(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temp name")))
}

/// The temp name for `name`: hidden, ending in `.tmp`.
pub(super) fn temp_name(name: &str, random: u64) -> String {
    format!(".{name}.{random:016x}.tmp")
}

/// Create `path`, which must not exist as anything (`O_EXCL` also refuses a dangling symlink,
/// which plain `O_CREAT` would follow to create its target), without following a link.
fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// 64 random bits: from the kernel, else from std's randomly keyed hasher. Unpredictable names
/// keep a planted name from blocking every write; safety comes from `O_EXCL|O_NOFOLLOW`.
fn random() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return u64::from_ne_bytes(buf);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// `fsync` the directory, so the rename is on disk. Filesystems that cannot sync a directory
/// say EINVAL; the rename has happened all the same.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    match d.sync_all() {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}
