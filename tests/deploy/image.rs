//! The container image: built with the command CI runs, on a toolchain that builds the lock, from
//! a context that holds every build input.

use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

use crate::yaml::{seq_at, str_at};
use crate::ROOT;

/// What the release build reads; none of it may be left out of the Docker build context.
const BUILD_INPUTS: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "src",
    "proto",
    "fixtures",
    ".ci/build-release",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Non-empty, non-comment lines, trimmed.
fn lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Dockerfile instructions as (KEYWORD, arguments): continuation lines joined, comments dropped,
/// runs of whitespace made one space.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let mut words = current.split_whitespace();
        let op = words.next().unwrap_or("").to_uppercase();
        out.push((op, words.collect::<Vec<_>>().join(" ")));
        current.clear();
    }
    out
}

/// `(major, minor)` of `1.91` or `1.85.0`.
fn minor_version(v: &str) -> (u32, u32) {
    let mut parts = v
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("version {v:?}")));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The target this test runs on (`rustc -vV`'s `host:` line): the image is built for Linux, and
/// the build on this machine downloaded exactly that target's packages.
fn host_target() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV prints host:")
        .trim()
        .to_string()
}

/// The newest `rust-version` among the locked packages the Linux build uses, ours included.
///
/// `--filter-platform` matters: without it cargo metadata wants every package of Cargo.lock,
/// Windows-only ones included, which a Linux `cargo build` never downloads: on a fresh machine
/// (empty cargo cache) it would fetch them, or fail offline. With it, the packages this very test
/// run was built from are all it reads, so it neither downloads nor needs `--offline`.
fn newest_rust_version_in_lock() -> (u32, u32) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", &host_target()])
        .current_dir(ROOT)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    doc["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["rust_version"].as_str())
        .map(minor_version)
        .max()
        .expect("some package states a rust-version")
}

#[test]
fn the_image_is_built_with_the_command_ci_runs() {
    let dockerfile = read("Dockerfile");

    // One build command, in one script, run by both CI and the image.
    assert!(
        lines(&read(".ci/build-release")).contains(&"cargo build --release --locked"),
        ".ci/build-release runs cargo build --release --locked"
    );
    assert!(
        lines(&read(".ci/run")).contains(&".ci/build-release"),
        ".ci/run runs .ci/build-release"
    );
    let steps = instructions(&dockerfile);
    let builds_with_script = steps.iter().any(|(op, args)| {
        op == "RUN"
            && args
                .split("&&")
                .any(|cmd| cmd.split_whitespace().last() == Some(".ci/build-release"))
    });
    assert!(
        builds_with_script,
        "a Dockerfile RUN step runs .ci/build-release"
    );
    assert!(
        !dockerfile.contains("cargo build"),
        "the Dockerfile carries no cargo command of its own"
    );

    // A builder toolchain that builds the lock, on the runtime's Debian (glibc).
    let from: Vec<&str> = steps
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, args)| args.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(from.len(), 2, "two stages: {from:?}");
    let tag = from[0]
        .strip_prefix("rust:")
        .expect("builder on the official Rust image");
    let (version, debian) = tag.split_once('-').expect("rust:<version>-<debian>");
    assert_eq!(debian, "bookworm", "builder on Debian 12, like the runtime");
    assert_eq!(from[1], "gcr.io/distroless/cc-debian12:nonroot");
    let needed = newest_rust_version_in_lock();
    assert!(
        minor_version(version) >= needed,
        "rust:{version} is older than the {needed:?} Cargo.lock needs"
    );

    // What the image runs.
    let has = |op: &str, args: &str| steps.iter().any(|(o, a)| o == op && a == args);
    assert!(has("COPY", "--from=builder /out/ /usr/local/bin/"));
    assert!(dockerfile.contains("install -D -m 0755 target/release/gpu-agent /out/gpu-agent"));
    // NVIDIA's helm chart runs `nvidia-device-plugin` from PATH: the same binary under that name.
    assert!(dockerfile.contains("ln -s gpu-agent /out/nvidia-device-plugin"));
    assert!(has("ENTRYPOINT", "[\"/usr/local/bin/gpu-agent\"]"));
    assert!(has("CMD", "[\"run\"]"));
    assert!(has(
        "ENV",
        "NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=utility"
    ));
    assert!(
        has("ARG", &format!("VERSION={}", env!("CARGO_PKG_VERSION"))),
        "the image's version label is the crate version"
    );
}

#[test]
fn the_build_context_holds_every_build_input() {
    for pattern in lines(&read(".dockerignore")) {
        assert!(
            !pattern.contains(['*', '?', '[', '!']),
            ".dockerignore pattern {pattern:?}: keep patterns literal so this check stays exact"
        );
        let pattern = pattern.trim_matches('/');
        for input in BUILD_INPUTS {
            assert!(
                *input != pattern && !input.starts_with(&format!("{pattern}/")),
                ".dockerignore {pattern:?} drops build input {input}"
            );
        }
    }
}

#[test]
fn the_manifests_deploy_the_crate_version() {
    let kustomization: Value =
        serde_yaml_ng::from_str(&read("daemonset/base/kustomization.yaml")).expect("parse");
    let image = seq_at(&kustomization, "images")
        .iter()
        .find(|i| str_at(i, "name") == "gpu-agent")
        .expect("images: gpu-agent");
    assert_eq!(str_at(image, "newTag"), env!("CARGO_PKG_VERSION"));
}
