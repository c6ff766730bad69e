//! Deterministic UUIDs for the mock backend: the same fixture gives the same IDs on every start.

/// FNV-1a, 64 bit. Stable across Rust versions and platforms, unlike `DefaultHasher`.
fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in data {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// splitmix64's finaliser: spreads small input differences over every output bit, so that
/// neighbouring indexes give UUIDs that do not look alike.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A UUID-shaped string `<prefix>-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` derived from `key`.
fn deterministic_uuid(prefix: &str, key: &str) -> String {
    let hi = mix(fnv1a(0x5bd1_e995, key.as_bytes()));
    let lo = mix(fnv1a(0x9e37_79b9_7f4a_7c15, key.as_bytes()));
    let hex = format!("{hi:016x}{lo:016x}");
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Default UUID of the mock GPU at `index`.
pub fn mock_gpu_uuid(index: u32) -> String {
    deterministic_uuid("GPU", &format!("gpu-agent-mock-gpu-{index}"))
}

/// UUID of the MIG device with GPU instance `gpu_instance_id` on the GPU `parent_uuid`.
pub fn mock_mig_uuid(parent_uuid: &str, gpu_instance_id: u32) -> String {
    deterministic_uuid("MIG", &format!("{parent_uuid}/gi{gpu_instance_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_shaped_like_nvml() {
        let a = mock_gpu_uuid(0);
        assert_eq!(a, mock_gpu_uuid(0));
        assert_ne!(a, mock_gpu_uuid(1));
        assert_eq!(a.len(), "GPU-".len() + 36);
        let parts: Vec<&str> = a.trim_start_matches("GPU-").split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        let m = mock_mig_uuid(&a, 2);
        assert!(m.starts_with("MIG-"));
        assert_ne!(m, mock_mig_uuid(&a, 3));
    }
}
