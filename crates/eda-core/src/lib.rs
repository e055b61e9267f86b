//! The vocabulary of [eda](https://docs.rs/eda): typed events, CloudEvents envelopes,
//! codecs, and the traits the engine and the stores implement. No I/O; the only task it
//! spawns is a store's [`AckBatcher`], on the store's runtime.
//!
//! ```
//! use eda_core::{Envelope, Event, JsonCodec, RawEvent};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct OrderCreated { order_id: u64, customer: String }
//! impl Event for OrderCreated { const TYPE: &'static str = "order.created"; }
//!
//! // A typed envelope: v7 id, time, source, metadata, payload.
//! let env = Envelope::new(OrderCreated { order_id: 1, customer: "ada".into() })
//!     .with_correlation_id("checkout-17");
//!
//! // The type-erased record transports carry, as CloudEvents JSON.
//! let raw = env.to_raw(&JsonCodec)?;
//! let json = raw.to_json()?;
//! let back: Envelope<OrderCreated> = RawEvent::from_json(json.as_bytes())?.decode()?;
//! assert_eq!(back, env);
//! # Ok::<(), eda_core::EnvelopeError>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod ack_batch;
mod codec;
mod context;
mod dead_letter;
mod envelope;
mod error;
mod event;
mod handler;
mod id;
mod metadata;
pub mod observe;
mod raw;
mod store;

pub use ack_batch::{AckBatchOptions, AckBatcher, FlushAcks};
pub use codec::{Codec, ContentCodec, JSON, JsonCodec, POSTCARD, PostcardCodec};
pub use context::{Context, SubscriptionInfo};
pub use dead_letter::{
    DLQ_ATTEMPTS, DLQ_REASON, DLQ_SUBSCRIBER, DLQ_TOPIC, DeadLetter, DeadLetterError,
    DeadLetterSink, MemoryDeadLetters, dead_letter_topic,
};
pub use envelope::{Envelope, EventInfo, SPEC_VERSION, default_source, is_default_source};
pub use error::{CodecError, EnvelopeError};
pub use event::Event;
pub use handler::{
    BoxFuture, Endpoint, Handler, HandlerError, HandlerResult, Interceptor, Middleware, Next,
    PublishAttributes, SyncHandler,
};
pub use id::{EventId, Timestamp};
pub use metadata::{Cause, Metadata, RESERVED_NAMES, TraceParent, validate_extension_name};
pub use observe::TraceContext;
pub use raw::RawEvent;
pub use store::{
    AckHandle, ConsumeOptions, Delivery, DeliveryStream, EventStore, Features, LeaseStore,
    OffsetStore, Position, ReadRange, StartFrom, StoreError, Undecodable,
};

/// Re-exported so users and stores name the same versions.
pub use bytes::Bytes;
pub use tokio_util::sync::CancellationToken;
