//! Delivery counters and the shutdown report.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) retries: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> BusStats {
        let get = |c: &AtomicU64| c.load(Ordering::Acquire);
        let deliveries = get(&self.deliveries);
        let delivered = get(&self.delivered);
        let failed = get(&self.failed);
        let dead_lettered = get(&self.dead_lettered);
        let expired = get(&self.expired);
        let dropped = get(&self.dropped);
        let settled = delivered + failed + dead_lettered + expired + dropped;
        BusStats {
            published: get(&self.published),
            deliveries,
            delivered,
            failed,
            dead_lettered,
            expired,
            not_delivered: dropped,
            in_flight: deliveries.saturating_sub(settled),
            retries: get(&self.retries),
        }
    }
}

/// Counters of a bus. Every accepted delivery (one event for one subscription) ends in
/// exactly one of `delivered`, `failed`, `dead_lettered`, `expired`, `not_delivered`,
/// or is still `in_flight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Events that reached every subscription of their topic (including those whose
    /// synchronous subscribers failed); refused publishes (full, timeout, shut down) are not counted.
    pub published: u64,
    /// Deliveries accepted: events × the subscriptions (groups) that took them.
    pub deliveries: u64,
    /// Handled successfully.
    pub delivered: u64,
    /// Failed and dropped: at-most-once subscriptions, and synchronous subscribers
    /// (whose errors went back to the publisher).
    pub failed: u64,
    /// Given to the dead-letter sink after the last attempt (or undecodable).
    pub dead_lettered: u64,
    /// Older than the topic's TTL when they reached the handler (also dead-lettered).
    pub expired: u64,
    /// Never handled: the subscription was dropped, or shutdown's deadline passed.
    pub not_delivered: u64,
    /// Still queued or running.
    pub in_flight: u64,
    /// Retry attempts made (beyond each delivery's first attempt).
    pub retries: u64,
}

/// What [`Bus::shutdown`](crate::Bus::shutdown) did: the counters at the end, and
/// whether everything drained before the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Final counters; `in_flight` is 0 and work cut off by the deadline is in `not_delivered`.
    pub stats: BusStats,
    /// Whether every queue drained and every handler finished before the deadline.
    pub drained: bool,
}
