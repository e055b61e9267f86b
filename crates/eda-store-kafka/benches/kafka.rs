//! Kafka store throughput and latency against raw rskafka in the same run.
//!
//! Run with `cargo xtask bench kafka` (or `cargo bench -p eda-store-kafka --bench
//! kafka`); needs a broker at `EDA_KAFKA_BROKERS` (default `127.0.0.1:19092`, Tansu
//! from `cargo xtask services up`). Group state in a temp SQLite file. An argument
//! (`produce`, `consume`, `latency`) runs that part alone.
//!
//! * Produce: 100-byte payloads, batches of 100 and 1,000 records, all of one key (one
//!   partition), through `KafkaStore::append` and as raw rskafka records of the same
//!   headers produced to the same partition.
//! * Consume+ack: 100,000 records over 4 partitions, one consumer; then the same
//!   records fetched with raw rskafka (4 partitions in parallel, no decoding): what the
//!   broker can serve at all.
//! * Latency: publish→handled at 10,000 events/s for 5 s (batches of 10 each ms, each
//!   appended on its own task), p50/p99, and the publish rate reached; with the
//!   default fetch wait (100 ms) and with 20 ms and 3 ms. Beside each row, the same
//!   records at the same rate produced and fetched with raw rskafka with the same wait:
//!   what the broker allows at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, RawEvent, StartFrom};
use eda_store_kafka::{KafkaStore, record};
use eda_store_sqlite::SqliteStore;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payload {
    sent_ns: u64,
    text: String,
}
impl Event for Payload {
    const TYPE: &'static str = "bench.payload";
}

fn records(n: usize, keyed: bool) -> Vec<RawEvent> {
    (0..n)
        .map(|i| {
            let mut env = Envelope::new(Payload {
                sent_ns: 0,
                text: "x".repeat(72),
            });
            if keyed {
                env = env.with_partition_key(format!("k{}", i % 64));
            }
            env.to_raw(&JsonCodec).unwrap()
        })
        .collect()
}

