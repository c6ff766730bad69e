//! `gpu-agent check-config PATH`.

use std::path::Path;

use super::Fatal;
use crate::config;

/// Validate `path`: the one-line summary on success, every error otherwise.
pub fn run(path: &Path) -> Result<String, Fatal> {
    let config = config::load(path)?;
    Ok(format!("{}: valid ({})", path.display(), config.summary()))
}
