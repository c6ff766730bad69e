//! Limits on the YAML documents the agent and the webhook parse (the config, the mock fixture,
//! the webhook's catalog), checked on the text before serde_yaml_ng sees it.
//!
//! serde_yaml_ng (libyaml underneath) scans the whole document before its own recursion limit
//! applies, and the scan costs time quadratic in the nesting of flow collections: 200 KB of
//! nested `[` took 19 s as a config. Under these limits the worst document costs a fraction of
//! a second: at most [`MAX_BYTES`], nested at most [`MAX_DEPTH`] levels, as counted
//! by [`depth`]'s linear scan. Aliases are not nesting in the text; serde_yaml_ng bounds their
//! expansion itself (a recursion and a repetition limit).

mod depth;

use std::path::Path;

use crate::hostfs::{self, format_size, Links, ReadError};

/// The largest document: real configs and catalogs are a few KiB; a ConfigMap holds 1 MiB.
pub const MAX_BYTES: usize = 256 * 1024;

/// The deepest nesting of collections: real configs nest 6 levels at most.
pub const MAX_DEPTH: usize = 64;

/// A document over a limit, not parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the file is {}; the limit is {}", format_size(*bytes), format_size(MAX_BYTES as u64))]
    TooLarge { bytes: u64 },
    #[error("nested {depth} levels deep at line {line}; the limit is {MAX_DEPTH}")]
    TooDeep { depth: usize, line: usize },
}

/// Ok when `text` is within both limits; else the first one it breaks. Linear in `text`.
pub fn check(text: &str) -> Result<(), LimitError> {
    if text.len() > MAX_BYTES {
        return Err(LimitError::TooLarge {
            bytes: text.len() as u64,
        });
    }
    match depth::first_over(text, MAX_DEPTH) {
        Some(over) => Err(LimitError::TooDeep {
            depth: over.depth,
            line: over.line,
        }),
        None => Ok(()),
    }
}

/// A document file that was not read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Missing, unreadable, not a regular file, not UTF-8: the file's problem.
    #[error("{0}")]
    Read(std::io::Error),
    /// Over [`MAX_BYTES`]: the document's problem, reported like an invalid one.
    #[error("{0}")]
    Limit(LimitError),
}

/// The bytes of a document file (the config, the mock fixture, the catalog), read as files on
/// the host are ([`hostfs::read`]: links followed, as in ConfigMap volumes; regular files only;
/// never blocking) and never more than [`MAX_BYTES`] of them. Blocking I/O.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, DocumentError> {
    match hostfs::read(path, Links::Follow, MAX_BYTES as u64) {
        Ok(bytes) => Ok(bytes),
        Err(ReadError::TooLarge { size, .. }) => {
            Err(DocumentError::Limit(LimitError::TooLarge { bytes: size }))
        }
        Err(e) => Err(DocumentError::Read(e.into_io())),
    }
}

/// [`read_bytes`] as text.
pub fn read_text(path: &Path) -> Result<String, DocumentError> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes)
        .map_err(|e| DocumentError::Read(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests;
