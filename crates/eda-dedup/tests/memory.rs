//! MemoryDedup: window edges, capacity, concurrency, and the middleware on the bus and
//! on a store's redeliveries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::{
    ConsumeOptions, Context, Envelope, Event, EventStore, HandlerError, JsonCodec, StartFrom,
    Timestamp,
};
use eda_dedup::{DedupMiddleware, Deduplicator, ManualClock, MemoryDedup, Window};
use eda_dispatch::{Bus, RetryPolicy, SubscribeOptions};
use eda_testkit::MemoryStore;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const EPS: Duration = Duration::from_millis(1);
const WINDOW: Duration = Duration::from_secs(300);

fn at(clock: &ManualClock) -> Timestamp {
    eda_dedup::Clock::now(clock)
}

#[tokio::test]
async fn arrival_window_edges() {
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    let dedup = MemoryDedup::builder()
        .window(Window::Arrival(WINDOW))
        .clock(clock.clone())
        .build();
    let t = at(&clock);
    assert!(dedup.first_seen("k", t).await.unwrap());
    clock.advance(WINDOW - EPS);
    assert!(
        !dedup.first_seen("k", t).await.unwrap(),
        "duplicate at t+window-ε"
    );
    clock.advance(EPS * 2);
    assert!(dedup.first_seen("k", t).await.unwrap(), "new at t+window+ε");
}

#[tokio::test]
async fn event_time_window_edges() {
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    let dedup = MemoryDedup::builder()
        .window(Window::EventTime(WINDOW))
        .clock(clock.clone())
        .build();
    // The event happened a minute before it first arrives: the window runs from then.
    let event_time = at(&clock);
    clock.advance(Duration::from_secs(60));
    assert!(dedup.first_seen("k", event_time).await.unwrap());
    clock.advance(WINDOW - Duration::from_secs(60) - EPS);
    assert!(
        !dedup.first_seen("k", event_time).await.unwrap(),
        "duplicate at time+window-ε"
    );
    clock.advance(EPS * 2);
    assert!(
        dedup.first_seen("k", event_time).await.unwrap(),
        "new at time+window+ε"
    );
    // An event already older than the window is handled, every time.
    let ancient =
        Timestamp::from_unix_millis(at(&clock).unix_millis() - 2 * WINDOW.as_millis() as i64);
    assert!(dedup.first_seen("old", ancient).await.unwrap());
    assert!(dedup.first_seen("old", ancient).await.unwrap());
}

#[tokio::test]
async fn claims_lapse_unless_confirmed_and_forget_unmarks() {
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    let dedup = MemoryDedup::builder().clock(clock.clone()).build();
    let t = at(&clock);
    assert!(dedup.claim("a", t, Duration::from_secs(10)).await.unwrap());
    assert!(!dedup.claim("a", t, Duration::from_secs(10)).await.unwrap());
    clock.advance(Duration::from_secs(11));
    assert!(
        dedup.claim("a", t, Duration::from_secs(10)).await.unwrap(),
        "lapsed claim"
    );
    dedup.confirm("a", t).await.unwrap();
    clock.advance(Duration::from_secs(60));
    assert!(
        !dedup.first_seen("a", t).await.unwrap(),
        "confirmed for the window"
    );
    dedup.forget("a").await.unwrap();
    assert!(dedup.first_seen("a", t).await.unwrap(), "forgotten");
}

#[tokio::test]
async fn memory_stays_bounded_at_ten_times_the_capacity() {
    let dedup = MemoryDedup::builder().max_capacity(1_000).build();
    let now = Timestamp::now();
    for i in 0..10_000 {
        assert!(dedup.first_seen(&format!("k{i}"), now).await.unwrap());
    }
    let held = dedup.len();
    assert!(held <= 1_000, "{held} keys held with a capacity of 1,000");
    assert!(
        dedup.evictions() >= 9_000,
        "{} evictions",
        dedup.evictions()
    );
    // The newest key is still there, the oldest is gone.
    assert!(!dedup.first_seen("k9999", now).await.unwrap());
    assert!(dedup.first_seen("k0", now).await.unwrap());
}

#[test]
fn evictions_are_counted_as_a_metric() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dedup = MemoryDedup::builder().max_capacity(10).build();
    metrics::with_local_recorder(&recorder, || {
        for i in 0..25 {
            assert!(dedup.first_seen_now(&format!("k{i}"), Timestamp::now()));
        }
    });
    let evicted: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == eda_core::observe::DEDUP_EVICTIONS)
        .map(|(.., value)| value)
        .collect();
    assert_eq!(
        evicted,
        [metrics_util::debugging::DebugValue::Counter(15)],
        "15 of 25 keys pushed out of a window of 10"
    );
}

#[tokio::test]
async fn the_key_marked_longest_ago_is_evicted_first() {
    // 100 keys fit in one shard, so the order is exact.
    let dedup = MemoryDedup::builder().max_capacity(100).build();
    let now = Timestamp::now();
    for i in 0..150 {
        assert!(dedup.first_seen(&format!("k{i}"), now).await.unwrap());
    }
    assert_eq!(dedup.evictions(), 50);
    for i in 50..150 {
        assert!(
            !dedup.first_seen(&format!("k{i}"), now).await.unwrap(),
            "k{i} is among the 100 newest"
        );
    }
    for i in 0..50 {
        assert!(
            dedup.first_seen(&format!("k{i}"), now).await.unwrap(),
            "k{i} was evicted"
        );
    }
}

