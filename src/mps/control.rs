//! Talking to NVIDIA's tools: `nvidia-cuda-mps-control` (start a daemon, send it commands on
//! stdin, as NVIDIA's plugin does) and `nvidia-smi` (set the compute mode). Shell only: what to
//! send is decided in [`startup_commands`], which is pure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The control binary's name, as NVIDIA's plugin runs it.
pub const MPS_CONTROL: &str = "nvidia-cuda-mps-control";
/// nvidia-smi, which sets the compute mode.
pub const NVIDIA_SMI: &str = "nvidia-smi";
/// How long one control command may take before it counts as failed: a hung daemon must not
/// hang the supervisor.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure running one of NVIDIA's tools.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{name} not found (looked {looked}); install the NVIDIA driver's utilities or pass its path")]
    NotFound { name: String, looked: String },
    #[error("cannot run {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} {what} failed ({status}): {output}")]
    Failed {
        path: PathBuf,
        what: String,
        status: String,
        output: String,
    },
    #[error("{path} {what} did not finish within {COMMAND_TIMEOUT:?}")]
    Timeout { path: PathBuf, what: String },
}

/// Find a tool: `explicit` when given (it must exist), else `name` on PATH.
pub fn resolve(name: &str, explicit: Option<&Path>) -> Result<PathBuf, ToolError> {
    if let Some(path) = explicit {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(ToolError::NotFound {
                name: name.to_string(),
                looked: format!("at {}", path.display()),
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| ToolError::NotFound {
            name: name.to_string(),
            looked: "on PATH".to_string(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The commands NVIDIA's plugin sends a freshly started daemon, in its order: the pinned-memory
/// limit for every device, then the default active-thread percentage. They apply to servers the
/// daemon starts from then on, which is every server, since no client has connected yet.
pub fn startup_commands(
    gpu_uuids: &[String],
    memory_limit_mib_per_client: Option<u64>,
    active_thread_percentage: u32,
) -> Vec<String> {
    let mut commands = Vec::new();
    if let Some(limit) = memory_limit_mib_per_client {
        for uuid in gpu_uuids {
            commands.push(format!(
                "set_default_device_pinned_mem_limit {uuid} {limit}M"
            ));
        }
    }
    commands.push(format!(
        "set_default_active_thread_percentage {active_thread_percentage}"
    ));
    commands
}

/// One `nvidia-cuda-mps-control`, with the environment that points it at one daemon.
#[derive(Debug, Clone)]
pub struct MpsControl {
    pub binary: PathBuf,
    /// CUDA_MPS_PIPE_DIRECTORY, CUDA_MPS_LOG_DIRECTORY, CUDA_VISIBLE_DEVICES.
    pub env: Vec<(String, String)>,
}

impl MpsControl {
    /// Start the daemon (`-d`): the tool forks it and returns.
    pub fn start(&self) -> Result<(), ToolError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-d");
        self.run(cmd, "-d", None).map(|_| ())
    }

    /// Send one command on stdin, as `echo <command> | nvidia-cuda-mps-control`; its stdout.
    pub fn send(&self, command: &str) -> Result<String, ToolError> {
        let cmd = Command::new(&self.binary);
        self.run(cmd, command, Some(command))
    }

    fn run(&self, mut cmd: Command, what: &str, stdin: Option<&str>) -> Result<String, ToolError> {
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        run_tool(cmd, &self.binary, what, stdin)
    }
}

/// Set `uuid`'s compute mode with `nvidia-smi -i <uuid> -c <mode>`.
pub fn set_compute_mode(nvidia_smi: &Path, uuid: &str, mode: &str) -> Result<(), ToolError> {
    let mut cmd = Command::new(nvidia_smi);
    cmd.args(["-i", uuid, "-c", mode]);
    run_tool(cmd, nvidia_smi, &format!("-i {uuid} -c {mode}"), None).map(|_| ())
}

/// Run a tool to completion within [`COMMAND_TIMEOUT`]. Stdout and stderr go to files, not
/// pipes: a daemon the tool forks inherits them, and a pipe it holds open would never reach EOF.
fn run_tool(
    mut cmd: Command,
    path: &Path,
    what: &str,
    stdin: Option<&str>,
) -> Result<String, ToolError> {
    let spawn_err = |source| ToolError::Spawn {
        path: path.to_path_buf(),
        source,
    };
    let mut out = tempfile_in_tmp().map_err(spawn_err)?;
    let mut err = tempfile_in_tmp().map_err(spawn_err)?;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(out.try_clone().map_err(spawn_err)?)
    .stderr(err.try_clone().map_err(spawn_err)?);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A daemon that exits early closes the pipe: its exit status says what went wrong.
        let _ = pipe.write_all(format!("{text}\n").as_bytes());
    }
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::Timeout {
                    path: path.to_path_buf(),
                    what: what.to_string(),
                });
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let stdout = read_back(&mut out);
    if status.success() {
        Ok(stdout)
    } else {
        let stderr = read_back(&mut err);
        Err(ToolError::Failed {
            path: path.to_path_buf(),
            what: what.to_string(),
            status: status.to_string(),
            output: format!("{stdout}{stderr}").trim().to_string(),
        })
    }
}

/// An unnamed temporary file (removed as soon as it is open).
fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
    let dir = std::env::temp_dir();
    let name = dir.join(format!(
        ".gpu-agent-mps-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&name)?;
    let _ = std::fs::remove_file(&name);
    Ok(file)
}

fn read_back(file: &mut std::fs::File) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if file.seek(SeekFrom::Start(0)).is_ok() {
        let _ = file.take(64 * 1024).read_to_string(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_commands_follow_nvidias_order() {
        let uuids = vec!["GPU-a".to_string(), "GPU-b".to_string()];
        assert_eq!(
            startup_commands(&uuids, Some(20_000), 25),
            [
                "set_default_device_pinned_mem_limit GPU-a 20000M",
                "set_default_device_pinned_mem_limit GPU-b 20000M",
                "set_default_active_thread_percentage 25",
            ]
        );
        assert_eq!(
            startup_commands(&uuids, None, 50),
            ["set_default_active_thread_percentage 50"]
        );
    }

    #[test]
    fn a_missing_tool_is_named() {
        let err = resolve(MPS_CONTROL, Some(Path::new("/nonexistent/mps"))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(MPS_CONTROL) && text.contains("/nonexistent/mps"),
            "{text}"
        );
    }
}
