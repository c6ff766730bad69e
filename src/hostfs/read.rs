//! Reading a file found on the host: regular files only, never blocking, capped in size.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{format_size, kind};

/// The most the agent reads of a file it finds on the host (its own CDI specs are a few KiB;
/// 16 MiB is far above any real one and still harmless to hold in memory).
pub const MAX_HOST_FILE: u64 = 16 * 1024 * 1024;

/// Whether a symlink at the path itself is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Refused: a file the agent owns (its CDI specs) is never a symlink unless someone planted
    /// one.
    Refuse,
    /// Followed: ConfigMap and Secret volumes are symlinks (`..data/…`), and NVIDIA's
    /// config-manager points an "empty" config at `/dev/null`, which reads as empty. What the
    /// link leads to must still be a regular file.
    Follow,
}

/// A file that was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is {kind}, not a regular file; not read", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is {}; the limit is {}", path.display(), format_size(*size), format_size(*limit))]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
}

impl ReadError {
    /// True when there is no file at all (the usual case on a first start).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The reason alone, for errors that name the path themselves.
    pub fn into_io(self) -> std::io::Error {
        match self {
            ReadError::Io { source, .. } => source,
            ReadError::NotRegular { kind, .. } => {
                std::io::Error::other(format!("it is {kind}, not a regular file"))
            }
            ReadError::TooLarge { size, limit, .. } => std::io::Error::other(format!(
                "it is {}; the limit is {}",
                format_size(size),
                format_size(limit)
            )),
        }
    }
}

/// The bytes of the regular file at `path`, at most `limit` of them.
///
/// The type is checked before opening (so a FIFO or a device is never opened: opening some
/// devices has effects), the open is non-blocking (a FIFO swapped in meanwhile cannot hang it)
/// and, with [`Links::Refuse`], does not follow a symlink; the opened file is checked again, and
/// at most `limit + 1` bytes are read, whatever its size said. Blocking I/O: call it off the
/// async runtime.
pub fn read(path: &Path, links: Links, limit: u64) -> Result<Vec<u8>, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_regular = |kind| ReadError::NotRegular {
        path: path.to_path_buf(),
        kind,
    };
    let too_large = |size| ReadError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
    };
    let meta = match links {
        Links::Refuse => std::fs::symlink_metadata(path),
        Links::Follow => std::fs::metadata(path),
    }
    .map_err(io)?;
    if links == Links::Follow && is_dev_null(&meta) {
        return Ok(Vec::new());
    }
    if !meta.is_file() {
        return Err(not_regular(kind(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // O_NOFOLLOW on a symlink swapped in since the look above.
            Some(libc::ELOOP) => not_regular("a symlink"),
            _ => io(e),
        })?;
    let opened = file.metadata().map_err(io)?;
    if !opened.is_file() {
        return Err(not_regular(kind(opened.file_type())));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(opened.len().max(bytes.len() as u64)));
    }
    Ok(bytes)
}

/// `/dev/null` itself (character device 1:3), wherever a link put it.
fn is_dev_null(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device()
        && libc::major(meta.rdev()) == 1
        && libc::minor(meta.rdev()) == 3
}
