//! The transactional outbox, the forwarder that drains it into another store, and
//! retention.

use std::sync::Arc;
use std::time::Duration;

use eda_core::{
    ConsumeOptions, Envelope, Event, EventStore, JsonCodec, ReadRange, StartFrom, Timestamp,
};
use eda_dispatch::{ForwardOptions, Forwarder};
use eda_store_sqlite::{Retention, SqliteStore};
use eda_testkit::{MemoryStore, wait_until};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    id: i64,
}
impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
}

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    let store = SqliteStore::open(dir.path().join("shop.db")).await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
        .execute(store.pool())
        .await
        .unwrap();
    store
}

async fn place(store: &SqliteStore, id: i64, commit: bool) {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let event = Envelope::new(OrderPlaced { id })
        .to_raw(&JsonCodec)
        .unwrap();
    store.append_in(&mut tx, "orders", &[event]).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

async fn ids_in(store: &dyn EventStore, topic: &str) -> Vec<i64> {
    store
        .read(topic, ReadRange::default())
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r.unwrap().decode::<OrderPlaced>().unwrap().payload.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_events_commit_and_roll_back_with_the_business_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    place(&store, 1, true).await;
    place(&store, 2, false).await;
    place(&store, 3, true).await;
    let orders: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(orders, vec![1, 3]);
    assert_eq!(ids_in(&store, "orders").await, vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_moves_the_outbox_to_another_store_and_dead_letters_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let target = MemoryStore::new();
    for id in 0..50 {
        place(&store, id, true).await;
    }
    store
        .insert_unchecked("orders", "not-a-uuid", "order.placed", b"\xff garbage")
        .await
        .unwrap();
    let bridge = Forwarder::spawn(
        Arc::new(store.clone()),
        "orders",
        Arc::new(target.clone()),
        "orders",
        ForwardOptions::default(),
    );
    for id in 50..100 {
        place(&store, id, true).await;
    }
    wait_until("100 forwarded events", async || {
        ids_in(&target, "orders").await.len() >= 100
    })
    .await;
    wait_until("the garbage in the dead letters", async || {
        !store
            .read("orders.dlq", ReadRange::default())
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    bridge.stop().await;
    assert_eq!(
        ids_in(&target, "orders").await,
        (0..100).collect::<Vec<_>>()
    );
    let dlq = store
        .read("orders.dlq", ReadRange::default())
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    let letter = dlq[0].1.as_ref().unwrap();
    let reason = letter.metadata.header(eda_core::DLQ_REASON).unwrap();
    assert!(reason.contains("undecodable"), "{reason}");

    // A second bridge (another process, a restart) resumes: nothing is forwarded twice,
    // and what was placed meanwhile follows.
    place(&store, 100, true).await;
    let bridge = Forwarder::spawn(
        Arc::new(store.clone()),
        "orders",
        Arc::new(target.clone()),
        "orders",
        ForwardOptions::default(),
    );
    wait_until("the 101st event", async || {
        ids_in(&target, "orders").await.len() >= 101
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bridge.stop().await;
    assert_eq!(
        ids_in(&target, "orders").await,
        (0..101).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_newest_records_and_drops_their_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let old = Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 3_600_000);
    let records: Vec<_> = (0..10)
        .map(|id| {
            let mut e = Envelope::new(OrderPlaced { id });
            if id < 4 {
                e.time = old;
            }
            e.to_raw(&JsonCodec).unwrap()
        })
        .collect();
    store.append("orders", records).await.unwrap();
    // A consumer holds the first record when it is pruned.
    let options = ConsumeOptions {
        start: StartFrom::Beginning,
        batch_size: 1,
        visibility_timeout: Duration::from_millis(100),
        ..ConsumeOptions::default()
    };
    let mut consumer = store.subscribe("orders", "g", "c", options).await.unwrap();
    let held = consumer.next().await.unwrap().unwrap();

    let by_age = store
        .prune("orders", Retention::MaxAge(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(by_age, 4);
    assert_eq!(ids_in(&store, "orders").await, (4..10).collect::<Vec<_>>());
    let by_count = store.prune("orders", Retention::MaxCount(3)).await.unwrap();
    assert_eq!(by_count, 3);
    assert_eq!(ids_in(&store, "orders").await, vec![7, 8, 9]);
    assert_eq!(
        store.prune("orders", Retention::MaxCount(3)).await.unwrap(),
        0
    );

    // The pruned delivery is gone (no in-flight row left to redeliver); the group goes
    // on with what is left.
    let in_flight: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM eda_inflight")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(in_flight, 0);
    drop(held);
    let mut next = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        next.push(
            d.record
                .as_ref()
                .unwrap()
                .decode::<OrderPlaced>()
                .unwrap()
                .payload
                .id,
        );
        d.ack().await.unwrap();
    }
    assert_eq!(next, vec![7, 8, 9]);
}
