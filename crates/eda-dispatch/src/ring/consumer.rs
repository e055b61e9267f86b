//! A consumer: reads published events in batches, by reference, and releases their
//! slots by storing its sequence.

use std::future::poll_fn;
use std::task::{Context, Poll};

use super::barrier::SequenceBarrier;
use super::ring::{Closed, RingBuffer};
use super::sequence::Sequence;
use super::sync::Arc;

/// Reads every event of a ring (each consumer sees every event: multicast).
///
/// Producers never overwrite an event before every consumer has read it; a consumer
/// that stops reading therefore stops its producers (dropping it releases them).
#[derive(Debug)]
pub struct Consumer<T> {
    barrier: SequenceBarrier<T>,
    sequence: Arc<Sequence>,
    next: i64,
}

impl<T: Send + Sync> Consumer<T> {
    pub(super) fn new(ring: Arc<RingBuffer<T>>, dependents: Vec<Arc<Sequence>>) -> Self {
        if !dependents.is_empty() {
            ring.pipelined.store(true, super::sync::Ordering::SeqCst);
        }
        let sequence = ring.register_consumer();
        let next = sequence.get() + 1;
        Self {
            barrier: SequenceBarrier { ring, dependents },
            sequence,
            next,
        }
    }

    /// This consumer's progress: the last sequence it finished.
    pub fn sequence(&self) -> &Arc<Sequence> {
        &self.sequence
    }

    /// The next sequence it will read.
    pub fn next_sequence(&self) -> i64 {
        self.next
    }

    /// Events published but not read yet by this consumer.
    pub fn lag(&self) -> i64 {
        (self.barrier.available(self.next) - self.next + 1).max(0)
    }

    /// Reads up to `max` available events through `f(sequence, &event)`, then releases
    /// them. Returns how many were read (0 when none is available).
    #[inline]
    pub fn try_read_batch(&mut self, max: usize, mut f: impl FnMut(i64, &T)) -> usize {
        let available = self.barrier.available(self.next);
        if available < self.next || max == 0 {
            return 0;
        }
        let hi = available.min(self.next + max as i64 - 1);
        let ring = &self.barrier.ring;
        for sequence in self.next..=hi {
            ring.read(sequence, |event| f(sequence, event));
        }
        self.sequence.set(hi);
        ring.consumer_progressed();
        let n = (hi - self.next + 1) as usize;
        self.next = hi + 1;
        n
    }

    /// Waits on this thread, with the ring's strategy, until an event is available;
    /// `Err(Closed)` once the ring is closed and drained.
    pub fn wait(&self) -> Result<(), Closed> {
        let ring = &self.barrier.ring;
        if self.barrier.available(self.next) >= self.next {
            return Ok(());
        }
        ring.strategy.wait_until(&ring.data, || {
            self.barrier.available(self.next) >= self.next || ring.is_closed()
        });
        self.ready_or_closed()
    }

    fn ready_or_closed(&self) -> Result<(), Closed> {
        if self.barrier.available(self.next) >= self.next {
            Ok(())
        } else {
            Err(Closed)
        }
    }

    /// Polls for an available event without a thread of its own: on a blocking ring the
    /// producer wakes this task only when it registered as waiting (on a spinning or
    /// yielding ring the task re-polls itself).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let ring = &self.barrier.ring;
        if self.barrier.available(self.next) >= self.next {
            return Poll::Ready(Ok(()));
        }
        if ring.is_closed() {
            return Poll::Ready(self.ready_or_closed());
        }
        if !ring.signals() {
            // Nobody signals a spinning ring: poll again soon.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ring.data.register(cx.waker());
        if self.barrier.available(self.next) >= self.next {
            Poll::Ready(Ok(()))
        } else if ring.is_closed() {
            Poll::Ready(self.ready_or_closed())
        } else {
            Poll::Pending
        }
    }

    /// Waits (asynchronously) until an event is available.
    pub async fn ready(&self) -> Result<(), Closed> {
        poll_fn(|cx| self.poll_ready(cx)).await
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.barrier.ring.remove_gating(&self.sequence);
    }
}
