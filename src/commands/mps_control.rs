//! `gpu-agent mps-control`: run and supervise one MPS control daemon per MPS-shared resource
//! until SIGTERM / SIGINT. A shell over [`crate::mps::daemon`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cli::MpsControlArgs;
use crate::commands::Fatal;
use crate::mps::control::{self, MPS_CONTROL, NVIDIA_SMI};
use crate::mps::daemon::{reap_orphans, MpsDaemonSpec, Settings, Supervised};

/// How often the supervisor wakes: bounds how long a dead daemon keeps its ready marker.
const TICK: Duration = Duration::from_millis(200);

/// Set by the signal handler; the loop reads it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: MpsControlArgs) -> Result<(), Fatal> {
    let node = super::load_node(&args.inventory)?;
    let mps_root = std::path::PathBuf::from(node.snapshot.config.plugin.mps_root());
    let specs = match &args.mps_spec_file {
        Some(path) => specs_from_file(path)?,
        None => crate::mps::daemon::specs_for(&node.snapshot),
    };
    for spec in &specs {
        spec.validate().map_err(|e| Fatal::Invalid(e.to_string()))?;
    }
    let control_binary = control::resolve(MPS_CONTROL, args.mps_control_binary.as_deref())
        .map_err(|e| Fatal::Other(e.to_string()))?;
    let nvidia_smi = if args.set_compute_mode {
        Some(
            control::resolve(NVIDIA_SMI, args.nvidia_smi_binary.as_deref())
                .map_err(|e| Fatal::Other(e.to_string()))?,
        )
    } else {
        None
    };
    let settings = Settings {
        mps_root,
        control_binary,
        nvidia_smi,
        probe_interval: args.probe_interval,
    };
    install_signal_handlers();
    become_subreaper();
    tracing::info!(daemons = specs.len(), mps_root = %settings.mps_root.display(), "MPS control starting");
    if specs.is_empty() {
        tracing::info!("no resource is shared with MPS: waiting for a signal");
    }
    let mut daemons: Vec<Supervised> = specs
        .into_iter()
        .map(|spec| Supervised::new(spec, &settings))
        .collect();
    while !STOP.load(Ordering::SeqCst) {
        let now = Instant::now();
        for daemon in &mut daemons {
            daemon.tick(&settings, now);
        }
        reap_orphans();
        std::thread::sleep(TICK);
    }
    tracing::info!("signal received: stopping the MPS control daemons");
    for daemon in &mut daemons {
        daemon.stop(&settings);
    }
    Ok(())
}

/// Test-only input: a JSON list of [`MpsDaemonSpec`].
fn specs_from_file(path: &Path) -> Result<Vec<MpsDaemonSpec>, Fatal> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fatal::Other(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Fatal::Invalid(format!("invalid MPS spec file {}: {e}", path.display())))
}

/// `nvidia-cuda-mps-control -d` forks the daemon and exits, so the daemon is orphaned. As a
/// subreaper (and as a container's PID 1, which it often is) this process adopts it: a daemon
/// that dies then becomes our zombie, which `reap_orphans` collects. Unreaped, a zombie would
/// still pass the pid-file liveness check.
fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot become a child subreaper; relying on the get_server_list probe");
    }
}

fn install_signal_handlers() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic; sigaction's struct is zeroed then filled.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
