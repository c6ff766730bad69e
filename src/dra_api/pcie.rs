//! The PCIe root complex of each GPU, for the standard `resource.kubernetes.io/pcieRoot`
//! attribute. As the upstream helper (`k8s.io/dynamic-resource-allocation/deviceattribute`)
//! does, the root is read from sysfs: `/sys/bus/pci/devices/<bus id>` links to
//! `/sys/devices/pci<domain>:<bus>/…/<bus id>`, and the `pci<domain>:<bus>` component is the root.

use std::path::Path;

use super::devices::PcieRoots;

/// The root of each of `bus_ids` that sysfs under `sys` (normally `/sys`) knows; the others are
/// left out (no sysfs in a container without it, a mock bus id), with a debug line.
pub fn roots<'a>(sys: &Path, bus_ids: impl IntoIterator<Item = &'a str>) -> PcieRoots {
    let mut found = PcieRoots::new();
    for bus_id in bus_ids {
        let link = sys
            .join("bus/pci/devices")
            .join(bus_id.to_ascii_lowercase());
        match std::fs::read_link(&link) {
            Ok(target) => match root_of(&target.to_string_lossy()) {
                Some(root) => {
                    found.insert(bus_id.to_string(), root);
                }
                None => {
                    tracing::debug!(bus_id, target = %target.display(), "no PCIe root in the sysfs path")
                }
            },
            Err(error) => {
                tracing::debug!(bus_id, path = %link.display(), %error, "no PCIe root: sysfs link unreadable")
            }
        }
    }
    found
}

/// The `pci<domain>:<bus>` component of a sysfs device path.
pub fn root_of(path: &str) -> Option<String> {
    path.split('/')
        .find(|part| {
            part.strip_prefix("pci").is_some_and(|rest| {
                let mut halves = rest.split(':');
                let (Some(domain), Some(bus), None) = (halves.next(), halves.next(), halves.next())
                else {
                    return false;
                };
                !domain.is_empty()
                    && !bus.is_empty()
                    && domain
                        .bytes()
                        .chain(bus.bytes())
                        .all(|b| b.is_ascii_hexdigit())
            })
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_component_is_found() {
        assert_eq!(
            root_of("../../../devices/pci0000:15/0000:15:01.0/0000:16:00.0/0000:18:00.0")
                .as_deref(),
            Some("pci0000:15")
        );
        assert_eq!(root_of("../../../devices/platform/foo"), None);
        assert_eq!(root_of("pcie/pci0000/x"), None);
    }

    #[test]
    fn roots_from_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("bus/pci/devices");
        std::fs::create_dir_all(&devices).unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:15/0000:15:01.0/0000:18:00.0",
            devices.join("0000:18:00.0"),
        )
        .unwrap();
        let found = roots(dir.path(), ["0000:18:00.0", "0000:2a:00.0"]);
        assert_eq!(found.len(), 1);
        assert_eq!(found["0000:18:00.0"], "pci0000:15");
    }
}
