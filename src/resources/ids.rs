//! Device IDs as the kubelet sees them, and the names handed to containers. The one place they
//! are built and parsed.
//!
//! Advertised IDs are UUID-based whatever `deviceIDStrategy` says (NVIDIA's contract):
//! - whole GPU: its UUID;
//! - MIG device: its UUID;
//! - time-sliced replica: `<uuid>::<n>` (n 0-based);
//! - vGPU slice: `<uuid>::vgpu<n>`.
//!
//! `deviceIDStrategy: index` only changes the name the container gets for the underlying device
//! (`Device::visible_id`): `<gpu index>`, or [`mig_index`] for a MIG device.

/// Separator between an underlying ID and a replica / slice number.
pub const SEPARATOR: &str = "::";

/// ID of replica `n` of the device `base`.
pub fn replica(base: &str, n: u32) -> String {
    format!("{base}{SEPARATOR}{n}")
}

/// ID of vGPU slice `n` of the GPU `base`.
pub fn vgpu_slice(base: &str, n: u32) -> String {
    format!("{base}{SEPARATOR}vgpu{n}")
}

/// Name of a MIG device handed to containers under the index strategy: `<gpu>:<mig>`.
pub fn mig_index(gpu_index: u32, mig_index: u32) -> String {
    format!("{gpu_index}:{mig_index}")
}

/// Name of a GPU (`<gpu>`) or of its MIG device `mig` (`<gpu>:<mig>`) under the index strategy.
pub fn index_name(gpu_index: u32, mig: Option<u32>) -> String {
    mig.map_or_else(|| gpu_index.to_string(), |m| mig_index(gpu_index, m))
}

/// The underlying device ID of an advertised ID (strips `::<n>` / `::vgpu<n>`).
pub fn base(id: &str) -> &str {
    id.split_once(SEPARATOR).map_or(id, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        assert_eq!(replica("GPU-1", 3), "GPU-1::3");
        assert_eq!(vgpu_slice("GPU-1", 0), "GPU-1::vgpu0");
        assert_eq!(mig_index(2, 1), "2:1");
        assert_eq!(index_name(2, Some(1)), "2:1");
        assert_eq!(index_name(3, None), "3");
        assert_eq!(base("GPU-1::3"), "GPU-1");
        assert_eq!(base("GPU-1::vgpu7"), "GPU-1");
        assert_eq!(base("MIG-9"), "MIG-9");
        assert_eq!(base("0:1::2"), "0:1");
    }
}
