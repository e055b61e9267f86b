//! The scenarios every store must pass, after Watermill's universal pub/sub suite.
//!
//! Each scenario is an `async fn(&impl Harness)`; [`conformance_tests!`](crate::conformance_tests)
//! turns them all into `#[tokio::test]`s for one store. Scenarios that need a
//! [`Features`](eda_core::Features) flag the store lacks pass without running (and say so).
//! Every scenario uses its own topics, so stores backed by a shared server can run them
//! in parallel.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use eda_core::{
    BoxFuture, ConsumeOptions, Delivery, DeliveryStream, Envelope, Event, EventId, EventStore,
    JsonCodec, RawEvent, ReadRange, StartFrom,
};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

/// How the suite gets a store and plants records no encoder of ours would write.
pub trait Harness: Send + Sync + 'static {
    /// The store under test.
    type Store: EventStore;
    /// A store instance. For persistent stores, each call opens a new instance over the
    /// same backing data (file, server), so the suite can check what survives.
    fn store(&self) -> BoxFuture<'_, Self::Store>;
    /// Writes a record into `topic` that does not decode as a CloudEvent.
    fn write_garbage<'a>(&'a self, store: &'a Self::Store, topic: &'a str) -> BoxFuture<'a, ()>;
    /// Why the store's service cannot be reached, if it cannot: the scenario is then
    /// skipped with that reason ([`backend::skip`](crate::backend::skip): a failure
    /// under `CI=true`). Default: always available.
    fn unavailable(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(std::future::ready(None))
    }
}

/// The payload the suite publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Sequence within its key.
    pub n: u64,
    /// Routing key.
    pub key: String,
}

impl Event for Probe {
    const TYPE: &'static str = "eda.testkit.probe";
    fn partition_key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

fn probe(n: u64, key: &str) -> RawEvent {
    Envelope::new(Probe {
        n,
        key: key.to_owned(),
    })
    .with_source("eda-testkit")
    .to_raw(&JsonCodec)
    .expect("probe encodes")
}

fn probes(count: u64) -> Vec<RawEvent> {
    (0..count)
        .map(|n| probe(n, &format!("k{}", n % 5)))
        .collect()
}

/// A topic name of its own for one scenario.
fn topic(scenario: &str) -> String {
    format!("eda.testkit.{scenario}.{:08x}", fastrand::u32(..))
}

fn from_beginning() -> ConsumeOptions {
    ConsumeOptions {
        start: StartFrom::Beginning,
        ..ConsumeOptions::default()
    }
}

fn with_visibility(timeout: Duration) -> ConsumeOptions {
    ConsumeOptions {
        visibility_timeout: timeout,
        ..from_beginning()
    }
}

/// The next delivery, or a panic naming what was awaited.
async fn next(stream: &mut DeliveryStream, what: &str) -> Delivery {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: store error {e}"),
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing delivered within 10 s"),
    }
}

/// Asserts nothing is delivered for `wait`.
async fn nothing(stream: &mut DeliveryStream, wait: Duration, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(wait, stream.next()).await {
        panic!("{what}: unexpected delivery {d:?}");
    }
}

fn id_of(d: &Delivery) -> EventId {
    d.record.as_ref().expect("a decodable record").id
}

fn n_of(d: &Delivery) -> u64 {
    d.record
        .as_ref()
        .expect("a decodable record")
        .decode::<Probe>()
        .expect("a probe")
        .payload
        .n
}

/// Records come back with every attribute, extension and byte of data intact.
pub async fn round_trip_keeps_attributes(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("round-trip");
    let mut sent = probes(3);
    sent[0].metadata.correlation_id = Some("flow-1".into());
    sent[0].metadata.insert_header("tenant", "acme").unwrap();
    sent[1].metadata.subject = Some("orders/7".into());
    let positions = store.append(&t, sent.clone()).await.unwrap();
    assert_eq!(positions.len(), 3);
    let mut s = store
        .subscribe(&t, "g", "c1", from_beginning())
        .await
        .unwrap();
    for expected in &sent {
        let d = next(&mut s, "round trip").await;
        assert_eq!(d.attempt, 1);
        assert_eq!(d.record.as_ref().unwrap(), expected);
        d.ack().await.unwrap();
    }
}

