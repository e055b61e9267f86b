//! loom models of the ring: every interleaving (within the preemption bound) of
//! 2–3 threads claiming, publishing, gating and consuming on a ring of 2 slots, so that
//! producers must wait for consumers to free slots.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!       cargo test -p eda-dispatch --release --lib loom`

use loom::thread;

use super::sync::Arc;
use super::{WaitStrategy, multi_producer, single_producer, single_producer_with};

/// Reads `n` events on this thread, blocking while none is available (a condvar wait
/// is one step for loom, where a spin loop is many).
fn drain(consumer: &mut super::Consumer<u64>, n: usize) -> Vec<u64> {
    drain_with(consumer, n, |c| c.wait().unwrap())
}

/// Reads `n` events, calling `wait` whenever it wants more.
fn drain_with(
    consumer: &mut super::Consumer<u64>,
    n: usize,
    wait: impl Fn(&super::Consumer<u64>),
) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < n {
        wait(consumer);
        consumer.try_read_batch(2, |_, v| seen.push(*v));
    }
    seen
}

/// A producer publishes two events while a reader waits for them with `wait`: either
/// the producer's notify wakes the reader or the reader's last look sees the event.
fn a_waiting_reader_gets_both_events(wait: fn(&super::Consumer<u64>)) {
    loom::model(move || {
        let (mut producer, ring) = single_producer::<u64>(2);
        let mut consumer = ring.consumer();
        let reader = thread::spawn(move || drain_with(&mut consumer, 2, wait));
        producer.try_publish(1).unwrap();
        producer.try_publish(2).unwrap();
        assert_eq!(reader.join().unwrap(), vec![1, 2]);
    });
}

#[test]
fn loom_single_producer_wraps_without_overwriting() {
    loom::model(|| {
        let (mut producer, ring) = single_producer::<u64>(2);
        let mut consumer = ring.consumer();
        let reader = thread::spawn(move || drain(&mut consumer, 3));
        for v in 1..=3 {
            producer.publish(v).unwrap();
        }
        assert_eq!(reader.join().unwrap(), vec![1, 2, 3]);
    });
}

#[test]
fn loom_multi_producer_claims_are_unique_and_ordered_per_producer() {
    loom::model(|| {
        let (producer, ring) = multi_producer::<u64>(2);
        let mut consumer = ring.consumer();
        let p2 = producer.clone();
        let reader = thread::spawn(move || drain(&mut consumer, 3));
        let other = thread::spawn(move || {
            p2.publish(10).unwrap();
            p2.publish(11).unwrap();
        });
        producer.publish(20).unwrap();
        other.join().unwrap();
        let seen = reader.join().unwrap();
        let tens: Vec<u64> = seen.iter().copied().filter(|v| *v < 20).collect();
        assert!(
            tens.windows(2).all(|w| w[0] < w[1]),
            "per-producer order: {seen:?}"
        );
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![10, 11, 20], "no loss, no duplicate");
    });
}

#[test]
fn loom_every_consumer_gates_the_producer() {
    loom::model(|| {
        let (mut producer, ring) = single_producer::<u64>(2);
        let mut a = ring.consumer();
        let mut b = ring.consumer();
        let ta = thread::spawn(move || drain(&mut a, 3));
        let tb = thread::spawn(move || drain(&mut b, 3));
        for v in 1..=3 {
            producer.publish(v).unwrap();
        }
        assert_eq!(ta.join().unwrap(), vec![1, 2, 3]);
        assert_eq!(tb.join().unwrap(), vec![1, 2, 3]);
    });
}

#[test]
fn loom_yielding_consumer_sees_a_batch() {
    loom::model(|| {
        let (mut producer, ring) = single_producer_with::<u64>(2, WaitStrategy::Yielding);
        let mut consumer = ring.consumer();
        let reader = thread::spawn(move || {
            consumer.wait().unwrap();
            let mut seen = Vec::new();
            consumer.try_read_batch(2, |_, v| seen.push(*v));
            seen
        });
        producer.try_publish_batch([1, 2]).unwrap();
        assert_eq!(
            reader.join().unwrap(),
            vec![1, 2],
            "a batch is published at once"
        );
    });
}

#[test]
fn loom_blocking_wait_never_loses_a_wakeup() {
    a_waiting_reader_gets_both_events(|c| c.wait().unwrap());
}

/// An async consumer (no thread of its own): it registers its waker, then looks again.
#[test]
fn loom_async_wait_never_loses_a_wakeup() {
    a_waiting_reader_gets_both_events(|c| loom::future::block_on(c.ready()).unwrap());
}

/// Two blocked consumers, one signal: the one that sets `signalled` wakes both, and a
/// consumer that re-registers after it clears the flag for the next signal.
#[test]
fn loom_two_blocked_consumers_are_both_woken() {
    loom::model(|| {
        let (mut producer, ring) = single_producer::<u64>(2);
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let mut consumer = ring.consumer();
                thread::spawn(move || drain(&mut consumer, 2))
            })
            .collect();
        producer.try_publish(1).unwrap();
        producer.try_publish(2).unwrap();
        for reader in readers {
            assert_eq!(reader.join().unwrap(), vec![1, 2]);
        }
    });
}

#[test]
fn loom_close_wakes_a_blocked_consumer() {
    loom::model(|| {
        let (_producer, ring) = single_producer::<u64>(2);
        let consumer = ring.consumer();
        let closer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || ring.close())
        };
        assert!(consumer.wait().is_err());
        closer.join().unwrap();
    });
}

#[test]
fn loom_pipeline_stage_is_woken_by_the_earlier_stage() {
    loom::model(|| {
        let (mut producer, ring) = single_producer::<u64>(2);
        let mut first = ring.consumer();
        let mut second = ring.consumer_after(&[&first]);
        let stage2 = thread::spawn(move || drain(&mut second, 2));
        let stage1 = thread::spawn(move || drain(&mut first, 2));
        producer.try_publish_batch([1, 2]).unwrap();
        assert_eq!(stage1.join().unwrap(), vec![1, 2]);
        assert_eq!(stage2.join().unwrap(), vec![1, 2]);
    });
}

#[test]
fn loom_multi_producers_without_consumers_never_write_one_slot_at_once() {
    // No consumer gates the ring, so the second claim laps the first in a ring of one
    // slot: its write must wait until the first producer has published its own.
    loom::model(|| {
        let (producer, ring) = multi_producer::<u64>(1);
        let p2 = producer.clone();
        let other = thread::spawn(move || {
            p2.publish(1).unwrap();
        });
        producer.publish(2).unwrap();
        other.join().unwrap();
        assert_eq!(ring.cursor(), 1, "two claims");
    });
}
