//! Delivery counters and the shutdown report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;

/// Delivery counters of one group (or synchronous sink, or durable subscription). Each
/// group has its own, on cache lines of their own: groups on different cores, and the
/// publishers, never write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub(crate) deliveries: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) retries: AtomicU64,
    /// Times the group's processor, its queue empty, waited and was woken by a publish.
    pub(crate) wakeups: AtomicU64,
    /// Batches the group's processor read from its rings.
    pub(crate) batches: AtomicU64,
}

/// How many counters a [`Counters`] has.
const FIELDS: usize = 9;

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn fields(&self) -> [&AtomicU64; FIELDS] {
        [
            &self.deliveries,
            &self.delivered,
            &self.failed,
            &self.dead_lettered,
            &self.expired,
            &self.dropped,
            &self.retries,
            &self.wakeups,
            &self.batches,
        ]
    }

    fn add_to(&self, totals: &mut [u64; FIELDS]) {
        for (total, field) in totals.iter_mut().zip(self.fields()) {
            *total += field.load(Ordering::Acquire);
        }
    }
}

/// The bus's counters: publishes, and the counters of every group, summed on demand.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    published: CachePadded<AtomicU64>,
    groups: Mutex<Vec<Arc<Counters>>>,
    /// What groups that are gone counted.
    retired: Mutex<[u64; FIELDS]>,
}

impl Tally {
    pub(crate) fn published(&self) -> &AtomicU64 {
        &self.published
    }

    /// New counters for a group, included in the bus's from now on.
    pub(crate) fn group(&self) -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        let mut groups = crate::topic::lock(&self.groups);
        // Fold the counters nobody else holds any more (their group is gone, so they
        // cannot change) into the retired totals.
        let mut retired = crate::topic::lock(&self.retired);
        groups.retain(|c| {
            let gone = Arc::strong_count(c) == 1;
            if gone {
                c.add_to(&mut retired);
            }
            !gone
        });
        groups.push(counters.clone());
        counters
    }

    pub(crate) fn snapshot(&self) -> BusStats {
        let groups = crate::topic::lock(&self.groups);
        let mut totals = *crate::topic::lock(&self.retired);
        for counters in groups.iter() {
            counters.add_to(&mut totals);
        }
        let [
            deliveries,
            delivered,
            failed,
            dead_lettered,
            expired,
            dropped,
            retries,
            wakeups,
            batches,
        ] = totals;
        let settled = delivered + failed + dead_lettered + expired + dropped;
        BusStats {
            published: self.published.load(Ordering::Acquire),
            deliveries,
            delivered,
            failed,
            dead_lettered,
            expired,
            not_delivered: dropped,
            in_flight: deliveries.saturating_sub(settled),
            retries,
            wakeups,
            batches,
        }
    }
}

/// Counters of a bus. Every accepted delivery (one event for one subscription) ends in
/// exactly one of `delivered`, `failed`, `dead_lettered`, `expired`, `not_delivered`,
/// or is still `in_flight`.
///
/// `#[non_exhaustive]`: counters are added as the engine grows (`batches` was), so it
/// is read, not built, outside this crate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Times a group's processor had emptied its queue, waited, and was woken by a
    /// publish. Each such wake-up costs the publisher a task wake-up (with a
    /// multi-threaded runtime, often a thread wake-up: microseconds); a processor that
    /// keeps up waits briefly after a small read before it waits to be woken (spinning
    /// up to 20 µs on a multi-thread runtime, one yield on a current-thread one), so
    /// steady traffic wakes it rarely, and a burst far fewer times than events.
    pub wakeups: u64,
    /// Batches the groups' processors read from their topics' rings: `deliveries /
    /// batches` is the mean batch of in-process groups (at most 256). A processor that
    /// keeps up with its publishers would read one event at a time; it waits briefly
    /// after a small read (as above) so that the next one reads more.
    pub batches: u64,
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
