//! The Disruptor paper's scenarios on this machine, in one run: eda's ring against
//! `crossbeam-channel` (the ArrayBlockingQueue role), `tokio::sync` channels, and the
//! `disruptor` crate (4.x) as the peer.
//!
//! Run with `cargo xtask bench ring` (or `cargo bench -p eda-dispatch --bench ring`),
//! optionally with filters (`unicast`, `multicast`, `multicast-blocking`, `pipeline`,
//! `sequencer`, `latency`: a scenario runs when its name contains one). The run ends
//! with issue 3's targets judged on its own figures; `cargo xtask bench targets` runs
//! the target scenarios only, then the whole-bus comparison.
//! The contenders of a scenario run in turn, once per round, five rounds after a warm-up
//! each: a phase of this shared machine then falls on all of them alike. A rate is the
//! median of its five runs; a ratio is the median of the five per-round ratios, printed
//! with their range.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use disruptor::Producer as _;
use eda_dispatch::ring::{self, WaitStrategy};

const N: u64 = 10_000_000;
const RUNS: usize = 5;
const RING: usize = 1024;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One contender of a scenario: its event count and a run that returns its time.
type Contender<'a> = (u64, &'a mut dyn FnMut(u64) -> Duration);

/// The rates of a scenario's contenders, `rates[contender][round]`.
struct Rounds {
    rates: Vec<Vec<f64>>,
}

/// Warms every contender up, then runs them in turn, once per round, `RUNS` rounds.
fn rounds(contenders: &mut [Contender<'_>]) -> Rounds {
    for (n, f) in contenders.iter_mut() {
        f(*n / 10);
    }
    let mut rates = vec![Vec::with_capacity(RUNS); contenders.len()];
    for _ in 0..RUNS {
        for ((n, f), rates) in contenders.iter_mut().zip(&mut rates) {
            rates.push(*n as f64 / f(*n).as_secs_f64());
        }
    }
    Rounds { rates }
}

impl Rounds {
    /// The median rate of contender `i`.
    fn rate(&self, i: usize) -> f64 {
        median(self.rates[i].clone())
    }

    /// Contender `i` against contender `j`: the median, lowest and highest of the
    /// per-round ratios of their rates.
    fn ratio(&self, i: usize, j: usize) -> Ratio {
        let per_round: Vec<f64> = self.rates[i]
            .iter()
            .zip(&self.rates[j])
            .map(|(a, b)| a / b)
            .collect();
        Ratio {
            median: median(per_round.clone()),
            low: per_round.iter().copied().fold(f64::INFINITY, f64::min),
            high: per_round.iter().copied().fold(0.0, f64::max),
            peer_rate: self.rate(j),
        }
    }
}

#[derive(Clone, Copy)]
struct Ratio {
    median: f64,
    low: f64,
    high: f64,
    peer_rate: f64,
}

/// The `disruptor` crate has busy-spin and sleep strategies; this is its yielding peer.
#[derive(Clone, Copy)]
struct DisruptorYield;
impl disruptor::wait_strategies::WaitStrategy for DisruptorYield {
    fn wait_for(&self, _sequence: disruptor::Sequence) {
        thread::yield_now();
    }
}

#[derive(Default)]
struct Slot {
    value: u64,
}

// ----- unicast 1P-1C ----------------------------------------------------------------------

fn eda_unicast(n: u64, batch: u64, strategy: WaitStrategy) -> Duration {
    let (mut producer, ring) = ring::single_producer_with::<u64>(RING, strategy);
    let mut consumer = ring.consumer();
    let start = Instant::now();
    let reader = thread::spawn(move || {
        let mut sum = 0u64;
        let mut seen = 0;
        while seen < n {
            consumer.wait().unwrap();
            seen += consumer.try_read_batch(RING, |_, v| sum = sum.wrapping_add(*v)) as u64;
        }
        black_box(sum);
    });
    let mut i = 0;
    if batch == 1 {
        while i < n {
            producer.publish(i).unwrap();
            i += 1;
        }
    } else {
        while i < n {
            // Values computed as they are written, as the `disruptor` closure does.
            let k = batch.min(n - i);
            let first = i;
            producer
                .publish_batch((0..k as u32).map(move |j| first + u64::from(j)))
                .unwrap();
            i += k;
        }
    }
    reader.join().unwrap();
    start.elapsed()
}

fn disruptor_unicast(n: u64, batch: u64) -> Duration {
    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    let mut sum = 0u64;
    let mut seen = 0u64;
    let mut producer = disruptor::build_single_producer(RING, Slot::default, DisruptorYield)
        .handle_events_with(move |e: &Slot, _seq, _end| {
            sum = sum.wrapping_add(e.value);
            seen += 1;
            if seen == n {
                d.store(black_box(sum) | 1, Ordering::Release);
            }
        })
        .build();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        if batch == 1 {
            producer.publish(|e| e.value = i);
            i += 1;
        } else {
            let k = batch.min(n - i);
            producer.batch_publish(k as usize, |iter| {
                for (j, e) in iter.enumerate() {
                    e.value = i + j as u64;
                }
            });
            i += k;
        }
    }
    while done.load(Ordering::Acquire) == 0 {
        thread::yield_now();
    }
    let elapsed = start.elapsed();
    drop(producer);
    elapsed
}

