//! The Kafka store passes the conformance suite against a Kafka-protocol broker
//! (`EDA_KAFKA_BROKERS`, default `127.0.0.1:19092`: Tansu, started by
//! `cargo xtask services up`). Group state lives in an SQLite file shared by every
//! `store()` instance, as processes sharing a coordination store would.

use std::sync::Arc;
use std::time::Duration;

use eda_core::{BoxFuture, Event};
use eda_store_kafka::KafkaStore;
use eda_store_sqlite::SqliteStore;
use eda_testkit::Harness;
use eda_testkit::backend::{kafka_brokers, reachable};
use eda_testkit::conformance::Probe;

struct Tansu {
    dir: tempfile::TempDir,
}

impl Harness for Tansu {
    type Store = KafkaStore;
    fn store(&self) -> BoxFuture<'_, KafkaStore> {
        Box::pin(async move {
            let coordination = SqliteStore::open(self.dir.path().join("coordination.db"))
                .await
                .expect("open the coordination store");
            KafkaStore::builder([kafka_brokers()], Arc::new(coordination))
                .partitions(4)
                .lease_ttl(Duration::from_secs(2))
                .connect()
                .await
                .expect("connect to the broker")
        })
    }
    fn write_garbage<'a>(&'a self, store: &'a KafkaStore, topic: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Into the partition the suite's probes go to (keyed by their type), with no
            // CloudEvents headers and a value that is no event.
            let partition = store.partition_of(Probe::TYPE);
            let record = rskafka::record::Record {
                key: Some(Probe::TYPE.as_bytes().to_vec()),
                value: Some(b"\x00\xff garbage".to_vec()),
                headers: Default::default(),
                timestamp: chrono::Utc::now(),
            };
            store
                .produce_raw(topic, partition, vec![record])
                .await
                .expect("produce a foreign record");
        })
    }
    fn unavailable(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move { reachable(&kafka_brokers()).await.err() })
    }
}

eda_testkit::conformance_tests!(Tansu {
    dir: tempfile::tempdir().unwrap()
});
