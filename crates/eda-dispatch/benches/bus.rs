//! Publish → handler throughput of the bus against in-run baselines.
//!
//! Run with `cargo xtask bench` (or `cargo bench -p eda-dispatch --bench bus`).
//! Baselines, measured in the same run on the same runtime:
//! (a) the seed's Go design transcribed: `RwLock<HashMap<String, Vec<Arc<dyn Fn>>>>`,
//!     the handler list copied under the read lock, then called inline (sync) or one
//!     `tokio::spawn` per handler per event (async, the seed's `go h(data)`);
//! (b) `tokio::sync::broadcast` with one receiver task per subscriber.
//! Every row builds the same envelope (`Envelope::new`: v7 id + timestamp) per event.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use eda_core::{Context, Envelope, Event};
use eda_dispatch::{Bus, SubscribeOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick {
    n: u64,
}
impl Event for Tick {
    const TYPE: &'static str = "bench.tick";
}

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Events per second, median of RUNS runs of `f(n)` (which returns its elapsed time).
fn rate(n: u64, mut f: impl FnMut(u64) -> Duration) -> f64 {
    rate_and_wakeups(n, 1, |n| (f(n), Counted::default())).0
}

/// What a run's group processors counted (`BusStats`).
#[derive(Clone, Copy, Default)]
struct Counted {
    wakeups: u64,
    batches: u64,
}

/// [`rate`] for runs that also count what their group processors did: the median
/// rate, and each run's rate, wake-ups per 1,000 deliveries and mean batch read
/// (`deliveries` per event).
fn rate_and_wakeups(
    n: u64,
    deliveries: u64,
    mut f: impl FnMut(u64) -> (Duration, Counted),
) -> (f64, Vec<(f64, f64, f64)>) {
    f(n / 10); // warm-up
    let runs: Vec<_> = (0..RUNS)
        .map(|_| {
            let (elapsed, counted) = f(n);
            let per_k = counted.wakeups as f64 * 1000.0 / (n * deliveries) as f64;
            let batch = (n * deliveries) as f64 / counted.batches.max(1) as f64;
            (n as f64 / elapsed.as_secs_f64(), per_k, batch)
        })
        .collect();
    (median(runs.iter().map(|r| r.0).collect()), runs)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ----- baselines ------------------------------------------------------------------------

type DynHandler = Arc<dyn Fn(Arc<Envelope<Tick>>) + Send + Sync>;

/// The seed's EventBus, transcribed.
#[derive(Default)]
struct SeedBus {
    handlers: RwLock<HashMap<String, Vec<DynHandler>>>,
}

impl SeedBus {
    fn subscribe(&self, event_type: &str, h: DynHandler) {
        self.handlers
            .write()
            .unwrap()
            .entry(event_type.to_owned())
            .or_default()
            .push(h);
    }
    fn handlers(&self, event_type: &str) -> Vec<DynHandler> {
        self.handlers
            .read()
            .unwrap()
            .get(event_type)
            .cloned()
            .unwrap_or_default()
    }
    fn publish_sync(&self, event: Envelope<Tick>) {
        let event = Arc::new(event);
        for h in self.handlers(Tick::TYPE) {
            h(event.clone());
        }
    }
    fn publish_spawn(&self, event: Envelope<Tick>) {
        let event = Arc::new(event);
        for h in self.handlers(Tick::TYPE) {
            let event = event.clone();
            tokio::spawn(async move { h(event) });
        }
    }
}

fn seed_bus(subs: usize, count: &Arc<AtomicU64>) -> SeedBus {
    let bus = SeedBus::default();
    for _ in 0..subs {
        let count = count.clone();
        bus.subscribe(
            Tick::TYPE,
            Arc::new(move |e| {
                black_box(e.payload.n);
                count.fetch_add(1, Ordering::Relaxed);
            }),
        );
    }
    bus
}

async fn wait_for(count: &AtomicU64, target: u64) {
    while count.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

fn baseline_sync(subs: usize, n: u64) -> Duration {
    let count = Arc::new(AtomicU64::new(0));
    let bus = seed_bus(subs, &count);
    let start = Instant::now();
    for i in 0..n {
        bus.publish_sync(Envelope::new(Tick { n: i }));
    }
    let elapsed = start.elapsed();
    assert_eq!(count.load(Ordering::Relaxed), n * subs as u64);
    elapsed
}

fn baseline_spawn(rt: &tokio::runtime::Runtime, subs: usize, n: u64) -> Duration {
    let count = Arc::new(AtomicU64::new(0));
    let bus = seed_bus(subs, &count);
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..n {
            bus.publish_spawn(Envelope::new(Tick { n: i }));
        }
        wait_for(&count, n * subs as u64).await;
        start.elapsed()
    })
}

fn baseline_broadcast(rt: &tokio::runtime::Runtime, subs: usize, n: u64) -> Duration {
    rt.block_on(async {
        // Capacity for every event, so no receiver lags and loses any (favours the baseline).
        let (tx, _) = tokio::sync::broadcast::channel::<Arc<Envelope<Tick>>>(n as usize);
        let count = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..subs)
            .map(|_| {
                let mut rx = tx.subscribe();
                let count = count.clone();
                tokio::spawn(async move {
                    while let Ok(e) = rx.recv().await {
                        black_box(e.payload.n);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let start = Instant::now();
        for i in 0..n {
            tx.send(Arc::new(Envelope::new(Tick { n: i }))).unwrap();
        }
        wait_for(&count, n * subs as u64).await;
        let elapsed = start.elapsed();
        drop(tx);
        for t in tasks {
            t.await.unwrap();
        }
        elapsed
    })
}

// ----- eda ------------------------------------------------------------------------------

fn eda_sync(subs: usize, n: u64) -> Duration {
    let bus = Bus::new();
    let count = Arc::new(AtomicU64::new(0));
    let _subs: Vec<_> = (0..subs)
        .map(|_| {
            let count = count.clone();
            bus.subscribe_sync(move |e: &Envelope<Tick>, _c: &Context| {
                black_box(e.payload.n);
                count.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .unwrap()
        })
        .collect();
    let start = Instant::now();
    for i in 0..n {
        bus.try_publish(Tick { n: i }).unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(count.load(Ordering::Relaxed), n * subs as u64);
    elapsed
}

/// `subs` async subscribers (groups) of `Tick` that count what they handle.
fn counting_subscribers(
    bus: &Bus,
    subs: usize,
    options: SubscribeOptions,
) -> (Arc<AtomicU64>, Vec<eda_dispatch::Subscription>) {
    let count = Arc::new(AtomicU64::new(0));
    let subscriptions = (0..subs)
        .map(|_| {
            let count = count.clone();
            bus.subscribe_with(
                options.clone(),
                move |e: Arc<Envelope<Tick>>, _c: Context| {
                    black_box(e.payload.n);
                    count.fetch_add(1, Ordering::Relaxed);
                    async { Ok(()) }
                },
            )
            .unwrap()
        })
        .collect();
    (count, subscriptions)
}

/// The elapsed time and what the group processors counted.
fn eda_async(
    rt: &tokio::runtime::Runtime,
    subs: usize,
    n: u64,
    timeout: bool,
) -> (Duration, Counted) {
    rt.block_on(async {
        let bus = Bus::new();
        let options = if timeout {
            SubscribeOptions::new()
        } else {
            SubscribeOptions::new().no_timeout()
        };
        let (count, _subs) = counting_subscribers(&bus, subs, options);
        let start = Instant::now();
        for i in 0..n {
            bus.publish(Tick { n: i }).await.unwrap();
        }
        wait_for(&count, n * subs as u64).await;
        let elapsed = start.elapsed();
        let stats = bus.stats();
        bus.shutdown(Duration::from_secs(5)).await;
        let counted = Counted {
            wakeups: stats.wakeups,
            batches: stats.batches,
        };
        (elapsed, counted)
    })
}

/// Each side of the bus alone, on one thread: a current-thread runtime publishes a
/// ring's worth of events with `publish` (never waiting: there is room, and the
/// group's processor cannot run meanwhile), then lets the processor handle them all;
/// repeated `rounds` times. Returns the
/// publishing time and the handling time. No wake-up or scheduling between the two
/// sides is measured: what each costs per event, on a warm cache.
fn eda_sides(subs: usize, ring: u64, rounds: u64) -> (Duration, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = Bus::builder().queue_capacity(ring as usize).build();
        let (count, _subs) = counting_subscribers(&bus, subs, SubscribeOptions::new());
        let (mut publishing, mut handling) = (Duration::ZERO, Duration::ZERO);
        for round in 0..rounds {
            let start = Instant::now();
            for i in 0..ring {
                bus.publish(Tick { n: i }).await.unwrap();
            }
            publishing += start.elapsed();
            let start = Instant::now();
            wait_for(&count, (round + 1) * ring * subs as u64).await;
            handling += start.elapsed();
        }
        bus.shutdown(Duration::from_secs(5)).await;
        (publishing, handling)
    })
}

fn envelope_cost(n: u64) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        black_box(Envelope::new(Tick { n: i }));
    }
    start.elapsed()
}

struct Row {
    scenario: String,
    rate: f64,
    baselines: Vec<(&'static str, f64)>,
    features: &'static str,
    /// Each run's rate and wake-ups of the group processors per 1,000 deliveries.
    wakeups: Vec<(f64, f64, f64)>,
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    // For profiling eda alone: EDA_BENCH_SKIP_BASELINES=1.
    let skip_baselines = std::env::var_os("EDA_BENCH_SKIP_BASELINES").is_some();
    let rt = runtime();
    let mut rows = Vec::new();

    if wanted("envelope") {
        let r = rate(2_000_000, envelope_cost);
        rows.push(Row {
            scenario: "build an envelope (v7 id + time)".into(),
            rate: r,
            baselines: vec![],
            features: "—",
            wakeups: vec![],
        });
    }
    for subs in [1usize, 3] {
        if wanted(&format!("sync {subs}")) {
            let ours = rate(1_000_000, |n| eda_sync(subs, n));
            let base = if skip_baselines {
                f64::NAN
            } else {
                rate(1_000_000, |n| baseline_sync(subs, n))
            };
            rows.push(Row {
                scenario: format!("sync, {subs} subscriber(s)"),
                rate: ours,
                baselines: vec![("(a) seed copy-the-list, inline", base)],
                features: "panic catching, unsubscribe gate, trace context stamped",
                wakeups: vec![],
            });
        }
        if wanted(&format!("async {subs}")) {
            let n = 500_000;
            let d = subs as u64;
            let (ours, wakeups) = rate_and_wakeups(n, d, |n| eda_async(&rt, subs, n, true));
            let (ours_no_timeout, wakeups_no_timeout) =
                rate_and_wakeups(n, d, |n| eda_async(&rt, subs, n, false));
            let (spawn, broadcast) = if skip_baselines {
                (f64::NAN, f64::NAN)
            } else {
                (
                    rate(n, |n| baseline_spawn(&rt, subs, n)),
                    rate(n, |n| baseline_broadcast(&rt, subs, n)),
                )
            };
            rows.push(Row {
                scenario: format!("async, {subs} subscriber(s)"),
                rate: ours,
                baselines: vec![
                    ("(a) seed spawn per handler", spawn),
                    ("(b) tokio broadcast", broadcast),
                ],
                features: "timeout 30 s, panic catching, retries armed (3), gate, topic ring 1024",
                wakeups,
            });
            rows.push(Row {
                scenario: format!("async, {subs} subscriber(s), no timeout"),
                rate: ours_no_timeout,
                baselines: vec![
                    ("(a) seed spawn per handler", spawn),
                    ("(b) tokio broadcast", broadcast),
                ],
                features: "panic catching, retries armed (3), gate, topic ring 1024",
                wakeups: wakeups_no_timeout,
            });
        }
    }

    if wanted("sides") {
        // 1024 events a round (the default ring), 500 rounds; medians of RUNS runs.
        let (ring, rounds) = (1024, 500);
        eda_sides(1, ring, rounds / 10);
        let runs: Vec<_> = (0..RUNS).map(|_| eda_sides(1, ring, rounds)).collect();
        let per_event = |pick: fn(&(Duration, Duration)) -> Duration| {
            median(
                runs.iter()
                    .map(|r| (ring * rounds) as f64 / pick(r).as_secs_f64())
                    .collect(),
            )
        };
        rows.push(Row {
            scenario: "publish alone, 1 subscriber (current-thread runtime)".into(),
            rate: per_event(|r| r.0),
            baselines: vec![],
            features: "publish(..).await: envelope, stamp, ring claim",
            wakeups: vec![],
        });
        rows.push(Row {
            scenario: "handle alone, 1 subscriber (current-thread runtime)".into(),
            rate: per_event(|r| r.1),
            baselines: vec![],
            features: "timeout 30 s, panic catching, retries armed (3), gate",
            wakeups: vec![],
        });
    }

    println!(
        "\n| scenario | eda events/s | baseline | baseline events/s | eda ÷ baseline | lifecycle features on |"
    );
    println!("|---|---:|---|---:|---:|---|");
    for row in &rows {
        if row.baselines.is_empty() {
            println!(
                "| {} | {:.2} M ({:.0} ns each) | — | — | — | {} |",
                row.scenario,
                row.rate / 1e6,
                1e9 / row.rate,
                row.features
            );
        }
        for (name, base) in &row.baselines {
            println!(
                "| {} | {:.2} M | {} | {:.2} M | {:.2}× | {} |",
                row.scenario,
                row.rate / 1e6,
                name,
                base / 1e6,
                row.rate / base,
                row.features
            );
        }
    }
    let woken: Vec<_> = rows.iter().filter(|r| !r.wakeups.is_empty()).collect();
    if !woken.is_empty() {
        // A run whose groups are woken often is a slow run: each wake-up costs the
        // publisher a task (often a thread) wake-up.
        println!(
            "\nEach run: events/s (group wake-ups per 1,000 deliveries, `BusStats::wakeups`; \
             mean batch a group read, deliveries ÷ `BusStats::batches`):"
        );
        for row in woken {
            let runs: Vec<_> = (row.wakeups.iter())
                .map(|(r, w, b)| format!("{:.2} M ({w:.1}, {b:.0})", r / 1e6))
                .collect();
            println!("- {}: {}", row.scenario, runs.join(", "));
        }
    }
}
