//! The eda engine: the in-process [`Bus`], its subscriptions and their lifecycle.
//!
//! * **Typed events** go to every subscription of their type; **pattern** subscriptions
//!   (`"order.*"`) receive type-erased [`RawEvent`](eda_core::RawEvent)s.
//! * **Sync** subscribers run inline before `publish` returns and their errors come back
//!   to the publisher; **async** subscribers run on tokio behind a bounded queue.
//! * Each async delivery runs: TTL check → middleware → retry (exponential backoff with
//!   jitter) → per-attempt timeout → panic catch → handler; after the last failed
//!   attempt the event goes to the [`DeadLetterSink`](eda_core::DeadLetterSink).
//! * **Groups**: every group receives every event; members of one group share them.
//! * **Backpressure**: `publish` waits at most the dispatch timeout for a full queue,
//!   `try_publish` fails at once; memory stays bounded.
//! * **Shutdown** drains, then reports what happened to every delivery.
//!
//! Delivery guarantee: in-process delivery is at-most-once across a crash (queued
//! events live in memory); within a running process, at-least-once subscriptions retry
//! and dead-letter. Durable topics (a store) give at-least-once across crashes.
//!
//! See [`Bus`] for an example.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod balancer;
mod bus;
mod cause;
mod commit;
mod config;
mod durable;
mod error;
mod forward;
mod gate;
mod group;
mod item;
#[cfg(eda_mpsc_baseline)]
mod mpsc_baseline;
mod obs;
mod options;
mod pattern;
pub mod ring;
mod runner;
mod sink;
mod stats;
mod topic;

pub use balancer::Balancer;
pub use bus::{Backlog, Bus, BusBuilder, Subscription};
pub use cause::current_cause;
pub use config::{BusConfig, TopicConfig};
pub use error::{PublishError, SubscribeError, SyncFailure};
pub use forward::{ForwardOptions, Forwarder, ToStore};
pub use options::{DeliveryMode, Executor, RetryPolicy, SubscribeOptions};
pub use pattern::TypePattern;
pub use stats::{BusStats, ShutdownReport};
pub use topic::Backpressure;