async fn produce_rate(store: &KafkaStore, topic: &str, batch: usize, raw: bool) -> f64 {
    let total = if batch < 1000 { 10_000 } else { 100_000 };
    let data = records(total, false);
    let partition = store.partition_of(Payload::TYPE);
    // Owned batches made before the clock starts: `append` takes its records by value,
    // and copying them out of one shared set would be the bench's cost, not the store's.
    let batches: Vec<Vec<RawEvent>> = data.chunks(batch).map(<[RawEvent]>::to_vec).collect();
    let start = Instant::now();
    for chunk in batches {
        if raw {
            let records = chunk.iter().map(record::to_record).collect();
            store.produce_raw(topic, partition, records).await.unwrap();
        } else {
            store.append(topic, chunk).await.unwrap();
        }
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn consume_rate(store: &KafkaStore, topic: &str) -> f64 {
    let total = 100_000;
    for chunk in records(total, true).chunks(1000) {
        store.append(topic, chunk.to_vec()).await.unwrap();
    }
    let options = ConsumeOptions {
        start: StartFrom::Beginning,
        batch_size: 1000,
        visibility_timeout: Duration::from_secs(60),
        ..ConsumeOptions::default()
    };
    let mut s = store.subscribe(topic, "g", "c", options).await.unwrap();
    let start = Instant::now();
    for _ in 0..total {
        s.next().await.unwrap().unwrap().ack().await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The broker's ceiling for the consume row: the records of `topic` fetched with raw
/// rskafka, its 4 partitions in parallel, each on a connection of its own (as the store's
/// partition workers fetch), ~1 MiB a fetch, no decoding, no offsets kept.
async fn raw_fetch_rate(brokers: &str, topic: &str) -> f64 {
    use rskafka::client::ClientBuilder;
    use rskafka::client::partition::UnknownTopicHandling;
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|partition| {
            let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
            tokio::spawn(async move {
                let client = ClientBuilder::new(vec![brokers]).build().await.unwrap();
                let client = client
                    .partition_client(topic, partition, UnknownTopicHandling::Error)
                    .await
                    .unwrap();
                let (mut offset, mut n) = (0, 0);
                loop {
                    // The store's fetch: up to 1 MiB, waiting up to its default 100 ms.
                    let (records, high_watermark) = client
                        .fetch_records(offset, 1..1_048_576, 100)
                        .await
                        .unwrap();
                    n += records.len();
                    if let Some(last) = records.last() {
                        offset = last.offset + 1;
                    }
                    if offset >= high_watermark {
                        break n;
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// What one latency run measured.
struct Latency {
    /// Publish → handled, ms.
    p50: f64,
    p99: f64,
    handled: u64,
    /// The publish rate reached, events/s: whether the producer kept 10k/s (a slow
    /// append throttles it, and the latency of a throttled run says little).
    reached: f64,
    /// One append's round trip while the consumer fetches, ms.
    append_p99: f64,
}

/// The latency runs' publishing rate, events a second, and length, seconds.
const RATE: u64 = 10_000;
const SECONDS: u64 = 5;

/// Publishes at `RATE` for `SECONDS`: each millisecond a batch of `RATE / 1000` events
/// stamped with their send time (since `epoch`), each batch sent by `send` on a task of
/// its own, as from many publishers: a send's round trip must not throttle the rate.
/// Returns every send's round trip (µs) and the rate reached (events/s).
async fn paced<F, Fut>(epoch: Instant, send: F) -> (Vec<u64>, f64)
where
    F: Fn(Vec<RawEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let producing = Instant::now();
    let mut sends = Vec::with_capacity(SECONDS as usize * 1000);
    for _ in 0..SECONDS * 1000 {
        tick.tick().await;
        let batch: Vec<RawEvent> = (0..RATE / 1000)
            .map(|_| {
                Envelope::new(Payload {
                    sent_ns: epoch.elapsed().as_nanos() as u64,
                    text: "x".repeat(72),
                })
                .to_raw(&JsonCodec)
                .unwrap()
            })
            .collect();
        let sending = send(batch);
        sends.push(tokio::spawn(async move {
            let started = Instant::now();
            sending.await;
            started.elapsed().as_micros() as u64
        }));
    }
    let mut trips = Vec::with_capacity(sends.len());
    for s in sends {
        trips.push(s.await.unwrap());
    }
    let reached = (SECONDS * RATE) as f64 / producing.elapsed().as_secs_f64();
    (trips, reached)
}

async fn latency(store: &KafkaStore, topic: &str, batch_size: usize) -> Latency {
    let epoch = Instant::now();
    let options = ConsumeOptions {
        start: StartFrom::NewOnly,
        batch_size,
        ..ConsumeOptions::default()
    };
    let mut s = store.subscribe(topic, "g", "c", options).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // partitions taken
    let expected = SECONDS * RATE;
    let consumer = tokio::spawn(async move {
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        while hist.len() < expected {
            let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), s.next()).await else {
                break;
            };
            let d = d.unwrap();
            let sent = d
                .record
                .as_ref()
                .unwrap()
                .decode::<Payload>()
                .unwrap()
                .payload
                .sent_ns;
            hist.record((epoch.elapsed().as_nanos() as u64).saturating_sub(sent) / 1000)
                .unwrap();
            d.ack().await.unwrap();
        }
        hist
    });
    let (store, topic) = (store.clone(), topic.to_owned());
    let (appends, reached) = paced(epoch, |batch| {
        let (store, topic) = (store.clone(), topic.clone());
        async move {
            store.append(&topic, batch).await.unwrap();
        }
    })
    .await;
    let mut append_hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for append in appends {
        append_hist.record(append).unwrap();
    }
    let hist = consumer.await.unwrap();
    Latency {
        p50: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99: hist.value_at_quantile(0.99) as f64 / 1000.0,
        handled: hist.len(),
        reached,
        append_p99: append_hist.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

/// The broker's part of the latency row: the same records at the same rate, produced
/// with raw rskafka through the store's connection (each millisecond's batch on its own
/// task, as the latency run appends), fetched with raw rskafka on a connection of its
/// own with the same wait, beside one idle fetcher per other partition (as the store's
/// partition workers fetch), waiting as long as `store`'s fetches; no offsets kept, no
/// decoding beyond the send time. Publish → fetched p50 and p99, ms.
async fn raw_latency(store: &KafkaStore, brokers: &str, topic: &str) -> (f64, f64) {
    use rskafka::client::ClientBuilder;
    use rskafka::client::partition::UnknownTopicHandling;
    let epoch = Instant::now();
    let wait_ms = (store.fetch_wait().as_millis() as i32).max(1);
    let partition = store.partition_of(Payload::TYPE);
    store.append(topic, records(1, false)).await.unwrap(); // the topic exists
    let connect = async |p: i32| {
        ClientBuilder::new(vec![brokers.to_owned()])
            .build()
            .await
            .unwrap()
            .partition_client(topic.to_owned(), p, UnknownTopicHandling::Error)
            .await
            .unwrap()
    };
    let mut idle = Vec::new();
    for p in (0..store.partition_count()).filter(|p| *p != partition) {
        let client = connect(p).await;
        idle.push(tokio::spawn(async move {
            loop {
                let _ = client.fetch_records(0, 1..1_048_576, wait_ms).await;
            }
        }));
    }
    let fetcher = connect(partition).await;
    let (_, mut next) = fetcher.fetch_records(0, 1..2, 1).await.unwrap();
    let expected = (SECONDS * RATE) as usize;
    let consumer = tokio::spawn(async move {
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        while (hist.len() as usize) < expected {
            let (records, _) = fetcher
                .fetch_records(next, 1..1_048_576, wait_ms)
                .await
                .unwrap();
            let now = epoch.elapsed().as_nanos() as u64;
            let from = next;
            for r in records.into_iter().filter(|r| r.offset >= from) {
                next = r.offset + 1;
                let value = r.record.value.unwrap_or_default();
                let sent = serde_json::from_slice::<Payload>(&value).unwrap().sent_ns;
                hist.record(now.saturating_sub(sent) / 1000).unwrap();
            }
        }
        hist
    });
    let (store, topic) = (store.clone(), topic.to_owned());
    paced(epoch, |batch| {
        let records = batch.iter().map(record::to_record).collect();
        let (store, topic) = (store.clone(), topic.clone());
        async move {
            store.produce_raw(&topic, partition, records).await.unwrap();
        }
    })
    .await;
    let hist = consumer.await.unwrap();
    for i in idle {
        i.abort();
    }
    (
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let brokers = eda_testkit::backend::kafka_brokers();
    let dir = tempfile::tempdir().unwrap();
    let coordination: Arc<SqliteStore> =
        Arc::new(SqliteStore::open(dir.path().join("c.db")).await.unwrap());
    let store = KafkaStore::builder([brokers.clone()], coordination.clone())
        .partitions(4)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("this benchmark needs a broker at {brokers}: {e}"));
    let run = format!("{:08x}", fastrand::u32(..));
    // `produce`, `consume` or `latency` runs that part alone.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |part: &str| filter.as_deref().is_none_or(|f| part.starts_with(f));

    if wanted("produce") {
        println!(
            "\n| produce, 100-byte payload, one partition | KafkaStore | raw rskafka | store ÷ raw |"
        );
        println!("|---|---:|---:|---:|");
        for batch in [100usize, 1_000] {
            // Three alternating rounds, best of each (a shared machine, a growing log).
            let (mut ours, mut raw) = (0f64, 0f64);
            for round in 0..3 {
                let topic = format!("bench-ours-{batch}-{round}-{run}");
                ours = ours.max(produce_rate(&store, &topic, batch, false).await);
                let topic = format!("bench-raw-{batch}-{round}-{run}");
                raw = raw.max(produce_rate(&store, &topic, batch, true).await);
            }
            println!(
                "| batches of {batch} | {ours:.0} rec/s | {raw:.0} rec/s | {:.2} |",
                ours / raw
            );
        }
    }
    if wanted("consume") {
        let topic = format!("bench-consume-{run}");
        let consumed = consume_rate(&store, &topic).await;
        let fetched = raw_fetch_rate(&brokers, &topic).await;
        println!(
            "\n| consume + ack, 4 partitions, one consumer | KafkaStore | raw rskafka fetch of the same records | store ÷ raw |"
        );
        println!("|---|---:|---:|---:|");
        println!(
            "| 100,000 records | {consumed:.0} rec/s | {fetched:.0} rec/s | {:.2} |",
            consumed / fetched
        );
    }
    if !wanted("latency") {
        return;
    }
    println!(
        "\n| publish → handled at 10k events/s, one consumer | rate reached | p50 | p99 | append p99 | raw rskafka, same wait: p50 / p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    // Tansu answers a fetch at once when it has records, otherwise it looks again
    // after half the remaining wait; it also answers some fetches below the high
    // watermark with none, and each such answer costs a wait (docs/stores.md). A Kafka
    // broker answers as soon as records arrive.
    let with_wait = async |ms| {
        KafkaStore::builder([brokers.clone()], coordination.clone())
            .partitions(4)
            .fetch_wait(Duration::from_millis(ms))
            .connect()
            .await
            .unwrap()
    };
    let (short_wait, shortest_wait) = (with_wait(20).await, with_wait(3).await);
    for (store, wait, batch_size) in [
        (&store, "default fetch wait (100 ms)", 100),
        (&store, "default fetch wait (100 ms)", 1000),
        (&short_wait, "fetch wait 20 ms", 100),
        // A wait short enough that Tansu's empty answers cost little: p99 under 10 ms
        // on a freshly started Tansu in some sessions, hundreds of ms in others (its
        // empty answers below the high watermark; worse once it holds many records:
        // it lists a partition's batches on every fetch).
        (&shortest_wait, "fetch wait 3 ms", 100),
    ] {
        let topic = format!("bench-latency-{batch_size}-{}-{run}", wait.len());
        let l = latency(store, &topic, batch_size).await;
        let (raw_p50, raw_p99) = raw_latency(store, &brokers, &format!("{topic}-raw")).await;
        println!(
            "| batches of 10 per ms, {wait}, `batch_size` {batch_size} ({} handled) | {:.0} ev/s | {:.2} ms | {:.2} ms | {:.2} ms | {raw_p50:.2} / {raw_p99:.2} ms |",
            l.handled, l.reached, l.p50, l.p99, l.append_p99
        );
    }
    println!(
        "\nWatermill's published Kafka figures for comparison (16 CPUs): 41k publish / 102k subscribe msg/s."
    );
}