fn crossbeam_unicast(n: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<u64>(RING);
    let start = Instant::now();
    let reader = thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(rx.recv().unwrap());
        }
        black_box(sum);
    });
    for i in 0..n {
        tx.send(i).unwrap();
    }
    reader.join().unwrap();
    start.elapsed()
}

fn tokio_mpsc_unicast(n: u64) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(RING);
    let start = Instant::now();
    let reader = thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(rx.blocking_recv().unwrap());
        }
        black_box(sum);
    });
    for i in 0..n {
        tx.blocking_send(i).unwrap();
    }
    reader.join().unwrap();
    start.elapsed()
}

// ----- multicast 1P-3C, pipeline 1P-3C ----------------------------------------------------

fn eda_three_consumers(n: u64, pipeline: bool, strategy: WaitStrategy) -> Duration {
    let (mut producer, ring) = ring::single_producer_with::<u64>(RING, strategy);
    let mut consumers = Vec::new();
    let first = ring.consumer();
    if pipeline {
        let second = ring.consumer_after(&[&first]);
        let third = ring.consumer_after(&[&second]);
        consumers.extend([first, second, third]);
    } else {
        consumers.extend([first, ring.consumer(), ring.consumer()]);
    }
    let start = Instant::now();
    let readers: Vec<_> = consumers
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut sum = 0u64;
                let mut seen = 0;
                while seen < n {
                    c.wait().unwrap();
                    seen += c.try_read_batch(RING, |_, v| sum = sum.wrapping_add(*v)) as u64;
                }
                black_box(sum);
            })
        })
        .collect();
    for i in 0..n {
        producer.publish(i).unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    start.elapsed()
}

fn disruptor_three_consumers(n: u64, pipeline: bool) -> Duration {
    let done = Arc::new(AtomicU64::new(0));
    let handler = |done: Arc<AtomicU64>| {
        let mut seen = 0u64;
        let mut sum = 0u64;
        move |e: &Slot, _seq: disruptor::Sequence, _end: bool| {
            sum = sum.wrapping_add(e.value);
            seen += 1;
            if seen == n {
                black_box(sum);
                done.fetch_add(1, Ordering::AcqRel);
            }
        }
    };
    fn drive(mut producer: impl disruptor::Producer<Slot>, n: u64, done: &AtomicU64) -> Duration {
        let start = Instant::now();
        for i in 0..n {
            producer.publish(|e| e.value = i);
        }
        while done.load(Ordering::Acquire) < 3 {
            thread::yield_now();
        }
        start.elapsed()
    }
    let builder = disruptor::build_single_producer(RING, Slot::default, DisruptorYield)
        .handle_events_with(handler(done.clone()));
    if pipeline {
        let producer = builder
            .and_then()
            .handle_events_with(handler(done.clone()))
            .and_then()
            .handle_events_with(handler(done.clone()))
            .build();
        drive(producer, n, &done)
    } else {
        let producer = builder
            .handle_events_with(handler(done.clone()))
            .handle_events_with(handler(done.clone()))
            .build();
        drive(producer, n, &done)
    }
}

fn broadcast_three(n: u64) -> Duration {
    // Capacity for every event: receivers never lag and lose any (favours the baseline).
    let (tx, _) = tokio::sync::broadcast::channel::<u64>(n as usize);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let mut rx = tx.subscribe();
            thread::spawn(move || {
                let mut sum = 0u64;
                for _ in 0..n {
                    sum = sum.wrapping_add(rx.blocking_recv().unwrap());
                }
                black_box(sum);
            })
        })
        .collect();
    let start = Instant::now();
    for i in 0..n {
        tx.send(i).unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    start.elapsed()
}

// ----- sequencer 3P-1C --------------------------------------------------------------------

