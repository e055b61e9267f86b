//! Entries written by other tools reach the dead-letter stream with the reason, and the
//! group goes on.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{OrderCreated, private_store};
use eda_core::{Context, DLQ_REASON, Envelope, EventStore, ReadRange};
use eda_dispatch::{Bus, RetryPolicy, SubscribeOptions};
use eda_testkit::backend::{redis_url, require};
use eda_testkit::wait_until;
use fred::interfaces::StreamsInterface;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_entries_are_dead_lettered_and_the_group_goes_on() {
    let Some(()) = require("bad_input", &redis_url()).await else {
        return;
    };
    let store = private_store().await;
    let bus = Bus::builder()
        .durable_topic("order.created", store.clone())
        .build();
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s = seen.clone();
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("billing")
                .retry(RetryPolicy::none()),
            move |e: Arc<Envelope<OrderCreated>>, _ctx: Context| {
                s.lock().unwrap().push(e.payload.order_id);
                async { Ok(()) }
            },
        )
        .unwrap();
    bus.publish(OrderCreated { order_id: 1 }).await.unwrap();
    let key = store.stream_key("order.created");
    // `redis-cli XADD <stream> * foo bar`: no CloudEvents fields.
    let _: String = store
        .client()
        .xadd(&key, false, None, "*", ("foo", "bar"))
        .await
        .unwrap();
    // Our field names, but data that is not the JSON it claims to be.
    let _: String = store
        .client()
        .xadd(
            &key,
            false,
            None,
            "*",
            vec![
                ("ce_id", "0193a4e0-0000-7000-8000-000000000001".as_bytes()),
                ("ce_specversion", b"1.0"),
                ("ce_source", b"other-tool"),
                ("ce_type", b"order.created"),
                ("ce_time", b"2026-11-28T12:00:00.000Z"),
                ("content-type", b"application/json"),
                ("data", b"\xff\x00 not json"),
            ],
        )
        .await
        .unwrap();
    bus.publish(OrderCreated { order_id: 2 }).await.unwrap();

    wait_until("both good events", async || seen.lock().unwrap().len() == 2).await;
    wait_until("two dead letters", async || {
        store
            .read("order.created.dlq", ReadRange::default())
            .await
            .unwrap()
            .len()
            == 2
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
    let letters = store
        .read("order.created.dlq", ReadRange::default())
        .await
        .unwrap();
    let reasons: Vec<String> = letters
        .iter()
        .map(|(_, r)| {
            r.as_ref()
                .unwrap()
                .metadata
                .header(DLQ_REASON)
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(reasons[0].contains("no ce_id field"), "{reasons:?}");
    assert!(reasons[1].contains("undecodable"), "{reasons:?}");
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    store.close().await.unwrap();
}
