//! `gpu-agent check-config PATH`.

use std::path::Path;

use super::Fatal;
use crate::config;

/// Validate `path` as the linter does (unknown fields are errors): the one-line summary and one
/// line per note (settings ignored, deliberate differences from NVIDIA's plugin) on success,
/// every error otherwise.
pub fn run(path: &Path) -> Result<String, Fatal> {
    let parsed = config::load_strict(path)?;
    let mut out = format!("{}: valid ({})", path.display(), parsed.config.summary());
    for w in &parsed.warnings {
        out.push_str(&format!("\n  {}: {w}", w.kind.label()));
    }
    Ok(out)
}
