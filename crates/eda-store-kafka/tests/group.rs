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

/// Partitions each consumer received records from, and every record's number.
type Seen = Arc<Mutex<(HashMap<String, HashSet<String>>, Vec<u64>)>>;

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
    let dir = tempfile::tempdir().unwrap();
    let coordination = Arc::new(SqliteStore::open(dir.path().join("c.db")).await.unwrap());
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
            let records = range
                .map(|n| {
                    Envelope::new(Job { n })
                        .with_partition_key(format!("k{n}"))
                        .to_raw(&JsonCodec)
                        .unwrap()
                })
                .collect();
            store.append(&topic, records).await.unwrap();
        }
    };
    publish(0..400).await;
    let wait_for = |count: usize| {
        let seen = seen.clone();
        async move {
            let started = std::time::Instant::now();
            while seen.lock().unwrap().1.iter().collect::<HashSet<_>>().len() < count {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "stuck below {count}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
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
