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
