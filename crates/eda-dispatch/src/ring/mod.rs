//! A Disruptor-style ring buffer: pre-allocated power-of-two slots, a single-producer
//! fast path and a multi-producer CAS claim, batch publish and batch consume, consumers
//! that gate producers (nothing is overwritten before every consumer read it), and
//! waits that spin, yield, block, or await without a thread. The wait strategy belongs to
//! the ring (as in the LMAX Disruptor): only blocking rings pay for signalling.
//!
//! This is the only module of eda that contains `unsafe` (the slot accesses in
//! `ring.rs`, whose soundness argument is in that file, and a cache prefetch in
//! `sync.rs`, which touches no memory); loom models check it under
//! `RUSTFLAGS="--cfg loom"`. On Linux, blocking rings wake sleeping threads through an
//! asymmetric barrier (`membarrier(2)`, through rustix; [`Notifier`] says why and how).
//!
//! ```
//! use eda_dispatch::ring;
//!
//! let (mut producer, ring) = ring::single_producer::<u64>(1024);
//! let mut a = ring.consumer();
//! let mut b = ring.consumer(); // multicast: both see every event
//! producer.try_publish_batch((0..10u64).collect::<Vec<_>>()).unwrap();
//! let mut sum = 0;
//! a.try_read_batch(64, |_seq, v| sum += v);
//! b.wait().unwrap();
//! let mut count = 0;
//! b.try_read_batch(64, |_seq, _v| count += 1);
//! assert_eq!((sum, count), (45, 10));
//! ```

mod barrier;
mod consumer;
mod producer;
#[allow(clippy::module_inception)]
mod ring;
mod sequence;
mod sync;
mod wait;

#[cfg(all(test, loom))]
mod loom_tests;

pub use barrier::SequenceBarrier;
pub use consumer::Consumer;
pub use producer::{MultiProducer, SingleProducer};
pub use ring::{Closed, Full, RingBuffer};
pub use sequence::{INITIAL, Sequence};
pub use wait::{Notifier, WaitStrategy};

use sync::Arc;

/// A ring of `capacity` slots (rounded up to a power of two) with one producer, whose
/// waiters block (threads park, tasks await): never spins, never loses a wake-up.
pub fn single_producer<T: Send + Sync>(capacity: usize) -> (SingleProducer<T>, Arc<RingBuffer<T>>) {
    single_producer_with(capacity, WaitStrategy::Blocking)
}

/// [`single_producer`] with another wait strategy for everyone waiting on the ring.
pub fn single_producer_with<T: Send + Sync>(
    capacity: usize,
    strategy: WaitStrategy,
) -> (SingleProducer<T>, Arc<RingBuffer<T>>) {
    let ring = RingBuffer::new(capacity, false, strategy);
    (SingleProducer::new(ring.clone()), ring)
}

/// A ring of `capacity` slots (rounded up to a power of two) with any number of
/// producers (clone the handle); waiters block.
pub fn multi_producer<T: Send + Sync>(capacity: usize) -> (MultiProducer<T>, Arc<RingBuffer<T>>) {
    multi_producer_with(capacity, WaitStrategy::Blocking)
}

/// [`multi_producer`] with another wait strategy for everyone waiting on the ring.
pub fn multi_producer_with<T: Send + Sync>(
    capacity: usize,
    strategy: WaitStrategy,
) -> (MultiProducer<T>, Arc<RingBuffer<T>>) {
    let ring = RingBuffer::new(capacity, true, strategy);
    (MultiProducer::new(ring.clone()), ring)
}

impl<T: Send + Sync> RingBuffer<T> {
    /// A new consumer that sees every event published from now on.
    pub fn consumer(self: &Arc<Self>) -> Consumer<T> {
        Consumer::new(self.clone(), Vec::new())
    }

    /// A consumer that only reads what `earlier` have all finished (a pipeline stage).
    pub fn consumer_after(self: &Arc<Self>, earlier: &[&Consumer<T>]) -> Consumer<T> {
        Consumer::new(
            self.clone(),
            earlier.iter().map(|c| c.sequence().clone()).collect(),
        )
    }
}
