//! The cache policies: which resident expert is evicted to make room.
//! Bookkeeping only; the store decides which experts may be evicted (none
//! that the model is using).

use std::collections::HashMap;
use std::hash::Hash;

use super::options::CachePolicy;

/// An expert: (layer, expert id).
pub type Key = (usize, usize);

/// Access history of every cache entry seen (an entry is whatever the store
/// caches: an expert, or an expert at one precision).
#[derive(Debug)]
pub struct Residency<K> {
    policy: CachePolicy,
    tick: u64,
    /// Last access, per entry.
    last: HashMap<K, u64>,
    /// Accesses since the start (LFU keeps them across evictions so that a
    /// popular expert evicted under pressure is preferred when it returns).
    freq: HashMap<K, u64>,
}

impl<K: Copy + Eq + Hash + Ord> Residency<K> {
    pub fn new(policy: CachePolicy) -> Residency<K> {
        Residency {
            policy,
            tick: 0,
            last: HashMap::new(),
            freq: HashMap::new(),
        }
    }

    /// Records a use of `key`.
    pub fn touch(&mut self, key: K) {
        self.tick += 1;
        self.last.insert(key, self.tick);
        *self.freq.entry(key).or_insert(0) += 1;
    }

    /// Records that `key` became resident without being used (a prefetch):
    /// recent, so that it is not the first victim before its use, but not
    /// more frequent.
    pub fn admit(&mut self, key: K) {
        self.tick += 1;
        self.last.insert(key, self.tick);
    }

    /// The expert to evict among `candidates` (`None` if there is none).
    pub fn victim(&self, candidates: impl Iterator<Item = K>) -> Option<K> {
        let last = |k: &K| self.last.get(k).copied().unwrap_or(0);
        let freq = |k: &K| self.freq.get(k).copied().unwrap_or(0);
        match self.policy {
            CachePolicy::Lru => candidates.min_by_key(|k| (last(k), *k)),
            CachePolicy::Lfu => candidates.min_by_key(|k| (freq(k), last(k), *k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recent_and_lfu_the_least_frequent() {
        for policy in [CachePolicy::Lru, CachePolicy::Lfu] {
            let mut r = Residency::<Key>::new(policy);
            // (0,1) used once, early; (0,2) used three times, then (0,3) last.
            r.touch((0, 1));
            r.touch((0, 2));
            r.touch((0, 2));
            r.touch((0, 2));
            r.touch((0, 1));
            r.touch((0, 3));
            r.touch((0, 1));
            // Recency: 2 < 3 < 1. Frequency: 3 (1) < 1 (3) = 2 (3): ties by recency.
            let cands = [(0, 1), (0, 2), (0, 3)];
            let got = r.victim(cands.iter().copied());
            let expect = if policy == CachePolicy::Lru {
                (0, 2)
            } else {
                (0, 3)
            };
            assert_eq!(got, Some(expect), "{policy}");
            // Without (0,3) as a candidate, LFU breaks the tie by recency.
            let got = r.victim([(0, 1), (0, 2)].into_iter());
            assert_eq!(got, Some((0, 2)), "{policy}");
            assert_eq!(r.victim(std::iter::empty()), None);
        }
    }
}
