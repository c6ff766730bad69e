//! Where the CDI hook binary may be. Container runtimes run the CDI spec's hook as root on the
//! host, so whoever sets `flags.plugin.nvidiaCTKPath` (the ConfigMap's editors) or
//! `NVIDIA_CDI_HOOK_PATH` would otherwise choose a program every GPU container start runs as
//! root. It must be a file of the driver installation (under `flags.nvidiaDriverRoot`, when
//! that is not `/`) or one of the places the NVIDIA Container Toolkit installs it. NVIDIA's
//! plugin takes any path.

use std::path::{Component, Path};

use crate::config::{Config, ConfigError, Overrides};

/// Where the NVIDIA Container Toolkit puts its hook: the packages, and the GPU Operator's
/// toolkit container.
pub const ALLOWED: &[&str] = &[
    "/usr/bin/nvidia-ctk",
    "/usr/bin/nvidia-cdi-hook",
    "/usr/local/nvidia/toolkit/nvidia-ctk",
    "/usr/local/nvidia/toolkit/nvidia-cdi-hook",
];

/// The config field, and its flag and environment variables, for errors.
pub const FIELD: &str = "flags.plugin.nvidiaCTKPath";
const FLAG: &str = "--nvidia-cdi-hook-path (NVIDIA_CDI_HOOK_PATH, NVIDIA_CTK_PATH)";

/// Ok when `path` may be the hook under the driver root `driver_root`: "" (no hook), a path in
/// [`ALLOWED`], or an absolute path strictly under `driver_root` without `.` or `..` in it.
/// Else what is wrong and what is allowed.
pub fn check(path: &str, driver_root: &str) -> Result<(), String> {
    if path.is_empty() || ALLOWED.contains(&path) || under(path, driver_root) {
        return Ok(());
    }
    let allowed = ALLOWED.join(", ");
    Err(if is_root(driver_root) {
        format!(
            "the CDI hook runs as root on the host: it must be one of {allowed} (or a path under \
             flags.nvidiaDriverRoot, where that is not /); got {path:?}"
        )
    } else {
        format!(
            "the CDI hook runs as root on the host: it must be under the driver root \
             {driver_root} (flags.nvidiaDriverRoot) or one of {allowed}; got {path:?}"
        )
    })
}

/// The hook path of a config once flag / environment `overrides` are applied: checked against
/// the driver root in force, and named by where it came from.
pub fn check_applied(config: &Config, overrides: &Overrides) -> Result<(), ConfigError> {
    let plugin = &config.plugin;
    let Some(path) = plugin.nvidia_ctk_path.as_deref() else {
        return Ok(());
    };
    check(path, &plugin.nvidia_driver_root).map_err(|message| {
        let field = if overrides.nvidia_ctk_path.is_some() {
            FLAG
        } else {
            FIELD
        };
        ConfigError::new(field, message)
    })
}

fn is_root(root: &str) -> bool {
    Path::new(root)
        .components()
        .all(|c| c == Component::RootDir)
}

/// `path` is below `root` (not `root` itself), both absolute, `path` with no `.` or `..` that
/// could climb out of it.
fn under(path: &str, root: &str) -> bool {
    let (path, root) = (Path::new(path), Path::new(root));
    path.is_absolute()
        && root.is_absolute()
        && !is_root(root.to_str().unwrap_or("/"))
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path != root
        && path.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_and_paths_under_the_driver_root_only() {
        for (path, root) in [
            ("", "/"),
            ("/usr/bin/nvidia-ctk", "/"),
            (
                "/usr/local/nvidia/toolkit/nvidia-cdi-hook",
                "/run/nvidia/driver",
            ),
            (
                "/run/nvidia/driver/usr/bin/nvidia-ctk",
                "/run/nvidia/driver",
            ),
            (
                "/run/nvidia/driver/usr/bin/nvidia-ctk",
                "/run/nvidia/driver/",
            ),
        ] {
            assert_eq!(check(path, root), Ok(()), "{path} under {root}");
        }
        for (path, root) in [
            ("/tmp/evil", "/"),
            ("/usr/local/bin/nvidia-ctk", "/"),
            ("/usr/bin/../../tmp/evil", "/"),
            ("/run/nvidia/driver/../../../tmp/evil", "/run/nvidia/driver"),
            ("/run/nvidia/driver", "/run/nvidia/driver"),
            ("/run/nvidia/driverx/nvidia-ctk", "/run/nvidia/driver"),
            ("/usr/bin/nvidia-ctk/", "/"),
            ("bin/nvidia-ctk", "/"),
        ] {
            assert!(check(path, root).is_err(), "{path} under {root}");
        }
        assert_eq!(
            check("/tmp/evil", "/").unwrap_err(),
            "the CDI hook runs as root on the host: it must be one of /usr/bin/nvidia-ctk, \
             /usr/bin/nvidia-cdi-hook, /usr/local/nvidia/toolkit/nvidia-ctk, \
             /usr/local/nvidia/toolkit/nvidia-cdi-hook (or a path under flags.nvidiaDriverRoot, \
             where that is not /); got \"/tmp/evil\""
        );
        assert!(check("/opt/x", "/run/nvidia/driver").unwrap_err().contains(
            "under the driver root /run/nvidia/driver (flags.nvidiaDriverRoot) or one of"
        ));
    }
}
