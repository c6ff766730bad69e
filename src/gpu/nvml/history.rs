//! The previous sample of each device, kept from one collection cycle to the next: what a
//! metric computed over an interval needs (GPM profiling, DCGM's NVLink bandwidth). Generic over
//! the sample, so that the pairing, and the freeing of samples of devices that went away, are
//! tested with plain numbers.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// The previous sample of each device, and which devices were sampled in the current cycle.
pub(super) struct SampleHistory<K, S> {
    last: HashMap<K, S>,
    sampled: HashSet<K>,
}

impl<K: Eq + Hash + Clone, S> SampleHistory<K, S> {
    pub(super) fn new() -> Self {
        Self {
            last: HashMap::new(),
            sampled: HashSet::new(),
        }
    }

    /// Take the device's previous sample out (the interval's start, or one to free when no new
    /// sample could be taken).
    pub(super) fn take(&mut self, key: &K) -> Option<S> {
        self.last.remove(key)
    }

    /// Keep `sample` as the device's latest, sampled in this cycle.
    pub(super) fn keep(&mut self, key: K, sample: S) {
        self.sampled.insert(key.clone());
        self.last.insert(key, sample);
    }

    /// End the cycle: the samples of devices not sampled in it, to be freed.
    pub(super) fn end_cycle(&mut self) -> Vec<S> {
        let sampled = std::mem::take(&mut self.sampled);
        let stale: Vec<K> = self
            .last
            .keys()
            .filter(|k| !sampled.contains(*k))
            .cloned()
            .collect();
        stale.iter().filter_map(|k| self.last.remove(k)).collect()
    }

    pub(super) fn drain(&mut self) -> Vec<S> {
        self.sampled.clear();
        self.last.drain().map(|(_, s)| s).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_pairs_each_sample_with_the_previous_one_of_the_same_device() {
        let mut h: SampleHistory<&str, u32> = SampleHistory::new();
        // A cycle: take the previous sample, keep the new one.
        let cycle = |h: &mut SampleHistory<&str, u32>, key, new| {
            let previous = h.take(&key);
            h.keep(key, new);
            previous
        };
        assert_eq!(cycle(&mut h, "gpu0", 1), None);
        assert_eq!(cycle(&mut h, "gpu1", 10), None);
        assert!(h.end_cycle().is_empty());
        assert_eq!(cycle(&mut h, "gpu0", 2), Some(1));
        assert_eq!(cycle(&mut h, "gpu1", 11), Some(10));
        assert!(h.end_cycle().is_empty());
        // gpu1 not sampled (gone, lost): its sample is handed back to be freed, it starts afresh.
        assert_eq!(cycle(&mut h, "gpu0", 3), Some(2));
        assert_eq!(h.end_cycle(), vec![11]);
        assert_eq!(cycle(&mut h, "gpu1", 12), None);
        // A failed sample: the previous one is taken (and freed), nothing kept.
        assert_eq!(h.take(&"gpu0"), Some(3));
        assert_eq!(h.end_cycle(), Vec::<u32>::new());
        assert_eq!(cycle(&mut h, "gpu0", 4), None);
        let mut all = h.drain();
        all.sort();
        assert_eq!(all, vec![4, 12]);
    }
}
