//! Which events make a device unhealthy, and for how long. Pure: time is passed in.
//!
//! - XIDs in the ignored set (default 13, 31, 43, 45, 68, 109: application faults) are counted
//!   but change nothing.
//! - `DP_DISABLE_HEALTHCHECKS` / `DP_ENABLE_HEALTHCHECKS` behave as in NVIDIA's plugin
//!   (`internal/rm/health.go`): each is a comma-separated, case-insensitive list; `all` and `xids`
//!   mean every XID. DISABLE adds XIDs to the ignored set (`all`/`xids`: health checks off);
//!   ENABLE takes XIDs back out of it and wins over DISABLE and the defaults (`all`/`xids`:
//!   every XID is critical). With DISABLE=all, XIDs named in ENABLE are still checked (NVIDIA's
//!   documented intent). Malformed entries are logged and skipped, as NVIDIA does.
//! - A GPU-level XID marks the GPU (and so everything advertised on it); an XID the driver scoped
//!   to a MIG instance marks only that instance.
//! - XID 79 (fallen off the bus) and a lost GPU mark the GPU lost: lost GPUs never time out and
//!   recover only when the backend finds them again.
//! - With `recoverAfter > 0`, a device is Healthy again after that long without a new XID.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{HealthState, Unhealthy};
use crate::config::HealthSettings;
use crate::gpu::HealthEvent;

/// XID 79: the GPU fell off the bus.
pub const XID_FALLEN_OFF_BUS: u64 = 79;

/// NVIDIA's variable that turns XIDs (or every check) off.
pub const ENV_DISABLE: &str = "DP_DISABLE_HEALTHCHECKS";
/// NVIDIA's variable that turns XIDs back on, winning over the ignored set and the DISABLE list.
pub const ENV_ENABLE: &str = "DP_ENABLE_HEALTHCHECKS";

/// The effective health-check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// XIDs that change nothing: the config's `ignoredXids` plus the DISABLE list, minus the
    /// ENABLE list.
    pub ignored_xids: BTreeSet<u64>,
    /// DISABLE said `all` or `xids`.
    pub all_xids_disabled: bool,
    /// ENABLE said `all` or `xids`: every XID is critical.
    pub all_xids_enabled: bool,
    /// XIDs ENABLE names; critical even when DISABLE said `all`.
    pub enabled_xids: BTreeSet<u64>,
    /// Healthy again after this long without a new fault; zero = never.
    pub recover_after: Duration,
}

/// One parsed environment variable.
#[derive(Debug, Default)]
struct EnvXids {
    all: bool,
    xids: BTreeSet<u64>,
}

fn parse_env(name: &str, value: Option<&str>) -> EnvXids {
    let mut out = EnvXids::default();
    for item in value.unwrap_or("").split(',') {
        let item = item.trim().to_ascii_lowercase();
        match item.as_str() {
            "" => {}
            "all" | "xids" => out.all = true,
            n => match n.parse::<u64>() {
                Ok(xid) => {
                    out.xids.insert(xid);
                }
                Err(_) => tracing::warn!(
                    variable = name,
                    value = %n,
                    "ignoring a malformed entry (expected all, xids or an XID number)"
                ),
            },
        }
    }
    out
}

/// NVIDIA's health-check environment variables, read once at start: the policy is rebuilt from
/// them and the config's `health:` on every config reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthEnv {
    /// `DP_DISABLE_HEALTHCHECKS`.
    pub disable: Option<String>,
    /// `DP_ENABLE_HEALTHCHECKS`.
    pub enable: Option<String>,
}

impl HealthEnv {
    /// The variables of this process.
    pub fn from_process() -> Self {
        Self {
            disable: std::env::var(ENV_DISABLE).ok(),
            enable: std::env::var(ENV_ENABLE).ok(),
        }
    }

    /// The policy for the config's `health:` section under these variables.
    pub fn policy(&self, settings: &HealthSettings) -> HealthPolicy {
        HealthPolicy::new(settings, self.disable.as_deref(), self.enable.as_deref())
    }
}

