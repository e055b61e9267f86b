//! Our records read by a non-Rust client and the CloudEvents Python SDK, and theirs by
//! us: `tests/interop/consume.py` and `produce.py` (confluent-kafka, i.e. librdkafka,
//! and the `cloudevents` package's Kafka binding; `cargo xtask services up` installs
//! both).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use eda_core::{Envelope, Event, EventStore, JsonCodec, ReadRange};
use eda_store_kafka::KafkaStore;
use eda_store_sqlite::SqliteStore;
use eda_testkit::backend::{kafka_brokers, require, skip};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderCreated {
    order_id: u64,
}
impl Event for OrderCreated {
    const TYPE: &'static str = "order.created";
}

fn python_ready() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import confluent_kafka, cloudevents.v1.kafka"])
        .output()
        .map_err(|e| format!("no python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "python packages confluent-kafka and cloudevents missing ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
        .display()
        .to_string()
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn store() -> (KafkaStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let coordination = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let store = KafkaStore::builder([kafka_brokers()], Arc::new(coordination))
        .partitions(2)
        .connect()
        .await
        .unwrap();
    (store, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloudevents_python_sdk_reads_our_records() {
    let Some(()) = require("kafka interop (read by Python)", &kafka_brokers()).await else {
        return;
    };
    if let Err(why) = python_ready() {
        return skip("the_cloudevents_python_sdk_reads_our_records", &why);
    }
    let (store, _dir) = store().await;
    let topic = format!("interop-out-{:08x}", fastrand::u32(..));
    let event = Envelope::new(OrderCreated { order_id: 7 })
        .with_source("shop-1.4.0")
        .with_partition_key("cust-7")
        .with_correlation_id("flow-3");
    let raw = event.to_raw(&JsonCodec).unwrap();
    let position = store.append(&topic, vec![raw.clone()]).await.unwrap()[0].clone();
    let (partition, offset) = position.as_str().split_once(':').unwrap();
    let seen: serde_json::Value = serde_json::from_str(&python(&[
        &script("consume.py"),
        &kafka_brokers(),
        &topic,
        partition,
        offset,
    ]))
    .unwrap();
    assert_eq!(seen["id"], raw.id.to_string());
    assert_eq!(seen["source"], "shop-1.4.0");
    assert_eq!(seen["type"], "order.created");
    assert_eq!(seen["key"], "cust-7");
    assert_eq!(seen["partitionkey"], "cust-7");
    assert_eq!(seen["correlationid"], "flow-3");
    assert_eq!(seen["data"], serde_json::json!({ "order_id": 7 }));
    let time = eda_core::Timestamp::parse_rfc3339(seen["time"].as_str().unwrap()).unwrap();
    assert_eq!(time, raw.time);
    assert_eq!(
        partition.parse::<i32>().unwrap(),
        store.partition_of("cust-7"),
        "murmur2 partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_records_of_the_cloudevents_python_sdk() {
    let Some(()) = require("kafka interop (written by Python)", &kafka_brokers()).await else {
        return;
    };
    if let Err(why) = python_ready() {
        return skip("we_read_records_of_the_cloudevents_python_sdk", &why);
    }
    let (store, _dir) = store().await;
    let topic = format!("interop-in-{:08x}", fastrand::u32(..));
    store.ensure_topic(&topic).await.unwrap();
    // Where the Java partitioner (and ours) puts the key.
    let partition = store.partition_of("cust-9").to_string();
    let id = python(&[&script("produce.py"), &kafka_brokers(), &topic, &partition]);
    let records = store.read(&topic, ReadRange::default()).await.unwrap();
    assert_eq!(records.len(), 1);
    let raw = records[0].1.as_ref().expect("a decodable event");
    assert_eq!(raw.id.to_string(), id.trim());
    assert_eq!(&*raw.source, "python-sdk");
    assert_eq!(raw.metadata.partition_key.as_deref(), Some("cust-9"));
    assert_eq!(raw.metadata.header("tenant"), Some("acme"));
    assert_eq!(raw.time.to_rfc3339(), "2026-11-28T12:00:00.123Z");
    let envelope = raw.decode::<OrderCreated>().unwrap();
    assert_eq!(envelope.payload, OrderCreated { order_id: 9 });
}
