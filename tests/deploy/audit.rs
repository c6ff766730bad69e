//! CI's advisory step (`.ci/audit`, run by `.ci/run`): it says what it did in one line and never
//! fails the build: not on findings, not when the advisory database cannot be fetched, not when
//! cargo-audit cannot be installed. Checked against stand-ins for `cargo-audit` and `cargo`
//! that play each case; the real tool's messages were checked by hand (docs/security.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ROOT;

/// What the stand-in `cargo-audit audit --json` prints: (stdout, stderr, exit code).
const CLEAN: (&str, &str, i32) = (
    r#"{"database":{},"lockfile":{"dependency-count":312},"vulnerabilities":{"found":false,"count":0,"list":[]},"warnings":{}}"#,
    "",
    0,
);
const FOUND: (&str, &str, i32) = (
    r#"{"database":{},"lockfile":{"dependency-count":312},"vulnerabilities":{"found":true,"count":1,"list":[{}]},"warnings":{"unmaintained":[{},{}]}}"#,
    "",
    1,
);
const OFFLINE: (&str, &str, i32) = (
    "",
    "error: couldn't fetch advisory database: git operation failed: failed to connect to github.com",
    1,
);

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `cargo-audit` at `path` answering `--json` with `json` and the readable run with a report.
fn fake_audit(path: &Path, (stdout, stderr, code): (&str, &str, i32)) {
    let out = path.with_extension("stdout");
    let err = path.with_extension("stderr");
    std::fs::write(&out, stdout).unwrap();
    std::fs::write(&err, stderr).unwrap();
    write_script(
        path,
        &format!(
            r#"case "$*" in
  *--version*) echo "cargo-audit-audit 0.0.0-stand-in" ;;
  *--json*) cat {out}; cat {err} >&2; exit {code} ;;
  *) echo "Crate: stand-in-crate"; echo "ID: RUSTSEC-0000-0000"; echo "args: $*"; exit 1 ;;
esac"#,
            out = out.display(),
            err = err.display(),
        ),
    );
}

/// Run `.ci/audit` with only `bin` (stand-ins) and the system's directories on PATH, and
/// `cargo_home` as CARGO_HOME: (exit code, stdout + stderr).
fn run_audit(bin: &Path, cargo_home: &Path) -> (i32, String) {
    // A reachable "advisory database": a local git repository, so the probe before an install
    // succeeds without a network.
    let db = cargo_home.join("advisory-db.git");
    if !db.exists() {
        let ok = Command::new("git")
            .args(["init", "--quiet", "--bare"])
            .arg(&db)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "git init {}", db.display());
    }
    run_audit_with_db(bin, cargo_home, &db.to_string_lossy())
}

/// [`run_audit`] probing `db_url` for the advisory database.
fn run_audit_with_db(bin: &Path, cargo_home: &Path, db_url: &str) -> (i32, String) {
    let mut path = vec![bin.to_path_buf()];
    // python3 may live outside the system directories (pyenv); cargo's own directory must not
    // be on PATH, or a real cargo-audit would answer.
    if let Ok(found) = which("python3") {
        path.push(found.parent().unwrap().to_path_buf());
    }
    path.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from));
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join(".ci/audit"))
        .env("PATH", std::env::join_paths(path).unwrap())
        .env("CARGO_HOME", cargo_home)
        .env("GPU_AGENT_AUDIT_DB_URL", db_url)
        .env_remove("GPU_AGENT_CARGO_AUDIT")
        .output()
        .expect("run .ci/audit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.is_file() && !p.starts_with(std::env::var("HOME").unwrap_or_default() + "/.cargo")
        })
        .ok_or(())
}

/// The last line that starts with "cargo audit:" or "WARNING: cargo audit".
fn outcome(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| l.starts_with("cargo audit:") || l.starts_with("WARNING: cargo audit"))
        .unwrap_or_else(|| panic!("no outcome line:\n{text}"))
}