impl HealthPolicy {
    /// Combine the config's `health:` with NVIDIA's environment variables (their values, `None`
    /// when unset).
    pub fn new(
        settings: &HealthSettings,
        disable_env: Option<&str>,
        enable_env: Option<&str>,
    ) -> Self {
        let disable = parse_env(ENV_DISABLE, disable_env);
        let enable = parse_env(ENV_ENABLE, enable_env);
        let mut ignored_xids = settings.ignored_xids.clone();
        ignored_xids.extend(&disable.xids);
        for xid in &enable.xids {
            ignored_xids.remove(xid);
        }
        if enable.all {
            ignored_xids.clear();
        }
        Self {
            ignored_xids,
            all_xids_disabled: disable.all,
            all_xids_enabled: enable.all,
            enabled_xids: enable.xids,
            recover_after: settings.recover_after,
        }
    }

    /// Health checks run at all. Off only with DISABLE=all (or xids) and nothing enabled: then
    /// no XID, ECC error or lost GPU makes a device unhealthy, as in NVIDIA's plugin.
    pub fn checks_enabled(&self) -> bool {
        !self.all_xids_disabled || self.all_xids_enabled || !self.enabled_xids.is_empty()
    }

    /// Does this XID make a device unhealthy?
    pub fn is_critical(&self, xid: u64) -> bool {
        if self.all_xids_enabled || self.enabled_xids.contains(&xid) {
            return true;
        }
        !self.all_xids_disabled && !self.ignored_xids.contains(&xid)
    }
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

/// Why a device is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A critical XID.
    Xid(u64),
    /// A double-bit (uncorrectable) ECC error event.
    DoubleBitEcc,
    /// The GPU stopped answering.
    Lost,
}

impl Cause {
    /// Human-readable reason, e.g. `XID 79 (GPU has fallen off the bus)`.
    pub fn reason(self) -> String {
        match self {
            Cause::Xid(xid) => format!("XID {xid} ({})", xid_meaning(xid)),
            Cause::DoubleBitEcc => "double-bit ECC error".into(),
            Cause::Lost => "GPU lost (fell off the bus)".into(),
        }
    }
}

/// Whether a device is a physical GPU or a MIG instance (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Gpu,
    Mig,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Gpu => "gpu",
            Scope::Mig => "mig",
        }
    }
}

/// Why a device is healthy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// `recoverAfter` passed without a new fault.
    Quiet,
    /// A lost GPU answers again.
    Found,
}

#[derive(Debug, Clone)]
struct Fault {
    cause: Cause,
    /// When it last happened; `None` for faults that do not expire (lost GPUs).
    last: Option<Instant>,
}

/// The last XID delivered for a device, and when, as a delivery number (larger = later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastXid {
    pub xid: u64,
    pub sequence: u64,
}

/// Every XID delivered, per device (the GPU, or the MIG device the driver scoped it to): what
/// `/metrics` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XidTally {
    /// (device UUID, XID) → times delivered, ignored XIDs included.
    pub by_xid: BTreeMap<(String, u64), u64>,
    /// Device UUID → XIDs delivered that mark a device unhealthy under the policy in force
    /// when they came (XID 79 always, while health checks are on).
    pub critical: BTreeMap<String, u64>,
    /// Device UUID → the last XID delivered.
    pub last: BTreeMap<String, LastXid>,
    /// Deliveries so far (the sequence of the next one).
    pub deliveries: u64,
}

impl XidTally {
    /// Count `times` deliveries of `xid` on `device`; `critical` when they mark a device
    /// unhealthy.
    fn record(&mut self, device: &str, xid: u64, times: u64, critical: bool) {
        let count = self.by_xid.entry((device.to_string(), xid)).or_default();
        *count = count.saturating_add(times);
        if critical {
            let count = self.critical.entry(device.to_string()).or_default();
            *count = count.saturating_add(times);
        }
        self.deliveries += 1;
        self.last.insert(
            device.to_string(),
            LastXid {
                xid,
                sequence: self.deliveries,
            },
        );
    }

