//! Which events make a device unhealthy, and for how long. Pure: time is passed in.
//!
//! - XIDs in the ignored set (default 13, 31, 43, 45, 68, 109: application faults) are counted
//!   but change nothing.
//! - `DP_DISABLE_HEALTHCHECKS` / `DP_ENABLE_HEALTHCHECKS` behave as in NVIDIA's plugin:
//!   `all` disables every check, `xids` disables XID checks, a list of numbers adds ignored XIDs;
//!   ENABLE takes XIDs back out of the ignored set (`all` empties it).
//! - A GPU-level XID marks the GPU (and so everything advertised on it); an XID the driver scoped
//!   to a MIG instance marks only that instance.
//! - With `recoverAfter > 0`, a device is Healthy again after that long without a new XID.
//!   Lost GPUs recover only when the backend finds them again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{HealthState, Unhealthy};
use crate::config::HealthSettings;
use crate::gpu::HealthEvent;

/// XID 79: the GPU fell off the bus.
pub const XID_FALLEN_OFF_BUS: u64 = 79;

/// The effective health-check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    pub ignored_xids: BTreeSet<u64>,
    /// All checks off: nothing ever becomes unhealthy.
    pub disabled: bool,
    /// XID checks off (ECC and lost GPUs still count).
    pub xids_disabled: bool,
    pub recover_after: Duration,
}

impl HealthPolicy {
    /// Combine the config's `health:` with NVIDIA's environment variables.
    pub fn new(
        settings: &HealthSettings,
        disable_env: Option<&str>,
        enable_env: Option<&str>,
    ) -> Self {
        let mut policy = Self {
            ignored_xids: settings.ignored_xids.clone(),
            disabled: false,
            xids_disabled: false,
            recover_after: settings.recover_after,
        };
        for item in list(disable_env) {
            match item.as_str() {
                "all" => policy.disabled = true,
                "xids" => policy.xids_disabled = true,
                n => match n.parse::<u64>() {
                    Ok(xid) => {
                        policy.ignored_xids.insert(xid);
                    }
                    Err(_) => {
                        tracing::warn!(value = %n, "DP_DISABLE_HEALTHCHECKS: ignoring an entry that is not all, xids or a number")
                    }
                },
            }
        }
        for item in list(enable_env) {
            match item.as_str() {
                "all" => policy.ignored_xids.clear(),
                n => match n.parse::<u64>() {
                    Ok(xid) => {
                        policy.ignored_xids.remove(&xid);
                    }
                    Err(_) => {
                        tracing::warn!(value = %n, "DP_ENABLE_HEALTHCHECKS: ignoring an entry that is not all or a number")
                    }
                },
            }
        }
        policy
    }

    /// Does this XID make a device unhealthy?
    pub fn is_critical(&self, xid: u64) -> bool {
        !self.disabled && !self.xids_disabled && !self.ignored_xids.contains(&xid)
    }
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What an XID number means, for logs.
pub fn xid_meaning(xid: u64) -> &'static str {
    match xid {
        13 => "graphics engine exception (application fault)",
        31 => "GPU memory page fault (application fault)",
        32 => "invalid or corrupted push buffer stream",
        38 => "driver firmware error",
        43 => "GPU stopped processing (application fault)",
        45 => "preemptive cleanup after previous errors",
        48 => "double-bit ECC error",
        61 => "internal micro-controller breakpoint/warning",
        62 => "internal micro-controller halt",
        63 => "ECC page retirement or row remapping event",
        64 => "ECC page retirement or row remapping failure",
        68 => "video decoder exception",
        69 => "graphics engine class error",
        74 => "NVLink error",
        79 => "GPU has fallen off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        109 => "context switch timeout",
        119 => "GSP RPC timeout",
        120 => "GSP error",
        121 => "C2C link error",
        140 => "unrecovered ECC error",
        _ => "see NVIDIA's XID catalog",
    }
}

#[derive(Debug, Clone)]
struct Fault {
    reason: String,
    /// When it last happened; `None` for faults that do not expire (lost GPUs).
    last: Option<Instant>,
}

/// Health of every device, driven by events. Feed it events and the time; read [`Self::state`].
#[derive(Debug, Clone)]
pub struct HealthTracker {
    policy: HealthPolicy,
    gpus: BTreeMap<String, Fault>,
    migs: BTreeMap<String, Fault>,
    /// Every XID delivered, ignored ones included: (device UUID, XID) → count.
    xid_counts: BTreeMap<(String, u64), u64>,
}

/// What applying an event did, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed (ignored XID, already unhealthy, checks disabled).
    None,
    /// The device became unhealthy.
    Unhealthy { device: String, reason: String },
    /// The device is healthy again.
    Healthy { device: String },
}

