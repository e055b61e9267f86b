//! Consumers of one group split the partitions between them, and take over those of a
//! consumer that leaves.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, StartFrom};
use eda_store_kafka::KafkaStore;
use eda_store_sqlite::SqliteStore;
use eda_testkit::backend::{kafka_brokers, require};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Job {
    n: u64,
}
impl Event for Job {
    const TYPE: &'static str = "job";
}

/// Jobs numbered by `range`, each keyed `k<n>` (spread over the partitions).
fn jobs(range: std::ops::Range<u64>) -> Vec<eda_core::RawEvent> {
    range
        .map(|n| {
            Envelope::new(Job { n })
                .with_partition_key(format!("k{n}"))
                .to_raw(&JsonCodec)
                .unwrap()
        })
        .collect()
}

/// A fresh SQLite coordination store for a test's `KafkaStore`s (the directory lives as
/// long as the returned guard).
async fn coordination() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    (dir, Arc::new(store))
}

/// Partitions each consumer received records from, and every record's number.
type Seen = Arc<Mutex<(HashMap<String, HashSet<String>>, Vec<u64>)>>;

/// The distinct record numbers in `seen` once there are `count` of them, or when 20 s
/// have passed.
async fn distinct_seen(seen: &Seen, count: usize) -> HashSet<u64> {
    let started = std::time::Instant::now();
    loop {
        let distinct: HashSet<u64> = seen.lock().unwrap().1.iter().copied().collect();
        if distinct.len() >= count || started.elapsed() >= Duration::from_secs(20) {
            return distinct;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn consume(
    store: KafkaStore,
    topic: String,
    name: &'static str,
    seen: Seen,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let options = ConsumeOptions {
            start: StartFrom::Beginning,
            ..ConsumeOptions::default()
        };
        let mut s = store
            .subscribe(&topic, "workers", name, options)
            .await
            .unwrap();
        while let Some(d) = s.next().await {
            let d = d.unwrap();
            let partition = d.position.as_str().split(':').next().unwrap().to_owned();
            let n = d
                .record
                .as_ref()
                .unwrap()
                .decode::<Job>()
                .unwrap()
                .payload
                .n;
            {
                let mut seen = seen.lock().unwrap();
                seen.0.entry(name.to_owned()).or_default().insert(partition);
                seen.1.push(n);
            }
            d.ack().await.unwrap();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_split_the_partitions_and_take_over_a_leavers() {
    let Some(()) = require("kafka group split", &kafka_brokers()).await else {
        return;
    };
    let (_dir, coordination) = coordination().await;
    let store = KafkaStore::builder([kafka_brokers()], coordination)
        .partitions(4)
        .lease_ttl(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let topic = format!("jobs-{:08x}", fastrand::u32(..));
    let seen: Seen = Arc::default();
    let a = consume(store.clone(), topic.clone(), "a", seen.clone());
    let b = consume(store.clone(), topic.clone(), "b", seen.clone());
    tokio::time::sleep(Duration::from_secs(1)).await; // both members counted
    let publish = |range: std::ops::Range<u64>| {
        let store = store.clone();
        let topic = topic.clone();
        async move {
            store.append(&topic, jobs(range)).await.unwrap();
        }
    };
    publish(0..400).await;
    let wait_for = async |count: usize| {
        let distinct = distinct_seen(&seen, count).await.len();
        assert!(distinct >= count, "stuck below {count}: {distinct}");
    };
    wait_for(400).await;
    {
        let seen = seen.lock().unwrap();
        let (pa, pb) = (&seen.0["a"], &seen.0["b"]);
        assert_eq!(pa.len(), 2, "a has two partitions: {pa:?} / {pb:?}");
        assert_eq!(pb.len(), 2, "b has two partitions: {pa:?} / {pb:?}");
        assert!(pa.is_disjoint(pb), "{pa:?} / {pb:?}");
    }
    // `a` leaves: `b` takes its partitions and everything published after.
    a.abort();
    let _ = a.await;
    publish(400..800).await;
    wait_for(800).await;
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.0["b"].len(),
        4,
        "b took a's partitions: {:?}",
        seen.0["b"]
    );
    b.abort();
}

/// Static membership: member `i` of `n` consumes exactly the partitions `p % n == i`,
/// from its first delivery, without leases; the two members together see everything
/// once; and a member that stops leaves its partitions waiting (no take-over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_members_take_partitions_by_number() {
    let Some(()) = require("kafka static membership", &kafka_brokers()).await else {
        return;
    };
    let (_dir, coordination) = coordination().await;
    let member = |i: u32| {
        KafkaStore::builder([kafka_brokers()], coordination.clone())
            .partitions(4)
            .static_membership(i, 2)
            .connect()
    };
    let (zero, one) = (member(0).await.unwrap(), member(1).await.unwrap());
    let invalid = KafkaStore::builder([kafka_brokers()], coordination.clone())
        .static_membership(2, 2)
        .connect()
        .await;
    assert!(
        matches!(invalid, Err(eda_core::StoreError::Invalid(_))),
        "member 2 of 2 is refused"
    );
    let topic = format!("static-{:08x}", fastrand::u32(..));
    let seen: Seen = Arc::default();
    let a = consume(zero.clone(), topic.clone(), "a", seen.clone());
    let b = consume(one.clone(), topic.clone(), "b", seen.clone());
    zero.append(&topic, jobs(0..400)).await.unwrap();
    let started = std::time::Instant::now();
    while seen.lock().unwrap().1.len() < 400 {
        assert!(started.elapsed() < Duration::from_secs(20), "stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let seen = seen.lock().unwrap();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        assert_eq!(seen.0["a"], set(&["0", "2"]), "member 0 of 2");
        assert_eq!(seen.0["b"], set(&["1", "3"]), "member 1 of 2");
        let distinct: HashSet<_> = seen.1.iter().collect();
        assert_eq!((distinct.len(), seen.1.len()), (400, 400), "each once");
    }
    // Member 1 stops: what lands on its partitions waits; member 0 goes on with its own.
    b.abort();
    let _ = b.await;
    let more = jobs(400..480);
    let to_zero = more
        .iter()
        .filter(|r| zero.partition_of(r.metadata.partition_key.as_deref().unwrap()) % 2 == 0)
        .count();
    zero.append(&topic, more).await.unwrap();
    let started = std::time::Instant::now();
    while seen.lock().unwrap().1.len() < 400 + to_zero {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "member 0 stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.1.len(),
        400 + to_zero,
        "nobody took member 1's partitions"
    );
    assert!(
        to_zero > 0 && to_zero < 80,
        "{to_zero} of 80 on member 0's partitions"
    );
    assert_eq!(seen.0["a"].len(), 2);
    a.abort();
}

/// A consumer waiting at the head of its partitions does not hold appends back: its
/// fetches wait on connections of their own. With a 3 s fetch wait, appends through
/// the same store used to queue behind a waiting fetch on the shared connection for up
/// to that long (the broker answers one connection's requests in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_do_not_wait_behind_a_consumers_fetch() {
    let Some(()) = require("kafka appends beside a waiting fetch", &kafka_brokers()).await else {
        return;
    };
    let (_dir, coordination) = coordination().await;
    let store = KafkaStore::builder([kafka_brokers()], coordination)
        .partitions(1)
        .fetch_wait(Duration::from_secs(3))
        .connect()
        .await
        .unwrap();
    let topic = format!("beside-{:08x}", fastrand::u32(..));
    store.append(&topic, jobs(0..1)).await.unwrap();
    let seen: Seen = Arc::default();
    let consumer = consume(store.clone(), topic.clone(), "a", seen.clone());
    // The first record delivered: the worker now sits in a 3 s fetch at the head.
    let started = std::time::Instant::now();
    while seen.lock().unwrap().1.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 1..6 {
        let started = std::time::Instant::now();
        store.append(&topic, jobs(n..n + 1)).await.unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "append {n} took {took:?}: queued behind the consumer's fetch"
        );
    }
    consumer.abort();
}

/// Attempt counts after a crash, per record: a record in hand when its consumer died
/// counts that delivery, one never delivered starts at 1, in one batch (first
/// deliveries only raise the partition's delivered mark; redeliveries are counted per
/// record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_after_a_crash_count_only_what_was_delivered() {
    let Some(()) = require("kafka attempts after a crash", &kafka_brokers()).await else {
        return;
    };
    let (_dir, coordination) = coordination().await;
    let store = KafkaStore::builder([kafka_brokers()], coordination)
        .partitions(1)
        .lease_ttl(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let topic = format!("attempts-{:08x}", fastrand::u32(..));
    store.append(&topic, jobs(0..4)).await.unwrap();
    let options = |batch_size| ConsumeOptions {
        start: StartFrom::Beginning,
        batch_size,
        visibility_timeout: Duration::from_secs(30),
        ..ConsumeOptions::default()
    };
    let number = |d: &eda_core::Delivery| {
        d.record
            .as_ref()
            .unwrap()
            .decode::<Job>()
            .unwrap()
            .payload
            .n
    };
    let next = async |s: &mut eda_core::DeliveryStream| {
        tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("a delivery within 10 s")
            .unwrap()
            .unwrap()
    };

    // A window of 2: jobs 0 and 1 are handed out (and nothing more while neither is
    // acked), then the consumer dies with both in hand; 2 and 3 were never delivered.
    let mut first = store
        .subscribe(&topic, "g", "first", options(2))
        .await
        .unwrap();
    let (zero, one) = (next(&mut first).await, next(&mut first).await);
    assert_eq!((number(&zero), zero.attempt), (0, 1));
    assert_eq!((number(&one), one.attempt), (1, 1));
    drop((zero, one));
    drop(first);

    // The next consumer gets 0 and 1 (their second delivery) and 2, 3 (their first),
    // in one window; it acks all but 1.
    let mut second = store
        .subscribe(&topic, "g", "second", options(10))
        .await
        .unwrap();
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let d = next(&mut second).await;
        attempts.push((number(&d), d.attempt));
        if number(&d) != 1 {
            d.ack().await.unwrap();
        }
    }
    assert_eq!(attempts, vec![(0, 2), (1, 2), (2, 1), (3, 1)]);
    store.flush().await.unwrap();
    drop(second);

    // And once more for the record that keeps killing its consumer.
    let mut third = store
        .subscribe(&topic, "g", "third", options(10))
        .await
        .unwrap();
    let d = next(&mut third).await;
    assert_eq!((number(&d), d.attempt), (1, 3));
    d.ack().await.unwrap();
}

/// Appends racing each other into one partition from several connections, read by a
/// consumer that fetches every millisecond: every record arrives. (Tansu 0.6 raises a
/// partition's high watermark before it stores the batch, so some of these fetches
/// are answered with nothing below the watermark; the consumer must fetch again, not
/// skip ahead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_into_one_partition_all_reach_the_consumer() {
    let Some(()) = require("kafka racing appends", &kafka_brokers()).await else {
        return;
    };
    let (_dir, coordination) = coordination().await;
    let store = KafkaStore::builder([kafka_brokers()], coordination.clone())
        .partitions(1)
        .fetch_wait(Duration::from_millis(1))
        .connect()
        .await
        .unwrap();
    let topic = format!("racing-{:08x}", fastrand::u32(..));
    let seen: Seen = Arc::default();
    let consumer = consume(store.clone(), topic.clone(), "a", seen.clone());
    let (writers, batches, per) = (8u64, 40u64, 10u64);
    let mut appends = Vec::new();
    for w in 0..writers {
        // A store each: a connection each, so the broker serves the appends at once
        // (one connection's requests are answered in order).
        let store = KafkaStore::builder([kafka_brokers()], coordination.clone())
            .partitions(1)
            .connect()
            .await
            .unwrap();
        let topic = topic.clone();
        appends.push(tokio::spawn(async move {
            for b in 0..batches {
                let first = (w * batches + b) * per;
                store
                    .append(&topic, jobs(first..first + per))
                    .await
                    .unwrap();
            }
        }));
    }
    for a in appends {
        a.await.unwrap();
    }
    let total = (writers * batches * per) as usize;
    let got = distinct_seen(&seen, total).await;
    consumer.abort();
    let missing: Vec<u64> = (0..total as u64).filter(|n| !got.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {total} records never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
}
