use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::*;

const V: &str = "580.95.05";
const OLD: &str = "570.86.15";
const X86: &str = "/usr/lib/x86_64-linux-gnu";

/// A fake driver root in a temp dir.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn outer(&self, inner: &str) -> std::path::PathBuf {
        self.root().join(inner.trim_start_matches('/'))
    }

    fn file(&self, inner: &str) -> &Self {
        let path = self.outer(inner);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, inner.as_bytes()).unwrap();
        self
    }

    fn link(&self, inner: &str, target: &str) -> &Self {
        let path = self.outer(inner);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
        self
    }

    /// `<dir>/<stem>.so.<version>` plus its soname link, as the installer and ldconfig leave them.
    fn lib(&self, dir: &str, stem: &str, version: &str, soname: Option<&str>) -> &Self {
        let file = format!("{stem}.so.{version}");
        self.file(&format!("{dir}/{file}"));
        if let Some(soname) = soname {
            self.link(&format!("{dir}/{soname}"), &file);
        }
        self
    }

    /// A complete current driver in the x86_64 directory.
    fn driver(&self) -> &Self {
        self.lib(X86, "libcuda", V, Some("libcuda.so.1"))
            .link(&format!("{X86}/libcuda.so"), "libcuda.so.1")
            .lib(X86, "libnvidia-ml", V, None)
            // An absolute link: it must resolve inside the tree.
            .link(
                &format!("{X86}/libnvidia-ml.so.1"),
                &format!("{X86}/libnvidia-ml.so.{V}"),
            )
            .lib(
                X86,
                "libnvidia-ptxjitcompiler",
                V,
                Some("libnvidia-ptxjitcompiler.so.1"),
            )
            .lib(X86, "libnvidia-nvvm", V, Some("libnvidia-nvvm.so.4"))
            // Soname = the file name: no link.
            .lib(X86, "libnvidia-gpucomp", V, None)
            .file("/usr/bin/nvidia-smi")
            .file("/usr/bin/nvidia-persistenced")
            .file(&format!("/lib/firmware/nvidia/{V}/gsp_ga10x.bin"))
            .file(&format!("/lib/firmware/nvidia/{V}/gsp_tu10x.bin"))
            .file(&format!("/lib/firmware/nvidia/{V}/README"))
    }

    fn query(&self, version: Option<&str>) -> Query {
        Query {
            host_root: "/host".into(),
            read_root: self.root().to_str().unwrap().into(),
            version: version.map(String::from),
            ctk_path: None,
            library_dirs: library_dirs_for("x86_64"),
        }
    }

    fn discover(&self, version: Option<&str>) -> Result<Driver, NotFound> {
        discover(&self.query(version))
    }
}

fn libs(d: &Driver) -> Vec<(&str, &str)> {
    d.libraries
        .iter()
        .map(|l| (l.path.as_str(), l.soname.as_str()))
        .collect()
}

fn paths(files: &[File]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|f| (f.path.as_str(), f.location.as_str()))
        .collect()
}

fn at(dir: &str, name: &str) -> String {
    format!("{dir}/{name}")
}

#[test]
fn finds_every_file_of_the_running_driver_with_its_soname() {
    let t = Tree::new();
    t.driver();
    let d = t.discover(Some(V)).unwrap();
    assert_eq!(d.version, V);
    let lib = |name: &str| at(X86, &format!("{name}.so.{V}"));
    let (ml, cuda, ptx, nvvm, gpucomp) = (
        lib("libnvidia-ml"),
        lib("libcuda"),
        lib("libnvidia-ptxjitcompiler"),
        lib("libnvidia-nvvm"),
        lib("libnvidia-gpucomp"),
    );
    // LIBRARIES order; absent optional libraries are simply not there.
    assert_eq!(
        libs(&d),
        [
            (ml.as_str(), "libnvidia-ml.so.1"),
            (cuda.as_str(), "libcuda.so.1"),
            (ptx.as_str(), "libnvidia-ptxjitcompiler.so.1"),
            (nvvm.as_str(), "libnvidia-nvvm.so.4"),
            (gpucomp.as_str(), gpucomp.rsplit('/').next().unwrap()),
        ]
    );
    assert!(d
        .libraries
        .iter()
        .all(|l| l.location == l.path && l.dir() == X86));
    assert_eq!(
        paths(&d.binaries),
        [
            ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi"),
            (
                "/usr/bin/nvidia-persistenced",
                "/usr/bin/nvidia-persistenced"
            ),
        ]
    );
    let fw = |name: &str| format!("/lib/firmware/nvidia/{V}/{name}");
    let (ga, tu) = (fw("gsp_ga10x.bin"), fw("gsp_tu10x.bin"));
    assert_eq!(
        paths(&d.firmware),
        [(ga.as_str(), ga.as_str()), (tu.as_str(), tu.as_str())]
    );
    assert_eq!(d.ctk, None);
}

