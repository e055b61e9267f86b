//! Produced batches may be compressed; consumers read them back unchanged.

use std::sync::Arc;

use eda_core::{Envelope, Event, EventStore, JsonCodec, ReadRange};
use eda_store_kafka::{KafkaCompression, KafkaStore};
use eda_store_sqlite::SqliteStore;
use eda_testkit::backend::{kafka_brokers, require};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Line {
    text: String,
}
impl Event for Line {
    const TYPE: &'static str = "line";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_snappy_batches_read_back_unchanged() {
    let Some(()) = require("kafka compression", &kafka_brokers()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let coordination = Arc::new(SqliteStore::open(dir.path().join("c.db")).await.unwrap());
    for compression in [KafkaCompression::Gzip, KafkaCompression::Snappy] {
        let store = KafkaStore::builder([kafka_brokers()], coordination.clone())
            .partitions(1)
            .compression(compression)
            .connect()
            .await
            .unwrap();
        let topic = format!("lines-{compression:?}-{:08x}", fastrand::u32(..)).to_lowercase();
        let records: Vec<_> = (0..200)
            .map(|i| {
                Envelope::new(Line {
                    text: format!("{i} {}", "repetitive text ".repeat(20)),
                })
                .to_raw(&JsonCodec)
                .unwrap()
            })
            .collect();
        store.append(&topic, records.clone()).await.unwrap();
        let back: Vec<_> = store
            .read(&topic, ReadRange::default())
            .await
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(back, records, "{compression:?}");
    }
}