    /// XIDs delivered on `device`, every kind.
    pub fn total(&self, device: &str) -> u64 {
        self.by_xid
            .range((device.to_string(), 0)..=(device.to_string(), u64::MAX))
            .map(|(_, n)| n)
            .fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// Same devices and XID kinds, and the same last XID per device: the labels `/metrics`
    /// builds from a tally are the same (the counts may differ).
    pub fn same_labels(&self, other: &XidTally) -> bool {
        self.by_xid.keys().eq(other.by_xid.keys())
            && self
                .last
                .iter()
                .map(|(d, l)| (d, l.xid))
                .eq(other.last.iter().map(|(d, l)| (d, l.xid)))
    }
}

/// Health of every device, driven by events. Feed it events and the time; read [`Self::state`].
#[derive(Debug, Clone)]
pub struct HealthTracker {
    policy: HealthPolicy,
    gpus: BTreeMap<String, Fault>,
    migs: BTreeMap<String, Fault>,
    /// Every XID delivered, ignored ones included.
    xids: XidTally,
}

/// What applying an event did, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed (ignored XID, already unhealthy, checks disabled).
    None,
    /// The device became unhealthy.
    Unhealthy {
        device: String,
        scope: Scope,
        cause: Cause,
    },
    /// The device is healthy again.
    Healthy {
        device: String,
        scope: Scope,
        recovery: Recovery,
    },
}

