//! What a consumer may read: sequences that are published and that the consumers it
//! depends on (earlier pipeline stages) have finished.

use super::ring::RingBuffer;
use super::sequence::Sequence;
use super::sync::Arc;

/// Tracks how far a consumer may read.
#[derive(Debug)]
pub struct SequenceBarrier<T> {
    pub(super) ring: Arc<RingBuffer<T>>,
    pub(super) dependents: Vec<Arc<Sequence>>,
}

impl<T> SequenceBarrier<T> {
    /// The highest sequence readable from `next` on (`next - 1` when none is).
    #[inline]
    pub fn available(&self, next: i64) -> i64 {
        let mut limit = self.ring.cursor.get();
        for d in &self.dependents {
            limit = limit.min(d.get());
        }
        if limit < next {
            return next - 1;
        }
        self.ring.highest_published(next, limit)
    }
}
