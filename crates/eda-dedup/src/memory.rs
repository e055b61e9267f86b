//! The dedup window in memory: sharded maps of marks with first-in-first-out eviction.
//!
//! A dedup window is not a cache: nearly every key is inserted once and never read
//! again, and a key that is evicted lets its duplicates through. So the structure is
//! the simplest one with the right properties, not a general cache (see
//! `docs/dedup.md` for why it is not on moka):
//!
//! * keys are hashed to 128 bits with SipHash-1-3 under keys drawn at random per
//!   window, so a mark costs no allocation and 40 bytes whatever the key's length, and
//!   nobody who cannot read the process's memory can make two keys collide;
//! * the hash picks one of up to 64 shards, each a `Mutex` over a `HashMap` from key to
//!   mark and a queue of keys in the order they were first marked;
//! * when a shard holds its share of the capacity, the key marked longest ago is
//!   evicted (and counted when its mark was still live): FIFO, which for keys read at
//!   most once or twice is the LRU order, and unlike TinyLFU always admits the new key;
//! * marks carry their own expiry by the injected [`Clock`]; expired marks at the front
//!   of a queue are dropped as new keys arrive, so memory follows the live keys.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use eda_core::{BoxFuture, Timestamp};

use crate::{Clock, DedupError, Deduplicator, SystemClock, Window};

/// Most shards of one window; fewer for small capacities, so that each shard's share of
/// the capacity stays large enough for FIFO order to mean something.
const MAX_SHARDS: usize = 64;
/// Smallest share of the capacity a shard is given when there are several.
const MIN_SHARD_CAPACITY: u64 = 256;

/// Options of a [`MemoryDedup`].
pub struct MemoryDedupBuilder {
    window: Window,
    max_capacity: u64,
    clock: Arc<dyn Clock>,
}

impl MemoryDedupBuilder {
    /// The window (default 5 minutes by arrival).
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }
    /// Most keys kept (default 1,000,000; at least 1). When full, the key marked
    /// longest ago is evicted (first in, first out, per shard of the window), so a new
    /// key is always admitted; [`MemoryDedup::evictions`] counts the live marks pushed
    /// out, whose duplicates would pass.
    pub fn max_capacity(mut self, max: u64) -> Self {
        self.max_capacity = max.max(1);
        self
    }
    /// The clock marks are compared with (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Builds it. Memory grows with the keys held (about 100 bytes per key with the map's
    /// and the queue's spare room), never past `max_capacity` keys.
    pub fn build(self) -> MemoryDedup {
        let wanted = (self.max_capacity / MIN_SHARD_CAPACITY).max(1);
        let shards = (MAX_SHARDS as u64).min(prev_power_of_two(wanted)) as usize;
        let per_shard = (self.max_capacity / shards as u64) as usize;
        MemoryDedup {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| Mutex::new(Shard::new(per_shard)))
                    .collect(),
                hash: (RandomState::new(), RandomState::new()),
                window: self.window,
                clock: self.clock,
                evictions: AtomicU64::new(0),
            }),
        }
    }
}

fn prev_power_of_two(n: u64) -> u64 {
    1 << (63 - n.leading_zeros())
}

/// The dedup window in this process's memory. Cheap to clone; clones share the window.
#[derive(Clone)]
pub struct MemoryDedup {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// Two independent SipHash-1-3 keys: a key's mark is found by its 128-bit hash.
    hash: (RandomState, RandomState),
    window: Window,
    clock: Arc<dyn Clock>,
    evictions: AtomicU64,
}

/// A key, by its 128-bit keyed hash.
type KeyHash = u128;

/// A mark: until when it holds (Unix ms, by the injected clock), and which queue entry
/// is its own (a key marked again after its mark expired or was forgotten has a newer
/// one; the older entry is skipped when it reaches the front).
#[derive(Clone, Copy)]
struct Mark {
    until: i64,
    seq: u64,
}

/// A queue entry: the key, the sequence of the mark it was pushed for, and the mark's
/// expiry as last seen. `confirm` moves a live mark's expiry in the map only; the
/// entry catches up when it reaches the front (its expiry only decides when the map is
/// consulted about it).
#[derive(Clone, Copy)]
struct Queued {
    key: KeyHash,
    seq: u64,
    until: i64,
}