fn eda_sequencer(n: u64, strategy: WaitStrategy) -> Duration {
    let per = n / 3;
    let (producer, ring) = ring::multi_producer_with::<u64>(RING, strategy);
    let mut consumer = ring.consumer();
    let start = Instant::now();
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let p = producer.clone();
            thread::spawn(move || {
                for i in 0..per {
                    p.publish(i).unwrap();
                }
            })
        })
        .collect();
    let mut seen = 0;
    while seen < per * 3 {
        consumer.wait().unwrap();
        seen += consumer.try_read_batch(RING, |_, v| {
            black_box(v);
        }) as u64;
    }
    for w in writers {
        w.join().unwrap();
    }
    start.elapsed()
}

fn disruptor_sequencer(n: u64) -> Duration {
    let per = n / 3;
    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    let mut seen = 0u64;
    let producer = disruptor::build_multi_producer(RING, Slot::default, DisruptorYield)
        .handle_events_with(move |e: &Slot, _seq, _end| {
            black_box(e.value);
            seen += 1;
            if seen == per * 3 {
                d.store(1, Ordering::Release);
            }
        })
        .build();
    let start = Instant::now();
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let mut p = producer.clone();
            thread::spawn(move || {
                for i in 0..per {
                    p.publish(|e| e.value = i);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    while done.load(Ordering::Acquire) == 0 {
        thread::yield_now();
    }
    let elapsed = start.elapsed();
    drop(producer);
    elapsed
}

fn crossbeam_sequencer(n: u64) -> Duration {
    let per = n / 3;
    let (tx, rx) = crossbeam_channel::bounded::<u64>(RING);
    let start = Instant::now();
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..per {
                    tx.send(i).unwrap();
                }
            })
        })
        .collect();
    for _ in 0..per * 3 {
        black_box(rx.recv().unwrap());
    }
    for w in writers {
        w.join().unwrap();
    }
    start.elapsed()
}

// ----- latency ----------------------------------------------------------------------------

struct Latency {
    p50: u64,
    p99: u64,
    p999: u64,
    mean: f64,
}

fn histogram(samples: impl IntoIterator<Item = u64>) -> Latency {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    for s in samples {
        h.saturating_record(s.max(1));
    }
    Latency {
        p50: h.value_at_quantile(0.50),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        mean: h.mean(),
    }
}

const PINGS: u64 = 200_000;

fn eda_ping_pong(strategy: WaitStrategy) -> Latency {
    let (mut ping, ping_ring) = ring::single_producer_with::<u64>(RING, strategy);
    let (mut pong, pong_ring) = ring::single_producer_with::<u64>(RING, strategy);
    let mut ping_rx = ping_ring.consumer();
    let mut pong_rx = pong_ring.consumer();
    let echo = thread::spawn(move || {
        let mut left = PINGS;
        // Reused: an allocation per ping would be the harness's cost, not the ring's
        // (crossbeam's echo below allocates nothing).
        let mut got = Vec::with_capacity(RING);
        while left > 0 {
            ping_rx.wait().unwrap();
            ping_rx.try_read_batch(RING, |_, v| got.push(*v));
            for v in got.drain(..) {
                pong.publish(v).unwrap();
                left -= 1;
            }
        }
    });
    let mut samples = Vec::with_capacity(PINGS as usize);
    for i in 0..PINGS {
        let t = Instant::now();
        ping.publish(i).unwrap();
        pong_rx.wait().unwrap();
        pong_rx.try_read_batch(1, |_, v| assert_eq!(*v, i));
        samples.push(t.elapsed().as_nanos() as u64);
    }
    echo.join().unwrap();
    histogram(samples)
}

