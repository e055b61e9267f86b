//! Redis store throughput and latency against raw fred in the same run.
//!
//! Run with `cargo xtask bench redis` (or `cargo bench -p eda-store-redis --bench redis`);
//! needs Redis at `EDA_REDIS_URL` (default `redis://127.0.0.1:6379`). Keys live under a
//! fresh prefix and are deleted at the end. An argument (`append`, `consume`, `latency`)
//! runs that part alone.
//!
//! * Append: 100-byte payloads in batches of 100 and 1,000 through
//!   `RedisStreamStore::append` (one Lua script per batch: dedup key + `XADD` per
//!   record) and through a raw fred pipeline of `XADD`s with the same fields.
//! * Consume+ack: 100,000 stored events, one and four consumers (tasks with their own
//!   subscriptions), acks batched.
//! * Latency: publish→handled at 10,000 events/s for 5 s, p50/p99.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eda_core::{ConsumeOptions, Envelope, Event, EventStore, JsonCodec, RawEvent, StartFrom};
use eda_store_redis::{RedisStreamStore, entry_fields};
use fred::interfaces::{KeysInterface, StreamsInterface};
use fred::types::Value;
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

fn records(n: usize) -> Vec<RawEvent> {
    (0..n)
        .map(|_| {
            Envelope::new(Payload {
                sent_ns: 0,
                text: "x".repeat(72), // ~100 bytes of JSON data
            })
            .to_raw(&JsonCodec)
            .unwrap()
        })
        .collect()
}