#[test]
fn the_audit_step_reports_and_never_fails_ci() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let home = dir.path().join("cargo-home");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(home.join("bin")).unwrap();
    let audit = bin.join("cargo-audit");

    fake_audit(&audit, CLEAN);
    let (code, text) = run_audit(&bin, &home);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("using cargo-audit-audit 0.0.0-stand-in"),
        "{text}"
    );
    assert_eq!(
        outcome(&text),
        "cargo audit: no advisory matches Cargo.lock (312 crates checked)"
    );

    fake_audit(&audit, FOUND);
    let (code, text) = run_audit(&bin, &home);
    assert_eq!(code, 0, "findings do not fail CI:\n{text}");
    assert!(
        text.contains("RUSTSEC-0000-0000"),
        "the report is printed:\n{text}"
    );
    assert!(
        text.contains("args: audit --no-fetch --color never"),
        "{text}"
    );
    assert!(
        outcome(&text).starts_with(
            "WARNING: cargo audit: 1 vulnerability and 2 warning(s) (unmaintained, unsound or yanked crates) in Cargo.lock, report above; not failing CI"
        ),
        "{text}"
    );

    // Skipped on request, without running anything.
    let (code, text) = {
        let out = Command::new("bash")
            .arg(Path::new(ROOT).join(".ci/audit"))
            .env("GPU_AGENT_CARGO_AUDIT", "skip")
            .env("CARGO_HOME", &home)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert_eq!(text, "cargo audit: skipped (GPU_AGENT_CARGO_AUDIT=skip)\n");

    fake_audit(&audit, OFFLINE);
    let (code, text) = run_audit(&bin, &home);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("couldn't fetch advisory database"), "{text}");
    assert!(
        outcome(&text).starts_with("WARNING: cargo audit could not check Cargo.lock"),
        "{text}"
    );
}

#[test]
fn the_audit_step_installs_cargo_audit_only_when_missing_and_survives_a_failed_install() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let home = dir.path().join("cargo-home");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(home.join("bin")).unwrap();
    let calls = dir.path().join("cargo-calls");

    // No cargo-audit and the advisory database unreachable: no 15-minute install for nothing.
    write_script(
        &bin.join("cargo"),
        &format!("echo \"$*\" >> {}\nexit 101", calls.display()),
    );
    let unreachable = dir.path().join("no-such-database.git");
    let (code, text) = run_audit_with_db(&bin, &home, &unreachable.to_string_lossy());
    assert_eq!(code, 0, "{text}");
    assert!(
        outcome(&text).starts_with(&format!(
            "WARNING: cargo audit skipped: the advisory database ({}) cannot be reached",
            unreachable.display()
        )),
        "{text}"
    );
    assert!(!calls.exists(), "cargo install ran: {text}");

    // No cargo-audit, and `cargo install` fails (no network, no compiler).
    write_script(
        &bin.join("cargo"),
        &format!(
            "echo \"$*\" >> {}\necho 'error: failed to download from crates.io' >&2\nexit 101",
            calls.display()
        ),
    );
    let (code, text) = run_audit(&bin, &home);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("installing it: cargo install --locked cargo-audit"),
        "{text}"
    );
    assert!(text.contains("failed to download from crates.io"), "{text}");
    assert!(
        outcome(&text).starts_with("WARNING: cargo audit skipped: installing cargo-audit failed"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "install --locked cargo-audit\n"
    );

    // `cargo install` puts it into $CARGO_HOME/bin, which need not be on PATH.
    let installed = home.join("bin/cargo-audit");
    write_script(
        &bin.join("cargo"),
        &format!(
            "echo \"$*\" >> {calls}\ncp {src} {dst}",
            calls = calls.display(),
            src = dir.path().join("stand-in").display(),
            dst = installed.display()
        ),
    );
    fake_audit(&dir.path().join("stand-in"), CLEAN);
    let (code, text) = run_audit(&bin, &home);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("cargo audit: installed cargo-audit-audit 0.0.0-stand-in"),
        "{text}"
    );
    assert_eq!(
        outcome(&text),
        "cargo audit: no advisory matches Cargo.lock (312 crates checked)"
    );

    // Installed now: no second install.
    std::fs::remove_file(&calls).unwrap();
    let (code, text) = run_audit(&bin, &home);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("using cargo-audit-audit"), "{text}");
    assert!(!calls.exists(), "cargo install ran again");
}
