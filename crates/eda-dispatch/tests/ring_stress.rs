//! Stress tests of the ring with real threads: several producers and multicast
//! consumers, non-spinning waits. Every consumer must see every event exactly once,
//! each producer's events in the order it published them.
//!
//! `cargo xtask ci` runs them in release (millions of events); debug runs use fewer.

use std::sync::Arc;
use std::thread;

use eda_dispatch::ring::{self, Consumer, WaitStrategy};

const PRODUCER_SHIFT: u32 = 40;

fn events_per_producer() -> u64 {
    if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    }
}

/// Consumes until every producer's last event arrived, checking order per producer.
fn check_all(mut consumer: Consumer<u64>, producers: u64, per: u64) -> u64 {
    let mut next = vec![0u64; producers as usize];
    let mut seen = 0u64;
    let total = producers * per;
    while seen < total {
        consumer.wait().expect("ring closed early");
        consumer.try_read_batch(256, |_, &v| {
            let p = (v >> PRODUCER_SHIFT) as usize;
            let n = v & ((1 << PRODUCER_SHIFT) - 1);
            assert_eq!(
                n, next[p],
                "producer {p}: expected {} got {n} (loss, duplicate or reorder)",
                next[p]
            );
            next[p] += 1;
            seen += 1;
        });
    }
    assert!(next.iter().all(|&n| n == per));
    seen
}

