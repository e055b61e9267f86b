//! Idempotent consumption for [eda](https://docs.rs/eda): a dedup window keyed by event
//! id (or a key of yours), in memory ([`MemoryDedup`]) or in Redis
//! (`RedisDedup`, feature `redis`), and [`DedupMiddleware`], which drops what a
//! subscription's group already handled.
//!
//! Every eda store is at-least-once: a crash, a nack or a lapsed visibility timeout
//! redelivers. A dedup window turns that into an exactly-once *effect* for redeliveries
//! that arrive within it.
//!
//! ```
//! use std::time::Duration;
//! use eda_core::Timestamp;
//! use eda_dedup::{Deduplicator, MemoryDedup, Window};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), eda_dedup::DedupError> {
//! let dedup = MemoryDedup::builder()
//!     .window(Window::Arrival(Duration::from_secs(300)))
//!     .max_capacity(100_000)
//!     .build();
//! let now = Timestamp::now();
//! assert!(dedup.first_seen("order-17", now).await?);
//! assert!(!dedup.first_seen("order-17", now).await?); // a duplicate
//! # Ok(()) }
//! ```
//!
//! ## Marking: claim, then confirm or forget
//!
//! [`DedupMiddleware`] **claims** a key before the handler runs (atomically: of two
//! concurrent deliveries of one event, one runs), **confirms** it for the whole window
//! when the handler succeeded, and **forgets** it when the handler failed, so the retry
//! or redelivery is not swallowed as a duplicate: a failed handler never makes its event
//! disappear. A claim lasts only `hold` (the delivery's deadline, by default the
//! processing timeout): if the process dies mid-handler, the claim lapses and the
//! redelivery (which comes after the visibility timeout, longer than any attempt) is
//! handled. What dedup cannot give is atomicity between the handler's effect and the
//! mark: a crash after the effect and before the confirmation handles the event again.
//! For an exactly-once effect across crashes, mark in the same transaction as the
//! effect (the SQLite store's inbox, `SqliteStore::inbox_mark`).
#![forbid(unsafe_code)]

mod memory;
mod middleware;
#[cfg(feature = "redis")]
mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use eda_core::{BoxFuture, Timestamp};

pub use memory::{MemoryDedup, MemoryDedupBuilder};
pub use middleware::{DedupMiddleware, KeyFn};
#[cfg(feature = "redis")]
pub use redis::RedisDedup;

/// How long a key stays marked, and from when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// From when the key was first seen here: a duplicate arriving less than this after
    /// the first arrival is dropped. Robust to producers' clocks; the default
    /// (5 minutes, the seed's window).
    Arrival(Duration),
    /// From the event's own `time`: a duplicate is dropped while the event is younger
    /// than this. Lets all consumers agree on when an event leaves the window, but
    /// trusts the producer's clock; an event already older than the window when it
    /// first arrives is handled and not marked (all its copies are handled).
    EventTime(Duration),
}

impl Default for Window {
    fn default() -> Self {
        Self::Arrival(Duration::from_secs(300))
    }
}

impl Window {
    /// The window's length.
    pub fn length(&self) -> Duration {
        match *self {
            Self::Arrival(d) | Self::EventTime(d) => d,
        }
    }

    /// Until when a key first seen `now` for an event of `event_time` stays marked, in
    /// Unix milliseconds.
    pub fn expires_at(&self, now: Timestamp, event_time: Timestamp) -> i64 {
        let base = match self {
            Self::Arrival(_) => now,
            Self::EventTime(_) => event_time,
        };
        base.unix_millis()
            .saturating_add(self.length().as_millis() as i64)
    }
}

/// Where "now" comes from: the system clock, or a [`ManualClock`] in tests.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told, for tests of window edges.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(at.unix_millis())))
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.0.load(Ordering::SeqCst))
    }
}

/// A dedup backend failed (Redis unreachable, ...).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DedupError {
    /// The backend cannot be reached or refused the operation.
    #[error("dedup backend unavailable: {0}")]
    Unavailable(String),
}

/// A sliding dedup window. Keys are namespaced by the caller (the middleware prefixes
/// the consumer group, so two groups never suppress each other).
pub trait Deduplicator: Send + Sync + 'static {
    /// Atomically checks and marks `key` for the window: `true` the first time it is
    /// seen within the window, `false` for a duplicate.
    fn first_seen<'a>(
        &'a self,
        key: &'a str,
        event_time: Timestamp,
    ) -> BoxFuture<'a, Result<bool, DedupError>>;

    /// [`first_seen`](Self::first_seen) for many keys at once (one round trip where the
    /// backend allows). A key repeated within the batch is first only once.
    fn first_seen_batch<'a>(
        &'a self,
        keys: &'a [(String, Timestamp)],
    ) -> BoxFuture<'a, Result<Vec<bool>, DedupError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for (key, time) in keys {
                out.push(self.first_seen(key, *time).await?);
            }
            Ok(out)
        })
    }

    /// Like [`first_seen`](Self::first_seen), but the mark lasts only `hold` unless
    /// [`confirm`](Self::confirm)ed: for a handler that may die before it finishes.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        event_time: Timestamp,
        hold: Duration,
    ) -> BoxFuture<'a, Result<bool, DedupError>>;

    /// Extends a claim to the whole window: the handler succeeded.
    fn confirm<'a>(
        &'a self,
        key: &'a str,
        event_time: Timestamp,
    ) -> BoxFuture<'a, Result<(), DedupError>>;

    /// Removes the mark: the handler failed, its retry must not count as a duplicate.
    fn forget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), DedupError>>;
}
