//! Validation of the test API server, written from the real one's
//! `pkg/apis/resource/validation/validation.go` (ValidateResourceSlice, validateResourceSliceSpec,
//! validateDevice, validateDeviceAttribute, the semver regexp) and
//! `staging/src/k8s.io/apimachinery/pkg/util/validation` (DNS labels and subdomains, qualified
//! names). Errors come back as `field: message` lines, the way the API server's 422 lists causes.

use serde_json::Value;

/// Most devices per slice (`ResourceSliceMaxDevices`); 64 with taints or counter consumption.
const MAX_DEVICES: usize = 128;
const MAX_DEVICES_ADVANCED: usize = 64;
/// `ResourceSliceMaxAttributesAndCapacitiesPerDevice`.
const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
/// `DeviceAttributeMaxValueLength`.
const MAX_VALUE_LEN: usize = 64;
/// `DeviceMaxDomainLength`, `DeviceMaxIDLength`.
const MAX_DOMAIN_LEN: usize = 63;
const MAX_ID_LEN: usize = 32;

pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A C identifier (`^[A-Za-z_][A-Za-z0-9_]*$`), at most 32 characters.
fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_ID_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `validateQualifiedName`: `[domain/]identifier`.
fn qualified_name_problem(name: &str) -> Option<String> {
    let (domain, id) = match name.split_once('/') {
        Some((domain, id)) => (Some(domain), id),
        None => (None, name),
    };
    if let Some(domain) = domain {
        if domain.len() > MAX_DOMAIN_LEN || !is_dns_subdomain(domain) {
            return Some(format!("{name:?}: the domain must be a DNS subdomain of at most {MAX_DOMAIN_LEN} characters"));
        }
    }
    if !is_c_identifier(id) {
        return Some(format!("{name:?}: must be a C identifier of at most {MAX_ID_LEN} characters, optionally prefixed by a DNS subdomain and '/'"));
    }
    None
}

/// The semver 2.0.0 regexp of validation.go, written out by hand.
pub fn is_semver(v: &str) -> bool {
    fn numeric(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    }
    fn ident(s: &str, prerelease: bool) -> bool {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && (!prerelease || !s.bytes().all(|b| b.is_ascii_digit()) || numeric(s))
    }
    if v.len() > MAX_VALUE_LEN {
        return false;
    }
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(|p| p.split('.').all(|i| ident(i, true)))
        && build.is_none_or(|b| b.split('.').all(|i| ident(i, false)))
}

/// A Kubernetes quantity (`resource.ParseQuantity`): a signed decimal number and an optional
/// binary (Ki…Ei) or decimal (n, u, m, k, M, G, T, P, E) suffix or exponent.
pub fn is_quantity(q: &str) -> bool {
    let body = q.strip_prefix(['+', '-']).unwrap_or(q);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// ValidateObjectMeta for a cluster-scoped object named by a DNS subdomain.
pub fn metadata(obj: &Value, errors: &mut Vec<String>) {
    match str_at(obj, &["metadata", "name"]) {
        None | Some("") => errors.push("metadata.name: Required value: name or generateName is required".into()),
        Some(name) if !is_dns_subdomain(name) => errors.push(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        )),
        Some(_) => {}
    }
    if let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    {
        for (i, r) in refs.iter().enumerate() {
            for field in ["apiVersion", "kind", "name", "uid"] {
                if str_at(r, &[field]).is_none_or(str::is_empty) {
                    errors.push(format!(
                        "metadata.ownerReferences[{i}].{field}: Required value"
                    ));
                }
            }
        }
    }
}

