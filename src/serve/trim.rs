//! Giving memory back after a connection flood.
//!
//! Each connection's buffers are freed when it closes, but glibc keeps freed memory in its
//! per-thread arenas, so without this the resident size stays at the flood's peak for the life of
//! the process. Once a flood is over (the connection count reached the cap, and has since fallen
//! to an eighth of it), the free memory is handed back to the kernel, once per flood.

use std::sync::Arc;
use std::time::Duration;

use super::slots::Slots;

/// How often the connection count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Watch `slots` until the returned task is aborted; trim after every flood.
pub fn after_floods(slots: Arc<Slots>, what: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut flooded = false;
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (open, peak) = slots.open_and_take_peak();
            flooded |= peak >= slots.max();
            if flooded && open <= slots.max() / 8 {
                flooded = false;
                let released = release_free_memory();
                tracing::debug!(
                    server = what,
                    released,
                    "connection flood over: free memory returned"
                );
            }
        }
    })
}

/// Hand free heap memory back to the kernel; true if any was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe and has
    // no preconditions.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl) return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() -> bool {
    false
}