struct Shard {
    marks: HashMap<KeyHash, Mark, BuildHasherDefault<Prehashed>>,
    order: VecDeque<Queued>,
    capacity: usize,
    next_seq: u64,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Self {
            marks: HashMap::default(),
            order: VecDeque::new(),
            capacity,
            next_seq: 0,
        }
    }

    /// A new mark for `key` (replacing any expired or forgotten one) at the back of the
    /// queue.
    fn mark(&mut self, key: KeyHash, until: i64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back(Queued { key, seq, until });
        self.marks.insert(key, Mark { until, seq });
    }

    /// Marks `key` unless a live mark exists; `true` when it marked.
    fn mark_if_new(&mut self, key: KeyHash, until: i64, now: i64) -> bool {
        if self.marks.get(&key).is_some_and(|mark| mark.until > now) {
            return false;
        }
        self.mark(key, until);
        true
    }

    /// Sets the mark to `until`, keeping its place in the queue when it is live.
    fn set(&mut self, key: KeyHash, until: i64, now: i64) {
        match self.marks.get_mut(&key) {
            Some(held) if held.until > now => held.until = until,
            _ => self.mark(key, until),
        }
    }

    fn forget(&mut self, key: KeyHash) {
        self.marks.remove(&key);
    }

    /// Drops expired marks at the front of the queue, then evicts from the front until
    /// the shard is within its capacity; returns how many live marks were evicted.
    fn trim(&mut self, now: i64) -> u64 {
        let mut evicted = 0;
        while let Some(front) = self.order.front().copied() {
            let over = self.marks.len() > self.capacity;
            // Within capacity, the map is consulted only once the queued expiry has
            // passed (a mark whose expiry `confirm` moved is dropped when it expires
            // and its entry reaches the front, or when it is evicted).
            if !over && front.until > now {
                break;
            }
            let own = match self.marks.get(&front.key) {
                Some(mark) if mark.seq == front.seq => Some(*mark),
                _ => None, // marked again later, or forgotten: a stale entry
            };
            match own {
                Some(mark) if mark.until > now && !over => {
                    // Extended by `confirm` (a claim confirmed for the window): keep its
                    // place, and note its expiry so the map is not asked again until then.
                    if let Some(front) = self.order.front_mut() {
                        front.until = mark.until;
                    }
                    break;
                }
                Some(mark) => {
                    self.marks.remove(&front.key);
                    if mark.until > now {
                        evicted += 1;
                    }
                }
                None => {}
            }
            self.order.pop_front();
        }
        // Stale entries (forgotten keys, re-marked keys) wait deep in the queue; compact
        // when they outnumber the marks, so the queue stays proportional to the map.
        if self.order.len() > 2 * self.marks.len() + 64 {
            let marks = &self.marks;
            self.order
                .retain(|q| marks.get(&q.key).is_some_and(|m| m.seq == q.seq));
        }
        evicted
    }
}

/// The map's hasher: keys are already keyed hashes, so it passes their low bits on.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; fold anything else rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

impl Default for MemoryDedup {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl MemoryDedup {
    /// Options, starting from the defaults.
    pub fn builder() -> MemoryDedupBuilder {
        MemoryDedupBuilder {
            window: Window::default(),
            max_capacity: 1_000_000,
            clock: Arc::new(SystemClock),
        }
    }

    /// Live marks evicted because the capacity was reached (their duplicates would
    /// pass); also counted by the metric `eda_dedup_evictions_total`.
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.load(Ordering::Relaxed)
    }

    /// Keys held now (expired marks not yet dropped included).
    pub fn len(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|shard| lock(shard).marks.len() as u64)
            .sum()
    }

    /// No key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self, key: &str) -> KeyHash {
        let (a, b) = &self.inner.hash;
        (u128::from(a.hash_one(key)) << 64) | u128::from(b.hash_one(key))
    }

    fn shard(&self, key: KeyHash) -> MutexGuard<'_, Shard> {
        // The high half picks the shard, the low half the map's bucket.
        let index = (key >> 64) as usize & (self.inner.shards.len() - 1);
        lock(&self.inner.shards[index])
    }

    /// Marks `key` until `until` unless a live mark exists; `true` when it marked.
    fn mark_if_new(&self, key: &str, until: i64, now: i64) -> bool {
        let key = self.hash(key);
        let mut shard = self.shard(key);
        let marked = shard.mark_if_new(key, until, now);
        if marked {
            self.trim(shard, now);
        }
        marked
    }

    /// Trims a shard that just took a mark, then counts its evictions outside the lock.
    fn trim(&self, mut shard: MutexGuard<'_, Shard>, now: i64) {
        let evicted = shard.trim(now);
        drop(shard);
        if evicted > 0 {
            self.inner.evictions.fetch_add(evicted, Ordering::Relaxed);
            metrics::counter!(eda_core::observe::DEDUP_EVICTIONS).increment(evicted);
        }
    }

    /// Checks and marks synchronously (the async trait methods call this).
    pub fn first_seen_now(&self, key: &str, event_time: Timestamp) -> bool {
        let now = self.inner.clock.now();
        let until = self.inner.window.expires_at(now, event_time);
        let now = now.unix_millis();
        if until <= now {
            return true; // already out of the window: handled, never marked
        }
        self.mark_if_new(key, until, now)
    }
}