async fn raw_xadd(store: &RedisStreamStore, key: &str, batch: &[RawEvent]) {
    let pipeline = store.client().pipeline();
    for r in batch {
        let fields: Vec<(String, Value)> = entry_fields(r)
            .into_iter()
            .map(|(k, v)| (k, Value::Bytes(v)))
            .collect();
        let _: () = pipeline.xadd(key, false, None, "*", fields).await.unwrap();
    }
    let _: Vec<Value> = pipeline.all().await.unwrap();
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

async fn append_rate(store: &RedisStreamStore, batch: usize, raw: bool) -> f64 {
    let total = 50_000;
    let data = records(total);
    let key = store.stream_key("raw");
    // Owned batches made before the clock starts: `append` takes its records by value,
    // and copying them out of one shared set would be the bench's cost, not the store's.
    let batches: Vec<Vec<RawEvent>> = data.chunks(batch).map(<[RawEvent]>::to_vec).collect();
    let start = Instant::now();
    for chunk in batches {
        if raw {
            raw_xadd(store, &key, &chunk).await;
        } else {
            store.append("ours", chunk).await.unwrap();
        }
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn consume(store: &RedisStreamStore, consumers: usize, round: usize) -> f64 {
    let total = 100_000u64;
    let topic = format!("consume-{consumers}-{round}");
    for chunk in records(total as usize).chunks(1000) {
        store.append(&topic, chunk.to_vec()).await.unwrap();
    }
    let done = Arc::new(AtomicU64::new(0));
    // Until the last event is acked and its ack flushed: the other consumers then sit in
    // `XREADGROUP ... BLOCK` for up to `block` before they see that all is done, which
    // is the bench winding down, not consumption (it cost four consumers ~15 %).
    let finished = Arc::new(std::sync::OnceLock::new());
    let start = Instant::now();
    let tasks: Vec<_> = (0..consumers)
        .map(|i| {
            let (store, done, topic) = (store.clone(), done.clone(), topic.clone());
            let finished = finished.clone();
            tokio::spawn(async move {
                let options = ConsumeOptions {
                    start: StartFrom::Beginning,
                    batch_size: 500,
                    visibility_timeout: Duration::from_secs(60),
                    ..ConsumeOptions::default()
                };
                let mut s = store
                    .subscribe(&topic, "g", &format!("c{i}"), options)
                    .await
                    .unwrap();
                while done.load(Ordering::Relaxed) < total {
                    let next = tokio::time::timeout(Duration::from_millis(500), s.next()).await;
                    let Ok(Some(d)) = next else { continue };
                    d.unwrap().ack().await.unwrap();
                    if done.fetch_add(1, Ordering::Relaxed) + 1 == total {
                        store.flush().await.unwrap();
                        finished.set(start.elapsed()).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / finished.get().unwrap().as_secs_f64()
}

/// (p50 ms, p99 ms, events handled, the publish rate reached in events/s): appends run
/// on their own tasks so that an append's round trip does not throttle the rate.
async fn latency(store: &RedisStreamStore) -> (f64, f64, u64, f64) {
    let epoch = Instant::now();
    let options = ConsumeOptions {
        start: StartFrom::NewOnly,
        batch_size: 100,
        ..ConsumeOptions::default()
    };
    let mut s = store.subscribe("latency", "g", "c", options).await.unwrap();
    let seconds = 5;
    let rate = 10_000u64;
    let expected = rate * seconds;
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
    // 10 events every millisecond.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let producing = Instant::now();
    let mut appends = Vec::with_capacity(expected as usize);
    for _ in 0..(seconds * 1000) {
        tick.tick().await;
        for _ in 0..(rate / 1000) {
            let record = Envelope::new(Payload {
                sent_ns: epoch.elapsed().as_nanos() as u64,
                text: "x".repeat(72),
            })
            .to_raw(&JsonCodec)
            .unwrap();
            let store = store.clone();
            appends.push(tokio::spawn(async move {
                store.append("latency", vec![record]).await.unwrap();
            }));
        }
    }
    for append in appends {
        append.await.unwrap();
    }
    let reached = expected as f64 / producing.elapsed().as_secs_f64();
    let hist = consumer.await.unwrap();
    (
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.len(),
        reached,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = eda_testkit::backend::redis_url();
    let prefix = format!("eda-bench-{:08x}:", fastrand::u32(..));
    let store = RedisStreamStore::builder(&url)
        .key_prefix(&prefix)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("this benchmark needs Redis at {url}: {e}"));

    // `append`, `consume` or `latency` runs that part alone.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |part: &str| filter.as_deref().is_none_or(|f| part.starts_with(f));

    let plain = RedisStreamStore::builder(&url)
        .key_prefix(&prefix)
        .idempotent_appends(false)
        .connect()
        .await
        .unwrap();
    if wanted("append") {
        println!(
            "\n| append, 100-byte payload, median of 5 | RedisStreamStore (idempotent, default) | idempotent_appends(false) | raw fred pipelined XADD | default ÷ raw | non-idempotent ÷ raw |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for batch in [100usize, 1_000] {
            // Five alternating rounds, medians: one round swings by ±15 % on a shared
            // machine, enough to pass or fail a 0.9 ratio by chance.
            let (mut ours, mut fast, mut raw) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..5 {
                ours.push(append_rate(&store, batch, false).await);
                fast.push(append_rate(&plain, batch, false).await);
                raw.push(append_rate(&store, batch, true).await);
            }
            let (ours, fast, raw) = (median(ours), median(fast), median(raw));
            println!(
                "| batches of {batch} | {ours:.0} ev/s | {fast:.0} ev/s | {raw:.0} ev/s | {:.2} | {:.2} |",
                ours / raw,
                fast / raw
            );
        }
    }
    plain.close().await.unwrap();

    if wanted("consume") {
        println!("\n| consume + ack (batches of 500, acks batched), median of 3 | ev/s |");
        println!("|---|---:|");
        let mut rates: [Vec<f64>; 2] = Default::default();
        for round in 0..3 {
            for (i, consumers) in [1usize, 4].into_iter().enumerate() {
                rates[i].push(consume(&store, consumers, round).await);
            }
        }
        for (rates, consumers) in rates.into_iter().zip([1, 4]) {
            println!("| {consumers} consumer(s) | {:.0} |", median(rates));
        }
    }

    if wanted("latency") {
        let (p50, p99, n, reached) = latency(&store).await;
        println!("\n| publish → handled at 10k events/s ({n} events) | rate reached | p50 | p99 |");
        println!("|---|---:|---:|---:|");
        println!(
            "| one append per event (own task), one consumer | {reached:.0} ev/s | {p50:.2} ms | {p99:.2} ms |"
        );
    }

    println!(
        "\nWatermill's published Redis Streams figures for comparison (16 CPUs): 59k publish / 12k subscribe msg/s."
    );

    // Clean up what the run wrote.
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys): (String, Vec<String>) = fred::interfaces::ClientLike::custom(
            store.client(),
            fred::cmd!("SCAN"),
            vec![
                cursor.clone(),
                "MATCH".into(),
                format!("{prefix}*"),
                "COUNT".into(),
                "1000".into(),
            ],
        )
        .await
        .unwrap();
        if !keys.is_empty() {
            let _: i64 = store.client().del(keys).await.unwrap();
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    store.close().await.unwrap();
}