/// ValidateResourceSlice (create) and, with `old`, ValidateResourceSliceUpdate.
pub fn resource_slice(obj: &Value, old: Option<&Value>) -> Vec<String> {
    let mut errors = Vec::new();
    metadata(obj, &mut errors);
    let Some(spec) = obj.get("spec") else {
        errors.push("spec: Required value".into());
        return errors;
    };
    match str_at(spec, &["driver"]) {
        None | Some("") => errors.push("spec.driver: Required value".into()),
        Some(d) if d.len() > 63 || !is_dns_subdomain(&d.to_ascii_lowercase()) => {
            errors.push(format!(
            "spec.driver: Invalid value: {d:?}: must be a DNS subdomain of at most 63 characters"
        ))
        }
        Some(_) => {}
    }
    match spec.get("pool") {
        None => errors.push("spec.pool: Required value".into()),
        Some(pool) => {
            match str_at(pool, &["name"]) {
                None | Some("") => errors.push("spec.pool.name: Required value".into()),
                Some(n) if n.len() > 253 || !n.split('/').all(is_dns_subdomain) => {
                    errors.push(format!("spec.pool.name: Invalid value: {n:?}"))
                }
                Some(_) => {}
            }
            match pool.get("resourceSliceCount").and_then(Value::as_i64) {
                Some(c) if c > 0 => {}
                other => errors.push(format!("spec.pool.resourceSliceCount: Invalid value: {other:?}: must be greater than zero")),
            }
            match pool.get("generation").and_then(Value::as_i64) {
                Some(g) if g >= 0 => {}
                None if pool.get("generation").is_none() => {}
                other => errors.push(format!("spec.pool.generation: Invalid value: {other:?}: must be greater than or equal to zero")),
            }
        }
    }
    if let Some(old) = old.and_then(|o| o.get("spec")) {
        for (path, field) in [
            (&["pool", "name"][..], "spec.pool.name"),
            (&["driver"][..], "spec.driver"),
            (&["nodeName"][..], "spec.nodeName"),
        ] {
            if str_at(spec, path) != str_at(old, path) {
                errors.push(format!("{field}: Invalid value: field is immutable"));
            }
        }
    }
    let mut set = Vec::new();
    match spec.get("nodeName") {
        Some(Value::String(n)) if n.is_empty() => errors.push(
            "spec.nodeName: Invalid value: \"\": must be either unset or set to a non-empty string"
                .into(),
        ),
        Some(Value::String(n)) => {
            set.push("nodeName");
            if !is_dns_subdomain(n) {
                errors.push(format!("spec.nodeName: Invalid value: {n:?}"));
            }
        }
        Some(Value::Null) | None => {}
        Some(other) => errors.push(format!("spec.nodeName: Invalid value: {other}")),
    }
    if spec.get("nodeSelector").is_some_and(|v| !v.is_null()) {
        set.push("nodeSelector");
    }
    if spec.get("allNodes").is_some_and(|v| !v.is_null()) {
        set.push("allNodes");
    }
    if spec
        .get("perDeviceNodeSelection")
        .is_some_and(|v| !v.is_null())
    {
        set.push("perDeviceNodeSelection");
    }
    match set.len() {
        1 => {}
        0 => errors.push("spec: Required value: exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required".into()),
        _ => errors.push(format!("spec: Invalid value: {set:?}: exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required, but multiple fields are set")),
    }
    let devices = spec
        .get("devices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let advanced = devices.iter().any(|d| {
        d.get("taints").is_some_and(|t| !t.is_null())
            || d.get("consumesCounters").is_some_and(|t| !t.is_null())
    });
    let max = if advanced {
        MAX_DEVICES_ADVANCED
    } else {
        MAX_DEVICES
    };
    if devices.len() > max {
        errors.push(format!(
            "spec.devices: Too many: {}: must have at most {max} items",
            devices.len()
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, device) in devices.iter().enumerate() {
        device_errors(
            device,
            &format!("spec.devices[{i}]"),
            &mut names,
            &mut errors,
        );
    }
    errors
}

fn device_errors(
    device: &Value,
    at: &str,
    names: &mut std::collections::BTreeSet<String>,
    errors: &mut Vec<String>,
) {
    match str_at(device, &["name"]) {
        None | Some("") => errors.push(format!("{at}.name: Required value")),
        Some(n) => {
            if !is_dns_label(n) {
                errors.push(format!("{at}.name: Invalid value: {n:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"));
            }
            if !names.insert(n.to_string()) {
                errors.push(format!("{at}.name: Duplicate value: {n:?}"));
            }
        }
    }
    let empty = serde_json::Map::new();
    let attributes = device
        .get("attributes")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let capacity = device
        .get("capacity")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if attributes.len() + capacity.len() > MAX_ATTRIBUTES_AND_CAPACITIES {
        errors.push(format!(
            "{at}: Invalid value: {}: the total number of attributes and capacities must not exceed {MAX_ATTRIBUTES_AND_CAPACITIES}",
            attributes.len() + capacity.len()
        ));
    }
    for (name, value) in attributes {
        let here = format!("{at}.attributes[{name}]");
        if let Some(problem) = qualified_name_problem(name) {
            errors.push(format!("{here}: Invalid value: {problem}"));
        }
        let kinds: Vec<&str> = ["bool", "int", "string", "version"]
            .into_iter()
            .filter(|k| value.get(*k).is_some_and(|v| !v.is_null()))
            .collect();
        if kinds.len() != 1 {
            errors.push(format!(
                "{here}: Invalid value: exactly one value must be specified"
            ));
        }
        if let Some(s) = value.get("string").and_then(Value::as_str) {
            if s.len() > MAX_VALUE_LEN {
                errors.push(format!(
                    "{here}.string: Too long: may not be more than {MAX_VALUE_LEN} bytes"
                ));
            }
        }
        if let Some(v) = value.get("version") {
            match v.as_str() {
                Some(v) if is_semver(v) => {}
                _ => errors.push(format!("{here}.version: Invalid value: {v}: must be a string compatible with semver.org spec 2.0.0")),
            }
        }
    }
    for (name, value) in capacity {
        let here = format!("{at}.capacity[{name}]");
        if let Some(problem) = qualified_name_problem(name) {
            errors.push(format!("{here}: Invalid value: {problem}"));
        }
        match value.get("value").and_then(Value::as_str) {
            Some(q) if is_quantity(q) => {}
            other => errors.push(format!("{here}.value: Invalid value: {other:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")),
        }
    }
}

/// ValidateResourceClaim, the parts a test claim can get wrong.
pub fn resource_claim(obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    metadata(obj, &mut errors);
    if obj.get("spec").is_none() {
        errors.push("spec: Required value".into());
    }
    errors
}
