//! The engine: groups on topic rings, balancers, per-key order, membership changes,
//! backpressure policies.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::OrderCreated;
use eda_core::{Context, Envelope};
use eda_dispatch::{Backpressure, Balancer, Bus, PublishError, SubscribeOptions};

fn keyed(order_id: u64, key: u64) -> Envelope<OrderCreated> {
    Envelope::new(OrderCreated {
        order_id,
        customer: format!("k{key}"),
    })
}

type Log = Arc<Mutex<Vec<(String, u64)>>>;

/// A handler that records (member, order id) and sometimes takes a while.
fn recorder(
    log: &Log,
    member: &str,
) -> impl Fn(Arc<Envelope<OrderCreated>>, Context) -> futures_like::Ready + Send + Sync + 'static {
    let log = log.clone();
    let member = member.to_owned();
    move |e: Arc<Envelope<OrderCreated>>, _ctx: Context| {
        let log = log.clone();
        let member = member.clone();
        Box::pin(async move {
            // Random delays: mostly none, some yields, a few short sleeps.
            match fastrand::u32(0..100) {
                0 => tokio::time::sleep(Duration::from_micros(200)).await,
                1..=20 => tokio::task::yield_now().await,
                _ => {}
            }
            log.lock().unwrap().push((member, e.payload.order_id));
            Ok(())
        })
    }
}

