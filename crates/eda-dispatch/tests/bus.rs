//! The in-process bus against the behaviour the core issue asks for.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{OrderCreated, OrderShipped, order};
use eda_core::{
    BoxFuture, Context, DLQ_ATTEMPTS, DLQ_REASON, DLQ_SUBSCRIBER, DLQ_TOPIC, Envelope, EventId,
    EventInfo, HandlerError, HandlerResult, Interceptor, JsonCodec, MemoryDeadLetters, Middleware,
    Next, PublishAttributes, RawEvent, TraceParent,
};
use eda_dispatch::{
    Balancer, Bus, DeliveryMode, Executor, PublishError, RetryPolicy, SubscribeError,
    SubscribeOptions, Subscription, TopicConfig,
};

type Seen = Arc<Mutex<HashMap<String, Vec<u64>>>>;

fn record(seen: &Seen, who: &str, id: u64) {
    seen.lock()
        .unwrap()
        .entry(who.to_owned())
        .or_default()
        .push(id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscription_sees_every_event_exactly_once() {
    const PUBLISHERS: u64 = 4;
    const PER_PUBLISHER: u64 = 2_500;
    let bus = Bus::builder().queue_capacity(256).build();
    let seen: Seen = Arc::default();
    let mut subs = Vec::new();
    for i in 0..3 {
        let seen = seen.clone();
        let name = format!("async{i}");
        subs.push(
            bus.subscribe_with(
                SubscribeOptions::new().name(&name).concurrency(1 + i),
                move |e: Arc<Envelope<OrderCreated>>, _ctx: Context| {
                    let seen = seen.clone();
                    let name = name.clone();
                    async move {
                        if e.payload.order_id.is_multiple_of(3) {
                            tokio::task::yield_now().await;
                        }
                        record(&seen, &name, e.payload.order_id);
                        Ok(())
                    }
                },
            )
            .unwrap(),
        );
    }
    for i in 0..2 {
        let seen = seen.clone();
        let name = format!("sync{i}");
        subs.push(
            bus.subscribe_sync_with(
                SubscribeOptions::new().name(&name),
                move |e: &Envelope<OrderCreated>, _ctx: &Context| {
                    record(&seen, &name, e.payload.order_id);
                    Ok(())
                },
            )
            .unwrap(),
        );
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let bus = bus.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                bus.publish(order(p * PER_PUBLISHER + i)).await.unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let report = bus.shutdown(Duration::from_secs(30)).await;
    assert!(report.drained);
    let total = PUBLISHERS * PER_PUBLISHER;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    for (who, ids) in seen.iter() {
        let mut ids = ids.clone();
        ids.sort_unstable();
        assert_eq!(
            ids,
            (0..total).collect::<Vec<_>>(),
            "{who} missed or repeated events"
        );
    }
    assert_eq!(report.stats.published, total);
    assert_eq!(report.stats.deliveries, total * 5);
    assert_eq!(report.stats.delivered, total * 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_during_a_storm_stops_delivery() {
    let bus = Bus::new();
    for round in 0..20 {
        let after_drop = Arc::new(AtomicBool::new(false));
        let late = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let sub = {
            let (after_drop, late, calls) = (after_drop.clone(), late.clone(), calls.clone());
            bus.subscribe_with(
                SubscribeOptions::new().concurrency(4),
                move |_e: Arc<Envelope<OrderCreated>>, _ctx: Context| {
                    // Counted at the very start of the handler.
                    calls.fetch_add(1, Ordering::SeqCst);
                    if after_drop.load(Ordering::SeqCst) {
                        late.fetch_add(1, Ordering::SeqCst);
                    }
                    async { Ok(()) }
                },
            )
            .unwrap()
        };
        let sync_late = Arc::new(AtomicU64::new(0));
        let sync_sub = {
            let (after_drop, sync_late) = (after_drop.clone(), sync_late.clone());
            bus.subscribe_sync(move |_e: &Envelope<OrderCreated>, _ctx: &Context| {
                if after_drop.load(Ordering::SeqCst) {
                    sync_late.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })
            .unwrap()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let storm: Vec<_> = (0..2)
            .map(|_| {
                let (bus, stop) = (bus.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // publish never deadlocks against the drop.
                        bus.publish(order(n)).await.unwrap();
                        n += 1;
                        if n.is_multiple_of(64) {
                            tokio::task::yield_now().await;
                        }
                    }
                    n
                })
            })
            .collect();
        // Drop while deliveries are really happening: wait (bounded) for the first one.
        let started = tokio::time::Instant::now();
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "round {round}: handler never ran"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(1 + round % 5)).await;
        let dropper = tokio::task::spawn_blocking(move || {
            drop(sub);
            drop(sync_sub);
            after_drop.store(true, Ordering::SeqCst);
        });
        tokio::time::timeout(Duration::from_secs(10), dropper)
            .await
            .expect("drop deadlocked")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        stop.store(true, Ordering::Relaxed);
        let mut published = 0;
        for s in storm {
            published += s.await.unwrap();
        }
        assert!(published > 0);
        assert!(
            calls.load(Ordering::SeqCst) > 0,
            "round {round}: handler never ran"
        );
        assert_eq!(
            late.load(Ordering::SeqCst),
            0,
            "round {round}: async delivery after drop"
        );
        assert_eq!(
            sync_late.load(Ordering::SeqCst),
            0,
            "round {round}: sync delivery after drop"
        );
    }
    // Groups of dropped subscriptions finish asynchronously: wait (bounded) for them.
    let started = tokio::time::Instant::now();
    let mut stats = bus.stats();
    while stats.in_flight > 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        stats = bus.stats();
    }
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert_eq!(
        stats.deliveries,
        stats.delivered + stats.not_delivered,
        "every accepted delivery was handled or counted as not delivered: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_retry_then_dead_letter_with_exact_attempts() {
    let dead = MemoryDeadLetters::default();
    let bus = Bus::builder().dead_letter_sink(dead.clone()).build();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("flaky")
                .timeout(Duration::from_millis(100))
                .retry(
                    RetryPolicy::attempts(4)
                        .backoff(Duration::from_millis(10), Duration::from_millis(10)),
                ),
            move |e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push((e.payload.order_id, ctx.attempt()));
                    match (e.payload.order_id, ctx.attempt()) {
                        // Order 1: times out, panics, errors, then succeeds on attempt 4.
                        (1, 1) => std::future::pending().await,
                        (1, 2) => panic!("boom"),
                        (1, 3) => Err(HandlerError::msg("transient")),
                        (1, _) => Ok(()),
                        // Order 2: panics on every attempt.
                        (2, _) => panic!("always"),
                        // Order 3: a permanent error is not retried.
                        (3, _) => Err(HandlerError::permanent(HandlerError::msg("invalid order"))),
                        _ => Ok(()),
                    }
                }
            },
        )
        .unwrap();
    for id in 1..=3 {
        bus.publish(order(id)).await.unwrap();
    }
    let report = bus.shutdown(Duration::from_secs(60)).await;
    assert!(report.drained);
    let attempts = attempts.lock().unwrap().clone();
    let of = |id| {
        attempts
            .iter()
            .filter(|(o, _)| *o == id)
            .map(|(_, a)| *a)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(1), vec![1, 2, 3, 4]);
    assert_eq!(of(2), vec![1, 2, 3, 4]);
    assert_eq!(of(3), vec![1]);
    let letters = dead.letters();
    assert_eq!(letters.len(), 2);
    let by_order = |id: u64| {
        letters
            .iter()
            .find(|l| l.event.decode::<OrderCreated>().unwrap().payload.order_id == id)
            .unwrap()
    };
    let two = by_order(2);
    assert_eq!(two.attempts, 4);
    assert!(two.reason.contains("panicked: always"), "{}", two.reason);
    assert_eq!(two.event.metadata.header(DLQ_ATTEMPTS), Some("4"));
    assert_eq!(two.event.metadata.header(DLQ_TOPIC), Some("order.created"));
    assert_eq!(two.event.metadata.header(DLQ_SUBSCRIBER), Some("flaky"));
    assert!(
        two.event
            .metadata
            .header(DLQ_REASON)
            .unwrap()
            .contains("always")
    );
    let three = by_order(3);
    assert_eq!(three.attempts, 1);
    assert_eq!(three.reason, "invalid order");
    assert_eq!(report.stats.delivered, 1);
    assert_eq!(report.stats.dead_lettered, 2);
    assert_eq!(report.stats.retries, 6);
}

#[tokio::test(start_paused = true)]
async fn timeout_cancels_the_context() {
    let bus = Bus::new();
    let cancelled_at = Arc::new(Mutex::new(None));
    let seen = cancelled_at.clone();
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new()
                .timeout(Duration::from_secs(2))
                .mode(DeliveryMode::AtMostOnce),
            move |_e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                let seen = seen.clone();
                async move {
                    let start = tokio::time::Instant::now();
                    let watcher = ctx.clone();
                    tokio::spawn(async move {
                        watcher.cancelled().await;
                        *seen.lock().unwrap() = Some(start.elapsed());
                    });
                    std::future::pending::<()>().await;
                    Ok(())
                }
            },
        )
        .unwrap();
    bus.publish(order(1)).await.unwrap();
    let report = bus.shutdown(Duration::from_secs(10)).await;
    tokio::task::yield_now().await;
    assert_eq!(*cancelled_at.lock().unwrap(), Some(Duration::from_secs(2)));
    assert_eq!(
        report.stats.failed, 1,
        "at-most-once failures are counted and dropped"
    );
    assert_eq!(report.stats.dead_lettered, 0);
}