#[test]
fn the_inventorys_version_wins_over_a_stale_driver_found_first() {
    let t = Tree::new();
    // The old driver's leftovers sit in the first directory searched, and its libcuda.so.1
    // still points at them; the running 580 lives in /usr/lib64.
    t.lib(X86, "libcuda", OLD, Some("libcuda.so.1"))
        .lib(X86, "libnvidia-ml", OLD, Some("libnvidia-ml.so.1"))
        .lib("/usr/lib64", "libcuda", V, Some("libcuda.so.1"))
        .lib("/usr/lib64", "libnvidia-ml", V, Some("libnvidia-ml.so.1"))
        .file(&format!("/lib/firmware/nvidia/{OLD}/gsp_ga10x.bin"))
        .file(&format!("/lib/firmware/nvidia/{V}/gsp_ga10x.bin"));
    let d = t.discover(Some(V)).unwrap();
    let (ml, cuda) = (
        format!("/usr/lib64/libnvidia-ml.so.{V}"),
        format!("/usr/lib64/libcuda.so.{V}"),
    );
    assert_eq!(
        libs(&d),
        [
            (ml.as_str(), "libnvidia-ml.so.1"),
            (cuda.as_str(), "libcuda.so.1")
        ]
    );
    assert_eq!(d.firmware.len(), 1);
    assert!(d.firmware[0].path.contains(V));

    // Without a version from the inventory, the one libcuda.so.1 points at is taken: here the
    // first directory's (a host in this state runs the old driver's user space too).
    let d = t.discover(None).unwrap();
    assert_eq!(d.version, OLD);
    assert!(d
        .libraries
        .iter()
        .all(|l| l.path.starts_with(X86) && l.path.ends_with(OLD)));

    // A version with no files at all is not found, and the message says what and where.
    let e = t.discover(Some("999.1.2")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("libnvidia-ml.so.999.1.2, libcuda.so.999.1.2"),
        "{msg}"
    );
    assert!(msg.contains(t.root().to_str().unwrap()), "{msg}");
}

#[test]
fn nothing_there_is_not_found_not_a_panic() {
    let t = Tree::new();
    assert!(matches!(t.discover(None), Err(NotFound::NoVersion { .. })));
    assert!(matches!(t.discover(Some(V)), Err(NotFound::Missing { .. })));
    // libcuda alone is not a driver.
    t.lib(X86, "libcuda", V, Some("libcuda.so.1"));
    match t.discover(Some(V)).unwrap_err() {
        NotFound::Missing { missing, .. } => assert_eq!(missing, [format!("libnvidia-ml.so.{V}")]),
        other => panic!("{other:?}"),
    }
    // A root that does not exist.
    let mut q = t.query(Some(V));
    q.read_root = t.outer("/no/such/root").to_str().unwrap().into();
    assert!(discover(&q).is_err());
}

