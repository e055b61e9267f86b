//! What observability costs the bus: throughput with metrics and spans on against the
//! same bus with `observability(false)`, in the same run.
//!
//! Run with `cargo xtask bench observe [prefix]` (or `cargo bench -p eda-observe --bench
//! overhead`); a prefix (`sync`, `async, 3`) runs the scenarios whose names start with it.
//!
//! Two phases, because a global recorder cannot be uninstalled:
//! 1. no recorder and no `tracing` subscriber installed: on (no-op handles, disabled
//!    spans, the clock reads of the histograms) against off;
//! 2. the Prometheus recorder of `PrometheusExporter` installed (its upkeep running):
//!    on (every counter and histogram recorded) against off.
//!
//! Within a phase the two configurations alternate run by run (off, on, off, on, ...) so
//! drift on a shared machine hits both; each figure is the median of its runs. Targets
//! (issue 8): on ≥ 0.97 × off without a recorder, ≥ 0.90 × off with it.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

const RUNS: usize = 9;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn wait_for(count: &AtomicU64, target: u64) {
    while count.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

/// Async subscribers (the ring, a group task, the lifecycle per event).
async fn run_async(on: bool, subs: usize, n: u64) -> Duration {
    let bus = Bus::builder().observability(on).build();
    let count = Arc::new(AtomicU64::new(0));
    let _subs: Vec<_> = (0..subs)
        .map(|_| {
            let count = count.clone();
            bus.subscribe_with(
                SubscribeOptions::new(),
                move |e: Arc<Envelope<Tick>>, _c: Context| {
                    black_box(e.payload.n);
                    count.fetch_add(1, Ordering::Relaxed);
                    async { Ok(()) }
                },
            )
            .unwrap()
        })
        .collect();
    let start = Instant::now();
    for i in 0..n {
        bus.publish(Tick { n: i }).await.unwrap();
    }
    wait_for(&count, n * subs as u64).await;
    let elapsed = start.elapsed();
    bus.shutdown(Duration::from_secs(5)).await;
    elapsed
}

/// Synchronous subscribers (the handler runs inside `try_publish`).
fn run_sync(on: bool, subs: usize, n: u64) -> Duration {
    let bus = Bus::builder().observability(on).build();
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

struct Scenario {
    name: &'static str,
    events: u64,
    run: Box<dyn Fn(bool, u64) -> Duration>,
}

/// (off events/s, on events/s), medians of interleaved runs.
fn compare(s: &Scenario) -> (f64, f64) {
    (s.run)(false, s.events / 10); // warm-up
    (s.run)(true, s.events / 10);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        off.push(s.events as f64 / (s.run)(false, s.events).as_secs_f64());
        on.push(s.events as f64 / (s.run)(true, s.events).as_secs_f64());
    }
    (median(off), median(on))
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.starts_with(f));
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let scenarios: Vec<Scenario> = vec![
        Scenario {
            name: "async, 1 subscriber",
            events: 300_000,
            run: Box::new({
                let rt = rt.clone();
                move |on, n| rt.block_on(run_async(on, 1, n))
            }),
        },
        Scenario {
            name: "async, 3 subscribers",
            events: 200_000,
            run: Box::new({
                let rt = rt.clone();
                move |on, n| rt.block_on(run_async(on, 3, n))
            }),
        },
        Scenario {
            name: "sync, 1 subscriber",
            events: 1_000_000,
            run: Box::new(|on, n| run_sync(on, 1, n)),
        },
    ]
    .into_iter()
    .filter(|s| wanted(s.name))
    .collect();

    let mut rows = Vec::new();
    for s in &scenarios {
        let (off, on) = compare(s);
        rows.push((s.name, "no recorder, no subscriber", off, on, 0.97));
    }
    // Phase 2: the Prometheus recorder, installed for the rest of the process.
    let _prometheus = rt.block_on(async {
        eda_observe::PrometheusExporter::new()
            .install()
            .expect("installing the Prometheus recorder")
    });
    for s in &scenarios {
        let (off, on) = compare(s);
        rows.push((s.name, "Prometheus recorder", off, on, 0.90));
    }

    println!("\n| scenario | installed | off events/s | on events/s | on ÷ off | target | met |");
    println!("|---|---|---:|---:|---:|---:|---|");
    for (name, installed, off, on, target) in rows {
        let ratio = on / off;
        println!(
            "| {name} | {installed} | {:.3} M | {:.3} M | {ratio:.3} | ≥ {target:.2} | {} |",
            off / 1e6,
            on / 1e6,
            if ratio >= target { "yes" } else { "no" }
        );
    }
}
