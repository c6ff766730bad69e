//! The MPS directory layout under `MPS_ROOT`, and the per-client limits, as NVIDIA's
//! `mps-control-daemon` lays them out (`cmd/mps-control-daemon/mps/root.go`, `daemon.go`). Pure.
//!
//! Keeping NVIDIA's layout lets either side be swapped for NVIDIA's: gpu-agent's plugin works
//! with NVIDIA's control daemon and the other way round. Per resource (its full name, e.g.
//! `nvidia.com/gpu`, is a path of two components):
//!
//! ```text
//! <root>/.ready                  all daemons started (written last, removed first)
//! <root>/shm/                    tmpfs the daemons and clients share as /dev/shm
//! <root>/<resource>/pipe/        CUDA_MPS_PIPE_DIRECTORY of the resource's daemon
//! <root>/<resource>/log/         CUDA_MPS_LOG_DIRECTORY (control.log, server.log)
//! <root>/<resource>/.started     this resource's daemon is up and its limits are set
//! ```
//!
//! The plugin checks `.started` (per resource) rather than `.ready` (per node) so that one
//! resource's daemon going down marks only that resource's replicas Unhealthy.

use std::path::{Path, PathBuf};

/// `MPS_ROOT` when neither `flags.mpsRoot` nor `MPS_ROOT` sets it: the default of NVIDIA's helm
/// chart (`mps.root`). NVIDIA's binary has no default and refuses MPS without one; a default
/// here saves the flag in the common case.
pub const DEFAULT_ROOT: &str = "/run/nvidia/mps";

/// Where `MPS_ROOT` is mounted in the containers of NVIDIA's DaemonSets, and so where a client
/// container finds its pipe directory (`/mps/<resource>/pipe`).
pub const CONTAINER_ROOT: &str = "/mps";

/// Where a client container sees the daemons' shared memory.
pub const CONTAINER_SHM: &str = "/dev/shm";

/// The node-wide ready marker.
pub const READY_FILE: &str = ".ready";

/// The per-resource marker a daemon writes once started with its limits set.
pub const STARTED_FILE: &str = ".started";

/// `<root>/<resource>/pipe`: the daemon's control pipe and its servers' sockets.
pub fn pipe_dir(root: &Path, resource: &str) -> PathBuf {
    root.join(resource).join("pipe")
}

/// `<root>/<resource>/log`: the daemon's `control.log` and `server.log`.
pub fn log_dir(root: &Path, resource: &str) -> PathBuf {
    root.join(resource).join("log")
}

/// `<root>/<resource>/.started`: present while the resource's daemon is ready.
pub fn started_marker(root: &Path, resource: &str) -> PathBuf {
    root.join(resource).join(STARTED_FILE)
}

/// `<root>/.ready`: present while every daemon of the node is ready.
pub fn ready_marker(root: &Path) -> PathBuf {
    root.join(READY_FILE)
}

/// `<root>/shm`: one for all resources, as in NVIDIA's layout.
pub fn shm_dir(root: &Path) -> PathBuf {
    root.join("shm")
}

/// The pipe directory as a client container sees it (`/mps/<resource>/pipe`).
pub fn container_pipe_dir(resource: &str) -> PathBuf {
    pipe_dir(Path::new(CONTAINER_ROOT), resource)
}

/// The SM share (percent) of each client: `100 / replicas`, rounded down, as NVIDIA's daemon
/// computes it (`set_default_active_thread_percentage`). `None` for no replicas.
pub fn active_thread_percentage(replicas: u32) -> Option<u32> {
    (replicas > 0).then(|| 100 / replicas)
}

/// The pinned device memory limit of each client on a GPU of `total_mib`, in MiB (sent as `<MiB>M`
/// with `set_default_device_pinned_mem_limit`): an even share, rounded down, as NVIDIA's daemon
/// computes it. `None` when the memory is unknown (0) or there are no replicas: NVIDIA sets no
/// limit then.
pub fn pinned_mem_limit_mib(total_mib: u64, replicas: u32) -> Option<u64> {
    (total_mib > 0 && replicas > 0).then(|| total_mib / u64::from(replicas))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_nvidias_layout() {
        let root = Path::new("/run/nvidia/mps");
        let r = "nvidia.com/gpu";
        assert_eq!(
            pipe_dir(root, r),
            Path::new("/run/nvidia/mps/nvidia.com/gpu/pipe")
        );
        assert_eq!(
            log_dir(root, r),
            Path::new("/run/nvidia/mps/nvidia.com/gpu/log")
        );
        assert_eq!(
            started_marker(root, r),
            Path::new("/run/nvidia/mps/nvidia.com/gpu/.started")
        );
        assert_eq!(ready_marker(root), Path::new("/run/nvidia/mps/.ready"));
        assert_eq!(shm_dir(root), Path::new("/run/nvidia/mps/shm"));
        assert_eq!(container_pipe_dir(r), Path::new("/mps/nvidia.com/gpu/pipe"));
    }

    #[test]
    fn limits_are_nvidias() {
        assert_eq!(active_thread_percentage(2), Some(50));
        assert_eq!(active_thread_percentage(3), Some(33));
        assert_eq!(active_thread_percentage(0), None);
        // 80 GiB over 4 replicas = 20 GiB = 20480 MiB.
        assert_eq!(pinned_mem_limit_mib(80 << 10, 4), Some(20480));
        assert_eq!(pinned_mem_limit_mib(0, 4), None);
    }
}