/// Attempts started together share one clock reading, but an event started after an
/// await (here: when the event of its key before it is done) gets a deadline from its
/// own start.
#[tokio::test(start_paused = true)]
async fn each_deadline_counts_from_its_own_start() {
    let bus = Bus::new();
    let deadlines = Arc::new(Mutex::new(Vec::new()));
    let seen = deadlines.clone();
    let begin = tokio::time::Instant::now();
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new()
                .timeout(Duration::from_secs(10))
                .balancer(Balancer::KeyHash)
                .concurrency(8),
            move |e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                let seen = seen.clone();
                async move {
                    let deadline = ctx.deadline().expect("a timeout gives a deadline");
                    seen.lock()
                        .unwrap()
                        .push((e.payload.order_id, deadline - begin));
                    if e.payload.order_id == 1 {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    Ok(())
                }
            },
        )
        .unwrap();
    // Orders 1 and 8 share a key (customer c1); order 2 has its own.
    for id in [1, 2, 8] {
        bus.publish(order(id)).await.unwrap();
    }
    // Nothing else wakes the group meanwhile (shutting down would).
    tokio::time::sleep(Duration::from_secs(5)).await;
    bus.shutdown(Duration::from_secs(30)).await;
    // 1 and 2 start together; 8 waits for 1, which takes 3 s.
    assert_eq!(
        *deadlines.lock().unwrap(),
        [
            (1, Duration::from_secs(10)),
            (2, Duration::from_secs(10)),
            (8, Duration::from_secs(13)),
        ]
    );
}

