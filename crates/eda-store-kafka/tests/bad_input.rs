//! Records produced by other tools reach `<topic>.dlq` with the reason through a
//! durable bus topic, and the partition goes on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::{Context, DLQ_REASON, Envelope, Event, EventStore, ReadRange};
use eda_dispatch::{Bus, BusConfig, RetryPolicy, SubscribeOptions};
use eda_store_kafka::KafkaStore;
use eda_store_sqlite::SqliteStore;
use eda_testkit::backend::{kafka_brokers, require};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderCreated {
    order_id: u64,
}
impl Event for OrderCreated {
    const TYPE: &'static str = "order.created";
}

fn foreign(headers: &[(&str, &str)], value: &[u8]) -> rskafka::record::Record {
    rskafka::record::Record {
        key: Some(OrderCreated::TYPE.as_bytes().to_vec()),
        value: Some(value.to_vec()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect::<BTreeMap<_, _>>(),
        timestamp: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_records_are_dead_lettered_and_the_partition_goes_on() {
    let Some(()) = require("kafka bad_input", &kafka_brokers()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let coordination = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let store = KafkaStore::builder([kafka_brokers()], Arc::new(coordination))
        .partitions(2)
        .connect()
        .await
        .unwrap();
    let topic = format!("orders-{:08x}", fastrand::u32(..));
    let mut config = BusConfig::default();
    config
        .routes
        .insert(OrderCreated::TYPE.into(), topic.clone());
    let bus = Bus::builder()
        .config(config)
        .durable_topic(topic.clone(), store.clone())
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
    let partition = store.partition_of(OrderCreated::TYPE);
    // No CloudEvents headers at all (a plain producer).
    let plain = foreign(&[], b"hello");
    // Our headers, but data that is not the JSON it claims to be.
    let bad_data = foreign(
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "0193a4e0-0000-7000-8000-000000000002"),
            ("ce_source", "other-tool"),
            ("ce_type", OrderCreated::TYPE),
            ("ce_time", "2026-11-28T12:00:00.000Z"),
            ("content-type", "application/json"),
        ],
        b"\xff\x00 not json",
    );
    store
        .produce_raw(&topic, partition, vec![plain, bad_data])
        .await
        .unwrap();
    bus.publish(OrderCreated { order_id: 2 }).await.unwrap();

    let dlq = format!("{topic}.dlq");
    let started = std::time::Instant::now();
    loop {
        let letters = store.read(&dlq, ReadRange::default()).await.unwrap();
        if seen.lock().unwrap().len() == 2 && letters.len() == 2 {
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
            assert!(
                reasons.iter().all(|r| r.contains("undecodable")),
                "{reasons:?}"
            );
            assert!(
                reasons.iter().any(|r| r.contains("ce_specversion")),
                "{reasons:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "handled {:?}, {} dead letters",
            seen.lock().unwrap(),
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
}
