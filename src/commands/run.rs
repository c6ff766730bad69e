//! `gpu-agent run`.

use super::Fatal;
use crate::cli::RunArgs;

/// Run the agent on a multi-threaded runtime with two workers: the agent is I/O bound and small;
/// blocking NVML work goes to the blocking pool.
pub fn run(args: RunArgs) -> Result<(), Fatal> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gpu-agent")
        .enable_all()
        .build()
        .map_err(|e| Fatal::Other(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(crate::agent::run(args))
}
