//! The dedup window in memory, on moka.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eda_core::{BoxFuture, Timestamp};
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::{Clock, DedupError, Deduplicator, SystemClock, Window};

/// A mark: until when it holds (Unix ms), by the injected clock.
#[derive(Clone, Copy, Debug)]
struct Mark {
    until: i64,
}

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
    /// Most keys kept (default 1,000,000). When full, the least recently used key is
    /// evicted (LRU, not moka's default TinyLFU, which may refuse to admit new keys
    /// and so let their duplicates through); evictions are counted.
    pub fn max_capacity(mut self, max: u64) -> Self {
        self.max_capacity = max;
        self
    }
    /// The clock marks are compared with (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Builds it.
    pub fn build(self) -> MemoryDedup {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        // moka's clock cannot be injected: it only bounds how long a key may live
        // (the window, plus room for claims), and marks carry their own expiry.
        let ttl = self.window.length() + Duration::from_secs(3600);
        let cache = Cache::builder()
            .max_capacity(self.max_capacity)
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(ttl)
            .eviction_listener(move |_key, _mark, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        MemoryDedup {
            inner: Arc::new(Inner {
                cache,
                window: self.window,
                clock: self.clock,
                evictions,
            }),
        }
    }
}

/// The dedup window in this process's memory. Cheap to clone; clones share the window.
#[derive(Clone)]
pub struct MemoryDedup {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Cache<String, Mark>,
    window: Window,
    clock: Arc<dyn Clock>,
    evictions: Arc<AtomicU64>,
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

    /// Keys evicted because the capacity was reached (their duplicates would pass).
    pub fn evictions(&self) -> u64 {
        self.inner.evictions.load(Ordering::Relaxed)
    }

    /// Keys held now (after moka's pending maintenance).
    pub fn len(&self) -> u64 {
        self.inner.cache.run_pending_tasks();
        self.inner.cache.entry_count()
    }

    /// No key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `key` until `until` unless a live mark exists; `true` when it marked.
    fn mark_if_new(&self, key: &str, until: i64) -> bool {
        let now = self.inner.clock.now().unix_millis();
        // Fast path: insert if absent (most keys are new); atomic per key.
        let entry = self
            .inner
            .cache
            .entry_by_ref(key)
            .or_insert_with(|| Mark { until });
        if entry.is_fresh() {
            return true;
        }
        if entry.value().until > now {
            return false; // a live mark: a duplicate
        }
        // An expired mark (by our clock): replace it unless someone just did.
        let mut first = false;
        self.inner
            .cache
            .entry_by_ref(key)
            .and_compute_with(|existing| match existing {
                Some(entry) if entry.value().until > now => Op::Nop,
                _ => {
                    first = true;
                    Op::Put(Mark { until })
                }
            });
        first
    }

    /// Checks and marks synchronously (the async trait methods call this).
    pub fn first_seen_now(&self, key: &str, event_time: Timestamp) -> bool {
        let now = self.inner.clock.now();
        let until = self.inner.window.expires_at(now, event_time);
        if until <= now.unix_millis() {
            return true; // already out of the window: handled, never marked
        }
        self.mark_if_new(key, until)
    }
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
        let until = self
            .inner
            .clock
            .now()
            .unix_millis()
            .saturating_add(hold.as_millis() as i64);
        Box::pin(std::future::ready(Ok(self.mark_if_new(key, until))))
    }

    fn confirm<'a>(
        &'a self,
        key: &'a str,
        event_time: Timestamp,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        let now = self.inner.clock.now();
        let until = self.inner.window.expires_at(now, event_time);
        if until > now.unix_millis() {
            self.inner.cache.insert(key.to_owned(), Mark { until });
        } else {
            self.inner.cache.invalidate(key);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn forget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), DedupError>> {
        self.inner.cache.invalidate(key);
        Box::pin(std::future::ready(Ok(())))
    }
}
