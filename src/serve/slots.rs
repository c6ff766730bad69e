//! Connection slots: at most `max` connections are open at once, so memory is bounded by the cap
//! whatever clients do.
//!
//! At the cap a newcomer does not wait behind the connections holding the slots (an attacker's
//! idle or half-open ones would starve a scraper for as long as they last): the least recently
//! active connection with no request in progress is closed to make room. Only when every slot
//! has a request in progress does the newcomer wait, and those end within the request bounds.
//!
//! A connection is not evicted within its first [`EVICTION_GRACE`] of idleness: a client that
//! connects and sends its request at once (a scrape) always gets that long for the request head
//! to be read, however fast others connect. Under a connection flood this caps accepts at
//! `max / grace` per second; the rest wait in the kernel's backlog, not in our memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

/// How long a connection that just arrived (or just finished a request) is safe from eviction.
pub const EVICTION_GRACE: Duration = Duration::from_millis(20);

/// How often at most the "connection cap reached" warning is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The slots of one server.
pub struct Slots {
    max: usize,
    grace: Duration,
    what: &'static str,
    state: Mutex<State>,
    /// A slot was released or its connection went idle: a waiting newcomer may fit now.
    changed: Notify,
    /// Connections closed to make room, since start.
    evicted: AtomicU64,
}

struct State {
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// The most connections open at once since [`Slots::open_and_take_peak`] last looked.
    peak: usize,
    last_warning: Option<Instant>,
}

struct Entry {
    /// Requests in progress on the connection (0 or 1 with HTTP/1).
    busy: usize,
    /// Admission, or the end of the last request.
    last_active: Instant,
    /// Dropped to evict: the connection's receiver then completes.
    _evict: oneshot::Sender<()>,
}

/// An admitted connection's slot; released on drop.
pub struct Slot {
    handle: SlotHandle,
    /// Completes when the connection was closed to make room.
    pub evicted: oneshot::Receiver<()>,
}

/// A reference to a slot, for marking requests in progress.
#[derive(Clone)]
pub struct SlotHandle {
    slots: Arc<Slots>,
    id: u64,
}

/// A request in progress; the connection is idle again when every one is dropped.
pub struct Busy(SlotHandle);

impl Slots {
    /// `what` names the server in logs; idle connections are evictable `grace` after their last
    /// activity.
    pub fn new(max: usize, grace: Duration, what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            grace,
            what,
            state: Mutex::new(State {
                next_id: 0,
                open: HashMap::new(),
                peak: 0,
                last_warning: None,
            }),
            changed: Notify::new(),
            evicted: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now, and the most open at once since the last call.
    pub fn open_and_take_peak(&self) -> (usize, usize) {
        let mut state = self.lock();
        let open = state.open.len();
        (open, std::mem::replace(&mut state.peak, open))
    }

    /// Connections closed to make room, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The least recently active idle connection and when it was last active.
    fn least_recently_active(state: &State) -> Option<(u64, Instant)> {
        state
            .open
            .iter()
            .filter(|(_, entry)| entry.busy == 0)
            .min_by_key(|(_, entry)| entry.last_active)
            .map(|(id, entry)| (*id, entry.last_active))
    }

    /// A slot for a new connection: a free one, or one taken from the least recently active
    /// idle connection past its grace (which is closed); None when there is neither.
    pub fn try_admit(self: &Arc<Self>) -> Option<Slot> {
        let mut state = self.lock();
        if state.open.len() >= self.max {
            let (victim, last_active) = Self::least_recently_active(&state)?;
            if last_active.elapsed() < self.grace {
                return None;
            }
            state.open.remove(&victim);
            let total = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            let now = Instant::now();
            if state
                .last_warning
                .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
            {
                state.last_warning = Some(now);
                tracing::warn!(
                    server = self.what,
                    max_connections = self.max,
                    evicted_total = total,
                    "connection cap reached: closing the least recently active idle connections"
                );
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        state.open.insert(
            id,
            Entry {
                busy: 0,
                last_active: Instant::now(),
                _evict: evict,
            },
        );
        state.peak = state.peak.max(state.open.len());
        Some(Slot {
            handle: SlotHandle {
                slots: self.clone(),
                id,
            },
            evicted,
        })
    }

    /// Wait until no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// [`Slots::try_admit`], waiting while every slot has a request in progress or is in its
    /// grace.
    pub async fn admit(self: &Arc<Self>) -> Slot {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(slot) = self.try_admit() {
                return slot;
            }
            let evictable_at = Self::least_recently_active(&self.lock())
                .map(|(_, last_active)| last_active + self.grace);
            match evictable_at {
                Some(at) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

impl Slot {
    pub fn handle(&self) -> SlotHandle {
        self.handle.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.handle.slots;
        slots.lock().open.remove(&self.handle.id);
        slots.changed.notify_one();
    }
}

impl SlotHandle {
    /// Mark a request in progress until the returned guard drops: the connection cannot be
    /// evicted meanwhile.
    pub fn busy(&self) -> Busy {
        if let Some(entry) = self.slots.lock().open.get_mut(&self.id) {
            entry.busy += 1;
        }
        Busy(self.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let slots = &self.0.slots;
        let idle = match slots.lock().open.get_mut(&self.0.id) {
            Some(entry) => {
                entry.busy = entry.busy.saturating_sub(1);
                entry.last_active = Instant::now();
                entry.busy == 0
            }
            None => false,
        };
        if idle {
            slots.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_active_idle_connection_makes_room() {
        let slots = Slots::new(2, Duration::ZERO, "test");
        let mut first = slots.try_admit().unwrap();
        let mut second = slots.try_admit().unwrap();
        // The first one served a request after the second arrived: the second is the older idle.
        std::thread::sleep(Duration::from_millis(2));
        drop(first.handle().busy());
        let _third = slots.try_admit().unwrap();
        assert_eq!(slots.open(), 2);
        assert_eq!(
            second.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the second was evicted"
        );
        assert_eq!(
            first.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(slots.evicted(), 1);
    }

    #[test]
    fn connections_with_a_request_in_progress_are_never_evicted() {
        let slots = Slots::new(1, Duration::ZERO, "test");
        let mut only = slots.try_admit().unwrap();
        let busy = only.handle().busy();
        assert!(slots.try_admit().is_none(), "full and busy: wait");
        assert_eq!(
            only.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        drop(busy);
        let _next = slots.try_admit().expect("idle again: evictable");
        assert_eq!(
            only.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
    }

    #[tokio::test]
    async fn a_newcomer_gets_its_grace_before_it_can_be_evicted() {
        let grace = Duration::from_millis(200);
        let slots = Slots::new(1, grace, "test");
        let mut first = slots.try_admit().unwrap();
        assert!(
            slots.try_admit().is_none(),
            "the first is still in its grace"
        );
        let started = Instant::now();
        let second = tokio::time::timeout(Duration::from_secs(5), slots.admit())
            .await
            .expect("admitted once the grace ran out");
        assert!(started.elapsed() >= grace - Duration::from_millis(50));
        assert_eq!(
            first.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the first was evicted for the newcomer"
        );
        drop(second);
        assert_eq!(slots.open(), 0);
    }

    #[tokio::test]
    async fn a_waiting_newcomer_gets_the_slot_when_a_request_ends() {
        let slots = Slots::new(1, Duration::ZERO, "test");
        let only = slots.try_admit().unwrap();
        let busy = only.handle().busy();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(busy);
        let admitted = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted once the request ended")
            .unwrap();
        assert_eq!(slots.open(), 1);
        drop(admitted);
        drop(only);
        assert_eq!(slots.open(), 0);
    }
}
