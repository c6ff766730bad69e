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

/// At most this many bytes of an ID a client sent are repeated in an error or a log line; the
/// rest is replaced by its length. Our own IDs are far shorter (a MIG UUID with a replica suffix
/// is under 60 bytes), so only IDs we never advertised are ever cut.
pub const SHOWN_BYTES: usize = 128;

/// At most this many IDs of one request are listed in a log line.
pub const SHOWN_IDS: usize = 16;

/// `id` as errors and logs show it: whole up to [`SHOWN_BYTES`] bytes, else its first bytes (up
/// to a character boundary) and `…(<length> bytes)`.
pub fn shown(id: &str) -> std::borrow::Cow<'_, str> {
    if id.len() <= SHOWN_BYTES {
        return id.into();
    }
    let mut end = SHOWN_BYTES;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &id[..end], id.len()).into()
}

/// IDs of a request as a log line shows them: at most [`SHOWN_IDS`], each [`shown`], and how
/// many more there were.
pub struct Shown<'a>(pub &'a [String]);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        list.entries(self.0.iter().take(SHOWN_IDS).map(|id| shown(id)));
        if self.0.len() > SHOWN_IDS {
            list.entry(&format_args!("… {} more", self.0.len() - SHOWN_IDS));
        }
        list.finish()
    }
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

    #[test]
    fn long_ids_are_shown_cut_with_their_length() {
        let ours = "MIG-0123456789abcdef0123456789abcdef::vgpu7";
        assert_eq!(shown(ours), ours);
        let huge = "x".repeat(1 << 20);
        let s = shown(&huge);
        assert_eq!(s, format!("{}…(1048576 bytes)", "x".repeat(SHOWN_BYTES)));
        // Cut at a character boundary: 'é' is two bytes and straddles byte 128.
        let accented = format!("{}é{}", "a".repeat(127), "b".repeat(100));
        assert_eq!(shown(&accented), format!("{}…(229 bytes)", "a".repeat(127)));
    }

    #[test]
    fn long_lists_are_shown_cut_with_their_count() {
        let ids: Vec<String> = (0..20).map(|i| format!("GPU-{i}")).collect();
        let text = format!("{:?}", Shown(&ids));
        assert!(text.starts_with("[\"GPU-0\", \"GPU-1\""), "{text}");
        assert!(text.contains("\"GPU-15\", … 4 more]"), "{text}");
        assert!(!text.contains("GPU-16"), "{text}");
        assert_eq!(format!("{:?}", Shown(&ids[..2])), r#"["GPU-0", "GPU-1"]"#);
        let huge = vec!["y".repeat(1 << 20)];
        assert!(format!("{:?}", Shown(&huge)).len() < 200);
    }
}