fn crossbeam_ping_pong() -> Latency {
    let (ping, ping_rx) = crossbeam_channel::bounded::<u64>(RING);
    let (pong, pong_rx) = crossbeam_channel::bounded::<u64>(RING);
    let echo = thread::spawn(move || {
        for _ in 0..PINGS {
            pong.send(ping_rx.recv().unwrap()).unwrap();
        }
    });
    let mut samples = Vec::with_capacity(PINGS as usize);
    for i in 0..PINGS {
        let t = Instant::now();
        ping.send(i).unwrap();
        assert_eq!(pong_rx.recv().unwrap(), i);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    echo.join().unwrap();
    histogram(samples)
}

/// The crate runs a thread per handler: a ping-pong needs two, plus the caller, so with
/// busy-spin three spinning threads share two cores and every round trip waits for a
/// time slice. Its yielding peer is measured instead (and said so in the table).
fn disruptor_ping_pong() -> Latency {
    let pong_value = Arc::new(AtomicU64::new(u64::MAX));
    let pv = pong_value.clone();
    let mut pong = disruptor::build_single_producer(RING, Slot::default, DisruptorYield)
        .handle_events_with(move |e: &Slot, _seq, _end| pv.store(e.value, Ordering::Release))
        .build();
    let mut ping = disruptor::build_single_producer(RING, Slot::default, DisruptorYield)
        .handle_events_with(move |e: &Slot, _seq, _end| {
            let v = e.value;
            pong.publish(|p| p.value = v);
        })
        .build();
    let mut samples = Vec::with_capacity(PINGS as usize);
    for i in 0..PINGS {
        let t = Instant::now();
        ping.publish(|e| e.value = i);
        while pong_value.load(Ordering::Acquire) != i {
            thread::yield_now();
        }
        samples.push(t.elapsed().as_nanos() as u64);
    }
    drop(ping);
    histogram(samples)
}

fn main() {
    // Filters: a scenario runs when its name contains one of them (all without any).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let m = |r: f64| format!("{:.1} M/s", r / 1e6);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    // Issue 3's targets, judged on this run's figures: (target, measured, met).
    let mut targets: Vec<(&str, String, bool)> = Vec::new();
    let mut at_least = |target: &'static str, r: &Ratio, floor: f64| {
        let measured = format!("{:.2}× (rounds {:.2}–{:.2}×)", r.median, r.low, r.high);
        targets.push((target, measured, r.median >= floor));
    };
    let mut row = |scenario: &str, ours: f64, peers: &[(&str, Ratio)]| {
        let ratios = peers
            .iter()
            .map(|(name, r)| {
                format!(
                    "{:.2}× {name} ({}; rounds {:.2}–{:.2}×)",
                    r.median,
                    m(r.peer_rate),
                    r.low,
                    r.high
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        rows.push((scenario.to_owned(), m(ours), ratios));
    };

    if wanted("unicast") {
        let r = rounds(&mut [
            (N, &mut |n| eda_unicast(n, 1, WaitStrategy::Yielding)),
            (N, &mut |n| disruptor_unicast(n, 1)),
            (N, &mut crossbeam_unicast),
            (N / 4, &mut tokio_mpsc_unicast),
            (N, &mut |n| eda_unicast(n, 1, WaitStrategy::BusySpin)),
            (N * 4, &mut |n| eda_unicast(n, 64, WaitStrategy::Yielding)),
            (N * 4, &mut |n| disruptor_unicast(n, 64)),
        ]);
        let (ours, peer, cb, mpsc, spin, batch, peer_batch) = (0, 1, 2, 3, 4, 5, 6);
        let (one_peer, one_cb) = (r.ratio(ours, peer), r.ratio(ours, cb));
        let (batch_peer, batch_cb) = (r.ratio(batch, peer_batch), r.ratio(batch, cb));
        at_least(
            "unicast one at a time, yielding: ≥ 1.0× `disruptor`",
            &one_peer,
            1.0,
        );
        at_least(
            "unicast one at a time, yielding: ≥ 4× crossbeam bounded(1024)",
            &one_cb,
            4.0,
        );
        at_least(
            "unicast batches of 64: ≥ 1.0× `disruptor` batch",
            &batch_peer,
            1.0,
        );
        at_least(
            "unicast batches of 64: ≥ 25× crossbeam bounded(1024)",
            &batch_cb,
            25.0,
        );
        row(
            "unicast 1P-1C, one at a time, yielding",
            r.rate(ours),
            &[
                ("disruptor", one_peer),
                ("crossbeam bounded(1024)", one_cb),
                ("tokio mpsc", r.ratio(ours, mpsc)),
            ],
        );
        row(
            "unicast 1P-1C, one at a time, busy-spin",
            r.rate(spin),
            &[
                (
                    "disruptor (spinning producer, yielding consumer)",
                    r.ratio(spin, peer),
                ),
                ("crossbeam bounded(1024)", r.ratio(spin, cb)),
            ],
        );
        row(
            "unicast 1P-1C, batches of 64, yielding",
            r.rate(batch),
            &[
                ("disruptor batch", batch_peer),
                ("crossbeam bounded(1024)", batch_cb),
            ],
        );
    }
    // `multicast` runs both rows; `multicast-blocking` only the default strategy's
    // (without the `disruptor` peer, whose spinning producer can take minutes here).
    if wanted("multicast-yielding") || wanted("multicast-blocking") {
        let yielding = wanted("multicast-yielding");
        let blocking = wanted("multicast-blocking");
        let mut eda_yielding = |n| eda_three_consumers(n, false, WaitStrategy::Yielding);
        let mut peer = |n| disruptor_three_consumers(n, false);
        let mut eda_blocking = |n| eda_three_consumers(n, false, WaitStrategy::Blocking);
        let mut broadcast = broadcast_three;
        let mut contenders: Vec<Contender<'_>> = vec![(N / 4, &mut broadcast)];
        if yielding {
            contenders.push((N, &mut eda_yielding));
            contenders.push((N, &mut peer));
        }
        if blocking {
            contenders.push((N, &mut eda_blocking));
        }
        let r = rounds(&mut contenders);
        let bc = 0;
        if yielding {
            row(
                "multicast 1P-3C, yielding",
                r.rate(1),
                &[
                    ("disruptor", r.ratio(1, 2)),
                    ("tokio broadcast", r.ratio(1, bc)),
                ],
            );
        }
        if blocking {
            let ours = r.rates.len() - 1;
            let vs_broadcast = r.ratio(ours, bc);
            at_least(
                "multicast 1P-3C, default strategy (`Blocking`): ≥ 10× tokio broadcast",
                &vs_broadcast,
                10.0,
            );
            row(
                "multicast 1P-3C, blocking",
                r.rate(ours),
                &[("tokio broadcast", vs_broadcast)],
            );
        }
    }
    if wanted("pipeline") {
        let r = rounds(&mut [
            (N, &mut |n| {
                eda_three_consumers(n, true, WaitStrategy::Yielding)
            }),
            (N, &mut |n| disruptor_three_consumers(n, true)),
        ]);
        row(
            "pipeline 1P-3C, yielding",
            r.rate(0),
            &[("disruptor", r.ratio(0, 1))],
        );
    }
    if wanted("sequencer") {
        let r = rounds(&mut [
            (N, &mut |n| eda_sequencer(n, WaitStrategy::Yielding)),
            (N, &mut |n| eda_sequencer(n, WaitStrategy::Blocking)),
            (N, &mut disruptor_sequencer),
            (N, &mut crossbeam_sequencer),
        ]);
        let (ours, ours_blocking, peer, cb) = (0, 1, 2, 3);
        row(
            "sequencer 3P-1C, yielding",
            r.rate(ours),
            &[
                ("disruptor", r.ratio(ours, peer)),
                ("crossbeam bounded(1024)", r.ratio(ours, cb)),
            ],
        );
        row(
            "sequencer 3P-1C, blocking",
            r.rate(ours_blocking),
            &[("crossbeam bounded(1024)", r.ratio(ours_blocking, cb))],
        );
    }

    println!("\n| scenario | eda ring | eda ÷ peer (peer rate) |");
    println!("|---|---:|---|");
    for (s, r, ratios) in &rows {
        println!("| {s} | {r} | {ratios} |");
    }

    if wanted("latency") {
        println!("\n| ping-pong round trip ({PINGS} pings) | mean | p50 | p99 | p99.9 |");
        println!("|---|---:|---:|---:|---:|");
        let spin = eda_ping_pong(WaitStrategy::BusySpin);
        let crossbeam = crossbeam_ping_pong();
        for (name, l) in [
            ("eda ring, busy-spin", &spin),
            ("eda ring, yielding", &eda_ping_pong(WaitStrategy::Yielding)),
            ("disruptor, yielding (3 threads)", &disruptor_ping_pong()),
            ("crossbeam bounded", &crossbeam),
        ] {
            println!(
                "| {name} | {:.0} ns | {} ns | {} ns | {} ns |",
                l.mean, l.p50, l.p99, l.p999
            );
        }
        targets.push((
            "round trip, busy-spin: p50 ≤ 500 ns",
            format!("{} ns", spin.p50),
            spin.p50 <= 500,
        ));
        targets.push((
            "round trip, busy-spin: p99 ≤ 1 µs and ≤ crossbeam's p99 (p99.9 reported)",
            format!(
                "{} ns, crossbeam {} ns (p99.9 {} ns)",
                spin.p99, crossbeam.p99, spin.p999
            ),
            spin.p99 <= 1_000 && spin.p99 <= crossbeam.p99,
        ));
    }

    if !targets.is_empty() {
        // The whole bus against the mpsc bus is `cargo xtask bench transport`'s.
        println!("\n| issue 3 target (this run) | measured | met? |");
        println!("|---|---|---|");
        for (target, measured, met) in &targets {
            println!(
                "| {target} | {measured} | {} |",
                if *met { "yes" } else { "**no**" }
            );
        }
    }
}
