//! Supervising one MPS control daemon per shared resource: start it with NVIDIA's environment and
//! directories, send the start-up commands, write the ready marker the plugin side watches, and
//! keep checking it. A daemon that dies loses its marker at once (so the plugin stops handing out
//! replicas that cannot work) and is restarted with back-off.

use super::layout;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::control::{self, MpsControl, ToolError};

/// One daemon to run: the resource it serves and the GPUs shared through it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpsDaemonSpec {
    /// The advertised resource, e.g. `nvidia.com/gpu`; names its directories under MPS_ROOT.
    pub resource: String,
    pub gpu_uuids: Vec<String>,
    /// Clients per GPU: informational here; the limits below are already divided by it.
    pub replicas: u32,
    /// Pinned device memory per client, on every GPU of the daemon; None leaves it unlimited.
    #[serde(default)]
    pub memory_limit_mib_per_client: Option<u64>,
    /// Share of each GPU's SMs a client may use.
    pub active_thread_percentage: u32,
}

/// Why a spec cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("MPS daemon for {resource:?}: {reason}")]
    Invalid { resource: String, reason: String },
}

impl MpsDaemonSpec {
    /// Refuse what would give a broken layout or a command the daemon rejects.
    pub fn validate(&self) -> Result<(), SpecError> {
        let fail = |reason: &str| {
            Err(SpecError::Invalid {
                resource: self.resource.clone(),
                reason: reason.to_string(),
            })
        };
        let safe_part = |p: &str| !p.is_empty() && p != "." && p != "..";
        if self.resource.starts_with('/') || !self.resource.split('/').all(safe_part) {
            return fail("the resource name must be a relative path without . or .. parts");
        }
        if self.gpu_uuids.is_empty() {
            return fail("no GPUs");
        }
        if self
            .gpu_uuids
            .iter()
            .any(|u| u.is_empty() || u.contains(char::is_whitespace))
        {
            return fail("GPU UUIDs must be non-empty words");
        }
        if self.replicas == 0 {
            return fail("replicas must be at least 1");
        }
        if !(1..=100).contains(&self.active_thread_percentage) {
            return fail("active thread percentage must be 1-100");
        }
        Ok(())
    }
}

/// The daemons a node's config asks for: one per MPS-shared resource, over the GPUs its
/// replicas are on, each client limited as NVIDIA's daemon limits it (an even SM share,
/// `100 / replicas`, and an even share of the smallest of those GPUs' memory). Pure.
pub fn specs_for(snapshot: &crate::snapshot::Snapshot) -> Vec<MpsDaemonSpec> {
    use crate::resources::Strategy;
    let mut out = Vec::new();
    for resource in snapshot.resources.resources.values() {
        if resource.strategy != Strategy::Mps || resource.devices.is_empty() {
            continue;
        }
        let mut gpu_uuids: Vec<String> = Vec::new();
        for device in &resource.devices {
            if !gpu_uuids.contains(&device.target.gpu_uuid) {
                gpu_uuids.push(device.target.gpu_uuid.clone());
            }
        }
        let replicas = (resource.devices.len() / gpu_uuids.len()).max(1) as u32;
        let memory_mib = gpu_uuids
            .iter()
            .filter_map(|uuid| snapshot.inventory.gpus.iter().find(|g| &g.uuid == uuid))
            .map(|g| g.memory_mib)
            .min();
        out.push(MpsDaemonSpec {
            resource: resource.name.clone(),
            gpu_uuids,
            replicas,
            memory_limit_mib_per_client: memory_mib
                .and_then(|m| layout::pinned_mem_limit_mib(m, replicas)),
            active_thread_percentage: layout::active_thread_percentage(replicas).unwrap_or(100),
        });
    }
    out
}

/// The control daemon's pid file, which it writes in its pipe directory (NVIDIA's docs).
const PID_FILE: &str = "nvidia-cuda-mps-control.pid";
/// Its control pipe, in the pipe directory.
const CONTROL_PIPE: &str = "control";
/// How long `-d` may take to create its pipe and pid file.
const START_WAIT: Duration = Duration::from_secs(5);
/// How long `quit` may take before the daemon is considered gone anyway.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// First restart delay, doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Settings shared by every daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mps_root: PathBuf,
    pub control_binary: PathBuf,
    /// nvidia-smi, when the compute mode is to be set (NVIDIA sets EXCLUSIVE_PROCESS).
    pub nvidia_smi: Option<PathBuf>,
    /// How often a running daemon answers `get_server_list`.
    pub probe_interval: Duration,
}

