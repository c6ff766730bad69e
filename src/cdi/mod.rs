//! Container Device Interface (CDI): the names Allocate hands to the runtime under the
//! `cdi-annotations` / `cdi-cri` strategies, and the spec file that resolves them.
//!
//! - [`device_name`]: `k8s.gpu-agent.io/gpu=<id>`, `<id>` being the device's visible ID (GPU UUID or
//!   index, MIG UUID or `<gpu>:<mig>`), exactly what `NVIDIA_VISIBLE_DEVICES` would hold.
//! - [`annotation_key`]: one key per resource (see there).
//! - [`spec`]: the pure spec builder; [`extras`]: the specs of the node extras (`gds`, `mofed`,
//!   `gdrcopy`, `imex-channel`), one file per class as NVIDIA writes them; [`writer`]: writes them
//!   atomically when they change.
//! - [`driver`]: finds the driver's libraries, binaries and firmware under the driver root (read
//!   through [`rootfs`]); [`layout`]: where they go in the container (mounts, and the
//!   `nvidia-ctk` ldcache hook when the toolkit is there), so that a container started through
//!   CDI alone, with no NVIDIA runtime hook, gets `libcuda.so.1` and `nvidia-smi`.
//! - [`grant`]: an allocation's [`Grant`](crate::allocate::Grant) as container edits
//!   (`ContainerEdits::from_grant`), for the DRA side's per-claim spec.

pub mod driver;
pub mod extras;
pub mod grant;
pub mod layout;
pub mod rootfs;
pub mod spec;
pub mod writer;

/// `<vendor>/<class>`: the spec's `kind` and the prefix of every device name. The vendor is not
/// `nvidia.com`: the NVIDIA Container Toolkit's own spec (`nvidia-ctk cdi generate`) defines
/// `nvidia.com/gpu=<uuid>` too, and two specs defining the same device make the runtime reject
/// both; NVIDIA's device plugin avoids it the same way (`k8s.device-plugin.nvidia.com`).
pub const KIND: &str = "k8s.gpu-agent.io/gpu";
/// Vendor part of every kind we define.
pub const VENDOR: &str = "k8s.gpu-agent.io";
/// Class of the GPUs and MIG devices.
pub const GPU_CLASS: &str = "gpu";
/// Class of the IMEX channels (NVIDIA's name): device `<channel id>`.
pub const IMEX_CLASS: &str = "imex-channel";
/// CDI spec version written. 0.6.0 is understood by containerd ≥ 1.7.2 and CRI-O ≥ 1.28 and
/// carries everything we use (device nodes with host paths, env, mounts, named hooks).
pub const CDI_VERSION: &str = "0.6.0";
/// Name segment of annotation keys, after the configured prefix.
pub const ANNOTATION_PLUGIN: &str = "gpu-agent";

/// Fully-qualified CDI device name of the device with visible ID `id`.
pub fn device_name(id: &str) -> String {
    qualified_name(GPU_CLASS, id)
}

/// `k8s.gpu-agent.io/<class>`: the `kind` of that class's spec.
pub fn kind(class: &str) -> String {
    format!("{VENDOR}/{class}")
}

/// `k8s.gpu-agent.io/<class>=<name>`, the form the runtime resolves.
pub fn qualified_name(class: &str, name: &str) -> String {
    format!("{VENDOR}/{class}={name}")
}

/// File name of the spec of `class` in the CDI dir, `<vendor>-<class>.json` (the CDI library's
/// own naming, which NVIDIA uses too): one file per kind, as the format requires.
pub fn spec_file_name(class: &str) -> String {
    format!("{VENDOR}-{class}.json")
}

/// Longest name part (after the `/`) of a Kubernetes annotation key.
const MAX_KEY_NAME: usize = 63;

/// Annotation key under which the `cdi-annotations` strategy lists the CDI devices of
/// `resource`: `<prefix>gpu-agent_<resource with / replaced by _>`, e.g.
/// `cdi.k8s.io/gpu-agent_nvidia.com_gpu`.
///
/// One key per resource, not per request: a container that asks for two of our resources
/// (`nvidia.com/gpu` and `nvidia.com/mig-1g.10gb`) gets one Allocate response from each plugin and
/// the kubelet merges their annotations, so the keys must differ by resource; within one resource
/// a container is allocated once, so the key needs nothing random (unlike NVIDIA's per-request
/// UUID) and is the same after a restart. The name part is a valid annotation name (at most 63
/// characters of `[A-Za-z0-9._-]`, alphanumeric at both ends); a name that would be longer is cut
/// and ends in a hash of the whole resource name, so it stays unique.
pub fn annotation_key(prefix: &str, resource: &str) -> String {
    let mut name = format!("{ANNOTATION_PLUGIN}_{}", resource.replace('/', "_"));
    if name.len() > MAX_KEY_NAME {
        let hash = format!("{:08x}", fnv1a32(resource.as_bytes()));
        // Resource names are ASCII (validated), so any byte index is a char boundary.
        name.truncate(MAX_KEY_NAME - 1 - hash.len());
        name.push('-');
        name.push_str(&hash);
    }
    format!("{prefix}{name}")
}

/// FNV-1a, 32 bit: stable across Rust versions and platforms.
fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes' rule for the name part of an annotation key.
    fn valid_annotation_name(name: &str) -> bool {
        let alnum = |c: char| c.is_ascii_alphanumeric();
        !name.is_empty()
            && name.len() <= 63
            && name.starts_with(alnum)
            && name.ends_with(alnum)
            && name
                .chars()
                .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
    }

    #[test]
    fn names_and_keys() {
        assert_eq!(device_name("GPU-1"), "k8s.gpu-agent.io/gpu=GPU-1");
        assert_eq!(device_name("0:1"), "k8s.gpu-agent.io/gpu=0:1");
        assert_eq!(KIND, kind(GPU_CLASS));
        assert_eq!(
            qualified_name(IMEX_CLASS, "0"),
            "k8s.gpu-agent.io/imex-channel=0"
        );
        assert_eq!(spec_file_name("gds"), "k8s.gpu-agent.io-gds.json");
        assert_eq!(
            annotation_key("cdi.k8s.io/", "nvidia.com/gpu"),
            "cdi.k8s.io/gpu-agent_nvidia.com_gpu"
        );
        assert_eq!(
            annotation_key("cdi.k8s.io/", "nvidia.com/mig-1g.10gb.me"),
            "cdi.k8s.io/gpu-agent_nvidia.com_mig-1g.10gb.me"
        );
        let long_a = format!("example.com/{}", "a".repeat(60));
        let long_b = format!("example.com/{}b", "a".repeat(59));
        let (a, b) = (
            annotation_key("p.io/", &long_a),
            annotation_key("p.io/", &long_b),
        );
        assert_ne!(a, b);
        for key in [a, b, annotation_key("p.io/", "nvidia.com/gpu")] {
            let name = key.strip_prefix("p.io/").unwrap();
            assert!(valid_annotation_name(name), "{name}");
        }
    }
}
