//! Sequences: monotonically increasing 64-bit counters, one per producer cursor and per
//! consumer, each on its own cache line so that the hot counters of different threads
//! never share one.

use crossbeam_utils::CachePadded;

use super::sync::{AtomicI64, Ordering};

/// The value of a sequence before anything was published or consumed.
pub const INITIAL: i64 = -1;

/// A cache-padded atomic sequence number.
#[derive(Debug)]
pub struct Sequence(CachePadded<AtomicI64>);

impl Sequence {
    /// A sequence starting at `value`.
    pub fn new(value: i64) -> Self {
        Self(CachePadded::new(AtomicI64::new(value)))
    }

    /// Reads it. Acquire: pairs with the Release in [`set`](Self::set), so whatever the
    /// owner did before publishing the value (writing or reading slots) is visible.
    #[inline]
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Publishes a new value. Release: the owner's slot accesses happen before it.
    #[inline]
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Release);
    }

    /// Compare-and-set, for multi-producer claims. AcqRel on success: the claimer sees
    /// the previous claimers' gating reads; Acquire on failure to retry with a fresh value.
    #[inline]
    pub(crate) fn compare_exchange(&self, current: i64, new: i64) -> Result<i64, i64> {
        self.0
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

/// The smallest of `sequences`, or `default` when there are none.
pub(crate) fn min_sequence(sequences: &[super::sync::Arc<Sequence>], default: i64) -> i64 {
    sequences.iter().map(|s| s.get()).min().unwrap_or(default)
}
