//! Data keys unwrapped lately, by the header they came from, so reopening a file soon after it
//! was created or closed needs no KMS Decrypt (as the AWS Encryption SDK's data key caching).
//! Bounded in entries and age, wiped whenever the key store changes (a disable, a rotation, a
//! policy edit), and a hit is still authorized for the caller (`Keyring::unwrap`).

use crate::fs::cipherdir::Unwrapped;
use crate::fs::header::COUNTER_OFFSET;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Entries kept by default; `[mount] data_key_cache` / `--data-key-cache` change it (0: off).
pub const DEFAULT_ENTRIES: usize = 16384;
/// How long a data key stays after it was last unwrapped.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// What a header's bytes unwrapped to, and the CMK that wrapped it.
pub struct Cached {
    pub unwrapped: Unwrapped,
    pub key: String,
    at: Instant,
}

pub struct DekCache {
    entries: HashMap<[u8; 32], Cached>,
    limit: usize,
    max_age: Duration,
    pub hits: u64,
    /// No entry is older than this: a sweep before it expires has nothing to drop, and skips
    /// the pass over every entry (the mount sweeps every 200 ms).
    oldest: Option<Instant>,
}

/// The cache key: a digest of the header (kind tag first), so a re-wrapped header (a new slot,
/// another CMK) is a different entry. The block counter, which writes advance, is left out.
pub fn digest(kind_tag: u8, header: &[u8]) -> [u8; 32] {
    let counter = COUNTER_OFFSET..COUNTER_OFFSET + 8;
    let mut h = Sha256::new();
    h.update([kind_tag]);
    h.update(header.get(..counter.start).unwrap_or(header));
    h.update(header.get(counter.end..).unwrap_or_default());
    h.finalize().into()
}

impl DekCache {
    pub fn new(limit: usize, max_age: Duration) -> DekCache {
        DekCache {
            entries: HashMap::new(),
            limit,
            max_age,
            hits: 0,
            oldest: None,
        }
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        if self.entries.len() > limit {
            self.clear();
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `d` if it is younger than the maximum age (an expired one is dropped).
    pub fn get(&mut self, d: &[u8; 32], now: Instant) -> Option<&Cached> {
        let fresh = self
            .entries
            .get(d)
            .is_some_and(|c| now.saturating_duration_since(c.at) < self.max_age);
        if !fresh {
            self.entries.remove(d);
            return None;
        }
        self.hits += 1;
        self.entries.get(d)
    }

    pub fn insert(&mut self, d: [u8; 32], unwrapped: Unwrapped, key: String, now: Instant) {
        if self.limit == 0 {
            return;
        }
        if self.entries.len() >= self.limit && !self.entries.contains_key(&d) {
            self.evict_older_half();
        }
        self.oldest = Some(self.oldest.map_or(now, |o| o.min(now)));
        self.entries.insert(
            d,
            Cached {
                unwrapped,
                key,
                at: now,
            },
        );
    }

    /// Drops (and wipes) the entries older than the maximum age.
    pub fn sweep(&mut self, now: Instant) {
        let max_age = self.max_age;
        if self
            .oldest
            .is_none_or(|o| now.saturating_duration_since(o) < max_age)
        {
            return;
        }
        self.entries
            .retain(|_, c| now.saturating_duration_since(c.at) < max_age);
        self.oldest = self.entries.values().map(|c| c.at).min();
    }

    /// Drops the older half of the entries: one pass per `limit / 2` insertions once full, so
    /// amortized O(1), and the newest half survives.
    fn evict_older_half(&mut self) {
        let mut ages: Vec<Instant> = self.entries.values().map(|c| c.at).collect();
        let mid = ages.len() / 2;
        let (_, median, _) = ages.select_nth_unstable(mid);
        let median = *median;
        self.entries.retain(|_, c| c.at > median);
        self.oldest = self.entries.values().map(|c| c.at).min();
    }

    /// Forgets (and wipes) every data key.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.oldest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn unwrapped(b: u8) -> Unwrapped {
        Unwrapped {
            id: [b; 16],
            data_key: Zeroizing::new(vec![b; 32]),
            blob: vec![b],
            slot: 0,
            generation: 1,
        }
    }

    #[test]
    fn hits_until_the_maximum_age_then_misses() {
        let t0 = Instant::now();
        let mut c = DekCache::new(8, Duration::from_secs(10));
        let d = digest(1, b"header");
        c.insert(d, unwrapped(7), "k".into(), t0);
        let hit = c.get(&d, t0 + Duration::from_secs(9)).expect("fresh");
        assert_eq!(hit.unwrapped.data_key.as_slice(), &[7u8; 32]);
        assert_eq!(hit.key, "k");
        assert_eq!(c.hits, 1);
        assert!(c.get(&d, t0 + Duration::from_secs(10)).is_none());
        assert!(c.is_empty(), "an expired entry is dropped");
        // Unread entries go too, at the next sweep after their time.
        c.insert(d, unwrapped(7), "k".into(), t0);
        c.insert(
            digest(1, b"other"),
            unwrapped(8),
            "k".into(),
            t0 + Duration::from_secs(5),
        );
        c.sweep(t0 + Duration::from_secs(9));
        assert_eq!(c.len(), 2);
        c.sweep(t0 + Duration::from_secs(10));
        assert_eq!(c.len(), 1);
        assert!(c.get(&d, t0 + Duration::from_secs(10)).is_none());
        // The one left goes at its own time, not before.
        c.sweep(t0 + Duration::from_secs(14));
        assert_eq!(c.len(), 1);
        c.sweep(t0 + Duration::from_secs(15));
        assert!(c.is_empty());
    }

    #[test]
    fn the_digest_covers_kind_and_every_header_byte_but_the_counter() {
        let h = [7u8; 64];
        assert_ne!(digest(1, &h), digest(2, &h));
        assert_eq!(digest(1, &h), digest(1, &h));
        for i in 0..h.len() {
            let mut other = h;
            other[i] ^= 1;
            let counter = (COUNTER_OFFSET..COUNTER_OFFSET + 8).contains(&i);
            assert_eq!(digest(1, &h) == digest(1, &other), counter, "byte {i}");
        }
    }

    #[test]
    fn stays_within_its_limit_keeping_the_newest_and_zero_turns_it_off() {
        let t0 = Instant::now();
        let mut c = DekCache::new(4, Duration::from_secs(100));
        for i in 0..4u8 {
            let at = t0 + Duration::from_secs(u64::from(i));
            c.insert(digest(1, &[i]), unwrapped(i), "k".into(), at);
        }
        assert_eq!(c.len(), 4);
        // Full: the older half (0, 1 and the median 2) goes, the newest stays.
        let at = t0 + Duration::from_secs(10);
        c.insert(digest(1, &[9]), unwrapped(9), "k".into(), at);
        assert_eq!(c.len(), 2);
        assert!(c.get(&digest(1, &[3]), at).is_some());
        assert!(c.get(&digest(1, &[9]), at).is_some());
        assert!(c.get(&digest(1, &[0]), at).is_none());
        c.set_limit(0);
        assert!(c.is_empty());
        c.insert(digest(1, &[4]), unwrapped(4), "k".into(), t0);
        assert!(c.is_empty());
        c.set_limit(5);
        c.insert(digest(1, &[4]), unwrapped(4), "k".into(), t0);
        c.clear();
        assert!(c.is_empty());
    }
}
