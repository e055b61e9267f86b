//! Events in ring slots are owned by the ring: each one is dropped exactly once (when
//! its slot is written over, or with the ring), whatever the producers' iterators do.
//! Slots are bare `MaybeUninit`, so a miscount here would be a double drop or a read of
//! uninitialised memory; these tests pin the bookkeeping down through drop counts (the
//! write-write race between multi producers is the loom model's job: it is too narrow
//! to hit from threads).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use eda_dispatch::ring;

/// Counts its drops in a shared counter; its value is checked by consumers.
#[derive(Debug)]
struct Counted {
    value: u64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn counted(drops: &Arc<AtomicUsize>, value: u64) -> Counted {
    Counted {
        value,
        drops: drops.clone(),
    }
}

#[test]
fn single_producer_drops_each_event_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (mut producer, ring) = ring::single_producer::<Counted>(4);
    let mut consumer = ring.consumer();
    let mut seen = Vec::new();
    for i in 0..10 {
        producer.try_publish(counted(&drops, i)).unwrap();
        consumer.try_read_batch(4, |_, e| seen.push(e.value));
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    // 10 events in 4 slots: the first 6 were written over, the last 4 are still held.
    assert_eq!(drops.load(Ordering::SeqCst), 6);
    drop((producer, consumer, ring));
    assert_eq!(drops.load(Ordering::SeqCst), 10);
}

#[test]
fn a_ring_dropped_before_it_filled_drops_only_what_was_written() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (mut producer, ring) = ring::single_producer::<Counted>(8);
    producer
        .try_publish_batch([counted(&drops, 1), counted(&drops, 2)])
        .unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop((producer, ring));
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

/// Announces more items than it yields.
struct Short(std::vec::IntoIter<u64>, usize);
impl Iterator for Short {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0.next()
    }
}
impl ExactSizeIterator for Short {
    fn len(&self) -> usize {
        self.1
    }
}

#[test]
fn a_short_batch_publishes_only_what_it_yielded() {
    let (mut producer, ring) = ring::single_producer::<u64>(8);
    let mut consumer = ring.consumer();
    let (lo, hi) = producer
        .try_publish_batch(Short(vec![7, 8].into_iter(), 5))
        .unwrap();
    assert_eq!((lo, hi), (0, 1));
    producer.try_publish(9).unwrap();
    let mut seen = Vec::new();
    consumer.try_read_batch(8, |_, v| seen.push(*v));
    assert_eq!(seen, [7, 8, 9], "no uninitialised slot was published");

    let (multi, ring) = ring::multi_producer::<u64>(8);
    let mut consumer = ring.consumer();
    assert_eq!(
        multi
            .try_publish_batch(Short(vec![1, 2].into_iter(), 5))
            .unwrap(),
        (0, 1)
    );
    multi.try_publish(3).unwrap();
    let mut seen = Vec::new();
    consumer.try_read_batch(8, |_, v| seen.push(*v));
    assert_eq!(seen, [1, 2, 3]);
}

#[test]
fn a_batch_whose_iterator_panics_publishes_nothing_and_leaves_the_ring_usable() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (mut producer, ring) = ring::single_producer::<Counted>(4);
    let mut consumer = ring.consumer();
    for i in 0..4 {
        producer.try_publish(counted(&drops, i)).unwrap();
    }
    consumer.try_read_batch(4, |_, _| {});
    let d = drops.clone();
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let items = (10..13u32).map(move |i| {
            if i == 12 {
                panic!("the iterator fails midway");
            }
            counted(&d, u64::from(i))
        });
        let _ = producer.try_publish_batch(items);
    }));
    assert!(panicked.is_err());
    // Two events were written over 0 and 1 (dropped), then the iterator panicked.
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    assert_eq!(
        consumer.lag(),
        0,
        "nothing of the failed batch was published"
    );
    producer.try_publish(counted(&drops, 20)).unwrap();
    producer.try_publish(counted(&drops, 21)).unwrap();
    let mut seen = Vec::new();
    consumer.try_read_batch(4, |_, e| seen.push(e.value));
    assert_eq!(seen, [20, 21]);
    // 20 and 21 replaced the failed batch's 10 and 11.
    assert_eq!(drops.load(Ordering::SeqCst), 4);
    drop((producer, consumer, ring));
    // 2 and 3 (from the first lap) and 20, 21: every event created was dropped once.
    assert_eq!(drops.load(Ordering::SeqCst), 8);
}

#[test]
fn multi_producers_drop_each_event_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (producer, ring) = ring::multi_producer::<Counted>(16);
    let mut consumer = ring.consumer();
    let per = 20_000u64;
    let writers: Vec<_> = (0..3u64)
        .map(|p| {
            let producer = producer.clone();
            let drops = drops.clone();
            thread::spawn(move || {
                let mut made = 0usize;
                for i in 0..per {
                    let value = (p << 32) | i;
                    made += 1;
                    if i % 3 == 0 {
                        // A full ring refuses the batch and drops its event: make another.
                        if producer
                            .try_publish_batch([counted(&drops, value)])
                            .is_err()
                        {
                            made += 1;
                            producer.publish(counted(&drops, value)).unwrap();
                        }
                    } else {
                        producer.publish(counted(&drops, value)).unwrap();
                    }
                }
                made
            })
        })
        .collect();
    drop(producer);
    let mut next = [0u64; 3];
    let mut total = 0;
    while total < 3 * per {
        consumer.wait().unwrap();
        total += consumer.try_read_batch(16, |_, e| {
            let p = (e.value >> 32) as usize;
            assert_eq!(e.value & 0xffff_ffff, next[p], "order per producer");
            next[p] += 1;
        }) as u64;
    }
    let made: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(next, [per; 3]);
    drop((consumer, ring));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        made,
        "every event dropped once"
    );
}

#[test]
fn multi_producers_without_consumers_never_share_a_slot() {
    // Nobody gates the ring, so producers lap each other; each write still waits for
    // the slot's previous occupant to be published, so every event is dropped once.
    let drops = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let (producer, ring) = ring::multi_producer::<Counted>(2);
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let producer = producer.clone();
            let drops = drops.clone();
            let created = created.clone();
            thread::spawn(move || {
                for i in 0..50_000 {
                    created.fetch_add(1, Ordering::SeqCst);
                    producer.publish(counted(&drops, i)).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        created.load(Ordering::SeqCst) - 2,
        "all but the 2 events still in the slots were dropped, once"
    );
    drop((producer, ring));
    assert_eq!(drops.load(Ordering::SeqCst), created.load(Ordering::SeqCst));
}
