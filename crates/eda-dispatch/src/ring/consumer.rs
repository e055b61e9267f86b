//! A consumer: reads published events in batches, by reference, and releases their
//! slots by storing its sequence.

use std::future::poll_fn;
use std::task::{Context, Poll};

use super::barrier::SequenceBarrier;
use super::ring::{Closed, RingBuffer};
use super::sequence::Sequence;
use super::sync::Arc;

/// The most events [`Consumer::wait`] lets its producer get ahead by before it returns.
const GATHER: i64 = 256;

/// The most pauses [`Consumer::wait`] makes to gather: a producer that publishes about
/// one event per pause would otherwise delay the first of them by 256 pauses.
const GATHER_PAUSES: u32 = 4;

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

    /// Events producers claimed past this consumer, published or not yet: a cheaper
    /// [`lag`](Self::lag) for a consumer that polls while its producers write. It reads
    /// the ring's cursor alone (on a multi-producer ring, `lag` reads each event's
    /// published flag: lines the producers are writing), and ignores the consumers this
    /// one runs after.
    pub fn claimed_lag(&self) -> i64 {
        (self.barrier.ring.cursor() - self.next + 1).max(0)
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
        ring.read_range(self.next, hi, &mut f);
        self.sequence.set(hi);
        ring.consumer_progressed();
        let n = (hi - self.next + 1) as usize;
        self.next = hi + 1;
        n
    }

    /// Waits on this thread, with the ring's strategy, until an event is available;
    /// `Err(Closed)` once the ring is closed and drained.
    ///
    /// When events are already there (the consumer keeps up with its producer), it first
    /// pauses while the producer is still publishing, until a quarter of the ring (at
    /// most 256 events) is there, so that [`try_read_batch`](Self::try_read_batch) reads
    /// whole batches instead of chasing the producer's cache lines a few events at a
    /// time; a pause that brings nothing new ends it (one yield, or a few spins with
    /// [`WaitStrategy::BusySpin`](super::WaitStrategy::BusySpin)), and it makes at most
    /// four. A consumer that had to wait returns as soon as the first event arrives.
    pub fn wait(&self) -> Result<(), Closed> {
        let ring = &self.barrier.ring;
        let available = self.barrier.available(self.next);
        if available >= self.next {
            self.gather(available);
            return Ok(());
        }
        ring.strategy.wait_until(&ring.data, || {
            ring.prefetch_slot(self.next);
            self.barrier.available(self.next) >= self.next || ring.is_closed()
        });
        self.ready_or_closed()
    }

    /// Events were there at once: this consumer keeps up with its producer. Reading them
    /// now would chase the producer a few events at a time, every read pulling back the
    /// cache lines the producer is writing. Instead it pauses (the ring's strategy:
    /// spin or yield) while the producer keeps publishing, until a quarter of the ring
    /// (at most [`GATHER`] events) is there; a pause that brings nothing new ends it, so
    /// a producer that stopped costs one pause, and a slow one at most
    /// [`GATHER_PAUSES`].
    #[inline]
    fn gather(&self, mut available: i64) {
        let ring = &self.barrier.ring;
        let enough = GATHER.min(ring.capacity() as i64 / 4);
        for _ in 0..GATHER_PAUSES {
            if available - self.next + 1 >= enough {
                return;
            }
            ring.strategy.pause();
            let now = self.barrier.available(self.next);
            if now == available {
                return;
            }
            available = now;
        }
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::{WaitStrategy, single_producer_with};

    #[test]
    fn a_batch_read_across_the_end_of_the_ring_keeps_sequences_and_order() {
        let (mut producer, ring) = single_producer_with::<u64>(8, WaitStrategy::Yielding);
        let mut consumer = ring.consumer();
        producer
            .try_publish_batch((0..6).collect::<Vec<u64>>())
            .unwrap();
        assert_eq!(consumer.try_read_batch(8, |_, _| {}), 6);
        // Sequences 6..=11 live in slots 6, 7, 0, 1, 2, 3.
        producer
            .try_publish_batch((6..12).collect::<Vec<u64>>())
            .unwrap();
        let mut seen = Vec::new();
        assert_eq!(consumer.try_read_batch(8, |s, v| seen.push((s, *v))), 6);
        assert_eq!(seen, (6..12).map(|v| (v as i64, v)).collect::<Vec<_>>());
    }

    #[test]
    fn claimed_lag_counts_what_the_consumer_has_not_read() {
        let (producer, ring) = super::super::multi_producer_with::<u64>(8, WaitStrategy::Yielding);
        let mut consumer = ring.consumer();
        assert_eq!(consumer.claimed_lag(), 0);
        for v in 0..5 {
            producer.try_publish(v).unwrap();
        }
        assert_eq!((consumer.claimed_lag(), consumer.lag()), (5, 5));
        assert_eq!(consumer.try_read_batch(3, |_, _| {}), 3);
        assert_eq!((consumer.claimed_lag(), consumer.lag()), (2, 2));
        consumer.try_read_batch(8, |_, _| {});
        assert_eq!(consumer.claimed_lag(), 0);
    }

    #[test]
    fn wait_returns_what_an_idle_producer_left_without_waiting_for_more() {
        for strategy in [
            WaitStrategy::BusySpin,
            WaitStrategy::Yielding,
            WaitStrategy::Blocking,
        ] {
            // 3 events in a ring of 1024: fewer than wait gathers, and no more will come.
            let (mut producer, ring) = single_producer_with::<u64>(1024, strategy);
            let mut consumer = ring.consumer();
            producer.try_publish_batch([1, 2, 3]).unwrap();
            consumer.wait().unwrap();
            let mut seen = Vec::new();
            consumer.try_read_batch(1024, |_, v| seen.push(*v));
            assert_eq!(seen, [1, 2, 3], "{strategy:?}");
        }
    }
}
