//! Where the driver's files go in a CDI container. Pure: a found [`Driver`] in, mounts and hooks
//! out.
//!
//! Two layouts, chosen by whether the NVIDIA Container Toolkit's `nvidia-ctk` is on the node:
//!
//! - **With nvidia-ctk** (what `nvidia-ctk cdi generate` does): every file at its host path (a
//!   library at `/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05`, `nvidia-smi` at
//!   `/usr/bin/nvidia-smi`), plus one `createContainer` hook,
//!   `nvidia-ctk hook update-ldcache --folder <each library dir>`, which makes the soname links
//!   and adds the folders to the container's `/etc/ld.so.cache`. Any image then finds
//!   `libcuda.so.1` the way it finds its own libraries, whatever its `LD_LIBRARY_PATH`.
//! - **Without** (`nvidiaCTKPath: ""`, or none on the node): no program of ours can run in the
//!   container's namespace, so the files go where CUDA images already look: libraries at
//!   `/usr/local/nvidia/lib64/<soname>` (the real versioned file mounted under its soname, so no
//!   link is needed) and binaries at `/usr/local/nvidia/bin/<name>`. NVIDIA's CUDA images set
//!   `LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64` and put
//!   `/usr/local/nvidia/bin` on `PATH`. We deliberately set neither: a CDI env edit replaces the
//!   image's value, and an image with its own `LD_LIBRARY_PATH` (conda, a framework's bundled
//!   libraries) would lose it. Images not built on NVIDIA's must add those two paths themselves.
//!
//! Firmware goes to `/lib/firmware/nvidia/<version>/` in both. Every mount is read-only, without
//! setuid or device files: `ro, nosuid, nodev, bind`.

use super::driver::Driver;
use super::spec::{Hook, Mount};
use crate::device_nodes::host_path;

/// Libraries of the layout without nvidia-ctk.
pub const LIB_DIR: &str = "/usr/local/nvidia/lib64";
/// Binaries of the layout without nvidia-ctk.
pub const BIN_DIR: &str = "/usr/local/nvidia/bin";
/// Options of every mount.
pub const MOUNT_OPTIONS: [&str; 4] = ["ro", "nosuid", "nodev", "bind"];
/// The OCI hook point of the ldcache update: after the mounts, in the container's namespaces.
pub const HOOK_NAME: &str = "createContainer";

/// Mounts and hooks for one driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    pub mounts: Vec<Mount>,
    pub hooks: Vec<Hook>,
}

