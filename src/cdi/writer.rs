//! Writes the CDI specs into the CDI dir whenever the snapshot's devices or settings change them:
//! the GPU spec, and one spec per node extra found (see [`super::extras`]).
//!
//! - Only while a CDI strategy is configured; the file is never removed, not on shutdown and not
//!   when the config drops CDI: containers the kubelet restarts from its checkpoint resolve their
//!   CDI names again without a new Allocate, also while the agent is restarting, so a missing spec
//!   breaks pods while a stale one is harmless.
//! - Atomically and safely, through [`hostfs::write`]: a random temp name in the same directory
//!   (ending in `.tmp`, which CDI registries ignore) created without following links, synced,
//!   renamed over the spec, so a runtime never reads half a file; a symlink, FIFO or anything but
//!   a regular file at the spec's name is refused, not followed or replaced.
//! - Only when the bytes differ from what is on disk: health flaps do not rewrite it. What is on
//!   disk is read once, through [`hostfs::read`] (regular files only, never blocking, at most
//!   [`hostfs::MAX_HOST_FILE`]), and off the async runtime like every write: a FIFO or a
//!   `/dev/zero` link planted at the spec's name cannot hang the agent.
//! - The driver's files are looked for once per driver version and driver settings, not on every
//!   snapshot; a driver that is not there is reported once, with the root searched. So is a
//!   feature (`gdsEnabled`, …) switched on without its device nodes on the node: it gets no spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::driver::{self, Driver, Query};
use super::{extras, layout, spec, spec_file_name};
use crate::extras::{Feature, NodeExtras};
use crate::hostfs::{self, Links, WriteError};
use crate::snapshot::Snapshot;

/// File name of our GPU spec inside the CDI dir ([`super::spec_file_name`] of `gpu`).
pub const FILE_NAME: &str = "k8s.gpu-agent.io-gpu.json";

/// How long to wait before trying again after a failed write.
pub const RETRY: Duration = Duration::from_secs(5);

/// Keeps our spec files in step with the snapshots it is shown.
#[derive(Debug)]
pub struct SpecWriter {
    dir: PathBuf,
    /// Bytes last known to be on disk, per file name; a file not in here is read first.
    written: BTreeMap<String, Option<Vec<u8>>>,
    /// The last driver discovery: what was looked for, and what was found.
    driver: Option<(Query, Option<Driver>)>,
    /// The enabled features without devices, as last reported.
    absent: Option<Vec<Feature>>,
}

/// What [`SpecWriter::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No CDI strategy configured: nothing to do.
    NotConfigured,
    /// The file already held this spec.
    Unchanged,
    /// The file was (re)written.
    Written,
}

impl SpecWriter {
    /// A writer for `<dir>/k8s.gpu-agent.io-gpu.json` and the extras' files beside it.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            written: BTreeMap::new(),
            driver: None,
            absent: None,
        }
    }

    /// The driver's files for `query`, discovered again only when `query` changed.
    fn driver(&mut self, query: Query) -> Option<&Driver> {
        if self.driver.as_ref().is_none_or(|(last, _)| *last != query) {
            let found = driver::discover(&query);
            log_discovery(&query, &found);
            self.driver = Some((query, found.ok()));
        }
        self.driver.as_ref().and_then(|(_, d)| d.as_ref())
    }

    /// The GPU spec file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Bring the files in line with `snapshot`. Files of extras no longer found are left alone,
    /// like the GPU spec when CDI is dropped: nothing names their devices any more.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<Outcome, WriteError> {
        let plugin = &snapshot.config.plugin;
        if !plugin.device_list_strategies.iter().any(|s| s.uses_cdi()) {
            return Ok(Outcome::NotConfigured);
        }
        let query = Query::new(plugin, &snapshot.inventory);
        let driver = self.driver(query);
        let mut files = vec![(
            FILE_NAME.to_string(),
            spec::build(&snapshot.inventory, plugin, driver).to_bytes(),
        )];
        for (class, spec) in extras::specs(plugin, &snapshot.extras) {
            files.push((spec_file_name(class), spec.to_bytes()));
        }
        self.report_absent(plugin, &snapshot.extras);
        let mut outcome = Outcome::Unchanged;
        for (name, bytes) in files {
            if self.write(name, bytes)? {
                outcome = Outcome::Written;
            }
        }
        Ok(outcome)
    }

    /// Write `bytes` to `<dir>/<name>` unless it already holds them. True when written.
    fn write(&mut self, name: String, bytes: Vec<u8>) -> Result<bool, WriteError> {
        let path = self.dir.join(&name);
        // First look: a spec from an earlier run with the same content need not be touched.
        let on_disk = self
            .written
            .entry(name)
            .or_insert_with(|| read_existing(&path));
        if on_disk.as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        hostfs::write(&path, &bytes)?;
        *on_disk = Some(bytes);
        Ok(true)
    }

    /// Say once (per change) which enabled features have no device on the node, hence no spec.
    fn report_absent(&mut self, plugin: &crate::config::PluginSettings, found: &NodeExtras) {
        let absent = found.absent_features(plugin);
        if self.absent.as_ref() == Some(&absent) {
            return;
        }
        for feature in &absent {
            tracing::warn!(
                feature = feature.class(),
                setting = feature.setting(),
                dev_root = %found.dev_root,
                "enabled, but none of its device nodes is on this node: containers get {}=enabled but no {} CDI device",
                feature.env(),
                super::qualified_name(feature.class(), extras::ALL),
            );
        }
        self.absent = Some(absent);
    }

    /// [`Self::sync`] with logging. True unless the write failed.
    pub fn sync_logged(&mut self, snapshot: &Snapshot) -> bool {
        match self.sync(snapshot) {
            Ok(Outcome::Written) => {
                tracing::info!(dir = %self.dir.display(), gpus = snapshot.inventory.gpus.len(), "CDI spec written");
                true
            }
            Ok(_) => true,
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, retry_in = ?RETRY, "cannot write the CDI spec; containers using CDI devices will fail to start until it is written");
                false
            }
        }
    }
}

