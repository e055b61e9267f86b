//! # eda — an event-driven toolkit for Rust services
//!
//! Typed events, an in-process bus, and (behind Cargo features, as they land) durable
//! transports with one contract, so a service grows from one process to a fleet
//! without rewriting its handlers.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use eda::prelude::*;
//!
//! #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
//! struct OrderCreated { order_id: u64, customer: String }
//! impl Event for OrderCreated { const TYPE: &'static str = "order.created"; }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), eda::Error> {
//! let bus = Bus::builder().service("shop", "1.0.0").build();
//!
//! // Sync: runs inline before `publish` returns; its error goes back to the publisher.
//! let _reserve = bus.subscribe_sync(|e: &Envelope<OrderCreated>, _ctx: &Context| {
//!     println!("reserving stock for order {}", e.payload.order_id);
//!     Ok(())
//! })?;
//!
//! // Async: its own task, bounded queue, timeout, retries, dead letters.
//! let _mail = bus.subscribe_with(
//!     SubscribeOptions::new().name("mail").timeout(Duration::from_secs(5)),
//!     |e: Arc<Envelope<OrderCreated>>, ctx: Context| async move {
//!         println!("mailing {} (attempt {})", e.payload.customer, ctx.attempt());
//!         Ok(())
//!     },
//! )?;
//!
//! bus.publish(OrderCreated { order_id: 1, customer: "ada".into() }).await?;
//! let report = bus.shutdown(Duration::from_secs(5)).await;
//! assert_eq!(report.stats.delivered, 2);
//! # Ok(()) }
//! ```
//!
//! ## Crates
//! | crate | what |
//! |---|---|
//! | `eda-core` | events, CloudEvents envelopes, codecs, handler/middleware/interceptor traits |
//! | `eda-dispatch` | the in-process [`Bus`] on a ring buffer, groups, lifecycle |
//! | `eda-store-sqlite` | durable topics in an SQLite file (feature `sqlite`) |
//! | `eda-store-redis` | durable topics in Redis Streams, shared by a fleet (feature `redis`) |
//! | `eda-store-kafka` | partitioned durable topics on a Kafka-protocol broker (feature `kafka`) |
//! | `eda-dedup` | idempotent consumption: a dedup window in memory or Redis (feature `dedup`) |
//!
//! ## Features
//! `default` is the in-process bus only; `sqlite` adds the SQLite store, `redis` the
//! Redis Streams store (`redis-tls` with `rediss://` through rustls), `dedup` the dedup
//! window and middleware, `kafka` the Kafka store; `full` turns on every backend as
//! they are added (`observe` to come).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;

pub use error::Error;

pub use eda_core::{
    Bytes, CancellationToken, Cause, Codec, CodecError, ContentCodec, Context, DLQ_ATTEMPTS,
    DLQ_REASON, DLQ_SUBSCRIBER, DLQ_TOPIC, DeadLetter, DeadLetterError, DeadLetterSink, Envelope,
    EnvelopeError, Event, EventId, EventInfo, Handler, HandlerError, HandlerResult, Interceptor,
    JsonCodec, MemoryDeadLetters, Metadata, Middleware, Next, PostcardCodec, PublishAttributes,
    RawEvent, SyncHandler, Timestamp, TraceParent, dead_letter_topic, validate_extension_name,
};
pub use eda_dispatch::{
    Backpressure, Balancer, Bus, BusBuilder, BusConfig, BusStats, DeliveryMode, Executor,
    ForwardOptions, Forwarder, PublishError, RetryPolicy, ShutdownReport, SubscribeError,
    SubscribeOptions, Subscription, SyncFailure, ToStore, TopicConfig, TypePattern, current_cause,
};

/// The vocabulary crate, for what the facade does not re-export.
pub use eda_core as core;
/// Idempotent consumption.
#[cfg(feature = "dedup")]
#[cfg_attr(docsrs, doc(cfg(feature = "dedup")))]
pub use eda_dedup as dedup;
/// The Redis Streams store.
#[cfg(feature = "observe")]
#[cfg_attr(docsrs, doc(cfg(feature = "observe")))]
pub use eda_observe as observe;
/// The Kafka store.
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use eda_store_kafka as kafka;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use eda_store_redis as redis;
/// The SQLite store.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use eda_store_sqlite as sqlite;

pub use eda_core::{
    ConsumeOptions, Delivery, DeliveryStream, EventStore, Features, LeaseStore, OffsetStore,
    Position, ReadRange, StartFrom, StoreError,
};

/// The engine crate, for what the facade does not re-export.
pub use eda_dispatch as dispatch;

/// The names most programs need: `use eda::prelude::*;`.
pub mod prelude {
    pub use eda_core::{Context, Envelope, Event, EventId, HandlerError, HandlerResult, RawEvent};
    pub use eda_dispatch::{
        Backpressure, Balancer, Bus, DeliveryMode, RetryPolicy, SubscribeOptions, Subscription,
    };
}
