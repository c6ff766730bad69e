//! DRA device names (SPEC.md section 8): `gpu-<index>` for a whole GPU, `gpu-<index>-mig-<gi>-<ci>`
//! for a MIG device (GPU index, GPU-instance id, compute-instance id). Both are DNS labels, as
//! the API server requires of device names in a ResourceSlice. Pure; the ResourceSlice side and
//! the kubelet side both use these, so a published name always resolves at prepare time.

use crate::gpu::{Gpu, Inventory, MigDevice};

/// Longest DNS label.
const MAX_LABEL: usize = 63;
/// Longest DNS subdomain.
const MAX_SUBDOMAIN: usize = 253;

/// Which device a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceRef {
    /// A whole GPU, by index.
    Gpu { index: u32 },
    /// A MIG device: parent GPU index, GPU-instance id, compute-instance id.
    Mig { index: u32, gi: u32, ci: u32 },
}

impl DeviceRef {
    /// The device's DRA name.
    pub fn name(&self) -> String {
        match *self {
            DeviceRef::Gpu { index } => gpu_name(index),
            DeviceRef::Mig { index, gi, ci } => mig_name(index, gi, ci),
        }
    }

    /// Index of the (parent) GPU.
    pub fn gpu_index(&self) -> u32 {
        match *self {
            DeviceRef::Gpu { index } | DeviceRef::Mig { index, .. } => index,
        }
    }
}

/// `gpu-<index>`.
pub fn gpu_name(index: u32) -> String {
    format!("gpu-{index}")
}

/// `gpu-<index>-mig-<gi>-<ci>`.
pub fn mig_name(index: u32, gi: u32, ci: u32) -> String {
    format!("gpu-{index}-mig-{gi}-{ci}")
}

/// The DRA name of `mig` on `gpu`.
pub fn of_mig(gpu: &Gpu, mig: &MigDevice) -> String {
    mig_name(gpu.index, mig.gpu_instance_id, mig.compute_instance_id)
}

/// Read a device name back; `None` for anything that is not exactly one of the two forms
/// (numbers in canonical decimal: `gpu-01` is not `gpu-1`).
pub fn parse(name: &str) -> Option<DeviceRef> {
    let rest = name.strip_prefix("gpu-")?;
    let mut parts = rest.split('-');
    let index = number(parts.next()?)?;
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (None, ..) => Some(DeviceRef::Gpu { index }),
        (Some("mig"), Some(gi), Some(ci), None) => Some(DeviceRef::Mig {
            index,
            gi: number(gi)?,
            ci: number(ci)?,
        }),
        _ => None,
    }
}

/// A canonical decimal `u32`: digits only, no leading zero unless it is `0`.
fn number(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// The inventory's device that `name` stands for: the GPU, and the MIG device when it is one.
/// Only the names [`of_gpu`] gives: a GPU in MIG mode is its MIG devices, not a whole GPU.
pub fn resolve<'a>(
    inventory: &'a Inventory,
    name: &str,
) -> Option<(&'a Gpu, Option<&'a MigDevice>)> {
    match parse(name)? {
        DeviceRef::Gpu { index } => inventory
            .gpu_by_index(index)
            .filter(|g| !g.mig_enabled)
            .map(|g| (g, None)),
        DeviceRef::Mig { index, gi, ci } => {
            let gpu = inventory.gpu_by_index(index)?;
            let mig = gpu
                .mig_devices
                .iter()
                .find(|m| m.gpu_instance_id == gi && m.compute_instance_id == ci)?;
            Some((gpu, Some(mig)))
        }
    }
}

/// Every device name of `gpu`: the GPU itself when MIG is off, its MIG devices when it is on.
pub fn of_gpu(gpu: &Gpu) -> Vec<String> {
    if gpu.mig_enabled {
        gpu.mig_devices.iter().map(|m| of_mig(gpu, m)).collect()
    } else {
        vec![gpu_name(gpu.index)]
    }
}

