//! The backend → health-task mailbox: bounded, never blocks the sender, never loses a device.
//!
//! A FIFO channel that drops when full would let a storm of harmless XIDs on one GPU (an
//! application hammering XID 13) push a critical XID on another GPU out of the queue. Instead,
//! pending events are folded into a small map keyed by what they are about — (GPU, MIG device,
//! XID) for XIDs, the GPU for lost/found and ECC — with an occurrence count. Memory is bounded by
//! the number of distinct keys ([`MAX_PENDING_KEYS`]), not by the event rate, and the health
//! task takes everything pending in one [`Batch`], so a storm becomes one state update.
//!
//! The sender side is synchronous (backend watchers are plain threads): a short mutex and a
//! wake-up, nothing that waits on the consumer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::gpu::HealthEvent;

/// Most distinct pending keys. Real nodes have at most a few dozen devices and a handful of XID
/// numbers in flight; this only bites on nonsense input (millions of distinct XID numbers).
pub const MAX_PENDING_KEYS: usize = 4096;

/// The receiving side is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the health task has stopped")]
pub struct Closed;

type XidKey = (String, Option<String>, u64);

#[derive(Debug, Default)]
struct Pending {
    /// (GPU, MIG device, XID) → (occurrences, arrival of the last one).
    xids: BTreeMap<XidKey, (u64, u64)>,
    /// XIDs sent so far (orders their arrivals).
    arrivals: u64,
    /// GPU → lost (true) or found (false); the last report wins.
    presence: BTreeMap<String, bool>,
    /// GPU → double-bit ECC events.
    ecc: BTreeMap<String, u64>,
    /// Events refused because [`MAX_PENDING_KEYS`] distinct keys were already pending.
    overflow: u64,
}

impl Pending {
    fn keys(&self) -> usize {
        self.xids.len() + self.presence.len() + self.ecc.len()
    }

    fn is_empty(&self) -> bool {
        self.keys() == 0 && self.overflow == 0
    }

    fn add(&mut self, event: HealthEvent) {
        let full = self.keys() >= MAX_PENDING_KEYS;
        match event {
            HealthEvent::Xid {
                gpu_uuid,
                mig_uuid,
                xid,
            } => {
                self.arrivals += 1;
                let key = (gpu_uuid, mig_uuid, xid);
                if let Some((count, last)) = self.xids.get_mut(&key) {
                    *count = count.saturating_add(1);
                    *last = self.arrivals;
                } else if full {
                    self.overflow += 1;
                } else {
                    self.xids.insert(key, (1, self.arrivals));
                }
            }
            HealthEvent::DoubleBitEcc { gpu_uuid } => {
                count(&mut self.ecc, gpu_uuid, full, &mut self.overflow)
            }
            HealthEvent::Lost { gpu_uuid } => self.presence(gpu_uuid, true, full),
            HealthEvent::Found { gpu_uuid } => self.presence(gpu_uuid, false, full),
        }
    }

    fn presence(&mut self, gpu_uuid: String, lost: bool, full: bool) {
        if full && !self.presence.contains_key(&gpu_uuid) {
            self.overflow += 1;
        } else {
            self.presence.insert(gpu_uuid, lost);
        }
    }

    fn take(&mut self) -> Batch {
        let pending = std::mem::take(self);
        let mut events = Vec::with_capacity(pending.keys());
        // Presence first: a GPU found again and then faulting in the same batch ends unhealthy.
        for (gpu_uuid, lost) in pending.presence {
            let event = if lost {
                HealthEvent::Lost { gpu_uuid }
            } else {
                HealthEvent::Found { gpu_uuid }
            };
            events.push((event, 1));
        }
        // Per device in the order the XIDs last came, so that the device's last XID is applied
        // last (dcgm's XID_ERRORS reports it).
        let mut xids: Vec<(XidKey, (u64, u64))> = pending.xids.into_iter().collect();
        xids.sort_by(|((g1, m1, _), (_, a1)), ((g2, m2, _), (_, a2))| {
            (g1, m1, a1).cmp(&(g2, m2, a2))
        });
        for ((gpu_uuid, mig_uuid, xid), (count, _)) in xids {
            events.push((
                HealthEvent::Xid {
                    gpu_uuid,
                    mig_uuid,
                    xid,
                },
                count,
            ));
        }
        for (gpu_uuid, count) in pending.ecc {
            events.push((HealthEvent::DoubleBitEcc { gpu_uuid }, count));
        }
        Batch {
            events,
            overflow: pending.overflow,
        }
    }
}

/// One more occurrence of `key`; a key not yet pending counts as `overflow` when the mailbox is
/// `full`.
fn count<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, full: bool, overflow: &mut u64) {
    if let Some(count) = map.get_mut(&key) {
        *count = count.saturating_add(1);
    } else if full {
        *overflow += 1;
    } else {
        map.insert(key, 1);
    }
}

/// Everything that happened since the last batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// Each distinct event once, with how many times it happened.
    pub events: Vec<(HealthEvent, u64)>,
    /// Events refused because too many distinct keys were pending.
    pub overflow: u64,
}

impl Batch {
    /// Total events the batch stands for.
    pub fn occurrences(&self) -> u64 {
        self.events
            .iter()
            .map(|(_, n)| *n)
            .fold(self.overflow, u64::saturating_add)
    }
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    notify: Notify,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves a consistent map (every update is one insert).
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new mailbox.
pub fn channel() -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        notify: Notify::new(),
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventReceiver { shared },
    )
}