/// Say once what the spec will bring into containers besides device nodes.
fn log_discovery(query: &Query, found: &Result<Driver, driver::NotFound>) {
    match found {
        Ok(d) => tracing::info!(
            root = %query.read_root,
            version = %d.version,
            libraries = d.libraries.len(),
            binaries = d.binaries.len(),
            firmware = d.firmware.len(),
            layout = if d.ctk.is_some() { "host paths + nvidia-ctk update-ldcache hook" } else { layout::LIB_DIR },
            nvidia_ctk = d.ctk.as_deref().unwrap_or("-"),
            "NVIDIA driver found; the CDI spec mounts its libraries and binaries"
        ),
        Err(reason) => tracing::warn!(
            root = %query.read_root,
            version = query.version.as_deref().unwrap_or("-"),
            %reason,
            "NVIDIA driver not found; the CDI spec lists device nodes only, so containers started through CDI alone get no libcuda, libnvidia-ml or nvidia-smi and need the driver from elsewhere (the NVIDIA runtime hook, or the image)"
        ),
    }
}

/// The spec a previous run left at `path`, if it is one: anything else (a FIFO, a symlink, a
/// device, a file over the cap) is reported and treated as absent, and the write that follows
/// says whether it can be replaced.
fn read_existing(path: &Path) -> Option<Vec<u8>> {
    match hostfs::read(path, Links::Refuse, hostfs::MAX_HOST_FILE) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.is_not_found() => None,
        Err(error) => {
            tracing::warn!(%error, "the CDI spec on disk is not read; it is rewritten if it can be");
            None
        }
    }
}

/// [`SpecWriter::sync_logged`] on a blocking thread, so file I/O (and a driver search) never
/// stalls the async runtime. `None` if the thread panicked, the writer with it.
pub async fn sync_off_runtime(
    mut writer: SpecWriter,
    snapshot: Arc<Snapshot>,
) -> Option<(SpecWriter, bool)> {
    match tokio::task::spawn_blocking(move || {
        let ok = writer.sync_logged(&snapshot);
        (writer, ok)
    })
    .await
    {
        Ok(done) => Some(done),
        Err(error) => {
            tracing::error!(%error, "the CDI spec writer failed; CDI specs are no longer updated");
            None
        }
    }
}

