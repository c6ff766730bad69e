use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// Run `f` on a thread; panic if it has not finished within `bound` (a FIFO open or read that
/// blocks would hang the test forever otherwise).
fn within<T: Send + 'static>(bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(bound)
        .unwrap_or_else(|_| panic!("did not finish within {bound:?}"))
}

const BOUND: Duration = Duration::from_secs(2);

#[test]
fn write_replaces_the_file_with_mode_0644_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/features.txt");
    write(&path, b"a=1\n").unwrap();
    let first = std::fs::metadata(&path).unwrap();
    assert_eq!(first.permissions().mode() & 0o7777, 0o644);
    write(&path, b"a=2\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"a=2\n");
    // Renamed over, not written in place: a reader holding the old file keeps the old bytes.
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), first.ino());
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["features.txt"]);
}

#[test]
fn symlinks_planted_at_the_final_name_are_neither_followed_nor_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"kubelet checkpoint").unwrap();
    let path = dir.path().join("spec.json");
    for target in [victim.clone(), dir.path().join("dangling")] {
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let error = write(&path, b"{}").unwrap_err();
        assert!(
            matches!(
                error,
                WriteError::NotRegular {
                    kind: "a symlink",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains(&path.display().to_string()));
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"kubelet checkpoint");
    assert!(!dir.path().join("dangling").exists());
}

#[test]
fn a_fifo_or_a_directory_at_the_final_name_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.json");
    mkfifo(&fifo);
    let f = fifo.clone();
    let error = within(BOUND, move || write(&f, b"{}").unwrap_err());
    assert!(
        matches!(error, WriteError::NotRegular { kind: "a FIFO", .. }),
        "{error}"
    );
    let sub = dir.path().join("dir.json");
    std::fs::create_dir(&sub).unwrap();
    let error = write(&sub, b"{}").unwrap_err();
    assert!(
        matches!(
            error,
            WriteError::NotRegular {
                kind: "a directory",
                ..
            }
        ),
        "{error}"
    );
    // Nothing else was created.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn symlinks_planted_at_temp_names_are_skipped_and_their_targets_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k8s.gpu-agent.io-gpu.json");
    // The names of the old writer (`.<file>.<pid>.tmp`, PID 1 in a pod), and the first random
    // names this writer will draw: each a symlink to a victim, one of them dangling.
    let mut planted = Vec::new();
    let draws = [1u64, 2, 3];
    let mut names: Vec<String> = vec![
        ".k8s.gpu-agent.io-gpu.json.1.tmp".into(),
        format!(".k8s.gpu-agent.io-gpu.json.{}.tmp", std::process::id()),
    ];
    names.extend(
        draws
            .iter()
            .map(|&r| write::temp_name("k8s.gpu-agent.io-gpu.json", r)),
    );
    for (i, name) in names.iter().enumerate() {
        let victim = dir.path().join(format!("victim-{i}"));
        if i != 2 {
            std::fs::write(&victim, format!("victim {i}")).unwrap();
        }
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        planted.push(victim);
    }
    let mut next = draws.iter().copied().chain([4]);
    let (tmp, _file) = write::create_temp(dir.path(), &path, || next.next().unwrap()).unwrap();
    assert_eq!(
        tmp.file_name().unwrap().to_str().unwrap(),
        write::temp_name("k8s.gpu-agent.io-gpu.json", 4)
    );
    // Every name taken: an error, nothing created through a link.
    let error = write::create_temp(dir.path(), &path, || 1).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
    std::fs::remove_file(&tmp).unwrap();

    // A whole write among the planted names.
    write(&path, b"{\"cdiVersion\":\"0.6.0\"}").unwrap();
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_file());
    for (i, victim) in planted.iter().enumerate() {
        if i == 2 {
            assert!(!victim.exists(), "the dangling link's target was created");
        } else {
            assert_eq!(
                std::fs::read_to_string(victim).unwrap(),
                format!("victim {i}")
            );
        }
    }
    for name in &names {
        assert!(std::fs::symlink_metadata(dir.path().join(name))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}

#[test]
fn reads_regular_files_only_and_never_block() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spec.json");
    std::fs::write(&file, b"{}").unwrap();
    assert_eq!(read(&file, Links::Refuse, MAX_HOST_FILE).unwrap(), b"{}");

    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let zero = dir.path().join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let to_file = dir.path().join("to-file");
    std::os::unix::fs::symlink(&file, &to_file).unwrap();
    let started = Instant::now();
    let (f, z, t) = (fifo.clone(), zero.clone(), to_file.clone());
    let results = within(BOUND, move || {
        [
            read(&f, Links::Refuse, MAX_HOST_FILE).map_err(|e| e.to_string()),
            read(&f, Links::Follow, MAX_HOST_FILE).map_err(|e| e.to_string()),
            read(&z, Links::Refuse, MAX_HOST_FILE).map_err(|e| e.to_string()),
            read(&z, Links::Follow, MAX_HOST_FILE).map_err(|e| e.to_string()),
            read(&t, Links::Refuse, MAX_HOST_FILE).map_err(|e| e.to_string()),
        ]
    });
    let kinds: Vec<String> = results
        .iter()
        .map(|r| {
            r.clone()
                .unwrap_err()
                .split(" is ")
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "a FIFO, not a regular file; not read",
            "a FIFO, not a regular file; not read",
            "a symlink, not a regular file; not read",
            "a character device, not a regular file; not read",
            "a symlink, not a regular file; not read",
        ]
    );
    assert!(started.elapsed() < BOUND);
    // Followed where asked: ConfigMap volumes are links; /dev/null is NVIDIA's empty config.
    assert_eq!(read(&to_file, Links::Follow, MAX_HOST_FILE).unwrap(), b"{}");
    let null = dir.path().join("null");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    assert_eq!(read(&null, Links::Follow, 10).unwrap(), b"");
    assert!(read(&null, Links::Refuse, 10).is_err());

    let missing = read(&dir.path().join("missing"), Links::Refuse, 10).unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
}

#[test]
fn reads_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'x'; 300 * 1024]).unwrap();
    let error = read(&file, Links::Follow, 256 * 1024).unwrap_err();
    assert!(
        matches!(
            error,
            ReadError::TooLarge {
                size: 307_200,
                limit: 262_144,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .ends_with("is 300 KiB; the limit is 256 KiB"),
        "{error}"
    );
    assert_eq!(
        read(&file, Links::Follow, 300 * 1024).unwrap().len(),
        300 * 1024
    );
}

#[test]
fn sizes_read_rounded_up() {
    assert_eq!(format_size(512), "512 bytes");
    assert_eq!(format_size(256 * 1024), "256 KiB");
    assert_eq!(format_size(256 * 1024 + 1), "257 KiB");
    assert_eq!(format_size(16 * 1024 * 1024), "16 MiB");
}
