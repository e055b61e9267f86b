//! The bus on an SQLite file: a restarted service resumes where its group was.
//! (Here rather than in eda-dispatch, whose loom build must not compile sqlx.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::{Context, Envelope, Event};
use eda_dispatch::{Bus, SubscribeOptions};
use eda_store_sqlite::SqliteStore;
use eda_testkit::wait_until;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderCreated {
    order_id: u64,
}
impl Event for OrderCreated {
    const TYPE: &'static str = "order.created";
}
fn order(order_id: u64) -> OrderCreated {
    OrderCreated { order_id }
}

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
async fn a_restarted_service_resumes_from_the_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.db");
    let seen: Seen = Arc::default();

    // First run: handles 10 events, then stops.
    let bus = Bus::builder()
        .durable_topic("order.created", SqliteStore::open(&path).await.unwrap())
        .build();
    let sub = bus
        .subscribe_with(SubscribeOptions::new().name("billing"), recording(&seen))
        .unwrap();
    for i in 0..10 {
        bus.publish(order(i)).await.unwrap();
    }
    wait_until("the first 10", async || seen.lock().unwrap().len() == 10).await;
    drop(sub);
    bus.shutdown(Duration::from_secs(5)).await;

    // While it is down, another process publishes 5 more.
    let publisher = Bus::builder()
        .durable_topic("order.created", SqliteStore::open(&path).await.unwrap())
        .build();
    for i in 10..15 {
        publisher.publish(order(i)).await.unwrap();
    }

    // Second run: the group resumes where it was, nothing acked comes back.
    let bus = Bus::builder()
        .durable_topic("order.created", SqliteStore::open(&path).await.unwrap())
        .build();
    let _sub = bus
        .subscribe_with(SubscribeOptions::new().name("billing"), recording(&seen))
        .unwrap();
    wait_until("the 5 published while down", async || {
        seen.lock().unwrap().len() == 15
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bus.shutdown(Duration::from_secs(5)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 15, "no duplicates: {seen:?}");
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 15);
}

/// Middleware that answers for even orders without calling the handler (as a dedup
/// middleware does for a duplicate) and counts what it saw.
struct SkipEven(Arc<std::sync::atomic::AtomicU64>);

impl eda_core::Middleware for SkipEven {
    fn handle<'a>(
        &'a self,
        event: &'a dyn eda_core::EventInfo,
        ctx: &'a Context,
        next: eda_core::Next<'a>,
    ) -> eda_core::BoxFuture<'a, eda_core::HandlerResult> {
        Box::pin(async move {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let envelope: Envelope<OrderCreated> = event
                .to_raw_event()
                .expect("encodes")
                .decode()
                .expect("decodes");
            if envelope.payload.order_id.is_multiple_of(2) {
                return Ok(());
            }
            next.run(event, ctx).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_deliveries_run_through_the_subscription_middleware() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("orders.db"))
        .await
        .unwrap();
    let bus = Bus::builder().durable_topic("order.created", store).build();
    let seen: Seen = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let _sub = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("billing")
                .middleware(SkipEven(calls.clone())),
            recording(&seen),
        )
        .unwrap();
    for id in 1..=6 {
        bus.publish(order(id)).await.unwrap();
    }
    wait_until("every delivery settled", async || {
        bus.stats().delivered == 6
    })
    .await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 6);
    let mut handled = seen.lock().unwrap().clone();
    handled.sort_unstable();
    assert_eq!(
        handled,
        [1, 3, 5],
        "middleware answered for the even orders"
    );
}
