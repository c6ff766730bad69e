//! Finds the NVIDIA driver's user-space files that a CUDA container needs, so that the CDI spec
//! can mount them: what `nvidia-container-cli --compute --utility` would mount.
//!
//! - **Libraries** ([`LIBRARIES`]): the management library and config (utility), the CUDA driver
//!   and what it loads at run time: PTX JIT, NVVM, the shared compiler, the debugger, the
//!   allocator, OpenCL, PKCS#11 (compute). Only `libcuda` and `libnvidia-ml` are required: without
//!   them there is no driver to speak of. Each is taken as `<stem>.so.<driver version>`, the
//!   version NVML reports, from the first library directory that has it (or, failing that, has a
//!   link to a file of that name elsewhere, as some node images do; that directory is then
//!   searched too): a leftover
//!   `libcuda.so.570.86.15` of an older driver beside the running 580's is never picked, since
//!   mixing a user-space library with another kernel module version fails in every CUDA call.
//! - **Sonames**: the name the loader asks for (`libcuda.so.1`) is read off the symlink `ldconfig`
//!   made next to the file (`libcuda.so.1 -> libcuda.so.580.95.05`); where there is none, the
//!   usual soname from [`LIBRARIES`], else the file's own name (libraries whose soname carries the
//!   full version, like `libnvidia-gpucomp.so.580.95.05`).
//! - **Binaries** ([`BINARIES`]): `nvidia-smi` and friends, all optional.
//! - **GSP firmware**: `/lib/firmware/nvidia/<version>/gsp*.bin` (or `/firmware/nvidia/…` under a
//!   driver installed in its own prefix), mounted at the former.
//! - **nvidia-ctk**: the hook binary of the NVIDIA Container Toolkit, when there is one (see
//!   `layout` for what it changes).
//!
//! Everything is read under the driver root through [`RootFs`], so symlinks resolve inside it and
//! the host paths in the spec are `<nvidiaDriverRoot><inner path>`. Directory scans, not
//! `/etc/ld.so.cache`: the cache's binary format is glibc's private business and a driver
//! container's root may not have one; the directories the driver installers use are few and
//! known ([`library_dirs`]). A directory that cannot be read, a broken symlink or a symlink loop
//! only means that file is not found there.

use std::collections::BTreeMap;

use super::rootfs::{Entry, RootFs};
use crate::config::PluginSettings;
use crate::gpu::Inventory;

/// A driver library the containers get.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// File name up to `.so`: `libcuda`.
    pub stem: &'static str,
    /// Soname to use when no soname symlink is found next to the file.
    pub soname: Option<&'static str>,
    /// Without it the driver counts as not found.
    pub required: bool,
}

const fn lib(stem: &'static str, soname: Option<&'static str>, required: bool) -> Wanted {
    Wanted {
        stem,
        soname,
        required,
    }
}

/// The `utility` and `compute` libraries, as libnvidia-container lists them for
/// `--utility --compute` (older drivers' fatbinaryloader and OpenCL compiler included; they are
/// simply absent on newer ones).
pub const LIBRARIES: &[Wanted] = &[
    // utility
    lib("libnvidia-ml", Some("libnvidia-ml.so.1"), true),
    lib("libnvidia-cfg", Some("libnvidia-cfg.so.1"), false),
    lib("libnvidia-nscq", None, false),
    // compute
    lib("libcuda", Some("libcuda.so.1"), true),
    lib("libcudadebugger", Some("libcudadebugger.so.1"), false),
    lib(
        "libnvidia-ptxjitcompiler",
        Some("libnvidia-ptxjitcompiler.so.1"),
        false,
    ),
    lib("libnvidia-nvvm", Some("libnvidia-nvvm.so.4"), false),
    lib("libnvidia-gpucomp", None, false),
    lib(
        "libnvidia-allocator",
        Some("libnvidia-allocator.so.1"),
        false,
    ),
    lib("libnvidia-opencl", Some("libnvidia-opencl.so.1"), false),
    lib("libnvidia-pkcs11", None, false),
    lib("libnvidia-pkcs11-openssl3", None, false),
    lib(
        "libnvidia-fatbinaryloader",
        Some("libnvidia-fatbinaryloader.so.1"),
        false,
    ),
    lib("libnvidia-compiler", None, false),
];