/// Is `s` a DNS label (RFC 1123: lower-case alphanumerics and `-`, alphanumeric at both ends,
/// at most 63 characters)?
pub fn is_dns_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL
        && bytes.first().copied().is_some_and(alnum)
        && bytes.last().copied().is_some_and(alnum)
        && bytes.iter().all(|&b| alnum(b) || b == b'-')
}

/// A DRA driver name must be a DNS subdomain (dot-separated DNS labels, at most 253
/// characters), as `ResourceSlice.spec.driver` and the DeviceClass selectors require.
pub fn check_driver_name(name: &str) -> Result<(), String> {
    if name.len() <= MAX_SUBDOMAIN && !name.is_empty() && name.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS subdomain (lower-case letters, digits, '-' and '.', each \
             dot-separated part starting and ending with a letter or digit, at most 253 \
             characters), e.g. gpu.gpu-agent.io"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fixture;

    #[test]
    fn names_round_trip_and_are_dns_labels() {
        for r in [
            DeviceRef::Gpu { index: 0 },
            DeviceRef::Gpu { index: 7 },
            DeviceRef::Mig {
                index: 3,
                gi: 13,
                ci: 0,
            },
            DeviceRef::Mig {
                index: u32::MAX,
                gi: u32::MAX,
                ci: u32::MAX,
            },
        ] {
            let name = r.name();
            assert!(is_dns_label(&name), "{name}");
            assert_eq!(parse(&name), Some(r), "{name}");
        }
        assert_eq!(gpu_name(2), "gpu-2");
        assert_eq!(mig_name(1, 2, 0), "gpu-1-mig-2-0");
    }

    #[test]
    fn anything_else_is_not_a_name() {
        for bad in [
            "",
            "gpu",
            "gpu-",
            "gpu-01",
            "gpu--1",
            "gpu-1-",
            "gpu-1-mig",
            "gpu-1-mig-2",
            "gpu-1-mig-2-3-4",
            "gpu-1-mog-2-3",
            "gpu-1-mig-02-3",
            "gpu-4294967296",
            "GPU-1",
            "gpu-+1",
            "mig-1",
            "gpu-1.0",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn resolves_against_the_inventory() {
        let inv = fixture::parse(
            "gpus:\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 1g.10gb]}}\n",
        )
        .unwrap()
        .inventory;
        let (gpu, mig) = resolve(&inv, "gpu-0").unwrap();
        assert_eq!((gpu.index, mig), (0, None));
        let names = of_gpu(&inv.gpus[1]);
        assert_eq!(names.len(), 2);
        for (name, want) in names.iter().zip(&inv.gpus[1].mig_devices) {
            let (gpu, mig) = resolve(&inv, name).unwrap();
            assert_eq!(gpu.index, 1);
            assert_eq!(mig.unwrap().uuid, want.uuid);
        }
        assert_eq!(of_gpu(&inv.gpus[0]), ["gpu-0"]);
        assert!(resolve(&inv, "gpu-2").is_none());
        assert!(resolve(&inv, "gpu-1-mig-9-9").is_none());
        assert!(resolve(&inv, "gpu-0-mig-1-0").is_none(), "GPU 0 has no MIG");
        assert!(resolve(&inv, "gpu-1").is_none(), "GPU 1 is in MIG mode");
    }

    #[test]
    fn driver_names_are_dns_subdomains() {
        for good in ["gpu.gpu-agent.io", "a", "x1.example.com", &"a".repeat(63)] {
            assert!(check_driver_name(good).is_ok(), "{good}");
        }
        let long = format!("{}.io", vec!["a".repeat(63); 4].join("."));
        for bad in [
            "",
            "Gpu.io",
            "gpu_agent.io",
            "-gpu.io",
            "gpu-.io",
            "gpu..io",
            ".gpu.io",
            "gpu.io.",
            &"a".repeat(64),
            &long,
        ] {
            let err = check_driver_name(bad).unwrap_err();
            assert!(err.contains("DNS subdomain"), "{bad}: {err}");
        }
    }
}