/// A shard's lock. A panic while it was held cannot have left a shard half-updated in a
/// way that matters (at worst a queue entry without its mark, which is skipped), so a
/// poisoned lock is used as it is rather than failing every later check.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Deduplicator for MemoryDedup {
    fn first_seen<'a>(
        &'a self,
        key: &'a str,
        event_time: Timestamp,
    ) -> BoxFuture<'a, Result<bool, DedupError>> {
        Box::pin(std::future::ready(Ok(self.first_seen_now(key, event_time))))
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        _event_time: Timestamp,
        hold: Duration,
    ) -> BoxFuture<'a, Result<bool, DedupError>> {
        let now = self.inner.clock.now().unix_millis();
        let until = now.saturating_add(hold.as_millis() as i64);
        Box::pin(std::future::ready(Ok(self.mark_if_new(key, until, now))))
    }

    fn confirm<'a>(
        &'a self,
        key: &'a str,
        event_time: Timestamp,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        let now = self.inner.clock.now();
        let until = self.inner.window.expires_at(now, event_time);
        let now = now.unix_millis();
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        if until > now {
            shard.set(hash, until, now);
            self.trim(shard, now);
        } else {
            shard.forget(hash);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn forget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), DedupError>> {
        let hash = self.hash(key);
        self.shard(hash).forget(hash);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_forgotten_again_and_again_keep_the_queue_small() {
        let dedup = MemoryDedup::builder().max_capacity(1_000).build();
        let now = Timestamp::now();
        for _ in 0..100_000 {
            assert!(dedup.mark_if_new("retried", i64::MAX, now.unix_millis()));
            let hash = dedup.hash("retried");
            dedup.shard(hash).forget(hash);
        }
        let queued: usize = dedup.inner.shards.iter().map(|s| lock(s).order.len()).sum();
        assert!(queued <= 2 * 64 + 64, "{queued} queue entries for no mark");
        assert!(dedup.is_empty());
    }

    #[test]
    fn a_confirmed_claim_outlives_its_hold_and_is_looked_up_once() {
        let clock = crate::ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
        let dedup = MemoryDedup::builder()
            .max_capacity(200) // one shard: "a" is at the front of its queue
            .clock(clock.clone())
            .build();
        let now = || clock.now().unix_millis();
        assert!(dedup.mark_if_new("a", now() + 10_000, now())); // a 10 s claim
        let window = now() + 300_000;
        let hash = dedup.hash("a");
        dedup.shard(hash).set(hash, window, now()); // confirmed for 5 minutes
        clock.advance(std::time::Duration::from_secs(20));
        for i in 0..50 {
            assert!(dedup.first_seen_now(&format!("k{i}"), clock.now()));
        }
        assert!(!dedup.first_seen_now("a", clock.now()), "still marked");
        let shard = dedup.shard(hash);
        assert_eq!(shard.order.front().map(|q| q.until), Some(window));
    }

    #[test]
    fn capacities_split_into_whole_shards() {
        for (capacity, shards) in [(1, 1), (255, 1), (1_000, 2), (1 << 20, MAX_SHARDS)] {
            let dedup = MemoryDedup::builder().max_capacity(capacity).build();
            assert_eq!(dedup.inner.shards.len(), shards, "capacity {capacity}");
            let total: u64 = dedup
                .inner
                .shards
                .iter()
                .map(|s| lock(s).capacity as u64)
                .sum();
            assert!(
                total <= capacity && total * 2 > capacity,
                "capacity {capacity}"
            );
        }
    }
}
