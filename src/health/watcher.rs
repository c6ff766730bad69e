//! The health task: backend events in, [`HealthState`] out.
//!
//! Events arrive through the coalescing mailbox ([`super::queue`]): the backend never blocks and
//! never loses a device, and the task takes everything pending at once, so an XID storm becomes
//! one new state rather than thousands, and memory stays flat. Nothing here sleeps except the
//! wait for the next `recoverAfter` expiry; a new state is published as soon as a batch is
//! applied.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use super::policy::{
    xid_meaning, Cause, HealthPolicy, HealthTracker, Recovery, Transition, XidTally,
};
use super::queue::{Batch, EventReceiver};
use super::HealthState;
use crate::gpu::HealthEvent;

/// Every XID delivered, per device and XID, critical ones and the last one: what the XID
/// metrics report.
#[derive(Debug, Clone, Default)]
pub struct XidCounts(Arc<Mutex<XidTally>>);

impl XidCounts {
    /// A copy of the counts.
    pub fn snapshot(&self) -> XidTally {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store(&self, counts: &XidTally) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard.clone_from(counts);
    }
}

/// Run until every event sender is gone.
pub async fn run(
    mut tracker: HealthTracker,
    mut events: EventReceiver,
    mut policies: watch::Receiver<HealthPolicy>,
    state: watch::Sender<Arc<HealthState>>,
    counts: XidCounts,
) {
    log_policy(tracker.policy());
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
        let changed = tokio::select! {
            batch = events.recv() => {
                let Some(batch) = batch else { break };
                let changed = apply_batch(&mut tracker, &batch, Instant::now());
                counts.store(tracker.xids());
                changed
            }
            _ = sleep => {
                let recovered = tracker.expire(Instant::now());
                recovered.iter().for_each(log_transition);
                !recovered.is_empty()
            }
            policy = policies.changed(), if policies_open => {
                if policy.is_err() {
                    // The config side is gone; keep the current policy.
                    policies_open = false;
                } else {
                    let policy = policies.borrow_and_update().clone();
                    if policy != *tracker.policy() {
                        log_policy(&policy);
                        tracker.set_policy(policy);
                    }
                }
                false
            }
        };
        if changed {
            state.send_replace(Arc::new(tracker.state()));
        }
    }
}

/// Apply everything in `batch` at `now`. True when some device changed health.
pub fn apply_batch(tracker: &mut HealthTracker, batch: &Batch, now: Instant) -> bool {
    if batch.overflow > 0 {
        tracing::warn!(
            dropped = batch.overflow,
            "too many distinct health events pending; some were dropped"
        );
    }
    let mut changed = false;
    for (event, times) in &batch.events {
        if let HealthEvent::Xid {
            gpu_uuid,
            mig_uuid,
            xid,
        } = event
        {
            // tests/health.rs waits for this event (message "XID", field `xid`).
            tracing::debug!(
                gpu = %gpu_uuid,
                mig = mig_uuid.as_deref().unwrap_or(""),
                xid,
                meaning = xid_meaning(*xid),
                count = times,
                critical = tracker.policy().is_critical(*xid),
                "XID"
            );
        }
        let transition = tracker.apply_repeated(event, *times, now);
        log_transition(&transition);
        changed |= transition != Transition::None;
    }
    changed
}

fn log_transition(transition: &Transition) {
    match transition {
        Transition::None => {}
        Transition::Unhealthy {
            device,
            scope,
            cause: Cause::Xid(xid),
        } => tracing::warn!(
            device = %device,
            scope = scope.as_str(),
            xid,
            meaning = xid_meaning(*xid),
            "device unhealthy"
        ),
        Transition::Unhealthy {
            device,
            scope,
            cause,
        } => tracing::warn!(
            device = %device,
            scope = scope.as_str(),
            reason = %cause.reason(),
            "device unhealthy"
        ),
        Transition::Healthy {
            device,
            scope,
            recovery,
        } => tracing::info!(
            device = %device,
            scope = scope.as_str(),
            recovery = match recovery {
                Recovery::Quiet => "recoverAfter passed without a new fault",
                Recovery::Found => "the GPU answers again",
            },
            "device healthy"
        ),
    }
}

fn log_policy(policy: &HealthPolicy) {
    if !policy.checks_enabled() {
        tracing::warn!(
            "health checks disabled (DP_DISABLE_HEALTHCHECKS): no XID, ECC error or lost GPU makes a device unhealthy"
        );
        return;
    }
    tracing::info!(
        ignored_xids = ?policy.ignored_xids,
        all_xids_disabled = policy.all_xids_disabled,
        all_xids_enabled = policy.all_xids_enabled,
        enabled_xids = ?policy.enabled_xids,
        recover_after = ?policy.recover_after,
        "health policy"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::HealthSettings;
    use crate::health::queue;

    fn xid(gpu: &str, xid: u64) -> HealthEvent {
        HealthEvent::Xid {
            gpu_uuid: gpu.into(),
            mig_uuid: None,
            xid,
        }
    }

    #[tokio::test]
    async fn publishes_faults_recoveries_and_counts() {
        let settings = HealthSettings {
            recover_after: Duration::from_millis(50),
            ..HealthSettings::default()
        };
        let policy = HealthPolicy::new(&settings, None, None);
        let (tx, rx) = queue::channel();
        let (_policy_tx, policy_rx) = watch::channel(policy.clone());
        let (state_tx, mut state_rx) = watch::channel(Arc::new(HealthState::default()));
        let counts = XidCounts::default();
        let task = tokio::spawn(run(
            HealthTracker::new(policy),
            rx,
            policy_rx,
            state_tx,
            counts.clone(),
        ));
        for _ in 0..1000 {
            tx.send(xid("GPU-a", 13)).unwrap();
        }
        tx.send(xid("GPU-b", 48)).unwrap();
        let wait = Duration::from_secs(10);
        tokio::time::timeout(wait, state_rx.wait_for(|s| !s.gpu_healthy("GPU-b")))
            .await
            .unwrap()
            .unwrap();
        assert!(state_rx.borrow().gpu_healthy("GPU-a"));
        // Recovered after recoverAfter.
        tokio::time::timeout(wait, state_rx.wait_for(|s| s.all_healthy()))
            .await
            .unwrap()
            .unwrap();
        let tally = counts.snapshot();
        assert_eq!(tally.by_xid[&("GPU-a".to_string(), 13)], 1000);
        assert_eq!(tally.total("GPU-a"), 1000);
        assert_eq!(
            tally.critical.get("GPU-a"),
            None,
            "13 is ignored by default"
        );
        assert_eq!(tally.critical["GPU-b"], 1);
        assert_eq!(tally.last["GPU-b"].xid, 48);
        drop(tx);
        tokio::time::timeout(wait, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_new_policy_applies_to_later_events() {
        let policy = HealthPolicy::new(&HealthSettings::default(), None, None);
        let (tx, rx) = queue::channel();
        let (policy_tx, policy_rx) = watch::channel(policy.clone());
        let (state_tx, mut state_rx) = watch::channel(Arc::new(HealthState::default()));
        tokio::spawn(run(
            HealthTracker::new(policy),
            rx,
            policy_rx,
            state_tx,
            XidCounts::default(),
        ));
        policy_tx.send_replace(HealthPolicy::new(
            &HealthSettings::default(),
            None,
            Some("13"),
        ));
        // Give the task a chance to take the policy before the event.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(xid("GPU-a", 13)).unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            state_rx.wait_for(|s| !s.gpu_healthy("GPU-a")),
        )
        .await
        .unwrap()
        .unwrap();
    }
}