/// Appending the same record twice stores it once.
pub async fn append_is_idempotent(h: &impl Harness) {
    let store = h.store().await;
    if !store.features().idempotent_appends {
        eprintln!("skipped: store does not promise idempotent appends");
        return;
    }
    let t = topic("idempotent");
    let r = probe(1, "k");
    let first = store.append(&t, vec![r.clone()]).await.unwrap();
    let again = store.append(&t, vec![r]).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(store.read(&t, ReadRange::default()).await.unwrap().len(), 1);
}

/// Several publishers and consumers of one group: every record once, none lost.
pub async fn concurrent_publishers_and_consumers_lose_nothing(h: &impl Harness) {
    let store = std::sync::Arc::new(h.store().await);
    let t = topic("concurrent");
    let mut streams = Vec::new();
    for c in 0..3 {
        streams.push(
            store
                .subscribe(&t, "g", &format!("c{c}"), from_beginning())
                .await
                .unwrap(),
        );
    }
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                for batch in 0..25 {
                    let records = (0..10)
                        .map(|i| probe(p * 1000 + batch * 10 + i, "k"))
                        .collect();
                    store.append(&t, records).await.unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let consumers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(Some(Ok(d))) =
                    tokio::time::timeout(Duration::from_millis(500), s.next()).await
                {
                    got.push(id_of(&d));
                    d.ack().await.unwrap();
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 1000, "records lost");
    assert_eq!(all.len(), 1000, "records delivered twice within a group");
}

/// A consumer of one topic never sees another topic's records.
pub async fn topics_are_isolated(h: &impl Harness) {
    let store = h.store().await;
    let (a, b) = (topic("isolated-a"), topic("isolated-b"));
    store.append(&a, probes(3)).await.unwrap();
    store.append(&b, vec![probe(99, "b")]).await.unwrap();
    let mut s = store
        .subscribe(&b, "g", "c", from_beginning())
        .await
        .unwrap();
    let d = next(&mut s, "topic b").await;
    assert_eq!(n_of(&d), 99);
    d.ack().await.unwrap();
    nothing(
        &mut s,
        Duration::from_millis(200),
        "topic b after its only record",
    )
    .await;
}

/// A nacked record comes back, with its attempt count up.
pub async fn nack_redelivers(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("nack");
    store.append(&t, probes(1)).await.unwrap();
    let mut s = store
        .subscribe(&t, "g", "c", from_beginning())
        .await
        .unwrap();
    let d = next(&mut s, "first delivery").await;
    let id = id_of(&d);
    d.nack("try again").await.unwrap();
    let again = next(&mut s, "redelivery after nack").await;
    assert_eq!(id_of(&again), id);
    assert_eq!(again.attempt, 2);
    again.ack().await.unwrap();
    nothing(&mut s, Duration::from_millis(200), "after ack").await;
}

/// A record left unacked past the visibility timeout goes to another consumer.
pub async fn unacked_records_go_to_another_consumer(h: &impl Harness) {
    let store = h.store().await;
    if !store.features().redelivers_to_other_consumers {
        eprintln!("skipped: store does not redeliver to other consumers");
        return;
    }
    let t = topic("visibility");
    store.append(&t, probes(1)).await.unwrap();
    let options = with_visibility(Duration::from_millis(300));
    let mut slow = store
        .subscribe(&t, "g", "slow", options.clone())
        .await
        .unwrap();
    let held = next(&mut slow, "first consumer").await;
    let mut other = store.subscribe(&t, "g", "other", options).await.unwrap();
    let d = next(&mut other, "redelivery to another consumer").await;
    let id = id_of(&held);
    assert_eq!(id_of(&d), id);
    assert_eq!(d.attempt, 2);
    // The first consumer's handle is stale now: its ack may be refused (`NotHeld`) or
    // accepted and ignored (stores that batch acks), but it must not settle the record.
    let _ = held.ack().await;
    store.flush().await.unwrap();
    drop(slow);
    drop(d); // not acked: redelivered once more
    let again = next(&mut other, "redelivery after a stale ack").await;
    assert_eq!(id_of(&again), id);
    assert_eq!(again.attempt, 3);
    again.ack().await.unwrap();
}

/// Attempt counts keep growing when consumers die with the record in hand, so a record
/// that kills its consumer every time still reaches the dead letters.
pub async fn attempt_counts_survive_consumer_crashes(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("attempts");
    store.append(&t, probes(1)).await.unwrap();
    for expected in 1..=3 {
        let mut s = store
            .subscribe(
                &t,
                "g",
                &format!("c{expected}"),
                with_visibility(Duration::from_millis(200)),
            )
            .await
            .unwrap();
        let d = next(&mut s, "the poison record").await;
        assert_eq!(d.attempt, expected);
        drop(d); // the consumer dies without acking
        drop(s);
    }
}

/// A group resumes after its consumers restart: nothing acked comes back, nothing
/// unacked is lost.
pub async fn no_loss_across_consumer_restarts(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("restarts");
    store.append(&t, probes(50)).await.unwrap();
    let options = with_visibility(Duration::from_millis(300));
    let mut acked = HashSet::new();
    let mut s = store
        .subscribe(&t, "g", "first", options.clone())
        .await
        .unwrap();
    for _ in 0..20 {
        let d = next(&mut s, "first consumer").await;
        acked.insert(id_of(&d));
        d.ack().await.unwrap();
    }
    let in_hand = next(&mut s, "unacked at the crash").await;
    let lost_candidate = id_of(&in_hand);
    drop(in_hand);
    drop(s);
    let fresh = h.store().await;
    let mut s = fresh.subscribe(&t, "g", "second", options).await.unwrap();
    let mut second = HashSet::new();
    while second.len() < 30 {
        let d = next(&mut s, "second consumer").await;
        let id = id_of(&d);
        assert!(!acked.contains(&id), "an acked record came back");
        second.insert(id);
        d.ack().await.unwrap();
    }
    assert!(
        second.contains(&lost_candidate),
        "the record in hand at the crash was lost"
    );
}

/// Consumers subscribing and dropping while records flow lose nothing for the group.
pub async fn concurrent_subscribe_and_close(h: &impl Harness) {
    let store = std::sync::Arc::new(h.store().await);
    let t = topic("churn");
    let options = with_visibility(Duration::from_millis(200));
    let churn: Vec<_> = (0..8)
        .map(|c| {
            let (store, t, options) = (store.clone(), t.clone(), options.clone());
            tokio::spawn(async move {
                let mut s = store
                    .subscribe(&t, "g", &format!("c{c}"), options)
                    .await
                    .unwrap();
                // Take one record (maybe) and vanish without acking.
                let _ = tokio::time::timeout(Duration::from_millis(50), s.next()).await;
            })
        })
        .collect();
    store.append(&t, probes(40)).await.unwrap();
    for c in churn {
        c.await.unwrap();
    }
    let mut s = store.subscribe(&t, "g", "survivor", options).await.unwrap();
    let mut got = HashSet::new();
    while got.len() < 40 {
        let d = next(&mut s, "survivor").await;
        got.insert(id_of(&d));
        d.ack().await.unwrap();
    }
}

/// A group whose consumer keeps failing does not hold back another group, nor the other
/// records of its own group.
pub async fn failing_consumers_do_not_block_others(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("failing");
    store.append(&t, probes(10)).await.unwrap();
    let mut failing = store
        .subscribe(&t, "failing", "c", from_beginning())
        .await
        .unwrap();
    let mut healthy = store
        .subscribe(&t, "healthy", "c", from_beginning())
        .await
        .unwrap();
    let mut failing_seen = HashSet::new();
    for _ in 0..15 {
        let d = next(&mut failing, "failing group").await;
        failing_seen.insert(id_of(&d));
        if n_of(&d) == 0 {
            d.nack("always fails").await.unwrap();
        } else {
            d.ack().await.unwrap();
        }
        if failing_seen.len() == 10 {
            break;
        }
    }
    assert_eq!(
        failing_seen.len(),
        10,
        "records behind a failing one were held back"
    );
    for _ in 0..10 {
        next(&mut healthy, "healthy group")
            .await
            .ack()
            .await
            .unwrap();
    }
}

/// One consumer sees each key's records in append order.
pub async fn per_key_order(h: &impl Harness) {
    let store = h.store().await;
    if !store.features().ordered_per_key {
        eprintln!("skipped: store does not order per key");
        return;
    }
    let t = topic("order");
    for batch in 0..8u64 {
        let records = (0..25)
            .map(|i| probe(batch * 25 + i, &format!("k{}", i % 5)))
            .collect();
        store.append(&t, records).await.unwrap();
    }
    let mut s = store
        .subscribe(&t, "g", "c", from_beginning())
        .await
        .unwrap();
    let mut last: HashMap<String, u64> = HashMap::new();
    for _ in 0..200 {
        let d = next(&mut s, "ordered").await;
        let p = d
            .record
            .as_ref()
            .unwrap()
            .decode::<Probe>()
            .unwrap()
            .payload;
        if let Some(prev) = last.insert(p.key.clone(), p.n) {
            assert!(p.n > prev, "key {}: {} after {}", p.key, p.n, prev);
        }
        d.ack().await.unwrap();
    }
}

/// After `flush`, what was appended is readable, by a new instance for persistent stores.
pub async fn flush_makes_appends_durable(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("flush");
    store.append(&t, probes(20)).await.unwrap();
    store.flush().await.unwrap();
    let reader = if store.features().persistent {
        h.store().await
    } else {
        store
    };
    assert_eq!(
        reader.read(&t, ReadRange::default()).await.unwrap().len(),
        20
    );
}

/// `backlog` counts what a group has not acked: undelivered plus delivered and pending;
/// a group that does not exist has none to report.
pub async fn backlog_counts_what_the_group_has_not_acked(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("backlog");
    store.append(&t, probes(5)).await.unwrap();
    let mut s = store
        .subscribe(&t, "lagging", "c", with_visibility(Duration::from_secs(60)))
        .await
        .unwrap();
    let first = next(&mut s, "first").await;
    let second = next(&mut s, "second").await;
    let _held = next(&mut s, "third, held").await;
    crate::wait_until("a backlog of 5 (3 delivered, none acked)", async || {
        store.backlog(&t, "lagging").await.unwrap() == Some(5)
    })
    .await;
    first.ack().await.unwrap();
    second.ack().await.unwrap();
    store.flush().await.unwrap();
    crate::wait_until("a backlog of 3 after two acks", async || {
        store.backlog(&t, "lagging").await.unwrap() == Some(3)
    })
    .await;
    assert_eq!(store.backlog(&t, "no-such-group").await.unwrap(), None);
}

/// Every group gets every record.
pub async fn two_groups_each_get_everything(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("groups");
    store.append(&t, probes(20)).await.unwrap();
    for group in ["billing", "audit"] {
        let mut s = store
            .subscribe(&t, group, "c", from_beginning())
            .await
            .unwrap();
        let mut got = HashSet::new();
        while got.len() < 20 {
            let d = next(&mut s, group).await;
            got.insert(id_of(&d));
            d.ack().await.unwrap();
        }
    }
}

/// A new group starts at the beginning of the log or at new records only, as asked.
pub async fn new_groups_start_where_asked(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("start");
    store.append(&t, probes(10)).await.unwrap();
    let mut from_start = store
        .subscribe(&t, "from-start", "c", from_beginning())
        .await
        .unwrap();
    // Everything stored before the group existed (in whatever order partitions
    // interleave).
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let d = next(&mut from_start, "beginning").await;
        seen.insert(n_of(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(seen, (0..10).collect::<HashSet<u64>>());
    let mut new_only = store
        .subscribe(&t, "new-only", "c", ConsumeOptions::default())
        .await
        .unwrap();
    nothing(
        &mut new_only,
        Duration::from_millis(200),
        "new-only group before new records",
    )
    .await;
    store.append(&t, vec![probe(100, "k")]).await.unwrap();
    assert_eq!(n_of(&next(&mut new_only, "new-only").await), 100);
}

/// A record that does not decode is delivered with its error; the stream goes on.
pub async fn undecodable_records_are_delivered_with_the_error(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("garbage");
    store.append(&t, vec![probe(1, "k")]).await.unwrap();
    h.write_garbage(&store, &t).await;
    store.append(&t, vec![probe(2, "k")]).await.unwrap();
    let mut s = store
        .subscribe(&t, "g", "c", from_beginning())
        .await
        .unwrap();
    let first = next(&mut s, "before the garbage").await;
    assert_eq!(n_of(&first), 1);
    first.ack().await.unwrap();
    let bad = next(&mut s, "the garbage").await;
    let err = bad.record.as_ref().expect_err("garbage must not decode");
    assert!(!err.error.is_empty());
    bad.ack().await.unwrap();
    let after = next(&mut s, "after the garbage").await;
    assert_eq!(n_of(&after), 2);
    after.ack().await.unwrap();
}

/// Records read back in append order, from a position, with a limit.
pub async fn replay_reads_ranges(h: &impl Harness) {
    let store = h.store().await;
    let t = topic("replay");
    let positions = store.append(&t, probes(10)).await.unwrap();
    let all = store.read(&t, ReadRange::default()).await.unwrap();
    let ns: Vec<u64> = all
        .iter()
        .map(|(_, r)| r.as_ref().unwrap().decode::<Probe>().unwrap().payload.n)
        .collect();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());
    let tail = store
        .read(
            &t,
            ReadRange {
                after: Some(positions[6].clone()),
                ..ReadRange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail.len(), 3);
    assert_eq!(tail[0].0, positions[7]);
    let limited = store
        .read(
            &t,
            ReadRange {
                limit: 4,
                ..ReadRange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(limited.len(), 4);
}

/// Generates one `#[tokio::test]` per conformance scenario for a store.
///
/// ```ignore
/// struct MyHarness;
/// impl eda_testkit::Harness for MyHarness { /* ... */ }
/// eda_testkit::conformance_tests!(MyHarness);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            round_trip_keeps_attributes,
            append_is_idempotent,
            concurrent_publishers_and_consumers_lose_nothing,
            topics_are_isolated,
            nack_redelivers,
            unacked_records_go_to_another_consumer,
            attempt_counts_survive_consumer_crashes,
            no_loss_across_consumer_restarts,
            concurrent_subscribe_and_close,
            failing_consumers_do_not_block_others,
            per_key_order,
            flush_makes_appends_durable,
            backlog_counts_what_the_group_has_not_acked,
            two_groups_each_get_everything,
            new_groups_start_where_asked,
            undecodable_records_are_delivered_with_the_error,
            replay_reads_ranges
        );
    };
    (@each $harness:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let harness = $harness;
                if let Some(reason) = $crate::Harness::unavailable(&harness).await {
                    $crate::backend::skip(
                        concat!(module_path!(), "::", stringify!($scenario)),
                        &format!("{reason} (start it with `cargo xtask services up`)"),
                    );
                    return;
                }
                $crate::conformance::$scenario(&harness).await;
            }
        )*
    };
}