/// Driver binaries the containers get when the host has them (`utility`: the management tools;
/// `compute`: the MPS control daemon and server).
pub const BINARIES: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];

/// Where binaries are looked for, in order.
pub const BINARY_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"];

/// Where nvidia-ctk is looked for under the driver root when `nvidiaCTKPath` is not set.
pub const DEFAULT_CTK_PATH: &str = "/usr/bin/nvidia-ctk";

/// Where the GSP firmware of driver `<version>` lives, and where containers get it.
pub fn firmware_dir(version: &str) -> String {
    format!("/lib/firmware/nvidia/{version}")
}

/// Where else it is looked for: a driver installed under its own prefix (`<prefix>/lib64`,
/// `<prefix>/bin`, `<prefix>/firmware`, as on nodes that mount the driver at
/// `/usr/local/nvidia`), with that prefix as the driver root.
pub fn prefix_firmware_dir(version: &str) -> String {
    format!("/firmware/nvidia/{version}")
}

/// Library directories searched, in order, for this machine's architecture.
pub fn library_dirs() -> Vec<String> {
    library_dirs_for(std::env::consts::ARCH)
}

/// [`library_dirs`] for `arch` (`x86_64`, `aarch64`).
pub fn library_dirs_for(arch: &str) -> Vec<String> {
    let triple = format!("{arch}-linux-gnu");
    vec![
        format!("/usr/lib/{triple}"),
        format!("/lib/{triple}"),
        // Debian's packages keep the real files here, behind alternatives.
        format!("/usr/lib/{triple}/nvidia/current"),
        "/usr/lib64".into(),
        "/lib64".into(),
        "/usr/lib".into(),
        "/lib".into(),
    ]
}

/// What to look for, and where.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    /// `nvidiaDriverRoot`: the driver root on the host, to make host paths of inner ones.
    pub host_root: String,
    /// Where the driver root is readable by the agent.
    pub read_root: String,
    /// Driver version from the inventory (`580.95.05`); `None`: the version `libcuda.so.1` points
    /// at.
    pub version: Option<String>,
    /// `nvidiaCTKPath`: `None` looks for [`DEFAULT_CTK_PATH`], `Some("")` turns hooks off,
    /// anything else is used as given (a host path the agent may not be able to see).
    pub ctk_path: Option<String>,
    /// Library directories to search ([`library_dirs`]).
    pub library_dirs: Vec<String>,
}

/// One library found. Paths are inner paths (under the driver root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// The real file, every symlink resolved: `/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05`.
    pub path: String,
    /// Where it was found: `<library dir, resolved>/<stem>.so.<version>` (usually `path`).
    pub location: String,
    /// What the loader asks for: `libcuda.so.1`.
    pub soname: String,
}

impl Library {
    /// The library directory it was found in (ldconfig's folder for it).
    pub fn dir(&self) -> &str {
        self.location
            .rsplit_once('/')
            .map_or("/", |(dir, _)| if dir.is_empty() { "/" } else { dir })
    }
}

/// One binary or firmware file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// The real file (inner path).
    pub path: String,
    /// Where it conventionally is (inner path): `/usr/bin/nvidia-smi`,
    /// `/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin`.
    pub location: String,
}

impl File {
    /// The file name at its conventional location.
    pub fn name(&self) -> &str {
        self.location.rsplit('/').next().unwrap_or(&self.location)
    }
}

/// The driver's user-space files on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    /// The version the files carry.
    pub version: String,
    pub libraries: Vec<Library>,
    pub binaries: Vec<File>,
    pub firmware: Vec<File>,
    /// Host path of nvidia-ctk for CDI hooks; `None`: no hooks.
    pub ctk: Option<String>,
}

/// Why no driver was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    #[error("no libcuda.so.1 under {root} to tell the driver version by")]
    NoVersion { root: String },
    #[error("{missing} not found under {root} in {dirs}", missing = .missing.join(", "), dirs = .dirs.join(", "))]
    Missing {
        root: String,
        dirs: Vec<String>,
        missing: Vec<String>,
    },
}

