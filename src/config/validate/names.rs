//! Names as NVIDIA's config decoder accepts them: resource names (`ResourceName`) and device
//! references in a sharing entry's `devices` list (`ReplicatedDeviceRef`).

use serde_yaml_ng::Value;

use crate::config::DeviceRef;

/// NVIDIA's resource-name prefix, added to short names (`gpu` → `nvidia.com/gpu`).
const PREFIX: &str = "nvidia.com/";

/// Longest fully qualified resource name (NVIDIA's `MaxResourceNameLength`).
const MAX_LEN: usize = 63;

/// A resource name as NVIDIA's `NewResourceName` makes it: prefixed with `nvidia.com/` unless it
/// already is, at most 63 characters, and the part after the prefix a lowercase RFC 1123
/// subdomain. `example.com/gpu` thus becomes `nvidia.com/example.com/gpu`, which is refused, as
/// NVIDIA refuses it.
pub fn resource_name(name: &str) -> Result<String, String> {
    let full = if name.starts_with(PREFIX) {
        name.to_string()
    } else {
        format!("{PREFIX}{name}")
    };
    if full.len() > MAX_LEN {
        return Err(format!(
            "fully-qualified resource name must be {MAX_LEN} characters or less: {full:?} has {}",
            full.len()
        ));
    }
    let rest = &full[PREFIX.len()..];
    if !dns_subdomain(rest) {
        return Err(format!(
            "incorrect format for resource name {full:?}: after nvidia.com/ it must be a lowercase RFC 1123 \
             subdomain (lower case alphanumerics, '-' or '.', starting and ending with an alphanumeric)"
        ));
    }
    Ok(full)
}

/// RFC 1123 subdomain: dot-separated labels of `[a-z0-9-]`, each starting and ending with an
/// alphanumeric, 253 characters at most.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// One entry of a `devices` list: a GPU index (integer, or a string of digits), a MIG index
/// `<gpu>:<mig>`, a `GPU-<uuid>` or `MIG-<uuid>`, or a legacy `MIG-GPU-<uuid>/<gi>/<ci>`. UUIDs
/// are checked as Google's uuid parser checks them (NVIDIA uses it): 36-character form, braces,
/// `urn:uuid:`, or 32 hex digits.
pub fn device_ref(value: &Value) -> Option<DeviceRef> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                // An integral float (`1.0`) is an integer after Go's YAML→JSON step.
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u32::MAX as f64)
                    .map(|f| f as u64)
            })
            .and_then(|i| u32::try_from(i).ok())
            .map(DeviceRef::Index),
        Value::String(s) => string_ref(s),
        _ => None,
    }
}

fn string_ref(s: &str) -> Option<DeviceRef> {
    if let Some(rest) = s.strip_prefix("GPU-") {
        return uuid(rest).then(|| DeviceRef::Uuid(s.to_string()));
    }
    if let Some(rest) = s.strip_prefix("MIG-") {
        return (uuid(rest) || legacy_mig(rest)).then(|| DeviceRef::Uuid(s.to_string()));
    }
    if let Some((g, m)) = s.split_once(':') {
        return Some(DeviceRef::MigIndex(decimal(g)?, decimal(m)?));
    }
    decimal(s).map(DeviceRef::Index)
}

/// Go's `strconv.ParseUint(s, 10, 0)`: digits only (leading zeros allowed), no sign.
fn decimal(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `GPU-<uuid>/<gi>/<ci>`: the MIG UUID form of drivers before R470.
fn legacy_mig(rest: &str) -> bool {
    let mut parts = rest.splitn(3, '/');
    let (Some(gpu), Some(gi), Some(ci)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    gpu.strip_prefix("GPU-").is_some_and(uuid) && decimal(gi).is_some() && decimal(ci).is_some()
}

/// The forms `github.com/google/uuid.Parse` accepts.
fn uuid(s: &str) -> bool {
    let hyphenated = |s: &str| {
        s.len() == 36
            && s.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    match s.len() {
        36 => hyphenated(s),
        38 => s.starts_with('{') && s.ends_with('}') && hyphenated(&s[1..37]),
        45 => {
            s.get(..9)
                .is_some_and(|p| p.eq_ignore_ascii_case("urn:uuid:"))
                && hyphenated(&s[9..])
        }
        32 => s.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_get_the_prefix_and_bad_names_are_refused() {
        assert_eq!(resource_name("gpu").unwrap(), "nvidia.com/gpu");
        assert_eq!(
            resource_name("nvidia.com/gpu.shared").unwrap(),
            "nvidia.com/gpu.shared"
        );
        assert_eq!(
            resource_name("mig-1g.10gb").unwrap(),
            "nvidia.com/mig-1g.10gb"
        );
        for bad in ["GPU", "gpu_shared", "", "example.com/gpu", "gpu.", "-gpu"] {
            assert!(resource_name(bad).is_err(), "{bad:?}");
        }
        // 52 characters after the prefix is the most.
        assert!(resource_name(&"a".repeat(52)).is_ok());
        assert!(resource_name(&"a".repeat(53))
            .unwrap_err()
            .contains("63 characters"));
    }

    #[test]
    fn device_references_as_nvidia_reads_them() {
        let uuid = "4cf8db2d-06c0-7d70-1a51-e59b25b2c16c";
        let s = |v: &str| device_ref(&Value::from(v));
        assert_eq!(device_ref(&Value::from(3)), Some(DeviceRef::Index(3)));
        assert_eq!(
            device_ref(&serde_yaml_ng::from_str("1.0").unwrap()),
            Some(DeviceRef::Index(1))
        );
        assert_eq!(s("01"), Some(DeviceRef::Index(1)));
        assert_eq!(s("0:1"), Some(DeviceRef::MigIndex(0, 1)));
        for ok in [
            format!("GPU-{uuid}"),
            format!("MIG-{uuid}"),
            format!("GPU-{}", uuid.to_uppercase()),
            format!("GPU-{{{uuid}}}"),
            format!("GPU-urn:uuid:{uuid}"),
            format!("GPU-{}", uuid.replace('-', "")),
            format!("MIG-GPU-{uuid}/3/0"),
        ] {
            assert_eq!(s(&ok), Some(DeviceRef::Uuid(ok.clone())), "{ok}");
        }
        for bad in [
            "-1".to_string(),
            "+1".into(),
            "0:1:2".into(),
            "GPU-UUID".into(),
            "MIG-UUID".into(),
            "invalid-UUID".into(),
            format!("MIG-GPU-{uuid}"),
            format!("MIG-GPU-{uuid}/x/0"),
            format!("gpu-{uuid}"),
        ] {
            assert_eq!(s(&bad), None, "{bad}");
        }
        assert_eq!(device_ref(&Value::from(-1)), None);
        assert_eq!(device_ref(&Value::Bool(true)), None);
    }
}
