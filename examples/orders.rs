//! The order flow of the seed design, on the in-process bus:
//!
//! `order.created` → inventory reserve (sync, inline) → notification and analytics
//! (async; analytics is slow) → a fraud check that keeps failing and ends in the
//! dead-letter sink → a `shipping` group of two members that share the orders by
//! customer (KeyHash: each customer's orders in order, customers in parallel). The
//! inventory handler publishes `inventory.reserved`, which inherits the order's
//! correlation id and trace. Shipping publishes `order.shipped` to a **durable topic** in
//! the SQLite file `./orders.db` (or `$EDA_ORDERS_DB`), consumed by an `invoicing`
//! subscriber: run the example twice and the second run's invoicing resumes after what
//! the first one acked.
//!
//! While it runs it serves Prometheus metrics at `http://127.0.0.1:9464/metrics` (or
//! `$EDA_METRICS_ADDR`) and prints a few of them at the end.
//!
//! Run: `cargo run --release --example orders`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eda::prelude::*;
use eda::sqlite::SqliteStore;
use eda::{Balancer, EventStore, MemoryDeadLetters, PublishError, ReadRange};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderCreated {
    order_id: u64,
    customer: String,
    amount_cents: u64,
}

impl Event for OrderCreated {
    const TYPE: &'static str = "order.created";
    fn partition_key(&self) -> Option<String> {
        Some(self.customer.clone())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InventoryReserved {
    order_id: u64,
}

impl Event for InventoryReserved {
    const TYPE: &'static str = "inventory.reserved";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderShipped {
    order_id: u64,
    customer: String,
}

impl Event for OrderShipped {
    const TYPE: &'static str = "order.shipped";
}

/// What each handler saw, for the summary.
#[derive(Default)]
struct Seen(Mutex<BTreeMap<&'static str, Vec<u64>>>);

impl Seen {
    fn add(&self, who: &'static str, order_id: u64) {
        self.0
            .lock()
            .unwrap()
            .entry(who)
            .or_default()
            .push(order_id);
    }
}

const ORDERS: u64 = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Metrics first: the bus registers its counters as it creates topics and groups.
    let metrics_addr =
        std::env::var("EDA_METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9464".into());
    let prometheus = match eda::observe::PrometheusExporter::new()
        .listen(metrics_addr.parse()?)
        .global_label("service", "orders-example")
        .install()
    {
        Ok(prometheus) => {
            println!("serving metrics at http://{metrics_addr}/metrics");
            Some(prometheus)
        }
        Err(e) => {
            eprintln!("not serving metrics ({e}); set EDA_METRICS_ADDR to a free address");
            None
        }
    };

    let db = std::env::var("EDA_ORDERS_DB").unwrap_or_else(|_| "orders.db".into());
    let store = SqliteStore::open(&db).await?;
    let dead_letters = MemoryDeadLetters::default();
    let bus = Bus::builder()
        .service("orders-example", env!("CARGO_PKG_VERSION"))
        .dead_letter_sink(dead_letters.clone())
        .durable_topic("order.shipped", store.clone())
        .build();
    let _backlog = eda::observe::BacklogSampler::spawn(bus.clone(), Duration::from_millis(200));
    let seen = Arc::new(Seen::default());
    let mut subscriptions = Vec::new();

    // Inventory: synchronous, runs before publish returns; a failure would go back to
    // the publisher. It publishes a follow-up event, which inherits correlation/trace.
    let (s, b) = (seen.clone(), bus.clone());
    subscriptions.push(bus.subscribe_sync_with(
        SubscribeOptions::new().name("inventory"),
        move |e: &Envelope<OrderCreated>, _ctx: &Context| {
            s.add("inventory (sync)", e.payload.order_id);
            b.try_publish(InventoryReserved {
                order_id: e.payload.order_id,
            })?;
            Ok(())
        },
    )?);

    // Notification: async, four at a time.
    let s = seen.clone();
    subscriptions.push(bus.subscribe_with(
        SubscribeOptions::new().name("notification").concurrency(4),
        move |e: Arc<Envelope<OrderCreated>>, _ctx: Context| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                s.add("notification (async)", e.payload.order_id);
                Ok(())
            }
        },
    )?);

