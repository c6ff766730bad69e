//! Version attributes as the API server accepts them: semver 2.0.0, `MAJOR.MINOR.PATCH`, no
//! leading zeros (`pkg/apis/resource/validation` matches `^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)…$`
//! and rejects the whole ResourceSlice otherwise).
//!
//! NVIDIA prints versions its own way: the driver as `580.95.05` (a zero-padded patch), CUDA as
//! `13.0`, a compute capability as `9.0`. [`normalize`] turns those into `580.95.5`, `13.0.0` and
//! `9.0.0`, the same values NVIDIA's DRA driver publishes. Anything else is refused with a reason,
//! so that the attribute is left out rather than the slice rejected.

/// The longest version value the API allows (`DeviceAttributeMaxValueLength`).
pub const MAX_LEN: usize = 64;

/// Why a version string cannot be published as a version attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Nothing to publish.
    #[error("empty version")]
    Empty,
    /// More than three dot-separated numbers (`1.2.3.4`).
    #[error("version {0:?} has more than three numbers")]
    TooManyParts(String),
    /// A part that is not a decimal number (`12.x`, `1..2`, `-1`).
    #[error("version {raw:?}: part {part:?} is not a decimal number")]
    NotANumber { raw: String, part: String },
    /// A number beyond u64 (the API would take it, NVIDIA never prints one: a broken input).
    #[error("version {raw:?}: part {part:?} is too large")]
    TooLarge { raw: String, part: String },
    /// Longer than the API's value limit once normalized.
    #[error("version {0:?} is longer than {MAX_LEN} characters")]
    TooLong(String),
}

/// `raw` as a semver 2.0.0 version: one to three decimal numbers, missing ones taken as 0,
/// leading zeros dropped; surrounding whitespace is ignored.
pub fn normalize(raw: &str) -> Result<String, VersionError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(VersionError::Empty);
    }
    let parts: Vec<&str> = trimmed.split('.').collect();
    if parts.len() > 3 {
        return Err(VersionError::TooManyParts(raw.to_string()));
    }
    let mut numbers = [0u64; 3];
    for (slot, part) in numbers.iter_mut().zip(&parts) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VersionError::NotANumber {
                raw: raw.to_string(),
                part: (*part).to_string(),
            });
        }
        *slot = part.parse().map_err(|_| VersionError::TooLarge {
            raw: raw.to_string(),
            part: (*part).to_string(),
        })?;
    }
    let version = format!("{}.{}.{}", numbers[0], numbers[1], numbers[2]);
    if version.len() > MAX_LEN {
        return Err(VersionError::TooLong(raw.to_string()));
    }
    Ok(version)
}

/// True when `value` is what the API server's semver check accepts (numbers only: the agent
/// never writes pre-release or build suffixes). For tests and the test API server's strictness.
pub fn is_strict(value: &str) -> bool {
    let parts: Vec<&str> = value.split('.').collect();
    parts.len() == 3
        && value.len() <= MAX_LEN
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_versions_become_semver() {
        assert_eq!(normalize("580.95.05").unwrap(), "580.95.5");
        assert_eq!(normalize("535.104.12").unwrap(), "535.104.12");
        assert_eq!(normalize("13.0").unwrap(), "13.0.0");
        assert_eq!(normalize("12.8").unwrap(), "12.8.0");
        assert_eq!(normalize("9.0").unwrap(), "9.0.0");
        assert_eq!(normalize("10").unwrap(), "10.0.0");
        assert_eq!(normalize(" 550.54.14\n").unwrap(), "550.54.14");
    }

    #[test]
    fn leading_zeros_are_dropped_but_zero_stays() {
        assert_eq!(normalize("00.000.0").unwrap(), "0.0.0");
        assert_eq!(normalize("007.08.09").unwrap(), "7.8.9");
        assert_eq!(normalize("470.82.01").unwrap(), "470.82.1");
    }

    #[test]
    fn odd_input_is_refused_with_a_reason() {
        assert_eq!(normalize(""), Err(VersionError::Empty));
        assert_eq!(normalize("  "), Err(VersionError::Empty));
        assert!(matches!(
            normalize("1.2.3.4"),
            Err(VersionError::TooManyParts(_))
        ));
        for bad in [
            "1..2", "12.x", "-1", "1.2-beta", "v13.0", "1.2.", ".1", "1 .2", "N/A",
        ] {
            let err = normalize(bad).unwrap_err();
            assert!(
                matches!(err, VersionError::NotANumber { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(matches!(
            normalize("99999999999999999999999.1"),
            Err(VersionError::TooLarge { .. })
        ));
    }

    #[test]
    fn everything_normalize_returns_is_strict_semver() {
        for raw in [
            "580.95.05",
            "13.0",
            "0",
            "007.08.09",
            "18446744073709551615.1.1",
        ] {
            let v = normalize(raw).unwrap();
            assert!(is_strict(&v), "{raw} -> {v}");
        }
        for bad in ["13.0", "580.95.05", "1.2.3.4", "", "a.b.c", "01.1.1"] {
            assert!(!is_strict(bad), "{bad}");
        }
    }
}
