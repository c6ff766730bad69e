//! The mock inventory fixture (SPEC.md section 2): parsing and validation. Pure.

/// One problem in a fixture, with the field path it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FixtureError {
    pub path: String,
    pub message: String,
}