/// Why a daemon did not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the ready marker {path}: {source}")]
    Marker {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("the daemon did not create {0} within {START_WAIT:?}")]
    NoPipe(PathBuf),
}

/// A daemon that dies sooner than this after starting keeps its back-off growing: one that
/// crashes at once is not restarted every half second forever.
const STABLE_AFTER: Duration = Duration::from_secs(60);

enum State {
    /// `backoff`: the restart delay to use if it dies before [`STABLE_AFTER`].
    Up {
        next_probe: Instant,
        since: Instant,
        backoff: Duration,
    },
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
}

/// One supervised daemon.
pub struct Supervised {
    spec: MpsDaemonSpec,
    control: MpsControl,
    pipe_dir: PathBuf,
    log_dir: PathBuf,
    marker: PathBuf,
    state: State,
}

impl Supervised {
    pub fn new(spec: MpsDaemonSpec, settings: &Settings) -> Self {
        let root = &settings.mps_root;
        let pipe_dir = layout::pipe_dir(root, &spec.resource);
        let log_dir = layout::log_dir(root, &spec.resource);
        let marker = layout::started_marker(root, &spec.resource);
        // NVIDIA's daemon env, plus CUDA_VISIBLE_DEVICES so that the daemon and its servers see
        // only this resource's GPUs (NVIDIA leaves that as a TODO).
        let env = vec![
            (
                "CUDA_MPS_PIPE_DIRECTORY".into(),
                pipe_dir.display().to_string(),
            ),
            (
                "CUDA_MPS_LOG_DIRECTORY".into(),
                log_dir.display().to_string(),
            ),
            ("CUDA_VISIBLE_DEVICES".into(), spec.gpu_uuids.join(",")),
        ];
        let control = MpsControl {
            binary: settings.control_binary.clone(),
            env,
        };
        Supervised {
            spec,
            control,
            pipe_dir,
            log_dir,
            marker,
            state: State::Down {
                retry_at: Instant::now(),
                backoff: FIRST_BACKOFF,
            },
        }
    }