impl HealthTracker {
    pub fn new(policy: HealthPolicy) -> Self {
        Self {
            policy,
            gpus: BTreeMap::new(),
            migs: BTreeMap::new(),
            xid_counts: BTreeMap::new(),
        }
    }

    /// Start from GPUs that are already lost.
    pub fn with_lost(mut self, lost: impl IntoIterator<Item = String>) -> Self {
        for uuid in lost {
            self.apply(&HealthEvent::Lost { gpu_uuid: uuid }, Instant::now());
        }
        self
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// Replace the policy (config reload). Existing faults stay.
    pub fn set_policy(&mut self, policy: HealthPolicy) {
        self.policy = policy;
    }

    /// XID counts so far, ignored ones included.
    pub fn xid_counts(&self) -> &BTreeMap<(String, u64), u64> {
        &self.xid_counts
    }

    /// Apply one event at `now`.
    pub fn apply(&mut self, event: &HealthEvent, now: Instant) -> Transition {
        match event {
            HealthEvent::Xid {
                gpu_uuid,
                mig_uuid,
                xid,
            } => {
                let device = mig_uuid.as_deref().unwrap_or(gpu_uuid);
                *self
                    .xid_counts
                    .entry((device.to_string(), *xid))
                    .or_default() += 1;
                if *xid == XID_FALLEN_OFF_BUS && !self.policy.disabled {
                    return Self::mark(
                        &mut self.gpus,
                        gpu_uuid,
                        format!("XID {xid} ({})", xid_meaning(*xid)),
                        None,
                    );
                }
                if !self.policy.is_critical(*xid) {
                    return Transition::None;
                }
                let reason = format!("XID {xid} ({})", xid_meaning(*xid));
                let last = Some(now);
                match mig_uuid {
                    Some(mig) => Self::mark(&mut self.migs, mig, reason, last),
                    None => Self::mark(&mut self.gpus, gpu_uuid, reason, last),
                }
            }
            HealthEvent::DoubleBitEcc { gpu_uuid } => {
                if self.policy.disabled {
                    return Transition::None;
                }
                Self::mark(
                    &mut self.gpus,
                    gpu_uuid,
                    "double-bit ECC error".into(),
                    Some(now),
                )
            }
            HealthEvent::Lost { gpu_uuid } => {
                if self.policy.disabled {
                    return Transition::None;
                }
                Self::mark(
                    &mut self.gpus,
                    gpu_uuid,
                    "GPU lost (fell off the bus)".into(),
                    None,
                )
            }
            HealthEvent::Found { gpu_uuid } => {
                let was_lost = self.gpus.get(gpu_uuid).is_some_and(|f| f.last.is_none());
                if was_lost {
                    self.gpus.remove(gpu_uuid);
                    Transition::Healthy {
                        device: gpu_uuid.clone(),
                    }
                } else {
                    Transition::None
                }
            }
        }
    }

    fn mark(
        map: &mut BTreeMap<String, Fault>,
        device: &str,
        reason: String,
        last: Option<Instant>,
    ) -> Transition {
        match map.get_mut(device) {
            Some(fault) => {
                // Still unhealthy: a new XID restarts the recovery clock; a lost GPU stays lost.
                if fault.last.is_some() {
                    fault.last = last;
                    fault.reason = reason;
                }
                Transition::None
            }
            None => {
                map.insert(
                    device.to_string(),
                    Fault {
                        reason: reason.clone(),
                        last,
                    },
                );
                Transition::Unhealthy {
                    device: device.to_string(),
                    reason,
                }
            }
        }
    }

    /// Recover devices whose last XID is older than `recoverAfter`. Returns the recovered ones.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let after = self.policy.recover_after;
        if after.is_zero() {
            return Vec::new();
        }
        let mut recovered = Vec::new();
        for map in [&mut self.gpus, &mut self.migs] {
            map.retain(|device, fault| match fault.last {
                Some(last) if now.saturating_duration_since(last) >= after => {
                    recovered.push(device.clone());
                    false
                }
                _ => true,
            });
        }
        recovered
    }

