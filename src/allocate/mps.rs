//! What an MPS replica adds to a container, as NVIDIA's plugin adds it
//! (`internal/plugin/mps.go`, `updateReponse`): the daemon's pipe directory, as env and as a
//! mount, and the daemons' shared memory at `/dev/shm`. Pure.
//!
//! NVIDIA's Allocate sets no `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` nor
//! `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`: the control daemon sets them as the defaults of every
//! client (`set_default_active_thread_percentage`, `set_default_device_pinned_mem_limit`, see
//! [`crate::mps::layout`]). Neither is set here either: the memory limit is keyed by the host's
//! device index, which means another GPU inside a container that sees its GPU as index 0.

use std::path::Path;

use super::grant::{Grant, Mount};
use crate::mps::layout;

/// The pipe directory a client must use (`/mps/<resource>/pipe`).
pub const CUDA_MPS_PIPE_DIRECTORY: &str = "CUDA_MPS_PIPE_DIRECTORY";

/// Add the MPS env and mounts for `resource` to `grant`; `mps_root` is `MPS_ROOT` on the host.
pub fn apply(grant: &mut Grant, resource: &str, mps_root: &str) {
    let root = Path::new(mps_root);
    let container_pipe = layout::container_pipe_dir(resource);
    let container_pipe = container_pipe.to_string_lossy();
    grant
        .envs
        .insert(CUDA_MPS_PIPE_DIRECTORY.into(), container_pipe.to_string());
    grant.mounts.push(Mount {
        container_path: container_pipe.to_string(),
        host_path: layout::pipe_dir(root, resource)
            .to_string_lossy()
            .into_owned(),
        read_only: false,
    });
    grant.mounts.push(Mount {
        container_path: layout::CONTAINER_SHM.into(),
        host_path: layout::shm_dir(root).to_string_lossy().into_owned(),
        read_only: false,
    });
}
