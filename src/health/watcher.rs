//! The health task: backend events in, [`HealthState`] out.
//!
//! Events arrive on a bounded channel (the backend never blocks: it drops when full). The task
//! drains everything pending before publishing, so an XID storm becomes one new state rather
//! than thousands, and memory stays flat.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::policy::{xid_meaning, HealthPolicy, HealthTracker, Transition};
use super::HealthState;
use crate::gpu::HealthEvent;

/// Capacity of the backend → health channel.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Every XID delivered, by (device UUID, XID), for `gpu_xid_errors_total`.
#[derive(Debug, Clone, Default)]
pub struct XidCounts(Arc<Mutex<BTreeMap<(String, u64), u64>>>);

impl XidCounts {
    /// A copy of the counts.
    pub fn snapshot(&self) -> BTreeMap<(String, u64), u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store(&self, counts: &BTreeMap<(String, u64), u64>) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard.clone_from(counts);
    }
}

/// Run until the event channel closes.
pub async fn run(
    mut tracker: HealthTracker,
    mut events: mpsc::Receiver<HealthEvent>,
    mut policies: watch::Receiver<HealthPolicy>,
    state: watch::Sender<Arc<HealthState>>,
    counts: XidCounts,
) {
    state.send_replace(Arc::new(tracker.state()));
    let mut policies_open = true;
    loop {
        let deadline = tracker.next_expiry();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut changed = false;
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let now = Instant::now();
                changed |= apply(&mut tracker, &event, now);
                // Coalesce whatever else is already queued into the same update.
                while let Ok(event) = events.try_recv() {
                    changed |= apply(&mut tracker, &event, now);
                }
                counts.store(tracker.xid_counts());
            }
            _ = sleep => {
                for device in tracker.expire(Instant::now()) {
                    tracing::info!(device = %device, "device healthy again after recoverAfter without a new XID");
                    changed = true;
                }
            }
            policy = policies.changed(), if policies_open => {
                if policy.is_err() {
                    // The config side is gone; keep the current policy.
                    policies_open = false;
                } else {
                    let policy = policies.borrow_and_update().clone();
                    tracker.set_policy(policy);
                }
            }
        }
        if changed {
            state.send_replace(Arc::new(tracker.state()));
        }
    }
}

fn apply(tracker: &mut HealthTracker, event: &HealthEvent, now: Instant) -> bool {
    if let HealthEvent::Xid {
        gpu_uuid,
        mig_uuid,
        xid,
    } = event
    {
        tracing::debug!(gpu = %gpu_uuid, mig = ?mig_uuid, xid, meaning = xid_meaning(*xid), "XID event");
    }
    match tracker.apply(event, now) {
        Transition::None => false,
        Transition::Unhealthy { device, reason } => {
            tracing::warn!(device = %device, reason = %reason, "device unhealthy");
            true
        }
        Transition::Healthy { device } => {
            tracing::info!(device = %device, "device healthy again");
            true
        }
    }
}