#[tokio::test]
async fn expired_marks_leave_memory_as_new_keys_arrive() {
    let clock = ManualClock::new(Timestamp::from_unix_millis(1_800_000_000_000));
    let dedup = MemoryDedup::builder()
        .window(Window::Arrival(Duration::from_secs(60)))
        .clock(clock.clone())
        .build();
    for i in 0..1_000 {
        assert!(
            dedup
                .first_seen(&format!("old{i}"), at(&clock))
                .await
                .unwrap()
        );
    }
    assert_eq!(dedup.len(), 1_000);
    clock.advance(Duration::from_secs(61));
    for i in 0..1_000 {
        assert!(
            dedup
                .first_seen(&format!("new{i}"), at(&clock))
                .await
                .unwrap()
        );
    }
    assert_eq!(dedup.len(), 1_000, "only the live marks are held");
    assert_eq!(dedup.evictions(), 0, "expiry is not eviction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tasks_racing_see_each_key_first_once() {
    let dedup = MemoryDedup::default();
    let now = Timestamp::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let dedup = dedup.clone();
            tokio::spawn(async move {
                let mut firsts = Vec::new();
                for i in 0..10_000 {
                    if dedup.first_seen(&format!("k{i}"), now).await.unwrap() {
                        firsts.push(i);
                    }
                }
                firsts
            })
        })
        .collect();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for t in tasks {
        for i in t.await.unwrap() {
            *counts.entry(i).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 10_000);
    assert!(counts.values().all(|&c| c == 1));
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Paid {
    order: u64,
}
impl Event for Paid {
    const TYPE: &'static str = "paid";
}

/// Side effects per order.
type Effects = Arc<Mutex<HashMap<u64, u32>>>;

/// Handles deliveries of a store as a durable consumer would, through a dedup check
/// (or not), and loses the ack of every first delivery, so the store redelivers each
/// event after the visibility timeout.
async fn redelivered_effects(dedup: Option<MemoryDedup>) -> HashMap<u64, u32> {
    let store = MemoryStore::new();
    let records = (0..50)
        .map(|order| Envelope::new(Paid { order }).to_raw(&JsonCodec).unwrap())
        .collect();
    store.append("paid", records).await.unwrap();
    let options = ConsumeOptions {
        start: StartFrom::Beginning,
        visibility_timeout: Duration::from_millis(200),
        ..ConsumeOptions::default()
    };
    let mut deliveries = store
        .subscribe("paid", "ledger", "c", options)
        .await
        .unwrap();
    let mut effects: HashMap<u64, u32> = HashMap::new();
    let mut deliveries_seen = 0;
    while deliveries_seen < 100 {
        let d = tokio::time::timeout(Duration::from_secs(5), deliveries.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        deliveries_seen += 1;
        let raw = d.record.as_ref().unwrap().clone();
        let first = match &dedup {
            Some(dedup) => dedup
                .first_seen(&format!("ledger:{}", raw.id), raw.time)
                .await
                .unwrap(),
            None => true,
        };
        if first {
            let order = raw.decode::<Paid>().unwrap().payload.order;
            *effects.entry(order).or_default() += 1;
        }
        if d.attempt >= 2 {
            d.ack().await.unwrap();
        } // else: the ack is "lost"; the store redelivers after 200 ms
    }
    effects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_have_one_effect_with_dedup_and_two_without() {
    let with = redelivered_effects(Some(MemoryDedup::default())).await;
    assert_eq!(with.len(), 50);
    assert!(with.values().all(|&n| n == 1), "with dedup: {with:?}");
    let without = redelivered_effects(None).await;
    assert!(
        without.values().all(|&n| n == 2),
        "without dedup: {without:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_drops_duplicates_per_group_but_not_after_a_failure() {
    let dedup = MemoryDedup::default();
    let bus = Bus::new();
    let effects: Effects = Arc::default();
    let failures_left = Arc::new(Mutex::new(1u32));
    let middleware = DedupMiddleware::new(dedup.clone());
    let counter = middleware.clone();
    let (e, f) = (effects.clone(), failures_left.clone());
    let _ledger = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("ledger")
                .retry(RetryPolicy::none())
                .middleware(middleware.clone()),
            move |ev: Arc<Envelope<Paid>>, _ctx: Context| {
                let (e, f) = (e.clone(), f.clone());
                async move {
                    // The first delivery (order 0) fails before its effect: its mark is
                    // forgotten, so its second copy is handled, not dropped.
                    {
                        let mut left = f.lock().unwrap();
                        if *left > 0 {
                            *left -= 1;
                            return Err(HandlerError::msg("transient"));
                        }
                    }
                    *e.lock().unwrap().entry(ev.payload.order).or_default() += 1;
                    Ok(())
                }
            },
        )
        .unwrap();
    // Another group with the same dedup window is not suppressed by the first.
    let audit: Effects = Arc::default();
    let a = audit.clone();
    let _audit = bus
        .subscribe_with(
            SubscribeOptions::new().name("audit").middleware(middleware),
            move |ev: Arc<Envelope<Paid>>, _ctx: Context| {
                *a.lock().unwrap().entry(ev.payload.order).or_default() += 1;
                async { Ok(()) }
            },
        )
        .unwrap();
    let events: Vec<_> = (0..20).map(|order| Envelope::new(Paid { order })).collect();
    for e in events.iter().chain(events.iter()) {
        bus.publish_envelope(e.clone()).await.unwrap();
    }
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    let effects = effects.lock().unwrap();
    assert_eq!(effects.len(), 20);
    assert!(effects.values().all(|&n| n == 1), "{effects:?}");
    let audit = audit.lock().unwrap();
    assert!(
        audit.values().all(|&n| n == 1) && audit.len() == 20,
        "{audit:?}"
    );
    // Every second copy is dropped, except order 0's in `ledger` (its first failed).
    assert_eq!(counter.duplicates(), 19 + 20);
}
