//! Typed errors of the bus.

use std::time::Duration;

use eda_core::{EventId, HandlerError, StoreError};

/// A synchronous subscriber failed while `publish` ran it inline.
#[derive(Debug)]
pub struct SyncFailure {
    /// The subscription's name.
    pub subscription: String,
    /// What went wrong (a panic becomes an error whose message starts with `handler panicked`).
    pub error: HandlerError,
}

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The bus is shutting down or shut down; nothing was delivered.
    #[error("the bus is shut down; event {event_id} was not published")]
    ShutDown {
        /// The event that was refused.
        event_id: EventId,
    },
    /// `try_publish` found a subscription's queue full. Subscriptions before it in the
    /// topic's order already have the event.
    #[error(
        "queue of subscription `{subscription}` is full (event {event_id}); retry later, use `publish` to wait, or raise its queue capacity"
    )]
    Full {
        /// The event.
        event_id: EventId,
        /// The group whose queue was full.
        subscription: String,
    },
    /// `publish` waited the topic's dispatch timeout for room in a full queue.
    /// Subscriptions before it in the topic's order already have the event.
    #[error(
        "subscription `{subscription}` stayed full for {waited:?} (event {event_id}); it is too slow for the publish rate: add members, raise its concurrency or its queue capacity"
    )]
    Timeout {
        /// The event.
        event_id: EventId,
        /// The group whose queue stayed full.
        subscription: String,
        /// How long `publish` waited.
        waited: Duration,
    },
    /// The durable topic's store did not take the event; nothing was published.
    #[error("the store of durable topic `{topic}` refused event {event_id}: {source}")]
    Store {
        /// The event.
        event_id: EventId,
        /// The durable topic.
        topic: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The event could not be encoded for a durable topic; nothing was published.
    #[error("event {event_id} cannot be encoded for durable topic `{topic}`: {reason}")]
    Encode {
        /// The event.
        event_id: EventId,
        /// The durable topic.
        topic: String,
        /// The encoder's message.
        reason: String,
    },
    /// Synchronous subscribers failed. The event was still delivered to every other subscriber.
    #[error("{} synchronous subscriber(s) failed on event {event_id}: {}", failures.len(), summary(failures))]
    Handlers {
        /// The event.
        event_id: EventId,
        /// One entry per failed subscriber.
        failures: Vec<SyncFailure>,
    },
}

fn summary(failures: &[SyncFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("`{}`: {}", f.subscription, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl PublishError {
    /// The event concerned.
    pub fn event_id(&self) -> EventId {
        match self {
            Self::ShutDown { event_id }
            | Self::Full { event_id, .. }
            | Self::Timeout { event_id, .. }
            | Self::Store { event_id, .. }
            | Self::Encode { event_id, .. }
            | Self::Handlers { event_id, .. } => *event_id,
        }
    }
}

/// Subscribing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The bus is shutting down or shut down.
    #[error("the bus is shut down; no new subscriptions")]
    ShutDown,
    /// Another subscription already has this name.
    #[error(
        "a subscription named `{0}` already exists; names label metrics and dead letters, so they must be unique"
    )]
    DuplicateName(String),
    /// The group exists with a different event type, pattern or kind (sync/async).
    #[error(
        "group `{group}` already exists for {existing}; members of a group must consume the same events the same way"
    )]
    GroupMismatch {
        /// The group.
        group: String,
        /// What the group was created for.
        existing: String,
    },
    /// Async subscriptions need a tokio runtime to run their tasks.
    #[error(
        "no tokio runtime: subscribe from inside a runtime or give the bus one with `BusBuilder::runtime`"
    )]
    NoRuntime,
    /// An option is out of range.
    #[error("invalid subscription option: {0}")]
    InvalidOption(String),
}