impl HealthTracker {
    pub fn new(policy: HealthPolicy) -> Self {
        Self {
            policy,
            gpus: BTreeMap::new(),
            migs: BTreeMap::new(),
            xids: XidTally::default(),
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
        &self.xids.by_xid
    }

    /// Everything counted about XIDs so far.
    pub fn xids(&self) -> &XidTally {
        &self.xids
    }

    /// Apply one event at `now`.
    pub fn apply(&mut self, event: &HealthEvent, now: Instant) -> Transition {
        self.apply_repeated(event, 1, now)
    }

    /// Apply an event that happened `times` times (coalesced) by `now`. XIDs are counted
    /// `times`; the health effect is that of one occurrence at `now`.
    pub fn apply_repeated(&mut self, event: &HealthEvent, times: u64, now: Instant) -> Transition {
        let checks = self.policy.checks_enabled();
        match event {
            HealthEvent::Xid {
                gpu_uuid,
                mig_uuid,
                xid,
            } => {
                let device = mig_uuid.as_deref().unwrap_or(gpu_uuid);
                let critical =
                    checks && (*xid == XID_FALLEN_OFF_BUS || self.policy.is_critical(*xid));
                self.xids.record(device, *xid, times, critical);
                if !checks {
                    return Transition::None;
                }
                if *xid == XID_FALLEN_OFF_BUS {
                    // The whole GPU is gone, whichever instance the driver named.
                    return Self::mark(
                        &mut self.gpus,
                        gpu_uuid,
                        Scope::Gpu,
                        Cause::Xid(*xid),
                        None,
                    );
                }
                if !self.policy.is_critical(*xid) {
                    return Transition::None;
                }
                let cause = Cause::Xid(*xid);
                match mig_uuid {
                    Some(mig) => Self::mark(&mut self.migs, mig, Scope::Mig, cause, Some(now)),
                    None => Self::mark(&mut self.gpus, gpu_uuid, Scope::Gpu, cause, Some(now)),
                }
            }
            HealthEvent::DoubleBitEcc { gpu_uuid } if checks => Self::mark(
                &mut self.gpus,
                gpu_uuid,
                Scope::Gpu,
                Cause::DoubleBitEcc,
                Some(now),
            ),
            HealthEvent::Lost { gpu_uuid } if checks => {
                Self::mark(&mut self.gpus, gpu_uuid, Scope::Gpu, Cause::Lost, None)
            }
            HealthEvent::DoubleBitEcc { .. } | HealthEvent::Lost { .. } => Transition::None,
            HealthEvent::Found { gpu_uuid } => {
                let was_lost = self.gpus.get(gpu_uuid).is_some_and(|f| f.last.is_none());
                if was_lost {
                    self.gpus.remove(gpu_uuid);
                    Transition::Healthy {
                        device: gpu_uuid.clone(),
                        scope: Scope::Gpu,
                        recovery: Recovery::Found,
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
        scope: Scope,
        cause: Cause,
        last: Option<Instant>,
    ) -> Transition {
        match map.get_mut(device) {
            Some(fault) => {
                // Still unhealthy: a new fault restarts the recovery clock (a loss stops it);
                // a lost GPU stays lost whatever else it reports.
                if fault.last.is_some() {
                    fault.last = last;
                    fault.cause = cause;
                }
                Transition::None
            }
            None => {
                map.insert(device.to_string(), Fault { cause, last });
                Transition::Unhealthy {
                    device: device.to_string(),
                    scope,
                    cause,
                }
            }
        }
    }

    /// Recover devices whose last fault is older than `recoverAfter`.
    pub fn expire(&mut self, now: Instant) -> Vec<Transition> {
        let after = self.policy.recover_after;
        if after.is_zero() {
            return Vec::new();
        }
        let mut recovered = Vec::new();
        for (map, scope) in [(&mut self.gpus, Scope::Gpu), (&mut self.migs, Scope::Mig)] {
            map.retain(|device, fault| match fault.last {
                Some(last) if now.saturating_duration_since(last) >= after => {
                    recovered.push(Transition::Healthy {
                        device: device.clone(),
                        scope,
                        recovery: Recovery::Quiet,
                    });
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
                            reason: f.cause.reason(),
                        },
                    )
                })
                .collect()
        };
        HealthState {
            gpus: convert(&self.gpus),
            migs: convert(&self.migs),
            // Resource-wide states (MPS readiness) are merged in by the assembler.
            resources: BTreeMap::new(),
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

    fn lost(gpu: &str) -> HealthEvent {
        HealthEvent::Lost {
            gpu_uuid: gpu.into(),
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

    fn policy(disable: &str, enable: &str) -> HealthPolicy {
        HealthPolicy::new(&HealthSettings::default(), Some(disable), Some(enable))
    }

    /// Which of `xids` the policy treats as critical.
    fn critical(p: &HealthPolicy, xids: &[u64]) -> Vec<u64> {
        xids.iter().copied().filter(|&x| p.is_critical(x)).collect()
    }

    const PROBE: [u64; 9] = [11, 13, 31, 43, 45, 48, 68, 109, 555];

    #[test]
    fn ignored_xids_count_but_change_nothing() {
        let mut t = tracker(0);
        let now = Instant::now();
        for x in [13, 31, 43, 45, 68, 109] {
            assert_eq!(t.apply(&xid("GPU-a", x), now), Transition::None);
        }
        assert!(t.state().all_healthy());
        assert_eq!(t.xid_counts()[&("GPU-a".to_string(), 43)], 1);
        assert_eq!(
            t.apply(&xid("GPU-a", 48), now),
            Transition::Unhealthy {
                device: "GPU-a".into(),
                scope: Scope::Gpu,
                cause: Cause::Xid(48)
            }
        );
        assert!(!t.state().gpu_healthy("GPU-a"));
        assert!(t.state().gpu_healthy("GPU-b"));
        assert_eq!(
            t.state().gpus["GPU-a"].reason,
            "XID 48 (double-bit ECC error)"
        );
    }

    #[test]
    fn repeated_events_count_every_occurrence_once_in_effect() {
        let mut t = tracker(0);
        let now = Instant::now();
        t.apply_repeated(&xid("GPU-a", 13), 5000, now);
        assert!(t.state().all_healthy());
        assert_eq!(t.xid_counts()[&("GPU-a".to_string(), 13)], 5000);
        assert!(matches!(
            t.apply_repeated(&xid("GPU-a", 48), 3, now),
            Transition::Unhealthy { .. }
        ));
        assert_eq!(t.xid_counts()[&("GPU-a".to_string(), 48)], 3);
    }

    #[test]
    fn the_tally_counts_critical_xids_and_remembers_the_last_per_device() {
        let mut t = tracker(0);
        let now = Instant::now();
        t.apply_repeated(&xid("GPU-a", 13), 4, now);
        t.apply(&xid("GPU-a", 48), now);
        // Already unhealthy: a critical XID still counts.
        t.apply(&xid("GPU-a", 48), now);
        let on_mig = HealthEvent::Xid {
            gpu_uuid: "GPU-b".into(),
            mig_uuid: Some("MIG-1".into()),
            xid: 79,
        };
        t.apply(&on_mig, now);
        t.apply(&xid("GPU-a", 43), now);
        let x = t.xids();
        assert_eq!(x.total("GPU-a"), 7);
        assert_eq!(x.critical["GPU-a"], 2);
        assert_eq!(x.last["GPU-a"].xid, 43);
        assert_eq!(x.total("MIG-1"), 1);
        assert_eq!(x.critical["MIG-1"], 1, "XID 79 is always critical");
        assert!(x.last["MIG-1"].sequence < x.last["GPU-a"].sequence);
        assert_eq!(x.total("GPU-b"), 0);

        // Health checks off: counted, never critical.
        let mut off = HealthTracker::new(policy("all", ""));
        off.apply(&xid("GPU-a", 79), now);
        assert_eq!(off.xids().total("GPU-a"), 1);
        assert!(off.xids().critical.is_empty());

        // Labels follow the kinds and the last XID, not the counts.
        let before = t.xids().clone();
        t.apply(&xid("GPU-a", 43), now);
        assert!(before.same_labels(t.xids()));
        t.apply(&xid("GPU-a", 13), now);
        assert!(!before.same_labels(t.xids()), "the last XID changed");
    }

    #[test]
    fn mig_scoped_xids_mark_only_the_instance() {
        let mut t = tracker(0);
        let event = HealthEvent::Xid {
            gpu_uuid: "GPU-a".into(),
            mig_uuid: Some("MIG-1".into()),
            xid: 94,
        };
        assert!(matches!(
            t.apply(&event, Instant::now()),
            Transition::Unhealthy {
                scope: Scope::Mig,
                ..
            }
        ));
        let s = t.state();
        assert!(s.gpu_healthy("GPU-a"));
        assert!(!s.mig_healthy("GPU-a", "MIG-1"));
        assert!(s.mig_healthy("GPU-a", "MIG-2"));
        assert_eq!(t.xid_counts()[&("MIG-1".to_string(), 94)], 1);
    }

    #[test]
    fn xid_79_on_a_mig_instance_loses_the_whole_gpu() {
        let mut t = tracker(1);
        let t0 = Instant::now();
        let event = HealthEvent::Xid {
            gpu_uuid: "GPU-a".into(),
            mig_uuid: Some("MIG-1".into()),
            xid: 79,
        };
        t.apply(&event, t0);
        assert!(!t.state().gpu_healthy("GPU-a"));
        assert!(t.expire(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn recovery_after_quiet_period_and_a_new_xid_restarts_the_clock() {
        let mut t = tracker(30);
        let t0 = Instant::now();
        t.apply(&xid("GPU-a", 48), t0);
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(30)));
        t.apply(&xid("GPU-a", 48), t0 + Duration::from_secs(20));
        assert!(t.expire(t0 + Duration::from_secs(31)).is_empty());
        assert_eq!(
            t.expire(t0 + Duration::from_secs(50)),
            [Transition::Healthy {
                device: "GPU-a".into(),
                scope: Scope::Gpu,
                recovery: Recovery::Quiet
            }]
        );
        assert!(t.state().all_healthy());
        // An ignored XID does not restart the clock.
        t.apply(&xid("GPU-a", 48), t0);
        t.apply(&xid("GPU-a", 13), t0 + Duration::from_secs(29));
        assert_eq!(t.expire(t0 + Duration::from_secs(30)).len(), 1);
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
        t.apply(&xid("GPU-a", 48), t0);
        // Lost wins over an XID that would expire.
        t.apply(&lost("GPU-a"), t0);
        assert!(t.expire(t0 + Duration::from_secs(10)).is_empty());
        assert!(!t.state().gpu_healthy("GPU-a"));
        assert_eq!(
            t.state().gpus["GPU-a"].reason,
            "GPU lost (fell off the bus)"
        );
        assert!(matches!(
            t.apply(
                &HealthEvent::Found {
                    gpu_uuid: "GPU-a".into()
                },
                t0
            ),
            Transition::Healthy {
                recovery: Recovery::Found,
                ..
            }
        ));
        assert!(t.state().all_healthy());
        // Found on a GPU that only had an XID does not clear it.
        t.apply(&xid("GPU-c", 48), t0);
        let found = HealthEvent::Found {
            gpu_uuid: "GPU-c".into(),
        };
        assert_eq!(t.apply(&found, t0), Transition::None);
        assert!(!t.state().gpu_healthy("GPU-c"));
        // XID 79 counts as lost even though it is an XID.
        t.apply(&xid("GPU-b", 79), t0);
        assert!(t.expire(t0 + Duration::from_secs(10)).len() == 1); // GPU-c's XID expired
        assert!(!t.state().gpu_healthy("GPU-b"));
    }

    #[test]
    fn nvidia_defaults_without_environment() {
        let p = HealthPolicy::new(&HealthSettings::default(), None, None);
        assert!(p.checks_enabled());
        assert_eq!(critical(&p, &PROBE), [11, 48, 555]);
        // Empty values and stray commas are nothing.
        assert_eq!(policy("", ","), p);
    }

    #[test]
    fn disable_all_or_xids_turns_every_check_off() {
        for value in ["all", "xids", "XIDS", " all ", "48,all"] {
            let p = policy(value, "");
            assert!(!p.checks_enabled(), "{value}");
            assert!(critical(&p, &PROBE).is_empty(), "{value}");
            let mut t = HealthTracker::new(p);
            let now = Instant::now();
            t.apply(&lost("GPU-a"), now);
            t.apply(&xid("GPU-a", 79), now);
            t.apply(
                &HealthEvent::DoubleBitEcc {
                    gpu_uuid: "GPU-a".into(),
                },
                now,
            );
            assert!(t.state().all_healthy(), "{value}");
            // Still counted (gpu_xid_errors_total counts every XID delivered).
            assert_eq!(t.xid_counts()[&("GPU-a".to_string(), 79)], 1);
        }
    }

    #[test]
    fn disable_list_adds_to_the_defaults_and_skips_malformed_entries() {
        let p = policy("48, 74,not-a-number,-5", "");
        assert!(p.checks_enabled());
        assert_eq!(critical(&p, &PROBE), [11, 555]);
        assert!(!p.is_critical(74) && p.is_critical(79));
    }

    #[test]
    fn enable_wins_over_defaults_and_disable() {
        // A default-ignored XID enabled.
        assert_eq!(critical(&policy("", "31"), &PROBE), [11, 31, 48, 555]);
        // Disabled and enabled: enabled wins.
        assert_eq!(critical(&policy("11", "11"), &PROBE), [11, 48, 555]);
        // Enable all: every XID, even the default application errors.
        for value in ["all", "xids"] {
            let p = policy("", value);
            assert_eq!(critical(&p, &PROBE), PROBE, "{value}");
            assert!(p.ignored_xids.is_empty());
        }
        // Enable all also overrides disable all.
        let p = policy("all", "all");
        assert!(p.checks_enabled());
        assert_eq!(critical(&p, &PROBE), PROBE);
        // Disable all but enable some: only those.
        let p = policy("all", "48,13");
        assert!(p.checks_enabled());
        assert_eq!(critical(&p, &PROBE), [13, 48]);
    }

    #[test]
    fn config_ignored_xids_replace_the_defaults_and_env_applies_on_top() {
        let settings = HealthSettings {
            ignored_xids: [48].into_iter().collect(),
            ..HealthSettings::default()
        };
        let p = HealthPolicy::new(&settings, Some("11"), None);
        assert_eq!(critical(&p, &PROBE), [13, 31, 43, 45, 68, 109, 555]);
        let p = HealthPolicy::new(&settings, None, Some("48"));
        assert!(p.is_critical(48));
    }
}
