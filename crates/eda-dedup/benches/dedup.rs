//! Dedup throughput, in one run: `MemoryDedup` checks/s with 1 and 8 tasks against a
//! baseline doing the same check on moka (what `MemoryDedup` was first built on),
//! `RedisDedup` pipelined batches, and what the middleware costs the in-process bus.
//!
//! Run with `cargo xtask bench dedup` (or `cargo bench -p eda-dedup --bench dedup
//! --features redis`); the Redis row needs Redis at `EDA_REDIS_URL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eda_core::{Context, Envelope, Event, Timestamp};
use eda_dedup::{DedupMiddleware, Deduplicator, MemoryDedup, RedisDedup, Window};
use eda_dispatch::{Bus, SubscribeOptions};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Tick(u64);
impl Event for Tick {
    const TYPE: &'static str = "tick";
}

/// The check a dedup window makes, on either structure.
trait Check: Clone + Send + 'static {
    fn first(&self, key: &str, now: Timestamp) -> bool;
}

impl Check for MemoryDedup {
    fn first(&self, key: &str, now: Timestamp) -> bool {
        self.first_seen_now(key, now)
    }
}

/// The baseline: moka with LRU eviction, checking and marking as `MemoryDedup` did
/// (insert if absent, compare the held expiry with the clock otherwise).
#[derive(Clone)]
struct Moka(moka::sync::Cache<String, i64>);

impl Moka {
    fn new(capacity: u64) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_live(Duration::from_secs(3600))
                .build(),
        )
    }
}

impl Check for Moka {
    fn first(&self, key: &str, now: Timestamp) -> bool {
        let now = now.unix_millis();
        let entry = self.0.entry_by_ref(key).or_insert_with(|| now + 300_000);
        entry.is_fresh() || entry.into_value() <= now
    }
}

async fn memory_rate(dedup: impl Check, tasks: usize) -> f64 {
    let per = 1_000_000 / tasks;
    let keys: Arc<Vec<String>> =
        Arc::new((0..per * tasks).map(|i| format!("g:{i:032x}")).collect());
    let now = Timestamp::now();
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (dedup, keys) = (dedup.clone(), keys.clone());
            tokio::spawn(async move {
                for key in &keys[t * per..(t + 1) * per] {
                    std::hint::black_box(dedup.first(key, now));
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (per * tasks) as f64 / start.elapsed().as_secs_f64()
}

async fn redis_rate() -> Option<f64> {
    let url = eda_testkit::backend::redis_url();
    let store = eda_store_redis::RedisStreamStore::connect(&url)
        .await
        .ok()?;
    let dedup = RedisDedup::new(&store, Window::Arrival(Duration::from_secs(60)))
        .key_prefix(format!("eda-bench-dedup-{:08x}:", fastrand::u32(..)));
    let now = Timestamp::now();
    let total = 200_000;
    let keys: Vec<(String, Timestamp)> = (0..total).map(|i| (format!("k{i}"), now)).collect();
    let start = Instant::now();
    for chunk in keys.chunks(1000) {
        dedup.first_seen_batch(chunk).await.unwrap();
    }
    Some(total as f64 / start.elapsed().as_secs_f64())
}

async fn bus_rate(dedup: bool) -> f64 {
    let bus = Bus::new();
    let mut options = SubscribeOptions::new().name("counter");
    if dedup {
        options = options.middleware(DedupMiddleware::new(
            MemoryDedup::builder().max_capacity(10_000_000).build(),
        ));
    }
    let _sub = bus
        .subscribe_with(options, |_e: Arc<Envelope<Tick>>, _ctx: Context| async {
            Ok(())
        })
        .unwrap();
    let total = 300_000u64;
    let start = Instant::now();
    for i in 0..total {
        bus.publish(Tick(i)).await.unwrap();
    }
    bus.shutdown(Duration::from_secs(30)).await;
    total as f64 / start.elapsed().as_secs_f64()
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // All of MemoryDedup's runs come before moka's: once a moka cache of a million keys
    // has been dropped, glibc's heap (its fastbins, its raised mmap threshold) makes the
    // next run's table growth two to three times slower, whichever structure runs next.
    let mut ours = Vec::new();
    for tasks in [1, 8] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let dedup = MemoryDedup::builder().max_capacity(10_000_000).build();
            rates.push(memory_rate(dedup, tasks).await);
        }
        ours.push((tasks, median(rates)));
    }
    println!("\n| dedup checks, 1 M new keys, median of 3 | checks/s | ÷ moka |");
    println!("|---|---:|---:|");
    for (tasks, ours) in ours {
        let mut rates = Vec::new();
        for _ in 0..3 {
            rates.push(memory_rate(Moka::new(10_000_000), tasks).await);
        }
        let theirs = median(rates);
        println!(
            "| MemoryDedup, {tasks} task(s) | {ours:.0} | {:.1} |",
            ours / theirs
        );
        println!("| moka LRU baseline, {tasks} task(s) | {theirs:.0} | 1.0 |");
    }
    match redis_rate().await {
        Some(rate) => println!("| RedisDedup, pipelined batches of 1,000 | {rate:.0} |"),
        None => println!("| RedisDedup | skipped: no Redis |"),
    }
    let plain = bus_rate(false).await;
    let with = bus_rate(true).await;
    println!("\n| bus, one async subscriber | events/s |");
    println!("|---|---:|");
    println!("| without dedup | {plain:.0} |");
    println!("| with DedupMiddleware (MemoryDedup) | {with:.0} |");
    println!("| ratio | {:.2} |", with / plain);
}
