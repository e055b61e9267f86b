//! SQLite store throughput against raw sqlx in the same run.
//!
//! Run with `cargo xtask bench sqlite` (or `cargo bench -p eda-store-sqlite --bench sqlite`).
//! Append: 100-byte payloads in batches of 1, 100 and 1,000, through `SqliteStore::append`
//! and through a raw multi-row `INSERT` of the same columns into a table of the same
//! shape, indexes included (same file settings); three alternating rounds, best of
//! each. Consume+ack: one consumer, batches of 100 and 1,000, one ack each (batched).

use std::time::{Duration, Instant};

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, RawEvent, StartFrom};
use eda_store_sqlite::SqliteStore;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Sqlite};

#[derive(Serialize, Deserialize)]
struct Payload {
    text: String,
}
impl Event for Payload {
    const TYPE: &'static str = "bench.payload";
}

fn records(n: usize) -> Vec<RawEvent> {
    (0..n)
        .map(|_| {
            // ~100 bytes of JSON data.
            Envelope::new(Payload {
                text: "x".repeat(88),
            })
            .to_raw(&JsonCodec)
            .unwrap()
        })
        .collect()
}

async fn raw_insert(store: &SqliteStore, batch: &[RawEvent]) {
    let mut tx = store.pool().begin().await.unwrap();
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO raw_events (topic, id, source, type, time, time_ms, datacontenttype, \
         dataschema, subject, traceparent, tracestate, partitionkey, correlationid, \
         causationid, extensions, data) ",
    );
    q.push_values(batch, |mut b, r| {
        let m = &r.metadata;
        b.push_bind("raw")
            .push_bind(r.id.to_string())
            .push_bind(r.source.to_string())
            .push_bind(r.event_type.to_string())
            .push_bind(r.time.to_rfc3339())
            .push_bind(r.time.unix_millis())
            .push_bind(r.datacontenttype.clone())
            .push_bind(r.dataschema.clone())
            .push_bind(m.subject.clone())
            .push_bind(m.traceparent.map(|t| t.to_string()))
            .push_bind(m.tracestate.clone())
            .push_bind(m.partition_key.clone())
            .push_bind(m.correlation_id.clone())
            .push_bind(m.causation_id.map(|c| c.to_string()))
            .push_bind("{}")
            .push_bind(r.data.to_vec());
    });
    q.build().execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn rate(total: usize, batch: usize, store: &SqliteStore, raw: bool) -> f64 {
    let data = records(total);
    let start = Instant::now();
    for chunk in data.chunks(batch) {
        if raw {
            raw_insert(store, chunk).await;
        } else {
            store.append("bench", chunk.to_vec()).await.unwrap();
        }
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("bench.db"))
        .await
        .unwrap();
    // The same table shape as the store's, indexes included, so the ratio measures what
    // the store adds to the same INSERT.
    for ddl in [
        "CREATE TABLE raw_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, \
         id TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL, time TEXT NOT NULL, \
         time_ms INTEGER NOT NULL, datacontenttype TEXT, dataschema TEXT, subject TEXT, \
         traceparent TEXT, tracestate TEXT, partitionkey TEXT, correlationid TEXT, \
         causationid TEXT, extensions TEXT NOT NULL, data BLOB NOT NULL, UNIQUE (topic, id))",
        "CREATE INDEX raw_events_topic_seq ON raw_events (topic, seq)",
    ] {
        sqlx::query(ddl).execute(store.pool()).await.unwrap();
    }

    println!("\n| append, 100-byte payload | SqliteStore | raw sqlx INSERT | store ÷ raw |");
    println!("|---|---:|---:|---:|");
    for (batch, total) in [(1usize, 2_000usize), (100, 50_000), (1_000, 100_000)] {
        // Three alternating rounds, best of each: the file grows as the run goes, and
        // the machine is shared, so neither side always runs in the worse conditions.
        let (mut ours, mut raw) = (0f64, 0f64);
        for _ in 0..3 {
            ours = ours.max(rate(total, batch, &store, false).await);
            raw = raw.max(rate(total, batch, &store, true).await);
        }
        println!(
            "| batches of {batch} | {:.0} ev/s | {:.0} rows/s | {:.2} |",
            ours,
            raw,
            ours / raw
        );
    }

    println!("\n| consume + ack (one consumer, one ack per event, acks batched) | ev/s |");
    println!("|---|---:|");
    let total = 100_000;
    for batch in [100usize, 1_000] {
        let topic = format!("consume-{batch}");
        store.append(&topic, records(total)).await.unwrap();
        let options = ConsumeOptions {
            start: StartFrom::Beginning,
            batch_size: batch,
            visibility_timeout: Duration::from_secs(60),
            ..ConsumeOptions::default()
        };
        let mut stream = store.subscribe(&topic, "g", "c", options).await.unwrap();
        let start = Instant::now();
        for _ in 0..total {
            stream.next().await.unwrap().unwrap().ack().await.unwrap();
        }
        store.flush().await.unwrap();
        println!(
            "| fetching batches of {batch} | {:.0} |",
            total as f64 / start.elapsed().as_secs_f64()
        );
    }
    println!("\n| Bus::publish to a durable topic (group commit) | ev/s |");
    println!("|---|---:|");
    for publishers in [1usize, 64] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("bus.db")).await.unwrap();
        let bus = eda_dispatch::Bus::builder()
            .durable_topic(Payload::TYPE, store)
            .build();
        let per = 20_000 / publishers;
        let start = Instant::now();
        let tasks: Vec<_> = (0..publishers)
            .map(|_| {
                let bus = bus.clone();
                tokio::spawn(async move {
                    for _ in 0..per {
                        bus.publish(Payload {
                            text: "x".repeat(88),
                        })
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        println!(
            "| {publishers} concurrent publisher(s) | {:.0} |",
            (per * publishers) as f64 / start.elapsed().as_secs_f64()
        );
    }
    println!(
        "\nWatermill's published SQL figures for comparison (16 CPUs): 6.4k publish / 2.8k subscribe msg/s."
    );
}