    pub fn resource(&self) -> &str {
        &self.spec.resource
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// One supervision step: start a daemon that is due, check one that runs.
    pub fn tick(&mut self, settings: &Settings, now: Instant) {
        match self.state {
            State::Down { retry_at, backoff } if now >= retry_at => match self.start(settings) {
                Ok(()) => {
                    tracing::info!(resource = %self.spec.resource, pipe_dir = %self.pipe_dir.display(), "MPS control daemon up; ready marker written");
                    self.state = State::Up {
                        next_probe: now + settings.probe_interval,
                        since: now,
                        backoff,
                    };
                }
                Err(e) => {
                    tracing::error!(resource = %self.spec.resource, error = %e, retry_in = ?backoff, "MPS control daemon did not start");
                    self.state = State::Down {
                        retry_at: now + backoff,
                        backoff: (backoff * 2).min(MAX_BACKOFF),
                    };
                }
            },
            State::Down { .. } => {}
            State::Up {
                next_probe,
                since,
                backoff,
            } => {
                // The pid check is cheap and runs every tick; the probe through the control
                // pipe runs every probe interval.
                let failure = if !self.daemon_alive() {
                    Some("the control daemon process is gone".to_string())
                } else if now >= next_probe {
                    self.control
                        .send("get_server_list")
                        .err()
                        .map(|e| e.to_string())
                } else {
                    None
                };
                match failure {
                    Some(reason) => {
                        self.remove_marker();
                        let delay = if now.duration_since(since) < STABLE_AFTER {
                            backoff
                        } else {
                            FIRST_BACKOFF
                        };
                        tracing::error!(resource = %self.spec.resource, reason, retry_in = ?delay, "MPS control daemon died; ready marker removed, restarting");
                        self.state = State::Down {
                            retry_at: now + delay,
                            backoff: (delay * 2).min(MAX_BACKOFF),
                        };
                    }
                    None if now >= next_probe => {
                        self.state = State::Up {
                            next_probe: now + settings.probe_interval,
                            since,
                            backoff,
                        };
                    }
                    None => {}
                }
            }
        }
    }

    /// Start the daemon and configure it; the marker is written last, only when all succeeded.
    fn start(&mut self, settings: &Settings) -> Result<(), StartError> {
        self.remove_marker();
        if let Some(smi) = &settings.nvidia_smi {
            // MPS needs the GPU to itself: EXCLUSIVE_PROCESS lets only the MPS server open a
            // context on it, so no client can bypass MPS and its limits.
            for uuid in &self.spec.gpu_uuids {
                control::set_compute_mode(smi, uuid, "EXCLUSIVE_PROCESS")?;
            }
        }
        for dir in [&self.pipe_dir, &self.log_dir] {
            std::fs::create_dir_all(dir).map_err(|source| StartError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        // A daemon left over from an earlier life of this process still has the old settings.
        if self.daemon_alive() {
            tracing::info!(resource = %self.spec.resource, "stopping a control daemon left running");
            self.quit();
        }
        self.control.start()?;
        let pipe = self.pipe_dir.join(CONTROL_PIPE);
        let deadline = Instant::now() + START_WAIT;
        while !pipe.exists() {
            if Instant::now() >= deadline {
                return Err(StartError::NoPipe(pipe));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let commands = control::startup_commands(
            &self.spec.gpu_uuids,
            self.spec.memory_limit_mib_per_client,
            self.spec.active_thread_percentage,
        );
        for command in &commands {
            self.control.send(command)?;
        }
        self.control.send("get_server_list")?;
        std::fs::File::create(&self.marker).map_err(|source| StartError::Marker {
            path: self.marker.clone(),
            source,
        })?;
        Ok(())
    }

    /// Is the process in the daemon's pid file alive?
    fn daemon_alive(&self) -> bool {
        reap_orphans();
        let Ok(text) = std::fs::read_to_string(self.pipe_dir.join(PID_FILE)) else {
            return false;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }

    fn remove_marker(&self) {
        match std::fs::remove_file(&self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(marker = %self.marker.display(), error = %e, "cannot remove the MPS ready marker")
            }
        }
    }

    /// Send `quit` and wait for the daemon to go.
    fn quit(&self) {
        if let Err(e) = self.control.send("quit") {
            tracing::warn!(resource = %self.spec.resource, error = %e, "quit failed");
            return;
        }
        let deadline = Instant::now() + QUIT_WAIT;
        while self.daemon_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shut down: marker first (the plugin stops advertising), then `quit`, then the compute
    /// mode back to DEFAULT, as NVIDIA's daemon does on stop.
    pub fn stop(&mut self, settings: &Settings) {
        self.remove_marker();
        if self.daemon_alive() {
            self.quit();
            tracing::info!(resource = %self.spec.resource, "MPS control daemon stopped");
        }
        if let Some(smi) = &settings.nvidia_smi {
            for uuid in &self.spec.gpu_uuids {
                if let Err(e) = control::set_compute_mode(smi, uuid, "DEFAULT") {
                    tracing::warn!(uuid, error = %e, "cannot reset the compute mode");
                }
            }
        }
        self.state = State::Down {
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
        };
    }
}

/// Collect every exited child, so that an adopted daemon that died stops passing the liveness
/// check as a zombie. Safe only where no `std::process::Child` is outstanding: the supervisor is
/// single-threaded and waits for every tool it runs before it calls this.
pub fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG writes only to `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        tracing::debug!(pid, status, "reaped an exited process");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(resource: &str) -> MpsDaemonSpec {
        MpsDaemonSpec {
            resource: resource.to_string(),
            gpu_uuids: vec!["GPU-a".into()],
            replicas: 2,
            memory_limit_mib_per_client: Some(1000),
            active_thread_percentage: 50,
        }
    }

    #[test]
    fn layout_is_nvidias() {
        let root = Path::new("/run/nvidia/mps");
        assert_eq!(
            layout::pipe_dir(root, "nvidia.com/gpu"),
            Path::new("/run/nvidia/mps/nvidia.com/gpu/pipe")
        );
        assert_eq!(
            layout::log_dir(root, "nvidia.com/gpu"),
            Path::new("/run/nvidia/mps/nvidia.com/gpu/log")
        );
    }

    #[test]
    fn specs_that_would_escape_the_root_or_be_refused_are_invalid() {
        assert!(spec("nvidia.com/gpu").validate().is_ok());
        for bad in ["/etc", "../x", "a/../b", "", "a//b"] {
            assert!(spec(bad).validate().is_err(), "{bad:?}");
        }
        let mut s = spec("nvidia.com/gpu");
        s.active_thread_percentage = 0;
        assert!(s.validate().is_err());
        let mut s = spec("nvidia.com/gpu");
        s.gpu_uuids.clear();
        assert!(s.validate().is_err());
    }
}