/// Keep the spec in step with `snapshots` until `shutdown`.
pub async fn run(
    mut writer: SpecWriter,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let Some((back, ok)) = sync_off_runtime(writer, snapshot).await else {
            return;
        };
        writer = back;
        tokio::select! {
            _ = crate::sync::until_true(&mut shutdown) => break,
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(RETRY), if !ok => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Config};
    use crate::gpu::fixture;
    use crate::health::HealthState;

    fn snapshot(fixture_text: &str, config: Config) -> Snapshot {
        let inventory = fixture::parse(fixture_text).unwrap().inventory;
        Snapshot::build(
            Arc::new(inventory),
            Arc::new(config),
            Arc::new(HealthState::default()),
        )
        .unwrap()
    }

    #[test]
    fn writes_only_with_cdi_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let cdi_dir = dir.path().join("cdi");
        let mut writer = SpecWriter::new(&cdi_dir);
        let one = "gpus: [{model: NVIDIA H100 80GB HBM3}]";
        let two = "gpus: [{model: NVIDIA H100 80GB HBM3}, {model: NVIDIA H100 80GB HBM3}]";

        let plain = snapshot(one, Config::default());
        assert_eq!(writer.sync(&plain).unwrap(), Outcome::NotConfigured);
        assert!(!writer.path().exists());

        let cdi = config::parse("flags: {plugin: {deviceListStrategy: cdi-cri}}").unwrap();
        assert_eq!(
            writer.sync(&snapshot(one, cdi.clone())).unwrap(),
            Outcome::Written
        );
        let first: spec::Spec =
            serde_json::from_slice(&std::fs::read(writer.path()).unwrap()).unwrap();
        assert_eq!(first.devices.len(), 2);
        assert_eq!(
            writer.sync(&snapshot(one, cdi.clone())).unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(
            writer.sync(&snapshot(two, cdi.clone())).unwrap(),
            Outcome::Written
        );
        let second: spec::Spec =
            serde_json::from_slice(&std::fs::read(writer.path()).unwrap()).unwrap();
        assert_eq!(second.devices.len(), 4);

        // Dropping CDI leaves the file in place.
        assert_eq!(writer.sync(&plain).unwrap(), Outcome::NotConfigured);
        assert!(writer.path().exists());

        // A new writer (agent restart) finds the same content and leaves it alone.
        let mut again = SpecWriter::new(&cdi_dir);
        assert_eq!(again.sync(&snapshot(two, cdi)).unwrap(), Outcome::Unchanged);
        // No temp files left behind.
        let names: Vec<String> = std::fs::read_dir(&cdi_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn the_driver_is_looked_for_once_per_version_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("driver");
        let lib = root.join("usr/lib64");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        for version in ["580.95.05", "580.105.08"] {
            for stem in ["libcuda", "libnvidia-ml"] {
                std::fs::write(lib.join(format!("{stem}.so.{version}")), b"elf").unwrap();
            }
        }
        std::fs::write(root.join("usr/bin/nvidia-smi"), b"elf").unwrap();
        let cdi = config::parse(&format!(
            "flags: {{nvidiaDriverRoot: {}, plugin: {{deviceListStrategy: cdi-cri}}}}",
            root.display()
        ))
        .unwrap();
        let node = |version: &str| {
            format!("driverVersion: \"{version}\"\ngpus: [{{model: NVIDIA H100 80GB HBM3}}]")
        };
        let mounted = |writer: &SpecWriter| -> Vec<String> {
            let spec: spec::Spec =
                serde_json::from_slice(&std::fs::read(writer.path()).unwrap()).unwrap();
            spec.container_edits
                .mounts
                .iter()
                .map(|m| {
                    let host = m.host_path.strip_prefix(root.to_str().unwrap()).unwrap();
                    format!("{host} -> {}", m.container_path)
                })
                .collect()
        };
        let mut writer = SpecWriter::new(&dir.path().join("cdi"));
        let s = snapshot(&node("580.95.05"), cdi.clone());
        assert_eq!(writer.sync(&s).unwrap(), Outcome::Written);
        assert_eq!(
            mounted(&writer),
            [
                "/usr/lib64/libnvidia-ml.so.580.95.05 -> /usr/local/nvidia/lib64/libnvidia-ml.so.1",
                "/usr/lib64/libcuda.so.580.95.05 -> /usr/local/nvidia/lib64/libcuda.so.1",
                "/usr/bin/nvidia-smi -> /usr/local/nvidia/bin/nvidia-smi",
            ]
        );
        // The same driver version: no new look, although nvidia-smi is gone now.
        std::fs::remove_file(root.join("usr/bin/nvidia-smi")).unwrap();
        assert_eq!(writer.sync(&s).unwrap(), Outcome::Unchanged);
        // A driver upgrade: looked for again.
        let s = snapshot(&node("580.105.08"), cdi);
        assert_eq!(writer.sync(&s).unwrap(), Outcome::Written);
        assert_eq!(
            mounted(&writer),
            [
                "/usr/lib64/libnvidia-ml.so.580.105.08 -> /usr/local/nvidia/lib64/libnvidia-ml.so.1",
                "/usr/lib64/libcuda.so.580.105.08 -> /usr/local/nvidia/lib64/libcuda.so.1",
            ]
        );
        // A version with no files: device nodes only, still written.
        let s = snapshot(&node("999.0.1"), s.config.as_ref().clone());
        assert_eq!(writer.sync(&s).unwrap(), Outcome::Written);
        assert!(mounted(&writer).is_empty());
    }

    #[test]
    fn extras_found_get_their_own_files_and_absent_ones_none() {
        use crate::extras::{FeatureFiles, NodeExtras};
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SpecWriter::new(dir.path());
        let mut config = config::parse("flags: {plugin: {deviceListStrategy: cdi-cri}}").unwrap();
        config.plugin.gds_enabled = true;
        config.plugin.mofed_enabled = true;
        config.plugin.imex.channel_ids = vec![0];
        let gds = FeatureFiles {
            device_nodes: vec!["/dev/nvidia-fs0".into()],
            mounts: Vec::new(),
        };
        let extras = |with_gds: bool| NodeExtras {
            features: [
                (
                    Feature::Gds,
                    if with_gds {
                        gds.clone()
                    } else {
                        FeatureFiles::default()
                    },
                ),
                (Feature::Mofed, FeatureFiles::default()),
            ]
            .into(),
            imex_channels: vec![0],
            ..NodeExtras::default()
        };
        let at = |with_gds: bool| {
            let inventory = fixture::parse("gpus: [{model: NVIDIA H100 80GB HBM3}]")
                .unwrap()
                .inventory;
            Snapshot::build_with(
                Arc::new(inventory),
                Arc::new(config.clone()),
                Arc::default(),
                Arc::new(extras(with_gds)),
            )
            .unwrap()
        };
        let names = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(writer.sync(&at(true)).unwrap(), Outcome::Written);
        // MOFED is on but absent: no file.
        assert_eq!(
            names(),
            [
                "k8s.gpu-agent.io-gds.json",
                "k8s.gpu-agent.io-gpu.json",
                "k8s.gpu-agent.io-imex-channel.json"
            ]
        );
        let read = |name: &str| -> spec::Spec {
            serde_json::from_slice(&std::fs::read(dir.path().join(name)).unwrap()).unwrap()
        };
        let gds_spec = read("k8s.gpu-agent.io-gds.json");
        assert_eq!(gds_spec.kind, "k8s.gpu-agent.io/gds");
        assert_eq!(
            gds_spec.device("all").unwrap().container_edits.device_nodes[0].path,
            "/dev/nvidia-fs0"
        );
        assert!(read("k8s.gpu-agent.io-imex-channel.json")
            .device("0")
            .is_some());
        assert_eq!(writer.sync(&at(true)).unwrap(), Outcome::Unchanged);
        // GDS gone: its file stays (nothing names it any more), nothing is rewritten.
        assert_eq!(writer.sync(&at(false)).unwrap(), Outcome::Unchanged);
        assert_eq!(names().len(), 3);
        assert_eq!(writer.absent, Some(vec![Feature::Gds, Feature::Mofed]));
    }

    #[test]
    fn a_write_failure_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        // The CDI "dir" is a file: nothing can be created under it.
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let mut writer = SpecWriter::new(&blocker);
        let cdi = config::parse("flags: {plugin: {deviceListStrategy: cdi-annotations}}").unwrap();
        let s = snapshot("gpus: [{model: NVIDIA H100 80GB HBM3}]", cdi);
        assert!(writer.sync(&s).is_err());
        assert!(!writer.sync_logged(&s));
    }

    #[test]
    fn a_fifo_or_a_link_at_the_spec_path_is_refused_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("checkpoint");
        std::fs::write(&victim, b"victim").unwrap();
        let fifo = std::ffi::CString::new(dir.path().join(FILE_NAME).to_str().unwrap().as_bytes())
            .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let cdi = config::parse("flags: {plugin: {deviceListStrategy: cdi-cri}}").unwrap();
        let s = snapshot("gpus: [{model: NVIDIA H100 80GB HBM3}]", cdi);
        let (tx, rx) = std::sync::mpsc::channel();
        let cdi_dir = dir.path().to_path_buf();
        let s2 = s.clone();
        std::thread::spawn(move || {
            let _ = tx.send(
                SpecWriter::new(&cdi_dir)
                    .sync(&s2)
                    .map_err(|e| e.to_string()),
            );
        });
        let error = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("sync blocked on the FIFO")
            .unwrap_err();
        assert!(error.contains("it is a FIFO"), "{error}");

        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(FILE_NAME)).unwrap();
        let error = SpecWriter::new(dir.path()).sync(&s).unwrap_err();
        assert!(error.to_string().contains("it is a symlink"), "{error}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    }
}