#[test]
fn survives_unreadable_dirs_broken_links_and_loops() {
    let t = Tree::new();
    // The first directory: a locked one holding only a stale libcuda (as root the lock does not
    // hold, and the file is still not the right version).
    t.lib(X86, "libcuda", OLD, Some("libcuda.so.1"));
    std::fs::set_permissions(t.outer(X86), std::fs::Permissions::from_mode(0o000)).unwrap();
    // /lib/x86_64-linux-gnu: a file, not a directory.
    t.file("/lib/x86_64-linux-gnu");
    // /usr/lib64: a loop.
    t.link("/usr/lib64", "/usr/lib64");
    // /lib64: the right names, dangling.
    t.link(&format!("/lib64/libcuda.so.{V}"), "nowhere").link(
        &format!("/lib64/libnvidia-ml.so.{V}"),
        &format!("/lib64/libnvidia-ml.so.{V}"),
    );
    // /usr/lib: the real files, with a dangling soname link beside one of them and another
    // link pointing at a different file.
    t.lib("/usr/lib", "libcuda", V, Some("libcuda.so.1"))
        .lib("/usr/lib", "libnvidia-ml", V, None)
        .link("/usr/lib/libnvidia-ml.so.1", "libnvidia-ml.so.gone")
        .link("/usr/lib/libnvidia-ml.so.2", "libcuda.so.1")
        // A binary that is a directory, one that dangles, one behind a link.
        .file("/usr/bin/nvidia-smi/oops")
        .link("/usr/bin/nvidia-debugdump", "nowhere")
        .file("/usr/sbin/nvidia-smi")
        .file("/opt/nvidia/nvidia-persistenced")
        .link(
            "/usr/bin/nvidia-persistenced",
            "/opt/nvidia/nvidia-persistenced",
        )
        // Firmware dir is a dangling link.
        .link(&format!("/lib/firmware/nvidia/{V}"), "nowhere");
    let result = t.discover(Some(V));
    std::fs::set_permissions(t.outer(X86), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = result.unwrap();
    let (ml, cuda) = (
        format!("/usr/lib/libnvidia-ml.so.{V}"),
        format!("/usr/lib/libcuda.so.{V}"),
    );
    // libnvidia-ml has no usable link: the usual soname stands in.
    assert_eq!(
        libs(&d),
        [
            (ml.as_str(), "libnvidia-ml.so.1"),
            (cuda.as_str(), "libcuda.so.1")
        ]
    );
    assert_eq!(
        paths(&d.binaries),
        [
            ("/usr/sbin/nvidia-smi", "/usr/sbin/nvidia-smi"),
            (
                "/opt/nvidia/nvidia-persistenced",
                "/usr/bin/nvidia-persistenced"
            ),
        ]
    );
    assert!(d.firmware.is_empty());
}

#[test]
fn merged_usr_and_debian_alternatives_resolve_to_the_real_files() {
    let t = Tree::new();
    // /lib -> usr/lib: /lib/x86_64-linux-gnu is searched once, as /usr/lib/x86_64-linux-gnu.
    t.link("/lib", "usr/lib")
        .lib(&format!("{X86}/nvidia/current"), "libcuda", V, None)
        .link(
            &format!("{X86}/libcuda.so.{V}"),
            &format!("nvidia/current/libcuda.so.{V}"),
        )
        .link(&format!("{X86}/libcuda.so.1"), &format!("libcuda.so.{V}"))
        .lib(X86, "libnvidia-ml", V, Some("libnvidia-ml.so.1"))
        .file(&format!("/usr/lib/firmware/nvidia/{V}/gsp_ga10x.bin"));
    let d = t.discover(Some(V)).unwrap();
    let cuda = &d.libraries[1];
    assert_eq!(cuda.path, format!("{X86}/nvidia/current/libcuda.so.{V}"));
    assert_eq!(cuda.location, format!("{X86}/libcuda.so.{V}"));
    assert_eq!(cuda.soname, "libcuda.so.1");
    assert_eq!(cuda.dir(), X86);
    // Firmware through /lib -> usr/lib: the real file, mounted at the usual place.
    assert_eq!(
        paths(&d.firmware),
        [(
            format!("/usr/lib/firmware/nvidia/{V}/gsp_ga10x.bin").as_str(),
            format!("/lib/firmware/nvidia/{V}/gsp_ga10x.bin").as_str()
        )]
    );
}

#[test]
fn soname_links_into_another_directory_are_followed_when_the_version_matches() {
    let t = Tree::new();
    // Only links in the library directories; the files live in the driver's own directory.
    let own = "/usr/local/nvidia/lib64";
    t.lib(own, "libcuda", V, Some("libcuda.so.1"))
        .lib(own, "libnvidia-ml", V, Some("libnvidia-ml.so.1"))
        .lib("/opt/old", "libnvidia-ml", OLD, None)
        .link("/lib/libcuda.so.1", &format!("{own}/libcuda.so.1"))
        .link("/lib/libcuda.so", "libcuda.so.1")
        // First in the search order, but another version: never taken.
        .link(
            &format!("{X86}/libnvidia-ml.so.1"),
            &format!("/opt/old/libnvidia-ml.so.{OLD}"),
        )
        .link(
            "/lib/libnvidia-ml.so.1",
            &format!("{own}/libnvidia-ml.so.{V}"),
        );
    let d = t.discover(Some(V)).unwrap();
    let (ml, cuda) = (
        format!("{own}/libnvidia-ml.so.{V}"),
        format!("{own}/libcuda.so.{V}"),
    );
    assert_eq!(
        libs(&d),
        [
            (ml.as_str(), "libnvidia-ml.so.1"),
            (cuda.as_str(), "libcuda.so.1")
        ]
    );
    assert!(d
        .libraries
        .iter()
        .all(|l| l.location == l.path && l.dir() == own));
    // The version is still told by the link.
    assert_eq!(t.discover(None).unwrap().version, V);
}

#[test]
fn a_node_with_the_driver_under_its_own_prefix() {
    // As seen on a GPU node: the driver in /usr/local/nvidia/{lib64,bin,firmware}, /lib holding
    // absolute soname links into it, nothing for libraries whose soname is the versioned name.
    let t = Tree::new();
    let own = "/usr/local/nvidia/lib64";
    for (stem, soname) in [
        ("libnvidia-ml", Some("libnvidia-ml.so.1")),
        ("libcuda", Some("libcuda.so.1")),
        ("libnvidia-nvvm", Some("libnvidia-nvvm.so.4")),
        ("libnvidia-gpucomp", None),
    ] {
        t.lib(own, stem, V, soname);
        if let Some(soname) = soname {
            t.link(&format!("/lib/{soname}"), &format!("{own}/{soname}"));
        }
    }
    t.file("/usr/local/nvidia/bin/nvidia-smi")
        .link("/usr/bin/nvidia-smi", "/usr/local/nvidia/bin/nvidia-smi")
        .file(&format!(
            "/usr/local/nvidia/firmware/nvidia/{V}/gsp_ga10x.bin"
        ));

    // Driver root /: the links lead to the driver's directory, which then yields gpucomp too.
    let d = t.discover(Some(V)).unwrap();
    let sonames: Vec<&str> = d.libraries.iter().map(|l| l.soname.as_str()).collect();
    let gpucomp = format!("libnvidia-gpucomp.so.{V}");
    assert_eq!(
        sonames,
        [
            "libnvidia-ml.so.1",
            "libcuda.so.1",
            "libnvidia-nvvm.so.4",
            gpucomp.as_str()
        ]
    );
    assert!(d.libraries.iter().all(|l| l.path.starts_with(own)));
    assert_eq!(d.binaries[0].path, "/usr/local/nvidia/bin/nvidia-smi");
    assert!(d.firmware.is_empty());

    // Driver root /usr/local/nvidia: lib64, bin and firmware under the prefix.
    let mut q = t.query(Some(V));
    q.read_root = t.outer("/usr/local/nvidia").to_str().unwrap().into();
    let d = discover(&q).unwrap();
    assert_eq!(d.libraries.len(), 4);
    assert!(d.libraries.iter().all(|l| l.dir() == "/lib64"));
    assert_eq!(paths(&d.binaries), [("/bin/nvidia-smi", "/bin/nvidia-smi")]);
    let (real, usual) = (
        format!("/firmware/nvidia/{V}/gsp_ga10x.bin"),
        format!("/lib/firmware/nvidia/{V}/gsp_ga10x.bin"),
    );
    assert_eq!(paths(&d.firmware), [(real.as_str(), usual.as_str())]);
}

#[test]
fn nvidia_ctk_from_the_config_or_the_driver_root() {
    let t = Tree::new();
    t.driver();
    let mut q = t.query(Some(V));
    assert_eq!(discover(&q).unwrap().ctk, None);
    t.file(DEFAULT_CTK_PATH);
    assert_eq!(
        discover(&q).unwrap().ctk.as_deref(),
        Some("/host/usr/bin/nvidia-ctk")
    );
    q.ctk_path = Some(String::new());
    assert_eq!(discover(&q).unwrap().ctk, None);
    // A configured path is a host path the agent need not see.
    q.ctk_path = Some("/usr/local/nvidia/toolkit/nvidia-ctk".into());
    assert_eq!(
        discover(&q).unwrap().ctk.as_deref(),
        Some("/usr/local/nvidia/toolkit/nvidia-ctk")
    );
}

#[test]
fn library_dirs_follow_the_architecture() {
    assert_eq!(library_dirs_for("aarch64")[0], "/usr/lib/aarch64-linux-gnu");
    assert!(library_dirs_for("x86_64").contains(&"/usr/lib64".to_string()));
}
