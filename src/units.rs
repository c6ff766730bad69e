//! Parsing of human units: Go-style durations (`10s`, `1m30s`, `250ms`) as the NVIDIA config and
//! our flags use them, and Kubernetes quantities (`3Gi`, `512Mi`, `20G`, `4096`). Pure.

use std::time::Duration;

/// A value that is not a valid duration or quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}, got {input:?}")]
pub struct UnitError {
    pub input: String,
    pub message: &'static str,
}

fn err(input: &str, message: &'static str) -> UnitError {
    UnitError {
        input: input.to_string(),
        message,
    }
}

/// Parse a Go-style duration: a sequence of `<number><unit>` with units `ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h`; `0` alone is allowed. Fractions are allowed (`1.5s`). Negative values are not.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err(
            input,
            "expected a duration such as 10s, 500ms or 1m30s",
        ));
    }
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err(input, "missing unit (ns, us, ms, s, m, h)"))?;
        if number_len == 0 {
            return Err(err(input, "expected a number before the unit"));
        }
        let number = &rest[..number_len];
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err(input, "unknown unit (use ns, us, ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        // A fraction is truncated to the nanosecond.
        let nanos =
            scale(number, nanos_per_unit, false).map_err(|e| e.at(input, "duration too large"))?;
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| err(input, "duration too large"))?;
    }
    let secs =
        u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err(input, "duration too large"))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Format a duration the way `parse_duration` reads it back (`1m30s`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d.subsec_nanos() != 0 && d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Parse a Kubernetes quantity into bytes: a plain number (`4096`), a decimal suffix (`k`, `M`,
/// `G`, `T`, `P`, `E`) or a binary one (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`). Fractions are allowed
/// (`1.5Gi`) and rounded up to a whole byte. Negative values and milli (`m`) are rejected: memory
/// cannot be fractional bytes.
pub fn parse_quantity(input: &str) -> Result<u64, UnitError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(err(
            input,
            "expected a quantity such as 3Gi, 512Mi, 20G or 4096",
        ));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() {
        return Err(err(input, "expected a number, e.g. 3Gi"));
    }
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => {
            return Err(err(
                input,
                "unknown suffix (use Ki, Mi, Gi, Ti, k, M, G, T or none for bytes)",
            ))
        }
    };
    let bytes = scale(number, multiplier, true).map_err(|e| e.at(input, "quantity too large"))?;
    u64::try_from(bytes).map_err(|_| err(input, "quantity too large"))
}

/// Why [`scale`] failed.
enum ScaleError {
    Invalid,
    TooLarge,
}

impl ScaleError {
    /// The error for `input`; `too_large` says what was too large.
    fn at(self, input: &str, too_large: &'static str) -> UnitError {
        match self {
            ScaleError::Invalid => err(input, "invalid number"),
            ScaleError::TooLarge => err(input, too_large),
        }
    }
}

/// `number` (ASCII digits with at most one `.`: `3`, `1.5`, `.5`, `2.`) times `unit`, in integer
/// arithmetic so that whole values stay exact at any size (f64 is off by hundreds of nanoseconds
/// past ~100 days). The fraction counts to its first 18 digits and is truncated, or with
/// `round_up` rounded up, to a whole unit of the result.
fn scale(number: &str, unit: u128, round_up: bool) -> Result<u128, ScaleError> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') || (whole.is_empty() && fraction.is_empty()) {
        return Err(ScaleError::Invalid);
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        // Only digits: parsing fails only past u128.
        whole.parse().map_err(|_| ScaleError::TooLarge)?
    };
    let mut total = whole.checked_mul(unit).ok_or(ScaleError::TooLarge)?;
    if !fraction.is_empty() {
        let digits = fraction.len().min(18);
        let fraction: u128 = fraction[..digits]
            .parse()
            .map_err(|_| ScaleError::Invalid)?;
        let scaled = fraction.checked_mul(unit).ok_or(ScaleError::TooLarge)?;
        let divisor = 10u128.pow(digits as u32);
        let part = if round_up {
            scaled.div_ceil(divisor)
        } else {
            scaled / divisor
        };
        total = total.checked_add(part).ok_or(ScaleError::TooLarge)?;
    }
    Ok(total)
}

/// Bytes in one GiB.
pub const GIB: u64 = 1 << 30;
/// Bytes in one MiB.
pub const MIB: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2us").unwrap(), Duration::from_micros(2));
        for bad in ["", "10", "s", "-1s", "10x", "1..2s", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        // Found by fuzzing: whole values far past 2^53 ns were off by some nanoseconds.
        assert_eq!(
            parse_duration("550505505555s").unwrap(),
            Duration::from_secs(550_505_505_555)
        );
        assert_eq!(
            parse_duration("1000000h").unwrap(),
            Duration::from_secs(3_600_000_000)
        );
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.s").unwrap(), Duration::from_secs(1));
        for bad in [".s", "99999999999999999999999999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        // A whole part just below u128::MAX units plus a fraction used to overflow the sum.
        let near_max_us = format!("{}.999us", u128::MAX / 1000);
        assert_eq!(
            parse_duration(&near_max_us).unwrap_err().message,
            "duration too large"
        );
        for d in ["0s", "250ms", "1m30s", "2h", "1h0m5s"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("4096").unwrap(), 4096);
        assert_eq!(parse_quantity("3Gi").unwrap(), 3 * GIB);
        assert_eq!(parse_quantity("512Mi").unwrap(), 512 * MIB);
        assert_eq!(parse_quantity("20G").unwrap(), 20_000_000_000);
        assert_eq!(parse_quantity("1.5Gi").unwrap(), 3 * GIB / 2);
        assert_eq!(parse_quantity("0.5").unwrap(), 1);
        assert_eq!(parse_quantity(" 1k ").unwrap(), 1000);
        for bad in [
            "",
            "Gi",
            "-1Gi",
            "3GB",
            "1.2.3",
            "100m",
            "99999999999999999999Ei",
            ".",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should fail");
        }
        // u128::MAX bytes plus half a byte rounded up used to wrap to 0 in release builds.
        let near_max = format!("{}.5", u128::MAX);
        assert_eq!(
            parse_quantity(&near_max).unwrap_err().message,
            "quantity too large"
        );
    }
}
