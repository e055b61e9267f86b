//! Durable topics: the bus on a store, with redeliveries as retries and `<topic>.dlq`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{OrderCreated, order};
use eda_core::{
    Context, DLQ_ATTEMPTS, DLQ_REASON, DLQ_SUBSCRIBER, Envelope, EventStore, HandlerError,
    ReadRange, StartFrom,
};
use eda_dispatch::{Bus, PublishError, RetryPolicy, SubscribeError, SubscribeOptions};
use eda_testkit::MemoryStore;
use eda_testkit::wait_until;

type Seen = Arc<Mutex<Vec<u64>>>;

fn recording(
    seen: &Seen,
) -> impl Fn(Arc<Envelope<OrderCreated>>, Context) -> std::future::Ready<eda_core::HandlerResult>
+ Send
+ Sync
+ 'static {
    let seen = seen.clone();
    move |e, _ctx| {
        seen.lock().unwrap().push(e.payload.order_id);
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_are_stored_then_handled() {
    let store = MemoryStore::new();
    let bus = Bus::builder()
        .durable_topic("order.created", store.clone())
        .build();
    let seen: Seen = Arc::default();
    let _sub = bus
        .subscribe_with(SubscribeOptions::new().name("billing"), recording(&seen))
        .unwrap();
    for i in 0..100 {
        bus.publish(order(i)).await.unwrap();
    }
    wait_until("100 events", async || seen.lock().unwrap().len() == 100).await;
    let stored = store
        .read("order.created", ReadRange::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), 100, "every event is in the store");
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    assert_eq!(report.stats.delivered, 100);
    let mut ids = seen.lock().unwrap().clone();
    ids.sort_unstable();
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_redelivered_then_dead_lettered_in_the_store() {
    let store = MemoryStore::new();
    let bus = Bus::builder()
        .durable_topic("order.created", store.clone())
        .build();
    let attempts: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let a = attempts.clone();
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("picky")
                .retry(RetryPolicy::attempts(3)),
            move |e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                a.lock().unwrap().push((e.payload.order_id, ctx.attempt()));
                let fail = e.payload.order_id == 1;
                async move {
                    if fail {
                        Err(HandlerError::msg("order 1 is never right"))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .unwrap();
    for i in 0..3 {
        bus.publish(order(i)).await.unwrap();
    }
    let dlq = "order.created.dlq";
    wait_until("a dead letter", async || {
        futures_util::FutureExt::now_or_never(store.read(dlq, ReadRange::default()))
            .and_then(Result::ok)
            .is_some_and(|v| !v.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = bus.shutdown(Duration::from_secs(5)).await;
    let of_one: Vec<u32> = attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| *id == 1)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        of_one,
        [1, 2, 3],
        "the store's redeliveries are the retries, with its counts"
    );
    let letters = store.read(dlq, ReadRange::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = letters[0].1.as_ref().unwrap();
    assert_eq!(letter.decode::<OrderCreated>().unwrap().payload.order_id, 1);
    assert_eq!(letter.metadata.header(DLQ_ATTEMPTS), Some("3"));
    assert_eq!(letter.metadata.header(DLQ_SUBSCRIBER), Some("picky"));
    assert_eq!(
        letter.metadata.header(DLQ_REASON),
        Some("order 1 is never right")
    );
    assert_eq!(report.stats.delivered, 2);
    assert_eq!(report.stats.dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_go_to_the_dead_letters_and_the_stream_goes_on() {
    let store = MemoryStore::new();
    let bus = Bus::builder()
        .durable_topic("order.created", store.clone())
        .build();
    let seen: Seen = Arc::default();
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("reader")
                .start_from(StartFrom::Beginning),
            recording(&seen),
        )
        .unwrap();
    bus.publish(order(1)).await.unwrap();
    store.write_raw("order.created", &b"{\"not\": \"a cloudevent\"}"[..]);
    bus.publish(order(2)).await.unwrap();
    wait_until("both good events", async || seen.lock().unwrap().len() == 2).await;
    wait_until("the dead letter", async || {
        futures_util::FutureExt::now_or_never(store.read("order.created.dlq", ReadRange::default()))
            .and_then(Result::ok)
            .is_some_and(|v| v.len() == 1)
    })
    .await;
    let letters = store
        .read("order.created.dlq", ReadRange::default())
        .await
        .unwrap();
    let letter = letters[0].1.as_ref().unwrap();
    assert!(
        letter
            .metadata
            .header(DLQ_REASON)
            .unwrap()
            .starts_with("undecodable event")
    );
    assert_eq!(&letter.data[..], b"{\"not\": \"a cloudevent\"}");
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
    bus.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn durable_topics_refuse_what_they_cannot_do() {
    let bus = Bus::builder()
        .durable_topic("order.created", MemoryStore::new())
        .build();
    let sync = bus.subscribe_sync(|_e: &Envelope<OrderCreated>, _c: &Context| Ok(()));
    assert!(matches!(sync, Err(SubscribeError::InvalidOption(_))));
    let err = bus.try_publish(order(1)).unwrap_err();
    assert!(matches!(err, PublishError::Store { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_durable_events_go_to_the_dead_letters_and_are_counted_once() {
    let store = MemoryStore::new();
    let bus = Bus::builder()
        .durable_topic("order.created", store.clone())
        .topic(
            "order.created",
            eda_dispatch::TopicConfig {
                ttl: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .build();
    let seen: Seen = Arc::default();
    let _sub = bus
        .subscribe_with(SubscribeOptions::new().name("late"), recording(&seen))
        .unwrap();
    let mut old = Envelope::new(order(1));
    old.time = eda_core::Timestamp::from_unix_millis(old.time.unix_millis() - 120_000);
    bus.publish_envelope(old).await.unwrap();
    bus.publish(order(2)).await.unwrap();
    wait_until("the fresh event", async || seen.lock().unwrap().len() == 1).await;
    wait_until("the dead letter", async || {
        futures_util::FutureExt::now_or_never(store.read("order.created.dlq", ReadRange::default()))
            .and_then(Result::ok)
            .is_some_and(|v| v.len() == 1)
    })
    .await;
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert_eq!(*seen.lock().unwrap(), [2]);
    let s = report.stats;
    assert_eq!((s.deliveries, s.delivered, s.expired), (2, 1, 1), "{s:?}");
    assert_eq!(s.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_appends_and_a_too_large_event_fails_alone() {
    let store = MemoryStore::with_max_record_bytes(2_000);
    let bus = Bus::builder()
        .durable_topic("order.created", store.clone())
        .build();
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut event = order(i);
            if i == 123 {
                event.customer = "x".repeat(10_000);
            }
            bus.publish(event).await
        }));
    }
    let mut refused = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(_) => {}
            Err(PublishError::Store { source, .. }) => {
                assert!(matches!(source, eda_core::StoreError::TooLarge { .. }));
                refused.push(i);
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(refused, vec![123], "only the oversized event is refused");
    let stored = store
        .read("order.created", ReadRange::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), 299);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_on_a_durable_topic_is_all_or_nothing() {
    let store = MemoryStore::with_max_record_bytes(2_000);
    let bus = Bus::builder()
        .durable_topic("order.created", store.clone())
        .build();
    let mut events: Vec<_> = (0..10).map(order).collect();
    events[4].customer = "x".repeat(10_000);
    let err = bus.publish_batch(events).await.unwrap_err();
    assert!(matches!(err, PublishError::Store { .. }), "{err}");
    let ids = bus.publish_batch((0..10).map(order)).await.unwrap();
    let stored = store
        .read("order.created", ReadRange::default())
        .await
        .unwrap();
    let stored: Vec<_> = stored.into_iter().map(|(_, r)| r.unwrap().id).collect();
    assert_eq!(stored, ids, "only the second batch, in order");
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderCreatedV2 {
    order_id: u64,
    customer: String,
    total_cents: u64,
}
impl eda_core::Event for OrderCreatedV2 {
    const TYPE: &'static str = "order.created";
    const VERSION: u32 = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postcard_topics_record_their_schema_and_refuse_another_version() {
    let store = MemoryStore::new();
    let mut config = eda_dispatch::BusConfig::default();
    config.topics.insert(
        "order.created".into(),
        eda_dispatch::TopicConfig {
            codec: Some(eda_core::ContentCodec::Postcard),
            ..Default::default()
        },
    );
    let bus = Bus::builder()
        .config(config)
        .durable_topic("order.created", store.clone())
        .build();
    let seen: Seen = Arc::default();
    let _v1 = bus
        .subscribe_with(SubscribeOptions::new().name("v1"), recording(&seen))
        .unwrap();
    let _v2 = bus
        .subscribe_with(
            SubscribeOptions::new().name("v2"),
            |_e: Arc<Envelope<OrderCreatedV2>>, _ctx: Context| async {
                panic!("a v1 record must not be decoded as v2")
            },
        )
        .unwrap();
    bus.publish(order(7)).await.unwrap();
    wait_until("the v1 subscriber", async || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    let stored = store
        .read("order.created", ReadRange::default())
        .await
        .unwrap();
    let record = stored[0].1.as_ref().unwrap();
    assert_eq!(record.datacontenttype.as_deref(), Some(eda_core::POSTCARD));
    assert_eq!(
        record.dataschema.as_deref(),
        Some("urn:eda:order.created:v1")
    );
    let mut letters = Vec::new();
    wait_for_dead_letters(&store, &mut letters).await;
    let reason = letters[0].metadata.header(DLQ_REASON).unwrap().to_owned();
    assert!(reason.contains("another version"), "{reason}");
    assert_eq!(letters[0].metadata.header(DLQ_SUBSCRIBER), Some("v2"));
}

async fn wait_for_dead_letters(store: &MemoryStore, letters: &mut Vec<eda_core::RawEvent>) {
    for _ in 0..500 {
        let dlq = store
            .read("order.created.dlq", ReadRange::default())
            .await
            .unwrap();
        if !dlq.is_empty() {
            letters.extend(dlq.into_iter().map(|(_, r)| r.unwrap()));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no dead letter");
}