    // Analytics: async and slow; its bounded queue absorbs the burst.
    let s = seen.clone();
    subscriptions.push(bus.subscribe_with(
        SubscribeOptions::new().name("analytics"),
        move |e: Arc<Envelope<OrderCreated>>, _ctx: Context| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                s.add("analytics (async, slow)", e.payload.order_id);
                Ok(())
            }
        },
    )?);

    // Fraud check: rejects big orders every time; after 3 attempts they are dead letters.
    let s = seen.clone();
    subscriptions.push(bus.subscribe_with(
        SubscribeOptions::new().name("fraud-check").retry(
            RetryPolicy::attempts(3).backoff(Duration::from_millis(10), Duration::from_millis(50)),
        ),
        move |e: Arc<Envelope<OrderCreated>>, ctx: Context| {
            let s = s.clone();
            async move {
                if e.payload.amount_cents > 50_000 {
                    return Err(HandlerError::msg(format!(
                        "amount {} over the limit (attempt {})",
                        e.payload.amount_cents,
                        ctx.attempt()
                    )));
                }
                s.add("fraud-check (async)", e.payload.order_id);
                Ok(())
            }
        },
    )?);

    // Shipping: one group, two members; the same customer always goes to the same
    // member, one order at a time, in publish order.
    let shipped: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    for member in ["shipping-a", "shipping-b"] {
        let (s, shipped, b) = (seen.clone(), shipped.clone(), bus.clone());
        subscriptions.push(
            bus.subscribe_with(
                SubscribeOptions::new()
                    .name(member)
                    .group("shipping")
                    .balancer(Balancer::KeyHash)
                    .concurrency(4),
                move |e: Arc<Envelope<OrderCreated>>, ctx: Context| {
                    let (s, shipped, b) = (s.clone(), shipped.clone(), b.clone());
                    async move {
                        tokio::time::sleep(Duration::from_millis(e.payload.order_id % 3)).await;
                        s.add("shipping (group of 2)", e.payload.order_id);
                        let who = format!("{} <- {}", ctx.subscription(), e.payload.customer);
                        shipped
                            .lock()
                            .unwrap()
                            .entry(who)
                            .or_default()
                            .push(e.payload.order_id);
                        // To the durable topic: stored in orders.db before this returns.
                        b.publish(OrderShipped {
                            order_id: e.payload.order_id,
                            customer: e.payload.customer.clone(),
                        })
                        .await?;
                        Ok(())
                    }
                },
            )?,
        );
    }

    // Invoicing: consumes the durable topic from orders.db; its position is stored there
    // too, so the next run resumes after what this one acked.
    let invoiced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let i = invoiced.clone();
    subscriptions.push(bus.subscribe_with(
        SubscribeOptions::new().name("invoicing"),
        move |_e: Arc<Envelope<OrderShipped>>, _ctx: Context| {
            i.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(()) }
        },
    )?);

    // Follow-up events: the causing order's correlation id comes along.
    let s = seen.clone();
    subscriptions.push(bus.subscribe_sync_with(
        SubscribeOptions::new().name("reservations"),
        move |e: &Envelope<InventoryReserved>, _ctx: &Context| {
            assert!(e.metadata.causation_id.is_some());
            s.add("reservations (sync)", e.payload.order_id);
            Ok(())
        },
    )?);

    let started = Instant::now();
    for order_id in 1..=ORDERS {
        let order = OrderCreated {
            order_id,
            customer: format!("customer-{}", order_id % 5),
            amount_cents: order_id * 4_000,
        };
        let envelope = Envelope::new(order).with_correlation_id(format!("checkout-{order_id}"));
        match bus.publish_envelope(envelope).await {
            Ok(_) => {}
            Err(PublishError::Handlers { failures, .. }) => {
                eprintln!("sync handlers failed: {failures:?}")
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("published {ORDERS} orders in {:?}", started.elapsed());

    // Let invoicing catch up with the shipments of this run (and any backlog).
    let deadline = Instant::now() + Duration::from_secs(10);
    while invoiced.load(std::sync::atomic::Ordering::SeqCst) < ORDERS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = bus.shutdown(Duration::from_secs(10)).await;
    println!("\nwhat each handler saw:");
    for (who, ids) in seen.0.lock().unwrap().iter() {
        println!("  {who:<24} {:>3} events: {:?}", ids.len(), ids);
    }
    println!("\nshipping by customer (KeyHash: one member per customer, orders in sequence):");
    for (who, ids) in shipped.lock().unwrap().iter() {
        println!("  {who:<32} {ids:?}");
    }
    println!("\ndead letters ({}):", dead_letters.total());
    for letter in dead_letters.letters() {
        let order: Envelope<OrderCreated> = letter.event.decode()?;
        println!(
            "  order {:>2} from `{}` after {} attempts: {}",
            order.payload.order_id, letter.subscriber, letter.attempts, letter.reason
        );
    }
    let stored = store
        .read("order.shipped", ReadRange::default())
        .await?
        .len();
    println!(
        "\ndurable topic order.shipped in {db}: {stored} events stored over all runs; \
         invoicing handled {} this run (it resumes after what earlier runs acked)",
        invoiced.load(std::sync::atomic::Ordering::SeqCst)
    );
    let rendered = prometheus.map(|p| p.render()).unwrap_or_default();
    if !rendered.is_empty() {
        println!("\nsome of the metrics served at http://{metrics_addr}/metrics:");
    }
    for line in rendered.lines().filter(|l| {
        l.starts_with("eda_events_handled_total") && !l.ends_with(" 0")
            || l.starts_with("eda_dead_letters_total") && !l.ends_with(" 0")
            || l.starts_with("eda_events_published_total")
    }) {
        println!("  {line}");
    }
    let s = report.stats;
    println!(
        "\nshutdown report: published {} events, {} deliveries: {} delivered, {} failed, {} dead-lettered, {} expired, {} not delivered (drained: {})",
        s.published,
        s.deliveries,
        s.delivered,
        s.failed,
        s.dead_lettered,
        s.expired,
        s.not_delivered,
        report.drained
    );
    Ok(())
}