impl Query {
    /// What the CDI spec needs for `inventory` under `plugin`'s driver settings.
    pub fn new(plugin: &PluginSettings, inventory: &Inventory) -> Self {
        Self {
            host_root: plugin.nvidia_driver_root.clone(),
            read_root: plugin.driver_root_readable_at().to_string(),
            version: inventory.driver_version.clone(),
            ctk_path: plugin.nvidia_ctk_path.clone(),
            library_dirs: library_dirs(),
        }
    }
}

/// Look for the driver.
pub fn discover(query: &Query) -> Result<Driver, NotFound> {
    let fs = RootFs::new(&query.read_root);
    let mut dirs = Dirs::new(&fs, &query.library_dirs);
    let version = match &query.version {
        Some(v) if !v.is_empty() => v.clone(),
        _ => dirs
            .version_of("libcuda", "libcuda.so.1")
            .ok_or_else(|| NotFound::NoVersion {
                root: query.read_root.clone(),
            })?,
    };
    let mut libraries = Vec::new();
    let mut missing = Vec::new();
    for wanted in LIBRARIES {
        match dirs.find(wanted, &version) {
            Some(found) => libraries.push(found),
            None if wanted.required => missing.push(format!("{}.so.{version}", wanted.stem)),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(NotFound::Missing {
            root: query.read_root.clone(),
            dirs: query.library_dirs.clone(),
            missing,
        });
    }
    let binaries = BINARIES
        .iter()
        .filter_map(|name| {
            BINARY_DIRS.iter().find_map(|dir| {
                let location = format!("{dir}/{name}");
                let path = fs.regular_file(&location).ok()?;
                Some(File { path, location })
            })
        })
        .collect();
    Ok(Driver {
        firmware: firmware(&fs, &version),
        ctk: ctk(&fs, query.ctk_path.as_deref(), &query.host_root),
        version,
        libraries,
        binaries,
    })
}

/// `gsp*.bin` of driver `version`, from the first firmware directory that has any, each to be
/// mounted at [`firmware_dir`].
fn firmware(fs: &RootFs, version: &str) -> Vec<File> {
    let usual = firmware_dir(version);
    for dir in [usual.clone(), prefix_firmware_dir(version)] {
        let Ok(entries) = fs.list(&dir) else { continue };
        let files: Vec<File> = entries
            .into_iter()
            .filter(|e| e.name.starts_with("gsp") && e.name.ends_with(".bin"))
            .filter_map(|e| {
                let path = fs.regular_file(&format!("{dir}/{}", e.name)).ok()?;
                let location = format!("{usual}/{}", e.name);
                Some(File { path, location })
            })
            .collect();
        if !files.is_empty() {
            return files;
        }
    }
    Vec::new()
}

/// Host path of nvidia-ctk, if hooks are to be used.
fn ctk(fs: &RootFs, configured: Option<&str>, host_root: &str) -> Option<String> {
    match configured {
        Some("") => None,
        Some(path) => Some(path.to_string()),
        None => fs
            .regular_file(DEFAULT_CTK_PATH)
            .ok()
            .map(|_| crate::device_nodes::host_path(host_root, DEFAULT_CTK_PATH)),
    }
}

/// The library directories, resolved once, their listings read on demand and kept.
struct Dirs<'a> {
    fs: &'a RootFs,
    /// Resolved directory → its listing (None: unreadable), in search order, without duplicates
    /// (`/lib/x86_64-linux-gnu` is `/usr/lib/x86_64-linux-gnu` on a merged-/usr host).
    dirs: Vec<String>,
    listings: BTreeMap<String, Option<Vec<Entry>>>,
}

impl<'a> Dirs<'a> {
    fn new(fs: &'a RootFs, wanted: &[String]) -> Self {
        let mut dirs: Vec<String> = Vec::new();
        for dir in wanted {
            let Ok(real) = fs.resolve(dir) else { continue };
            if fs.metadata(&real).is_ok_and(|m| m.is_dir()) && !dirs.contains(&real) {
                dirs.push(real);
            }
        }
        Self {
            fs,
            dirs,
            listings: BTreeMap::new(),
        }
    }

