//! Retention and the non-idempotent append mode, on the test Redis.

mod common;

use std::time::Duration;

use common::{OrderCreated, unique_prefix};
use eda_core::{Envelope, EventStore, JsonCodec, RawEvent, ReadRange};
use eda_store_redis::{RedisStreamStore, StreamRetention};
use eda_testkit::backend::{redis_url, require};
use fred::interfaces::StreamsInterface;

fn orders(range: std::ops::Range<u64>) -> Vec<RawEvent> {
    range
        .map(|order_id| {
            Envelope::new(OrderCreated { order_id })
                .to_raw(&JsonCodec)
                .unwrap()
        })
        .collect()
}

async fn len(store: &RedisStreamStore, topic: &str) -> u64 {
    store.client().xlen(store.stream_key(topic)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_streams_on_append() {
    let Some(()) = require("retention_trims_streams_on_append", &redis_url()).await else {
        return;
    };
    let by_len = RedisStreamStore::builder(redis_url())
        .key_prefix(unique_prefix())
        .retention(StreamRetention::MaxLen(1_000))
        .connect()
        .await
        .unwrap();
    for chunk in 0..10 {
        by_len
            .append("orders", orders(chunk * 500..(chunk + 1) * 500))
            .await
            .unwrap();
    }
    let kept = len(&by_len, "orders").await;
    // `MAXLEN ~` trims whole nodes: at least 1,000 stay, far fewer than 5,000.
    assert!((1_000..2_000).contains(&kept), "{kept} entries kept");
    let newest = by_len.read("orders", ReadRange::default()).await.unwrap();
    let last = newest.last().unwrap().1.as_ref().unwrap();
    assert_eq!(
        last.decode::<OrderCreated>().unwrap().payload.order_id,
        4_999
    );

    let by_age = RedisStreamStore::builder(redis_url())
        .key_prefix(unique_prefix())
        .retention(StreamRetention::MaxAge(Duration::from_millis(200)))
        .connect()
        .await
        .unwrap();
    by_age.append("orders", orders(0..2_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    by_age.append("orders", orders(2_000..2_010)).await.unwrap();
    let kept = len(&by_age, "orders").await;
    assert!(
        kept < 500,
        "{kept} entries kept of 2,010 (2,000 older than the max age)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_without_dedup_keys_are_atomic_but_not_idempotent() {
    let Some(()) = require("appends_without_dedup_keys", &redis_url()).await else {
        return;
    };
    let store = RedisStreamStore::builder(redis_url())
        .key_prefix(unique_prefix())
        .idempotent_appends(false)
        .connect()
        .await
        .unwrap();
    let batch = orders(0..100);
    let positions = store.append("orders", batch.clone()).await.unwrap();
    assert_eq!(positions.len(), 100);
    let stored = store.read("orders", ReadRange::default()).await.unwrap();
    let stored_positions: Vec<_> = stored.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(stored_positions, positions);
    // As documented: a retried append stores the records again.
    store.append("orders", batch).await.unwrap();
    assert_eq!(len(&store, "orders").await, 200);
    // An oversized record refuses the whole batch.
    let mut big = orders(0..3);
    big[1].data = eda_core::Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    assert!(matches!(
        store.append("orders", big).await,
        Err(eda_core::StoreError::TooLarge { .. })
    ));
    assert_eq!(len(&store, "orders").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_appended_twice_is_stored_once() {
    let Some(()) = require("a_large_batch_appended_twice_is_stored_once", &redis_url()).await
    else {
        return;
    };
    let store = RedisStreamStore::builder(redis_url())
        .key_prefix(unique_prefix())
        .connect()
        .await
        .unwrap();
    // Many script calls in one transaction (chunks of 256 records), and a repeat in a
    // later chunk than its first copy.
    let mut batch = orders(0..5_000);
    batch.push(batch[17].clone());
    let first = store.append("orders", batch.clone()).await.unwrap();
    assert_eq!(first[5_000], first[17]);
    let again = store.append("orders", batch).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(len(&store, "orders").await, 5_000);
    // In the order appended.
    let read = store.read("orders", ReadRange::default()).await.unwrap();
    let ids: Vec<u64> = read
        .iter()
        .map(|(_, r)| {
            let r = r.as_ref().unwrap();
            r.decode::<OrderCreated>().unwrap().payload.order_id
        })
        .collect();
    assert_eq!(ids, (0..5_000).collect::<Vec<_>>());
}