    /// When the next recovery is due, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        let after = self.policy.recover_after;
        if after.is_zero() {
            return None;
        }
        self.gpus
            .values()
            .chain(self.migs.values())
            .filter_map(|f| f.last)
            .min()
            .map(|last| last + after)
    }

    /// The current health, for the resource builder.
    pub fn state(&self) -> HealthState {
        let convert = |map: &BTreeMap<String, Fault>| {
            map.iter()
                .map(|(k, f)| {
                    (
                        k.clone(),
                        Unhealthy {
                            reason: f.reason.clone(),
                        },
                    )
                })
                .collect()
        };
        HealthState {
            gpus: convert(&self.gpus),
            migs: convert(&self.migs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid(gpu: &str, xid: u64) -> HealthEvent {
        HealthEvent::Xid {
            gpu_uuid: gpu.into(),
            mig_uuid: None,
            xid,
        }
    }

    fn tracker(recover: u64) -> HealthTracker {
        HealthTracker::new(HealthPolicy::new(
            &HealthSettings {
                recover_after: Duration::from_secs(recover),
                ..HealthSettings::default()
            },
            None,
            None,
        ))
    }

    #[test]
    fn ignored_xids_count_but_change_nothing() {
        let mut t = tracker(0);
        let now = Instant::now();
        for x in [13, 31, 43, 45, 68, 109] {
            assert_eq!(t.apply(&xid("GPU-a", x), now), Transition::None);
        }
        assert!(t.state().all_healthy());
        assert_eq!(t.xid_counts()[&("GPU-a".to_string(), 43)], 1);
        assert!(matches!(
            t.apply(&xid("GPU-a", 48), now),
            Transition::Unhealthy { .. }
        ));
        assert!(!t.state().gpu_healthy("GPU-a"));
        assert!(t.state().gpu_healthy("GPU-b"));
    }

    #[test]
    fn mig_scoped_xids_mark_only_the_instance() {
        let mut t = tracker(0);
        let event = HealthEvent::Xid {
            gpu_uuid: "GPU-a".into(),
            mig_uuid: Some("MIG-1".into()),
            xid: 94,
        };
        t.apply(&event, Instant::now());
        let s = t.state();
        assert!(s.gpu_healthy("GPU-a"));
        assert!(!s.mig_healthy("GPU-a", "MIG-1"));
        assert!(s.mig_healthy("GPU-a", "MIG-2"));
    }

    #[test]
    fn recovery_after_quiet_period_and_a_new_xid_restarts_the_clock() {
        let mut t = tracker(30);
        let t0 = Instant::now();
        t.apply(&xid("GPU-a", 48), t0);
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(30)));
        t.apply(&xid("GPU-a", 48), t0 + Duration::from_secs(20));
        assert!(t.expire(t0 + Duration::from_secs(31)).is_empty());
        assert_eq!(t.expire(t0 + Duration::from_secs(50)), ["GPU-a"]);
        assert!(t.state().all_healthy());
        // recoverAfter 0 = never.
        let mut t = tracker(0);
        t.apply(&xid("GPU-a", 48), t0);
        assert!(t.expire(t0 + Duration::from_secs(3600)).is_empty());
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn lost_gpus_do_not_time_out_but_come_back_when_found() {
        let mut t = tracker(1);
        let t0 = Instant::now();
        t.apply(
            &HealthEvent::Lost {
                gpu_uuid: "GPU-a".into(),
            },
            t0,
        );
        assert!(t.expire(t0 + Duration::from_secs(10)).is_empty());
        assert!(!t.state().gpu_healthy("GPU-a"));
        assert!(matches!(
            t.apply(
                &HealthEvent::Found {
                    gpu_uuid: "GPU-a".into()
                },
                t0
            ),
            Transition::Healthy { .. }
        ));
        assert!(t.state().all_healthy());
        // XID 79 counts as lost even though it is an XID.
        t.apply(&xid("GPU-b", 79), t0);
        assert!(t.expire(t0 + Duration::from_secs(10)).is_empty());
        assert!(!t.state().gpu_healthy("GPU-b"));
    }

    #[test]
    fn nvidia_environment_variables() {
        let base = HealthSettings::default();
        let p = HealthPolicy::new(&base, Some("all"), None);
        assert!(p.disabled && !p.is_critical(48));
        let p = HealthPolicy::new(&base, Some("xids"), None);
        assert!(!p.is_critical(48));
        let p = HealthPolicy::new(&base, Some("48, 74"), None);
        assert!(!p.is_critical(48) && !p.is_critical(74) && p.is_critical(79));
        let p = HealthPolicy::new(&base, None, Some("43"));
        assert!(p.is_critical(43) && !p.is_critical(13));
        let p = HealthPolicy::new(&base, None, Some("all"));
        assert!(p.is_critical(13));
        let mut t = HealthTracker::new(HealthPolicy::new(&base, Some("all"), None));
        t.apply(
            &HealthEvent::Lost {
                gpu_uuid: "GPU-a".into(),
            },
            Instant::now(),
        );
        assert!(t.state().all_healthy());
    }
}