    fn listing(&mut self, dir: &str) -> &[Entry] {
        let fs = self.fs;
        self.listings
            .entry(dir.to_string())
            .or_insert_with(|| fs.list(dir).ok())
            .as_deref()
            .unwrap_or(&[])
    }

    /// `<stem>.so.<version>` from the first directory that has it as a regular file; else from
    /// the first directory with a `<stem>.so.*` link to a file of that name elsewhere.
    fn find(&mut self, wanted: &Wanted, version: &str) -> Option<Library> {
        let name = format!("{}.so.{version}", wanted.stem);
        self.find_file(wanted, &name)
            .or_else(|| self.find_link(wanted.stem, &name))
    }

    fn find_file(&mut self, wanted: &Wanted, name: &str) -> Option<Library> {
        for dir in self.dirs.clone() {
            let location = format!("{dir}/{name}");
            let Ok(path) = self.fs.regular_file(&location) else {
                continue;
            };
            let soname = self
                .soname_link(&dir, wanted.stem, name, &path)
                .or_else(|| wanted.soname.map(str::to_string))
                .unwrap_or_else(|| name.to_string());
            return Some(Library {
                path,
                location,
                soname,
            });
        }
        None
    }

    /// Hosts whose library directories hold only the soname links, into the driver's own
    /// directory (`/lib/libcuda.so.1 -> /usr/local/nvidia/lib64/libcuda.so.1`, as in some
    /// managed node images): the file is mounted from where it really is, under the link's name.
    fn find_link(&mut self, stem: &str, name: &str) -> Option<Library> {
        let prefix = format!("{stem}.so.");
        for dir in self.dirs.clone() {
            let links: Vec<String> = self
                .listing(&dir)
                .iter()
                .filter(|e| e.is_symlink && e.name.starts_with(&prefix))
                .map(|e| e.name.clone())
                .collect();
            let found = links
                .into_iter()
                .filter_map(|link| {
                    let path = self.fs.regular_file(&format!("{dir}/{link}")).ok()?;
                    (path.rsplit('/').next() == Some(name)).then_some((link, path))
                })
                .min_by_key(|(link, _)| (link.len(), link.clone()));
            if let Some((soname, path)) = found {
                // The driver's own directory: where the libraries without a soname link (their
                // soname is the versioned name) are too.
                let own = path.rsplit_once('/').map(|(d, _)| d.to_string());
                if let Some(own) = own.filter(|d| !d.is_empty() && !self.dirs.contains(d)) {
                    self.dirs.push(own);
                }
                return Some(Library {
                    location: path.clone(),
                    path,
                    soname,
                });
            }
        }
        None
    }

    /// The shortest `<stem>.so.<x>` symlink in `dir` (other than `file_name` itself) that
    /// resolves to `real`: the link ldconfig made for the soname.
    fn soname_link(
        &mut self,
        dir: &str,
        stem: &str,
        file_name: &str,
        real: &str,
    ) -> Option<String> {
        let prefix = format!("{stem}.so.");
        let candidates: Vec<String> = self
            .listing(dir)
            .iter()
            .filter(|e| e.is_symlink && e.name.starts_with(&prefix) && e.name != file_name)
            .map(|e| e.name.clone())
            .collect();
        candidates
            .into_iter()
            .filter(|name| {
                self.fs
                    .resolve(&format!("{dir}/{name}"))
                    .is_ok_and(|r| r == real)
            })
            .min_by_key(|name| (name.len(), name.clone()))
    }

    /// The version in the name of the file `link` (e.g. `libcuda.so.1`) points at, from the first
    /// directory where it resolves to `<stem>.so.<version>`.
    fn version_of(&mut self, stem: &str, link: &str) -> Option<String> {
        let prefix = format!("{stem}.so.");
        for dir in self.dirs.clone() {
            let Ok(real) = self.fs.regular_file(&format!("{dir}/{link}")) else {
                continue;
            };
            let name = real.rsplit('/').next().unwrap_or_default();
            if let Some(version) = name.strip_prefix(&prefix) {
                if version.contains('.') {
                    return Some(version.to_string());
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