/// The backends' end. Cheap to clone; never blocks on the consumer.
#[derive(Debug)]
pub struct EventSender {
    shared: Arc<Shared>,
}

impl EventSender {
    /// Hand over one event. Fails only when the health task is gone.
    pub fn send(&self, event: HealthEvent) -> Result<(), Closed> {
        if self.is_closed() {
            return Err(Closed);
        }
        self.shared.lock().add(event);
        self.shared.notify.notify_one();
        Ok(())
    }

    /// The health task has stopped: watchers can stop too.
    pub fn is_closed(&self) -> bool {
        !self.shared.receiver_alive.load(Ordering::Acquire)
    }
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.notify.notify_one();
        }
    }
}

/// The health task's end.
#[derive(Debug)]
pub struct EventReceiver {
    shared: Arc<Shared>,
}

impl EventReceiver {
    /// Wait for events and take everything pending. `None` once every sender is gone and
    /// nothing is left.
    pub async fn recv(&mut self) -> Option<Batch> {
        loop {
            if let Some(batch) = self.try_recv() {
                return Some(batch);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                // A last send may have landed between the check above and the drop.
                return self.try_recv();
            }
            // `notify_one` stores a permit when nobody waits, so a send between the check and
            // this await still wakes us.
            self.shared.notify.notified().await;
        }
    }

    /// Take everything pending now, if anything is.
    pub fn try_recv(&mut self) -> Option<Batch> {
        let mut pending = self.shared.lock();
        (!pending.is_empty()).then(|| pending.take())
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid(gpu: &str, mig: Option<&str>, xid: u64) -> HealthEvent {
        HealthEvent::Xid {
            gpu_uuid: gpu.into(),
            mig_uuid: mig.map(Into::into),
            xid,
        }
    }

    #[test]
    fn a_storm_on_one_gpu_cannot_hide_another_gpus_fault() {
        let (tx, mut rx) = channel();
        for _ in 0..100_000 {
            tx.send(xid("GPU-a", None, 13)).unwrap();
        }
        tx.send(xid("GPU-b", None, 48)).unwrap();
        for _ in 0..100_000 {
            tx.send(xid("GPU-a", None, 13)).unwrap();
        }
        let batch = rx.try_recv().unwrap();
        assert_eq!(
            batch.events,
            vec![
                (xid("GPU-a", None, 13), 200_000),
                (xid("GPU-b", None, 48), 1)
            ]
        );
        assert_eq!(batch.occurrences(), 200_001);
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn presence_comes_first_and_the_last_report_wins() {
        let (tx, mut rx) = channel();
        tx.send(xid("GPU-a", Some("MIG-1"), 94)).unwrap();
        tx.send(HealthEvent::Lost {
            gpu_uuid: "GPU-a".into(),
        })
        .unwrap();
        tx.send(HealthEvent::Found {
            gpu_uuid: "GPU-a".into(),
        })
        .unwrap();
        tx.send(HealthEvent::DoubleBitEcc {
            gpu_uuid: "GPU-b".into(),
        })
        .unwrap();
        let batch = rx.try_recv().unwrap();
        assert_eq!(
            batch.events,
            vec![
                (
                    HealthEvent::Found {
                        gpu_uuid: "GPU-a".into()
                    },
                    1
                ),
                (xid("GPU-a", Some("MIG-1"), 94), 1),
                (
                    HealthEvent::DoubleBitEcc {
                        gpu_uuid: "GPU-b".into()
                    },
                    1
                ),
            ]
        );
    }

    #[test]
    fn distinct_keys_are_bounded() {
        let (tx, mut rx) = channel();
        let extra = 10;
        for n in 0..(MAX_PENDING_KEYS as u64 + extra) {
            tx.send(xid("GPU-a", None, n)).unwrap();
        }
        // A key already pending still counts.
        tx.send(xid("GPU-a", None, 0)).unwrap();
        let batch = rx.try_recv().unwrap();
        assert_eq!(batch.events.len(), MAX_PENDING_KEYS);
        assert_eq!(batch.overflow, extra);
        assert!(batch.events.contains(&(xid("GPU-a", None, 0), 2)));
    }

    #[test]
    fn a_devices_xids_come_in_the_order_they_last_arrived() {
        let (tx, mut rx) = channel();
        for (gpu, n) in [
            ("GPU-b", 43),
            ("GPU-a", 79),
            ("GPU-a", 43),
            ("GPU-a", 79),
            ("GPU-a", 13),
        ] {
            tx.send(xid(gpu, None, n)).unwrap();
        }
        let batch = rx.try_recv().unwrap();
        assert_eq!(
            batch.events,
            vec![
                (xid("GPU-a", None, 43), 1),
                (xid("GPU-a", None, 79), 2),
                (xid("GPU-a", None, 13), 1),
                (xid("GPU-b", None, 43), 1),
            ]
        );
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_ends_when_senders_are_gone() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second, rx)
        });
        tokio::task::yield_now().await;
        tx.send(xid("GPU-a", None, 48)).unwrap();
        drop(tx);
        drop(tx2);
        let (first, second, rx) = waiter.await.unwrap();
        assert_eq!(first.unwrap().events.len(), 1);
        assert_eq!(second, None);
        drop(rx);
    }

    #[test]
    fn senders_see_a_dropped_receiver() {
        let (tx, rx) = channel();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(xid("GPU-a", None, 48)), Err(Closed));
    }
}