mod futures_like {
    pub type Ready =
        std::pin::Pin<Box<dyn std::future::Future<Output = eda_core::HandlerResult> + Send>>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_hash_keeps_per_key_order_across_membership_changes() {
    const KEYS: u64 = 16;
    const PER_KEY: u64 = 10_000;
    let bus = Bus::builder().queue_capacity(512).build();
    let log: Log = Arc::default();
    let options = |name: &str| {
        SubscribeOptions::new()
            .name(name)
            .group("shipping")
            .balancer(Balancer::KeyHash)
            .concurrency(8)
    };
    let mut members: Vec<_> = (0..4)
        .map(|i| {
            let name = format!("m{i}");
            bus.subscribe_with(options(&name), recorder(&log, &name))
                .unwrap()
        })
        .collect();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for n in 0..PER_KEY {
                for k in 0..KEYS {
                    bus.publish_envelope(keyed(n * KEYS + k, k)).await.unwrap();
                }
            }
        })
    };
    // Members leave and join while events flow.
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        if round % 2 == 0 {
            drop(members.remove(0));
        } else {
            let name = format!("late{round}");
            members.push(
                bus.subscribe_with(options(&name), recorder(&log, &name))
                    .unwrap(),
            );
        }
    }
    publisher.await.unwrap();
    let report = bus.shutdown(Duration::from_secs(60)).await;
    assert!(report.drained);
    let log = log.lock().unwrap();
    assert_eq!(log.len() as u64, KEYS * PER_KEY, "no loss, no duplicate");
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (_, id) in log.iter() {
        let (key, n) = (id % KEYS, id / KEYS);
        if let Some(prev) = last.insert(key, n) {
            assert!(n == prev + 1, "key {key}: {n} handled after {prev}");
        } else {
            assert_eq!(n, 0, "key {key} started at {n}");
        }
    }
    let members_used: std::collections::HashSet<&str> =
        log.iter().map(|(m, _)| m.as_str()).collect();
    assert!(members_used.len() >= 4, "work was shared: {members_used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_churn_loses_and_duplicates_nothing() {
    const EVENTS: u64 = 30_000;
    let bus = Bus::builder().queue_capacity(256).build();
    let log: Log = Arc::default();
    let options = |name: &str| {
        SubscribeOptions::new()
            .name(name)
            .group("billing")
            .concurrency(4)
    };
    let mut members = vec![
        bus.subscribe_with(options("first"), recorder(&log, "first"))
            .unwrap(),
    ];
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0..EVENTS {
                bus.publish(common::order(i)).await.unwrap();
            }
        })
    };
    for round in 0..20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let name = format!("m{round}");
        members.push(
            bus.subscribe_with(options(&name), recorder(&log, &name))
                .unwrap(),
        );
        if members.len() > 2 {
            drop(members.remove(fastrand::usize(0..members.len())));
        }
    }
    publisher.await.unwrap();
    let report = bus.shutdown(Duration::from_secs(60)).await;
    assert!(report.drained);
    let mut ids: Vec<u64> = log.lock().unwrap().iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..EVENTS).collect::<Vec<_>>(),
        "each event exactly once within the group"
    );
    assert_eq!(report.stats.delivered, EVENTS);
    assert_eq!(report.stats.not_delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_sees_every_event_and_a_slow_one_blocks_publishers() {
    const EVENTS: u64 = 3_000;
    let bus = Bus::builder()
        .queue_capacity(64)
        .dispatch_timeout(Duration::from_secs(30))
        .build();
    let fast = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicU64::new(0));
    let f = fast.clone();
    let _fast = bus
        .subscribe_with(
            SubscribeOptions::new().name("fast"),
            move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
                f.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            },
        )
        .unwrap();
    let s = slow.clone();
    let _slow = bus
        .subscribe_with(
            SubscribeOptions::new().name("slow"),
            move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
                let s = s.clone();
                async move {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                    s.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        )
        .unwrap();
    let mut max_gap = 0;
    for i in 0..EVENTS {
        bus.publish(common::order(i)).await.unwrap();
        let gap = (i + 1).saturating_sub(slow.load(Ordering::SeqCst));
        max_gap = max_gap.max(gap);
    }
    // The publisher never ran more than the ring (64) plus what the slow group holds
    // (backlog and in flight) ahead of the slow group: it was blocked, not buffered.
    assert!(
        max_gap <= 64 + 256 + 1,
        "publisher got {max_gap} events ahead"
    );
    let report = bus.shutdown(Duration::from_secs(30)).await;
    assert!(report.drained);
    assert_eq!(fast.load(Ordering::SeqCst), EVENTS);
    assert_eq!(slow.load(Ordering::SeqCst), EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_policy_errors_at_once_naming_the_group() {
    let bus = Bus::builder()
        .queue_capacity(16)
        .dispatch_timeout(Duration::from_secs(3600))
        .build();
    let (release, released) = tokio::sync::watch::channel(false);
    let _stuck = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("reports")
                .backpressure(Backpressure::Fail)
                .no_timeout(),
            move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
                let mut released = released.clone();
                async move {
                    let _ = released.wait_for(|r| *r).await;
                    Ok(())
                }
            },
        )
        .unwrap();
    let mut accepted = 0u64;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(5), bus.publish(common::order(accepted)))
            .await
        {
            Ok(Ok(_)) => accepted += 1,
            Ok(Err(e)) => break e,
            Err(_) => panic!("publish waited although the group's policy is Fail"),
        }
        assert!(accepted < 10_000, "never full");
    };
    assert!(
        matches!(&err, PublishError::Full { subscription, .. } if subscription == "reports"),
        "{err:?}"
    );
    release.send(true).unwrap();
    let report = bus.shutdown(Duration::from_secs(30)).await;
    assert_eq!(report.stats.delivered, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_group_shares_by_weight() {
    let bus = Bus::new();
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut subs = Vec::new();
    for (name, weight) in [("a", 3), ("b", 2), ("c", 1)] {
        let counts = counts.clone();
        subs.push(
            bus.subscribe_with(
                SubscribeOptions::new()
                    .name(name)
                    .group("weighted")
                    .balancer(Balancer::Weighted)
                    .weight(weight),
                move |_e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                    *counts
                        .lock()
                        .unwrap()
                        .entry(ctx.subscription().to_owned())
                        .or_default() += 1;
                    async { Ok(()) }
                },
            )
            .unwrap(),
        );
    }
    // Let the processor see all three members before publishing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..60_000 {
        bus.publish(common::order(i)).await.unwrap();
    }
    bus.shutdown(Duration::from_secs(30)).await;
    let counts = counts.lock().unwrap();
    let share = |m: &str| counts[m] as f64 / 60_000.0;
    assert!((share("a") - 0.5).abs() < 0.01, "{counts:?}");
    assert!((share("b") - 1.0 / 3.0).abs() < 0.01, "{counts:?}");
    assert!((share("c") - 1.0 / 6.0).abs() < 0.01, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_group_drops_its_oldest_instead_of_blocking_publishers() {
    const EVENTS: u64 = 20_000;
    let bus = Bus::builder()
        .queue_capacity(64)
        .dispatch_timeout(Duration::from_secs(2))
        .build();
    let all = Arc::new(AtomicU64::new(0));
    let a = all.clone();
    let _complete = bus
        .subscribe_with(
            SubscribeOptions::new().name("audit"),
            move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
                a.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            },
        )
        .unwrap();
    let lossy_seen = Arc::new(AtomicU64::new(0));
    let l = lossy_seen.clone();
    let _lossy = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("dashboard")
                .backpressure(Backpressure::DropOldest)
                .no_timeout(),
            move |_e: Arc<Envelope<OrderCreated>>, _c: Context| {
                let l = l.clone();
                async move {
                    // Far slower than the publisher.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    l.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        )
        .unwrap();
    let started = std::time::Instant::now();
    for i in 0..EVENTS {
        // Never waits the dispatch timeout: the lossy group does not hold publishers back.
        bus.publish(common::order(i))
            .await
            .expect("publish blocked by the lossy group");
    }
    let publish_time = started.elapsed();
    let report = bus.shutdown(Duration::from_secs(30)).await;
    assert_eq!(
        all.load(Ordering::SeqCst),
        EVENTS,
        "the complete group got everything"
    );
    let lossy = lossy_seen.load(Ordering::SeqCst);
    assert!(
        lossy < EVENTS / 2,
        "the lossy group handled {lossy}: nothing was dropped?"
    );
    let s = report.stats;
    assert_eq!(s.deliveries, 2 * EVENTS, "{s:?}");
    assert_eq!(s.delivered, EVENTS + lossy, "{s:?}");
    assert_eq!(
        s.not_delivered,
        EVENTS - lossy,
        "the lossy group's drops are counted: {s:?}"
    );
    assert!(
        publish_time < Duration::from_secs(20),
        "publishing took {publish_time:?}"
    );
}