/// A handler that blocks its first poll does not leave the next event of the same run
/// with a deadline counted from before it: a shared reading is at most 1 ms old.
#[tokio::test]
async fn a_blocking_first_poll_does_not_shorten_the_next_deadline() {
    let bus = Bus::new();
    let deadlines = Arc::new(Mutex::new(Vec::new()));
    let seen = deadlines.clone();
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new().timeout(Duration::from_secs(10)),
            move |e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                seen.lock().unwrap().push(ctx.deadline().unwrap());
                if e.payload.order_id == 1 {
                    // Blocks the processor (what an async handler should not do).
                    std::thread::sleep(Duration::from_millis(20));
                }
                async { Ok(()) }
            },
        )
        .unwrap();
    // Both in the ring before the processor runs: one run starts both.
    bus.publish(order(1)).await.unwrap();
    bus.publish(order(2)).await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await;
    let deadlines = deadlines.lock().unwrap();
    assert_eq!(deadlines.len(), 2);
    let gap = deadlines[1] - deadlines[0];
    assert!(
        gap >= Duration::from_millis(19),
        "order 2's deadline counts from its own start: {gap:?} after order 1's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_work_and_the_report_adds_up() {
    let bus = Bus::builder().queue_capacity(10_000).build();
    let handled = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for i in 0..3u64 {
        let handled = handled.clone();
        subs.push(
            bus.subscribe_with(
                SubscribeOptions::new()
                    .concurrency(8)
                    .retry(RetryPolicy::none()),
                move |e: Arc<Envelope<OrderCreated>>, _ctx: Context| {
                    let handled = handled.clone();
                    async move {
                        tokio::time::sleep(Duration::from_micros(200 * i)).await;
                        if i == 2 && e.payload.order_id.is_multiple_of(10) {
                            return Err(HandlerError::msg("every tenth fails"));
                        }
                        handled.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                },
            )
            .unwrap(),
        );
    }
    for i in 0..1000 {
        bus.publish(order(i)).await.unwrap();
    }
    let report = bus.shutdown(Duration::from_secs(30)).await;
    assert!(report.drained);
    let s = report.stats;
    assert_eq!(s.published, 1000);
    assert_eq!(s.deliveries, 3000);
    assert_eq!(s.delivered, 2900);
    assert_eq!(s.dead_lettered, 100);
    assert_eq!(
        s.delivered + s.failed + s.dead_lettered + s.expired + s.not_delivered,
        s.deliveries
    );
    assert_eq!(s.in_flight, 0);
    assert_eq!(handled.load(Ordering::Relaxed), 2900);
    // Intake is closed.
    assert!(matches!(
        bus.publish(order(1)).await,
        Err(PublishError::ShutDown { .. })
    ));
    assert!(matches!(
        bus.subscribe(|_e: Arc<Envelope<OrderCreated>>, _c: Context| async { Ok(()) }),
        Err(SubscribeError::ShutDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_cuts_off_and_counts_not_delivered() {
    let bus = Bus::new();
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new().no_timeout(),
            |_e: Arc<Envelope<OrderCreated>>, ctx: Context| async move {
                // Only stops when cancelled by shutdown.
                ctx.cancelled().await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            },
        )
        .unwrap();
    for i in 0..5 {
        bus.publish(order(i)).await.unwrap();
    }
    let report = bus.shutdown(Duration::from_secs(1)).await;
    assert!(!report.drained);
    assert_eq!(report.stats.deliveries, 5);
    assert_eq!(report.stats.not_delivered, 5);
    assert_eq!(report.stats.in_flight, 0);
}

#[tokio::test]
async fn sync_errors_return_to_the_publisher_without_stopping_others() {
    let bus = Bus::new();
    let ran = Arc::new(AtomicU64::new(0));
    let r1 = ran.clone();
    let _ok = bus
        .subscribe_sync_with(
            SubscribeOptions::new().name("ok"),
            move |_e: &Envelope<OrderCreated>, _c: &Context| {
                r1.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .unwrap();
    let _bad = bus
        .subscribe_sync_with(
            SubscribeOptions::new().name("bad"),
            |_e: &Envelope<OrderCreated>, _c: &Context| {
                Err(HandlerError::msg("inventory exhausted"))
            },
        )
        .unwrap();
    let _panics = bus
        .subscribe_sync_with(
            SubscribeOptions::new().name("panics"),
            |_e: &Envelope<OrderCreated>, _c: &Context| -> HandlerResult { panic!("sync boom") },
        )
        .unwrap();
    let r2 = ran.clone();
    let _after = bus
        .subscribe_sync_with(
            SubscribeOptions::new().name("after"),
            move |_e: &Envelope<OrderCreated>, _c: &Context| {
                r2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .unwrap();
    let err = bus.publish(order(1)).await.unwrap_err();
    let PublishError::Handlers { failures, .. } = &err else {
        panic!("unexpected {err:?}")
    };
    let names: Vec<_> = failures.iter().map(|f| f.subscription.as_str()).collect();
    assert_eq!(names, ["bad", "panics"]);
    assert!(
        failures[1]
            .error
            .to_string()
            .contains("handler panicked: sync boom")
    );
    assert!(err.to_string().contains("inventory exhausted"));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        2,
        "other sync subscribers still ran"
    );
    let s = bus.stats();
    assert_eq!((s.delivered, s.failed), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_share_events_and_each_group_gets_all() {
    let bus = Bus::new();
    let seen: Seen = Arc::default();
    let mut subs = Vec::new();
    for (group, member) in [
        ("billing", "b1"),
        ("billing", "b2"),
        ("billing", "b3"),
        ("audit", "a1"),
    ] {
        let seen = seen.clone();
        subs.push(
            bus.subscribe_with(
                SubscribeOptions::new().name(member).group(group),
                move |e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                    let seen = seen.clone();
                    async move {
                        assert_eq!(
                            ctx.group(),
                            if ctx.subscription().starts_with('b') {
                                "billing"
                            } else {
                                "audit"
                            }
                        );
                        record(&seen, ctx.subscription(), e.payload.order_id);
                        tokio::time::sleep(Duration::from_micros(100)).await;
                        Ok(())
                    }
                },
            )
            .unwrap(),
        );
    }
    for i in 0..3000 {
        bus.publish(order(i)).await.unwrap();
    }
    bus.shutdown(Duration::from_secs(30)).await;
    let seen = seen.lock().unwrap();
    let mut billing: Vec<u64> = ["b1", "b2", "b3"]
        .iter()
        .flat_map(|m| seen[*m].clone())
        .collect();
    billing.sort_unstable();
    assert_eq!(
        billing,
        (0..3000).collect::<Vec<_>>(),
        "billing got each event exactly once"
    );
    for m in ["b1", "b2", "b3"] {
        assert!(!seen[m].is_empty(), "member {m} took part");
    }
    let mut audit = seen["a1"].clone();
    audit.sort_unstable();
    assert_eq!(audit, (0..3000).collect::<Vec<_>>());
    // A group takes only members consuming the same events the same way.
    let err = bus.subscribe_sync_with(
        SubscribeOptions::new().group("billing"),
        |_e: &Envelope<OrderCreated>, _c: &Context| Ok(()),
    );
    assert!(err.is_err());
}

#[tokio::test]
async fn names_are_unique_and_derived() {
    let bus = Bus::new();
    let a = bus
        .subscribe(|_e: Arc<Envelope<OrderCreated>>, _c: Context| async { Ok(()) })
        .unwrap();
    let b = bus
        .subscribe(|_e: Arc<Envelope<OrderCreated>>, _c: Context| async { Ok(()) })
        .unwrap();
    assert!(a.name().starts_with("order.created#"));
    assert_ne!(a.name(), b.name());
    assert_eq!(a.group(), a.name(), "a group of one by default");
    let _x = bus
        .subscribe_with(
            SubscribeOptions::new().name("x"),
            |_e: Arc<Envelope<OrderCreated>>, _c: Context| async { Ok(()) },
        )
        .unwrap();
    let dup = bus.subscribe_with(
        SubscribeOptions::new().name("x"),
        |_e: Arc<Envelope<OrderShipped>>, _c: Context| async { Ok(()) },
    );
    assert!(matches!(dup, Err(SubscribeError::DuplicateName(n)) if n == "x"));
    drop(_x);
    let _again = bus
        .subscribe_with(
            SubscribeOptions::new().name("x"),
            |_e: Arc<Envelope<OrderShipped>>, _c: Context| async { Ok(()) },
        )
        .expect("a dropped subscription frees its name");
}

#[test]
fn subscribing_outside_a_runtime_is_a_typed_error() {
    let bus = Bus::new();
    let r = bus.subscribe(|_e: Arc<Envelope<OrderCreated>>, _c: Context| async { Ok(()) });
    assert!(matches!(r, Err(SubscribeError::NoRuntime)));
    // Sync subscribers and try_publish need no runtime.
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let _s = bus
        .subscribe_sync(move |_e: &Envelope<OrderCreated>, _c: &Context| {
            n2.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    bus.try_publish(order(1)).unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn pattern_subscribers_get_type_erased_events() {
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let _sub = bus
        .subscribe_pattern(
            "order.*",
            SubscribeOptions::new(),
            move |e: Arc<RawEvent>, _c: Context| {
                let seen = s2.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push((e.event_type.to_string(), e.to_json().unwrap()));
                    Ok(())
                }
            },
        )
        .unwrap();
    bus.publish(order(5)).await.unwrap();
    bus.publish(OrderShipped { order_id: 5 }).await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "order.created");
    assert_eq!(seen[1].0, "order.shipped");
    let json: serde_json::Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(json["data"]["order_id"], 5);
    assert_eq!(json["partitionkey"], "c5");
}

/// Subscribes a handler that counts the events of type `E` it gets.
fn counting<E: eda_core::Event>(bus: &Bus) -> (Subscription, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let handled = count.clone();
    let sub = bus
        .subscribe(move |_e: Arc<Envelope<E>>, _c: Context| {
            handled.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .unwrap();
    (sub, count)
}

/// Yields until `count` reaches `n` (on a current-thread runtime the group's processor
/// runs while this task yields).
async fn yield_until(count: &AtomicU64, n: u64) {
    while count.load(Ordering::Relaxed) < n {
        tokio::task::yield_now().await;
    }
}

/// Counts how often it is serialized: the bus encodes an event for pattern groups.
static ENCODED: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, serde::Deserialize)]
struct Audited {
    n: u64,
}

impl serde::Serialize for Audited {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ENCODED.fetch_add(1, Ordering::Relaxed);
        s.serialize_u64(self.n)
    }
}

impl eda_core::Event for Audited {
    const TYPE: &'static str = "audit.entry";
}

/// A typed group alone never makes the bus encode; two pattern groups share one
/// encoding of each event, and the typed group still gets every event.
#[tokio::test]
async fn pattern_groups_share_one_encoding_per_event() {
    let bus = Bus::new();
    let (_typed, typed) = counting::<Audited>(&bus);
    for n in 0..10 {
        bus.publish(Audited { n }).await.unwrap();
    }
    yield_until(&typed, 10).await;
    assert_eq!(ENCODED.load(Ordering::Relaxed), 0);

    let records = Arc::new(Mutex::new(Vec::new()));
    let mut subs = Vec::new();
    for _ in 0..2 {
        let records = records.clone();
        subs.push(
            bus.subscribe_pattern(
                "audit.*",
                SubscribeOptions::new(),
                move |e: Arc<RawEvent>, _c: Context| {
                    records.lock().unwrap().push(e.to_json().unwrap());
                    async { Ok(()) }
                },
            )
            .unwrap(),
        );
    }
    for n in 10..20 {
        bus.publish(Audited { n }).await.unwrap();
    }
    bus.shutdown(Duration::from_secs(5)).await;
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 20, "every event to both pattern groups");
    assert_eq!(typed.load(Ordering::Relaxed), 20, "and to the typed group");
    assert_eq!(
        ENCODED.load(Ordering::Relaxed),
        10,
        "one encoding per event"
    );
    let json: serde_json::Value = serde_json::from_str(&records[0]).unwrap();
    assert_eq!(json["data"], 10);
}

#[tokio::test]
async fn events_published_by_a_handler_inherit_correlation_and_trace() {
    let bus = Bus::builder().service("shop", "2.1.0").build();
    let shipped = Arc::new(Mutex::new(None));
    let s2 = shipped.clone();
    let _ship = bus
        .subscribe(move |e: Arc<Envelope<OrderShipped>>, _c: Context| {
            let s2 = s2.clone();
            async move {
                *s2.lock().unwrap() = Some((*e).clone());
                Ok(())
            }
        })
        .unwrap();
    let b2 = bus.clone();
    let _chain = bus
        .subscribe(move |e: Arc<Envelope<OrderCreated>>, _c: Context| {
            let bus = b2.clone();
            async move {
                tokio::task::yield_now().await;
                bus.publish(OrderShipped {
                    order_id: e.payload.order_id,
                })
                .await?;
                Ok(())
            }
        })
        .unwrap();
    let trace = TraceParent {
        trace_id: 0xabc,
        span_id: 0xdef,
        flags: 1,
    };
    let mut first = Envelope::new(order(9)).with_correlation_id("checkout-1");
    first.metadata.traceparent = Some(trace);
    let first_id = bus.publish_envelope(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    bus.shutdown(Duration::from_secs(5)).await;
    let shipped = shipped
        .lock()
        .unwrap()
        .clone()
        .expect("chained event handled");
    assert_eq!(shipped.metadata.causation_id, Some(first_id));
    assert_eq!(
        shipped.metadata.correlation_id.as_deref(),
        Some("checkout-1")
    );
    assert_eq!(shipped.metadata.traceparent, Some(trace));
    assert_eq!(&*shipped.source, "shop-2.1.0");
}

#[tokio::test]
async fn interceptors_stamp_and_trace_context_is_generated() {
    struct Tenant;
    impl Interceptor for Tenant {
        fn on_publish(&self, attrs: &mut PublishAttributes<'_>) {
            attrs.metadata.insert_header("tenant", "acme").unwrap();
        }
    }
    let bus = Bus::builder()
        .service("shop", "1.0")
        .interceptor(Tenant)
        .build();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let _s = bus
        .subscribe_sync(move |e: &Envelope<OrderCreated>, _c: &Context| {
            g.lock().unwrap().push(e.clone());
            Ok(())
        })
        .unwrap();
    bus.publish(order(1)).await.unwrap();
    bus.publish_envelope(Envelope::new(order(2)).with_source("importer-0.1"))
        .await
        .unwrap();
    let got = got.lock().unwrap();
    assert_eq!(&*got[0].source, "shop-1.0");
    assert_eq!(
        &*got[1].source, "importer-0.1",
        "an explicit source is kept"
    );
    assert_eq!(got[0].metadata.header("tenant"), Some("acme"));
    let (a, b) = (
        got[0].metadata.traceparent.unwrap(),
        got[1].metadata.traceparent.unwrap(),
    );
    assert_ne!(
        a.trace_id, b.trace_id,
        "each root event starts its own trace"
    );
    assert_eq!(got[0].metadata.partition_key.as_deref(), Some("c1"));
}

#[tokio::test(start_paused = true)]
async fn expired_events_are_dead_lettered_not_handled() {
    let dead = MemoryDeadLetters::default();
    let bus = Bus::builder()
        .dead_letter_sink(dead.clone())
        .topic(
            "order.created",
            TopicConfig {
                ttl: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .build();
    let (_s, handled) = counting::<OrderCreated>(&bus);
    let mut old = Envelope::new(order(1));
    old.time = eda_core::Timestamp::from_unix_millis(old.time.unix_millis() - 120_000);
    bus.publish_envelope(old).await.unwrap();
    bus.publish(order(2)).await.unwrap();
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert_eq!(handled.load(Ordering::Relaxed), 1);
    assert_eq!(report.stats.expired, 1);
    let letters = dead.letters();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.starts_with("expired"),
        "{}",
        letters[0].reason
    );
    assert_eq!(letters[0].attempts, 0);
}

#[tokio::test]
async fn undecodable_raw_events_are_dead_lettered_and_the_stream_goes_on() {
    let dead = MemoryDeadLetters::default();
    let bus = Bus::builder().dead_letter_sink(dead.clone()).build();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let _s = bus
        .subscribe(move |e: Arc<Envelope<OrderCreated>>, _c: Context| {
            h.lock().unwrap().push(e.payload.order_id);
            async { Ok(()) }
        })
        .unwrap();
    let good = |id| Envelope::new(order(id)).to_raw(&JsonCodec).unwrap();
    let mut garbage = good(2);
    garbage.data = eda_core::Bytes::from_static(b"\xff\x00 not json");
    let garbage_id = garbage.id;
    let mut unknown_ct = good(3);
    unknown_ct.datacontenttype = Some("application/xml".into());
    bus.publish_raw(good(1)).await.unwrap();
    bus.publish_raw(garbage).await.unwrap();
    bus.publish_raw(unknown_ct).await.unwrap();
    bus.publish_raw(good(4)).await.unwrap();
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert_eq!(*handled.lock().unwrap(), vec![1, 4]);
    assert_eq!(report.stats.dead_lettered, 2);
    let letters = dead.letters();
    assert_eq!(letters[0].event.id, garbage_id);
    assert!(
        letters[0].reason.contains("undecodable"),
        "{}",
        letters[0].reason
    );
    assert!(
        letters[1].reason.contains("unsupported content type"),
        "{}",
        letters[1].reason
    );
}

#[tokio::test]
async fn middleware_wraps_deliveries_outside_retries() {
    struct Log(Arc<Mutex<Vec<String>>>, &'static str);
    impl Middleware for Log {
        fn handle<'a>(
            &'a self,
            event: &'a dyn EventInfo,
            ctx: &'a Context,
            next: Next<'a>,
        ) -> BoxFuture<'a, HandlerResult> {
            Box::pin(async move {
                self.0.lock().unwrap().push(format!("{}>", self.1));
                let r = next.run(event, ctx).await;
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("<{}:{}", self.1, r.is_ok()));
                r
            })
        }
    }
    struct SkipOdd;
    impl Middleware for SkipOdd {
        fn handle<'a>(
            &'a self,
            event: &'a dyn EventInfo,
            ctx: &'a Context,
            next: Next<'a>,
        ) -> BoxFuture<'a, HandlerResult> {
            let env = event
                .as_any()
                .downcast_ref::<Envelope<OrderCreated>>()
                .unwrap();
            if env.payload.order_id % 2 == 1 {
                return Box::pin(async { Ok(()) });
            }
            next.run(event, ctx)
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder().middleware(Log(log.clone(), "outer")).build();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let l = log.clone();
    let _s = bus
        .subscribe_with(
            SubscribeOptions::new()
                .middleware(Log(log.clone(), "inner"))
                .middleware(SkipOdd)
                .retry(
                    RetryPolicy::attempts(2)
                        .backoff(Duration::from_millis(1), Duration::from_millis(1)),
                ),
            move |_e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                c.fetch_add(1, Ordering::SeqCst);
                l.lock().unwrap().push(format!("handler#{}", ctx.attempt()));
                async move {
                    if ctx.attempt() == 1 {
                        Err(HandlerError::msg("once"))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .unwrap();
    bus.publish(order(2)).await.unwrap();
    bus.publish(order(3)).await.unwrap();
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer>",
            "inner>",
            "handler#1",
            "handler#2",
            "<inner:true",
            "<outer:true",
            "outer>",
            "inner>",
            "<inner:true",
            "<outer:true"
        ]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(report.stats.delivered, 2);
}

#[test]
fn handlers_can_run_on_a_dedicated_runtime_or_the_blocking_pool() {
    let pool = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cpu-pool")
        .enable_all()
        .build()
        .unwrap();
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    main.block_on(async {
        let bus = Bus::new();
        let threads = Arc::new(Mutex::new(Vec::new()));
        let t = threads.clone();
        let _pooled = bus
            .subscribe_with(
                SubscribeOptions::new().executor(Executor::Runtime(pool.handle().clone())),
                move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
                    let t = t.clone();
                    async move {
                        t.lock()
                            .unwrap()
                            .push(std::thread::current().name().unwrap_or("").to_owned());
                        Ok(())
                    }
                },
            )
            .unwrap();
        let t = threads.clone();
        let _blocking = bus
            .subscribe_blocking(
                SubscribeOptions::new(),
                move |e: &Envelope<OrderCreated>, _c: &Context| {
                    t.lock()
                        .unwrap()
                        .push(format!("blocking:{}", e.payload.order_id));
                    if e.payload.order_id == 2 {
                        panic!("cpu boom")
                    }
                    Ok(())
                },
            )
            .unwrap();
        bus.publish(order(1)).await.unwrap();
        bus.publish(order(2)).await.unwrap();
        let report = bus.shutdown(Duration::from_secs(10)).await;
        let threads = threads.lock().unwrap();
        assert_eq!(
            threads.iter().filter(|t| *t == "cpu-pool").count(),
            2,
            "{threads:?}"
        );
        assert!(threads.contains(&"blocking:1".to_owned()));
        // The panicking blocking handler is retried (3 attempts) then dead-lettered.
        assert_eq!(threads.iter().filter(|t| *t == "blocking:2").count(), 3);
        assert_eq!(report.stats.dead_lettered, 1);
        assert_eq!(report.stats.delivered, 3);
    });
}

#[tokio::test]
async fn publish_batch_returns_ids_in_order() {
    let bus = Bus::new();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let _s = bus
        .subscribe_sync(move |e: &Envelope<OrderCreated>, _c: &Context| {
            g.lock().unwrap().push(e.id);
            Ok(())
        })
        .unwrap();
    let ids = bus.publish_batch((0..10).map(order)).await.unwrap();
    assert_eq!(*got.lock().unwrap(), ids);
    let mut sorted: Vec<EventId> = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "v7 ids sort in publish order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_bus_without_shutdown_stops_its_tasks() {
    let bus = Bus::new();
    let witness = Arc::new(());
    let handled = Arc::new(AtomicU64::new(0));
    let (w, h) = (witness.clone(), handled.clone());
    let sub = bus
        .subscribe(move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
            let _keep = &w;
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .unwrap();
    for i in 0..100 {
        bus.publish(order(i)).await.unwrap();
    }
    drop(bus);
    // The processor hands out what was published, then stops and frees the handler.
    let started = tokio::time::Instant::now();
    while Arc::strong_count(&witness) > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "processor still running"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handled.load(Ordering::SeqCst), 100);
    drop(sub); // a guard outliving its bus is harmless
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_groups_see_topics_created_by_sized_subscriptions() {
    let bus = Bus::new();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let _pattern = bus
        .subscribe_pattern(
            "order.*",
            SubscribeOptions::new(),
            move |_e: Arc<RawEvent>, _c: Context| {
                s.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            },
        )
        .unwrap();
    // This subscription creates the topic, with its own ring size.
    let _typed = bus
        .subscribe_with(
            SubscribeOptions::new().queue_capacity(64),
            |_e: Arc<Envelope<OrderCreated>>, _c: Context| async { Ok(()) },
        )
        .unwrap();
    for i in 0..10 {
        bus.publish(order(i)).await.unwrap();
    }
    bus.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        10,
        "the pattern group missed the topic"
    );
}

/// A handler that panics in `handle` itself, before it returns a future, for even ids.
struct PanicsBeforeItsFuture {
    handled: Arc<AtomicU64>,
}

impl eda_core::Handler<Envelope<OrderCreated>> for PanicsBeforeItsFuture {
    fn handle(
        &self,
        event: Arc<Envelope<OrderCreated>>,
        _ctx: Context,
    ) -> impl std::future::Future<Output = HandlerResult> + Send {
        assert!(event.payload.order_id % 2 == 1, "even order");
        let handled = self.handled.clone();
        async move {
            handled.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_before_the_handler_returns_its_future_is_a_failed_attempt() {
    let dead = MemoryDeadLetters::default();
    let bus = Bus::builder().dead_letter_sink(dead.clone()).build();
    let handled = Arc::new(AtomicU64::new(0));
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("picky")
                .retry(RetryPolicy::attempts(2).backoff(Duration::ZERO, Duration::ZERO)),
            PanicsBeforeItsFuture {
                handled: handled.clone(),
            },
        )
        .unwrap();
    for id in 1..=100 {
        bus.publish(order(id)).await.unwrap();
    }
    let report = bus.shutdown(Duration::from_secs(30)).await;
    assert!(report.drained);
    // The odd ones around each panic were handled, once each.
    assert_eq!(handled.load(Ordering::Relaxed), 50);
    let letters = dead.letters();
    assert_eq!(letters.len(), 50);
    for letter in &letters {
        assert_eq!(
            letter
                .event
                .decode::<OrderCreated>()
                .unwrap()
                .payload
                .order_id
                % 2,
            0
        );
        assert_eq!(letter.attempts, 2);
        assert!(
            letter.reason.contains("panicked: even order"),
            "{}",
            letter.reason
        );
    }
    assert_eq!(report.stats.published, 100);
    assert_eq!(report.stats.deliveries, 100);
    assert_eq!(report.stats.delivered, 50);
    assert_eq!(report.stats.dead_lettered, 50);
    assert_eq!(report.stats.retries, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_keep_what_groups_that_are_gone_counted() {
    let bus = Bus::new();
    let count = Arc::new(AtomicU64::new(0));
    let subscribe = |name: &str| {
        let count = count.clone();
        bus.subscribe_with(
            SubscribeOptions::new().name(name),
            move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
                count.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            },
        )
        .unwrap()
    };
    let wait_for = async |n: u64| {
        while count.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let first = subscribe("first");
    let second = subscribe("second");
    for id in 0..10 {
        bus.publish(order(id)).await.unwrap();
    }
    wait_for(20).await;
    drop(first);
    drop(second);
    // Their processors finish and let go of the groups' counters; groups made after
    // that fold those counters into the bus's totals.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _third = subscribe("third");
    let _fourth = subscribe("fourth");
    for id in 10..15 {
        bus.publish(order(id)).await.unwrap();
    }
    wait_for(30).await;
    let stats = bus.stats();
    assert_eq!(stats.published, 15);
    assert_eq!(stats.delivered, 30);
    // A processor still finishing when the last five were published counts them as
    // not delivered.
    assert_eq!(stats.deliveries, 30 + stats.not_delivered);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn publish_futures_stay_small() {
    let bus = Bus::new();
    let _sub = bus
        .subscribe(|_e: Arc<Envelope<OrderCreated>>, _c: Context| async { Ok(()) })
        .unwrap();
    // A publish carries the envelope in an `Arc` and boxes what is left when it must
    // wait (room in a full ring, a store's append): every task that awaits `publish`
    // holds this future. It was ~2.9 KB before (the envelope moved through every level
    // of nested async fns, next to the waiting state's timer).
    let publish = bus.publish(order(1));
    let size = std::mem::size_of_val(&publish);
    assert!(size <= 512, "publish future of {size} bytes");
    publish.await.unwrap();
    let raw = bus.publish_raw(Envelope::new(order(2)).to_raw(&JsonCodec).unwrap());
    let size = std::mem::size_of_val(&raw);
    assert!(size <= 512, "publish_raw future of {size} bytes");
    raw.await.unwrap();
}

/// A processor reads what is in its ring in batches of at most 256, and counts each.
#[tokio::test]
async fn batches_count_the_processors_reads() {
    let bus = Bus::new();
    let (_sub, count) = counting::<OrderCreated>(&bus);
    let wait_for = async |n: u64| yield_until(&count, n).await;
    tokio::task::yield_now().await;
    assert_eq!(bus.stats().batches, 0);
    // Published while the processor cannot run (current-thread runtime, room for all).
    for id in 1..=1000 {
        bus.publish(order(id)).await.unwrap();
    }
    wait_for(1000).await;
    assert_eq!(bus.stats().batches, 4, "256 + 256 + 256 + 232");
    bus.publish(order(1001)).await.unwrap();
    wait_for(1001).await;
    let stats = bus.stats();
    assert_eq!((stats.batches, stats.delivered), (5, 1001));
    // That read was small: the processor yields once before reading again, and an
    // event published meanwhile is read without waking it.
    let woken = stats.wakeups;
    bus.publish(order(1002)).await.unwrap();
    wait_for(1002).await;
    let stats = bus.stats();
    assert_eq!((stats.batches, stats.wakeups), (6, woken));
}

/// A group that waits on an empty queue is woken once per publish when it keeps up
/// with them, and once for a whole burst published while it could not run.
#[tokio::test]
async fn wakeups_count_the_times_an_idle_group_was_woken() {
    let bus = Bus::new();
    let (_sub, count) = counting::<OrderCreated>(&bus);
    let wait_for = async |n: u64| yield_until(&count, n).await;
    // Let the processor start and find its queue empty.
    tokio::task::yield_now().await;
    assert_eq!(bus.stats().wakeups, 0);
    for id in 1..=3 {
        bus.publish(order(id)).await.unwrap();
        wait_for(id).await;
        // After a small read the processor yields once before reading again (an
        // event published meanwhile needs no wake-up): let it find the queue empty.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            bus.stats().wakeups,
            id,
            "one wake-up per event handled alone"
        );
    }
    // A burst: the processor cannot run on this (current-thread) runtime meanwhile.
    for id in 4..=103 {
        bus.publish(order(id)).await.unwrap();
    }
    wait_for(103).await;
    assert_eq!(bus.stats().wakeups, 4, "one wake-up for the whole burst");
}

/// A group that always finds events (its handler slower than its publisher) still lets
/// the other tasks of its worker run: its processor yields after running 1 ms without
/// an await.
#[test]
fn a_busy_group_lets_the_other_tasks_of_its_worker_run() {
    const N: u64 = 5_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bus = rt.block_on(async { Bus::new() });
    let handled = Arc::new(AtomicU64::new(0));
    let counted = handled.clone();
    let _sub = rt.block_on(async {
        bus.subscribe(move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
            // Slower than a publish: the ring stays full while the publisher runs.
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_micros(20) {
                std::hint::spin_loop();
            }
            counted.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .unwrap()
    });
    // A task on the runtime's only worker: it notes whether it ran in the middle of the
    // run, while the ring was full (at its start the group reads small batches, and after
    // a small read it yields anyway).
    let ran_between = Arc::new(AtomicBool::new(false));
    let ticker = rt.spawn({
        let (handled, ran_between) = (handled.clone(), ran_between.clone());
        async move {
            loop {
                let h = handled.load(Ordering::Relaxed);
                if (N / 4..=3 * N / 4).contains(&h) {
                    ran_between.store(true, Ordering::Relaxed);
                }
                if h >= N {
                    return;
                }
                tokio::task::yield_now().await;
            }
        }
    });
    // The publisher: a thread of its own, retrying while the ring is full.
    let publisher = std::thread::spawn({
        let bus = bus.clone();
        move || {
            for id in 0..N {
                while bus.try_publish(order(id)).is_err() {
                    std::thread::yield_now();
                }
            }
        }
    });
    publisher.join().unwrap();
    rt.block_on(async {
        ticker.await.unwrap();
        yield_until(&handled, N).await;
    });
    assert!(
        ran_between.load(Ordering::Relaxed),
        "the other task could not run while the group handled events {}..={}",
        N / 4,
        3 * N / 4
    );
}
