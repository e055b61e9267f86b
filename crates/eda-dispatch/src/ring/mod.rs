//! A Disruptor-style ring buffer: pre-allocated power-of-two slots, a single-producer
//! fast path and a multi-producer CAS claim, batch publish and batch consume, consumers
//! that gate producers (nothing is overwritten before every consumer read it), and
//! waits that spin, yield, block, or await without a thread.
//!
//! This is the only module of eda that contains `unsafe` (the slot accesses in
//! `ring.rs`, whose soundness argument is in that file); loom models check it under
//! `RUSTFLAGS="--cfg loom"`.
//!
//! ```
//! use eda_dispatch::ring::{self, WaitStrategy};
//!
//! let (mut producer, ring) = ring::single_producer::<u64>(1024);
//! let mut a = ring.consumer();
//! let mut b = ring.consumer(); // multicast: both see every event
//! producer.try_publish_batch((0..10u64).collect::<Vec<_>>()).unwrap();
//! let mut sum = 0;
//! a.try_read_batch(64, |_seq, v| sum += v);
//! b.wait(WaitStrategy::Yielding).unwrap();
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

/// A ring of `capacity` slots (rounded up to a power of two) with one producer.
pub fn single_producer<T: Send + Sync>(capacity: usize) -> (SingleProducer<T>, Arc<RingBuffer<T>>) {
    let ring = RingBuffer::new(capacity, false);
    (SingleProducer::new(ring.clone()), ring)
}

/// A ring of `capacity` slots (rounded up to a power of two) with any number of
/// producers (clone the handle).
pub fn multi_producer<T: Send + Sync>(capacity: usize) -> (MultiProducer<T>, Arc<RingBuffer<T>>) {
    let ring = RingBuffer::new(capacity, true);
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