/// The edits that bring `driver` into a container; `host_root` is `nvidiaDriverRoot`.
pub fn edits(driver: &Driver, host_root: &str) -> Files {
    let mount = |host: &str, container: String| Mount {
        host_path: host_path(host_root, host),
        container_path: container,
        options: MOUNT_OPTIONS.iter().map(|o| o.to_string()).collect(),
    };
    let mut files = Files::default();
    match &driver.ctk {
        Some(ctk) => {
            let mut folders: Vec<&str> = Vec::new();
            for lib in &driver.libraries {
                files.mounts.push(mount(&lib.path, lib.location.clone()));
                if !folders.contains(&lib.dir()) {
                    folders.push(lib.dir());
                }
            }
            for bin in &driver.binaries {
                files.mounts.push(mount(&bin.path, bin.location.clone()));
            }
            let mut args: Vec<String> = ["nvidia-ctk", "hook", "update-ldcache"]
                .map(String::from)
                .into();
            for folder in folders {
                args.push("--folder".into());
                args.push(folder.to_string());
            }
            files.hooks.push(Hook {
                hook_name: HOOK_NAME.into(),
                path: ctk.clone(),
                args,
            });
        }
        None => {
            for lib in &driver.libraries {
                files
                    .mounts
                    .push(mount(&lib.path, format!("{LIB_DIR}/{}", lib.soname)));
            }
            for bin in &driver.binaries {
                files
                    .mounts
                    .push(mount(&bin.path, format!("{BIN_DIR}/{}", bin.name())));
            }
        }
    }
    for fw in &driver.firmware {
        files.mounts.push(mount(&fw.path, fw.location.clone()));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::driver::{File, Library};

    fn driver(ctk: Option<&str>) -> Driver {
        let lib = |dir: &str, name: &str, soname: &str| Library {
            path: format!("{dir}/{name}"),
            location: format!("{dir}/{name}"),
            soname: soname.into(),
        };
        Driver {
            version: "580.95.05".into(),
            libraries: vec![
                lib(
                    "/usr/lib/x86_64-linux-gnu",
                    "libnvidia-ml.so.580.95.05",
                    "libnvidia-ml.so.1",
                ),
                lib(
                    "/usr/lib/x86_64-linux-gnu",
                    "libcuda.so.580.95.05",
                    "libcuda.so.1",
                ),
                lib(
                    "/usr/lib64",
                    "libnvidia-gpucomp.so.580.95.05",
                    "libnvidia-gpucomp.so.580.95.05",
                ),
            ],
            binaries: vec![File {
                path: "/usr/lib/nvidia/nvidia-smi".into(),
                location: "/usr/bin/nvidia-smi".into(),
            }],
            firmware: vec![File {
                path: "/usr/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin".into(),
                location: "/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin".into(),
            }],
            ctk: ctk.map(String::from),
        }
    }

    fn pairs(files: &Files) -> Vec<(&str, &str)> {
        files
            .mounts
            .iter()
            .map(|m| (m.host_path.as_str(), m.container_path.as_str()))
            .collect()
    }

    #[test]
    fn without_nvidia_ctk_files_go_under_usr_local_nvidia_by_soname() {
        let files = edits(&driver(None), "/run/nvidia/driver");
        assert_eq!(
            pairs(&files),
            [
                (
                    "/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05",
                    "/usr/local/nvidia/lib64/libnvidia-ml.so.1"
                ),
                (
                    "/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05",
                    "/usr/local/nvidia/lib64/libcuda.so.1"
                ),
                (
                    "/run/nvidia/driver/usr/lib64/libnvidia-gpucomp.so.580.95.05",
                    "/usr/local/nvidia/lib64/libnvidia-gpucomp.so.580.95.05"
                ),
                (
                    "/run/nvidia/driver/usr/lib/nvidia/nvidia-smi",
                    "/usr/local/nvidia/bin/nvidia-smi"
                ),
                (
                    "/run/nvidia/driver/usr/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin",
                    "/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin"
                ),
            ]
        );
        assert!(files.hooks.is_empty());
        assert!(files
            .mounts
            .iter()
            .all(|m| m.options == ["ro", "nosuid", "nodev", "bind"]));
    }

    #[test]
    fn with_nvidia_ctk_files_keep_their_host_paths_and_the_ldcache_hook_names_each_folder_once() {
        let files = edits(&driver(Some("/usr/bin/nvidia-ctk")), "/");
        assert_eq!(
            pairs(&files),
            [
                (
                    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05",
                    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05"
                ),
                (
                    "/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05",
                    "/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05"
                ),
                (
                    "/usr/lib64/libnvidia-gpucomp.so.580.95.05",
                    "/usr/lib64/libnvidia-gpucomp.so.580.95.05"
                ),
                ("/usr/lib/nvidia/nvidia-smi", "/usr/bin/nvidia-smi"),
                (
                    "/usr/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin",
                    "/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin"
                ),
            ]
        );
        assert_eq!(
            files.hooks,
            [Hook {
                hook_name: "createContainer".into(),
                path: "/usr/bin/nvidia-ctk".into(),
                args: [
                    "nvidia-ctk",
                    "hook",
                    "update-ldcache",
                    "--folder",
                    "/usr/lib/x86_64-linux-gnu",
                    "--folder",
                    "/usr/lib64"
                ]
                .map(String::from)
                .into(),
            }]
        );
    }
}
