//! Per-resource plugin state and counters: registered or not, open ListAndWatch streams,
//! registrations, allocations. The one place `/readyz` and the agent metrics read from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// State and counters of one resource's plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginStatus {
    /// The kubelet accepted our last Register call and nothing has invalidated it since.
    pub registered: bool,
    /// ListAndWatch streams open right now.
    pub open_streams: u32,
    /// Successful Register calls since start.
    pub registrations: u64,
    /// Allocate container requests served.
    pub allocations: u64,
    /// Allocate container requests refused.
    pub allocation_errors: u64,
    /// The plugin is running (not yet removed by a config change).
    pub active: bool,
}

impl PluginStatus {
    /// Registered and streaming: the kubelet sees our devices.
    pub fn ready(&self) -> bool {
        self.registered && self.open_streams > 0
    }
}

/// Shared status of every plugin, keyed by resource name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<String, PluginStatus>>>,
}

impl StatusBoard {
    fn update(&self, resource: &str, f: impl FnOnce(&mut PluginStatus)) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(resource.to_string()).or_default());
    }

    pub fn set_active(&self, resource: &str, active: bool) {
        self.update(resource, |s| {
            s.active = active;
            if !active {
                s.registered = false;
            }
        });
    }
    pub fn set_registered(&self, resource: &str, registered: bool) {
        self.update(resource, |s| {
            if registered && !s.registered {
                s.registrations += 1;
            }
            s.registered = registered;
        });
    }
    pub fn stream_opened(&self, resource: &str) {
        self.update(resource, |s| s.open_streams += 1);
    }
    pub fn stream_closed(&self, resource: &str) {
        self.update(resource, |s| {
            s.open_streams = s.open_streams.saturating_sub(1)
        });
    }
    pub fn allocation(&self, resource: &str, ok: bool) {
        self.update(resource, |s| {
            if ok {
                s.allocations += 1
            } else {
                s.allocation_errors += 1
            }
        });
    }

    /// A copy of every plugin's status.
    pub fn snapshot(&self) -> BTreeMap<String, PluginStatus> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