fn run_multi(producers: u64, consumers: usize, capacity: usize, strategy: WaitStrategy) {
    let per = events_per_producer();
    let (producer, ring) = ring::multi_producer_with::<u64>(capacity, strategy);
    let readers: Vec<_> = (0..consumers)
        .map(|_| {
            let c = ring.consumer();
            thread::spawn(move || check_all(c, producers, per))
        })
        .collect();
    let writers: Vec<_> = (0..producers)
        .map(|p| {
            let producer = producer.clone();
            thread::spawn(move || {
                let mut n = 0;
                while n < per {
                    // Mix single publishes and batches.
                    if n % 3 == 0 && n + 8 <= per {
                        let batch: Vec<u64> =
                            (n..n + 8).map(|i| (p << PRODUCER_SHIFT) | i).collect();
                        loop {
                            if producer.try_publish_batch(batch.iter().copied()).is_ok() {
                                break;
                            }
                            thread::yield_now();
                        }
                        n += 8;
                    } else {
                        producer.publish((p << PRODUCER_SHIFT) | n).unwrap();
                        n += 1;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), producers * per);
    }
}

#[test]
fn three_producers_three_consumers_yielding() {
    run_multi(3, 3, 1024, WaitStrategy::Yielding);
}

#[test]
fn three_producers_three_consumers_blocking() {
    run_multi(3, 3, 1024, WaitStrategy::Blocking);
}

#[test]
fn two_producers_two_consumers_blocking_small_ring() {
    // A ring of 64 slots makes producers wait for consumers all the time.
    run_multi(2, 2, 64, WaitStrategy::Blocking);
}

#[test]
fn single_producer_batches_and_pipeline() {
    let per = events_per_producer() * 2;
    let (mut producer, ring) = ring::single_producer::<u64>(512);
    let first = ring.consumer();
    let second = ring.consumer_after(&[&first]);
    let first_seq = first.sequence().clone();
    let stage2 = thread::spawn(move || {
        let mut c = second;
        let mut expect = 0;
        while expect < per {
            c.wait().unwrap();
            c.try_read_batch(128, |seq, &v| {
                assert_eq!(v, expect);
                // A later stage never overtakes the earlier one.
                assert!(first_seq.get() >= seq);
                expect += 1;
            });
        }
    });
    let stage1 = thread::spawn(move || check_all(first, 1, per));
    let mut n = 0;
    while n < per {
        let k = (n % 61 + 1).min(per - n);
        producer
            .publish_batch((n..n + k).collect::<Vec<_>>())
            .unwrap();
        n += k;
    }
    assert_eq!(stage1.join().unwrap(), per);
    stage2.join().unwrap();
}

#[test]
fn async_consumers_await_without_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let per = events_per_producer();
    let producers = 2u64;
    let (producer, ring) = ring::multi_producer::<u64>(256);
    let consumers: Vec<_> = (0..3).map(|_| ring.consumer()).collect();
    let tasks: Vec<_> = consumers
        .into_iter()
        .map(|mut c| {
            rt.spawn(async move {
                let mut next = vec![0u64; producers as usize];
                let mut seen = 0;
                while seen < producers * per {
                    c.ready().await.unwrap();
                    c.try_read_batch(256, |_, &v| {
                        let p = (v >> PRODUCER_SHIFT) as usize;
                        assert_eq!(v & ((1 << PRODUCER_SHIFT) - 1), next[p]);
                        next[p] += 1;
                        seen += 1;
                    });
                }
                seen
            })
        })
        .collect();
    let ring2 = Arc::clone(&ring);
    let writers: Vec<_> = (0..producers)
        .map(|p| {
            let producer = producer.clone();
            rt.spawn(async move {
                for n in 0..per {
                    let mut v = (p << PRODUCER_SHIFT) | n;
                    loop {
                        match producer.try_publish(v) {
                            Ok(_) => break,
                            Err(back) => {
                                v = back;
                                producer.room().await.unwrap();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    rt.block_on(async {
        for w in writers {
            w.await.unwrap();
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), producers * per);
        }
    });
    ring2.close();
}

#[test]
fn closing_drains_then_stops() {
    let (mut producer, ring) = ring::single_producer::<u64>(8);
    let mut c = ring.consumer();
    producer.try_publish_batch([1, 2, 3]).unwrap();
    ring.close();
    assert!(
        producer.try_publish(4).is_err(),
        "closed rings refuse events"
    );
    c.wait().unwrap();
    let mut got = Vec::new();
    c.try_read_batch(8, |_, v| got.push(*v));
    assert_eq!(got, [1, 2, 3]);
    assert!(c.wait().is_err(), "drained and closed");
}

#[test]
fn dropping_a_consumer_releases_the_producer() {
    let (mut producer, ring) = ring::single_producer::<u64>(4);
    let slow = ring.consumer();
    for i in 0..4 {
        producer.try_publish(i).unwrap();
    }
    assert!(
        producer.try_publish(99).is_err(),
        "gated by the slow consumer"
    );
    drop(slow);
    producer
        .try_publish(4)
        .expect("no consumer left to wait for");
}

#[test]
fn a_late_consumer_sees_only_later_events() {
    let (mut producer, ring) = ring::single_producer::<u64>(4);
    let mut early = ring.consumer();
    producer.try_publish_batch([1, 2]).unwrap();
    let mut late = ring.consumer();
    producer.try_publish(3).unwrap();
    let (mut e, mut l) = (Vec::new(), Vec::new());
    early.try_read_batch(8, |_, v| e.push(*v));
    late.try_read_batch(8, |_, v| l.push(*v));
    assert_eq!((e, l), (vec![1, 2, 3], vec![3]));
    assert_eq!(early.lag(), 0);
}

/// Runs `body` on a thread of its own and fails (instead of hanging) if it does not
/// finish within `limit`: a lost wake-up leaves a waiter asleep for good.
fn finishes_within(limit: std::time::Duration, what: &str, body: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let runner = thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => runner.join().unwrap(),
        // The body panicked: report its panic.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not finished after {limit:?} (a lost wake-up?)")
        }
    }
}

/// Events for the wake-up tests: each one puts a waiter to sleep and wakes it.
fn wake_up_events() -> u64 {
    if cfg!(debug_assertions) {
        20_000
    } else {
        200_000
    }
}

/// A blocking ring of two slots: the producer waits for room and the consumers wait
/// for data on nearly every event, so sleepers and signallers race all the time (the
/// sleeper check, `Notifier`). Every event must still reach every consumer.
#[test]
fn blocking_waiters_on_both_sides_never_miss_a_wake_up() {
    finishes_within(std::time::Duration::from_secs(120), "two-slot ring", || {
        let n = wake_up_events();
        let (mut producer, ring) = ring::single_producer_with::<u64>(2, WaitStrategy::Blocking);
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let c = ring.consumer();
                thread::spawn(move || check_all(c, 1, n))
            })
            .collect();
        for i in 0..n {
            producer.publish(i).unwrap();
        }
        for r in readers {
            assert_eq!(r.join().unwrap(), n);
        }
    });
}

/// The first async waiter switches a notifier from compiler fences on the signalling
/// side to fences on both (`Notifier`): here it does so while a thread consumer and the
/// producer already sleep and wake on the same ring, and events keep flowing to both.
#[test]
fn an_async_waiter_joining_thread_waiters_loses_no_wake_up() {
    finishes_within(std::time::Duration::from_secs(120), "mixed waiters", || {
        let n = wake_up_events();
        let (mut producer, ring) = ring::single_producer_with::<u64>(4, WaitStrategy::Blocking);
        let thread_reader = {
            let c = ring.consumer();
            thread::spawn(move || check_all(c, 1, n))
        };
        let mut late = ring.consumer();
        let async_reader = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                // Let the thread side run alone first.
                tokio::task::yield_now().await;
                let mut next = 0;
                while next < n {
                    late.ready().await.unwrap();
                    late.try_read_batch(4, |_, &v| {
                        assert_eq!(v, next, "the async consumer lost or reordered an event");
                        next += 1;
                    });
                }
                next
            })
        });
        for i in 0..n {
            producer.publish(i).unwrap();
        }
        assert_eq!(thread_reader.join().unwrap(), n);
        assert_eq!(async_reader.join().unwrap(), n);
    });
}
