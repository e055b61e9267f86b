//! The store contract: what every durable transport (SQLite, Redis Streams, Kafka, the
//! in-memory store of `eda-testkit`) implements, and what the conformance suite checks.
//!
//! * `append` writes a batch of records to a topic (a batch is the unit of durability)
//!   and returns their opaque [`Position`]s.
//! * `subscribe` consumes a topic as `(group, consumer)`: every group gets every record;
//!   the consumers of one group share them. Each [`Delivery`] must be acked, nacked
//!   (redelivered), or left to time out after the visibility timeout (redelivered to any
//!   consumer of the group). Its attempt count survives a crash of the consumer.
//! * A record that does not decode (written by another tool) is still delivered, with
//!   the error, so the runner can dead-letter it and move on.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;

use crate::handler::BoxFuture;
use crate::id::Timestamp;
use crate::raw::RawEvent;

/// Where a record sits in a store: SQLite sequence, Redis stream id, Kafka
/// partition+offset. Opaque: compare positions of one store only.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position(Arc<str>);

impl Position {
    /// A position from the store's own representation.
    pub fn new(repr: impl Into<Arc<str>>) -> Self {
        Self(repr.into())
    }
    /// The store's representation.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({})", self.0)
    }
}

/// Where a new group starts reading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// From the first record the store still has.
    Beginning,
    /// Only records appended after the group was created.
    #[default]
    NewOnly,
    /// After this position.
    After(Position),
}

/// How a consumer reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Where a *new* group starts (an existing group resumes where it is).
    pub start: StartFrom,
    /// How long a delivery may stay unacked before it is redelivered (default 30 s).
    pub visibility_timeout: Duration,
    /// Attempts after which the runner dead-letters a record (default 3). Stores report
    /// attempt counts; the runner enforces the limit.
    pub max_attempts: u32,
    /// Records fetched at once (default 100).
    pub batch_size: usize,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            start: StartFrom::default(),
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 3,
            batch_size: 100,
        }
    }
}

/// A stored record that is not a valid CloudEvent of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// The record's raw bytes (or a rendering of its fields), for the dead letter.
    pub raw: Bytes,
    /// Why it did not decode.
    pub error: String,
}

/// What a store answers when acked, nacked or extended.
pub trait AckHandle: Send + Sync + 'static {
    /// The handler succeeded: never deliver this record to the group again (once the
    /// ack is written; see [`Delivery::ack`]).
    fn ack(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The handler failed: redeliver (to any consumer of the group) soon.
    fn nack(&self, reason: String) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The handler needs longer: push the visibility deadline `by` further.
    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// One record delivered to one consumer of a group.
pub struct Delivery {
    /// Where the record is.
    pub position: Position,
    /// This delivery's attempt, from 1; counted by the store, so it survives crashes.
    pub attempt: u32,
    /// The record, or why it does not decode.
    pub record: Result<RawEvent, Undecodable>,
    handle: Box<dyn AckHandle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("position", &self.position)
            .field("attempt", &self.attempt)
            .field("record", &self.record.as_ref().map(|r| r.id))
            .finish()
    }
}

impl Delivery {
    /// A delivery with the store's ack handle.
    pub fn new(
        position: Position,
        attempt: u32,
        record: Result<RawEvent, Undecodable>,
        handle: Box<dyn AckHandle>,
    ) -> Self {
        Self {
            position,
            attempt,
            record,
            handle,
        }
    }
    /// Acknowledges: the group is done with this record.
    ///
    /// Stores may batch acks ([`AckBatcher`](crate::AckBatcher)): `Ok` then means the
    /// ack is queued and will be written within the store's linger, by
    /// [`EventStore::flush`], or when the store closes. An ack lost to a crash before
    /// that, or of a delivery whose visibility timeout passed, leaves the record to be
    /// redelivered (at least once, never lost).
    pub async fn ack(self) -> Result<(), StoreError> {
        self.handle.ack().await
    }
    /// Rejects: the record is redelivered.
    pub async fn nack(self, reason: impl Into<String>) -> Result<(), StoreError> {
        self.handle.nack(reason.into()).await
    }
    /// Asks for more time before the record is redelivered.
    pub async fn extend(&self, by: Duration) -> Result<(), StoreError> {
        self.handle.extend(by).await
    }
}

/// The deliveries of one subscription. Dropping it stops consuming; what it held
/// unacked is redelivered after the visibility timeout.
pub type DeliveryStream = Pin<Box<dyn Stream<Item = Result<Delivery, StoreError>> + Send>>;

/// A range of records to read back (replay).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadRange {
    /// Start after this position (`None`: from the beginning).
    pub after: Option<Position>,
    /// Only records at or after this time.
    pub since: Option<Timestamp>,
    /// At most this many records (`0`: no limit).
    pub limit: usize,
}

/// What a store guarantees; the conformance suite runs the scenarios that apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// Records of one key reach a single consumer in append order.
    pub ordered_per_key: bool,
    /// A record not acked in time can be redelivered to another consumer of the group.
    pub redelivers_to_other_consumers: bool,
    /// Records and group positions outlive the store instance (a new instance on the
    /// same file/server sees them).
    pub persistent: bool,
    /// Appending a record whose id is already stored returns its position instead of
    /// storing it twice (Kafka through rskafka cannot promise it).
    pub idempotent_appends: bool,
}

impl Features {
    /// All features off; enable with the builder methods.
    pub const fn none() -> Self {
        Self {
            ordered_per_key: false,
            redelivers_to_other_consumers: false,
            persistent: false,
            idempotent_appends: false,
        }
    }
    /// Sets `ordered_per_key`.
    pub const fn ordered_per_key(mut self, on: bool) -> Self {
        self.ordered_per_key = on;
        self
    }
    /// Sets `redelivers_to_other_consumers`.
    pub const fn redelivers_to_other_consumers(mut self, on: bool) -> Self {
        self.redelivers_to_other_consumers = on;
        self
    }
    /// Sets `persistent`.
    pub const fn persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }
    /// Sets `idempotent_appends`.
    pub const fn idempotent_appends(mut self, on: bool) -> Self {
        self.idempotent_appends = on;
        self
    }
}

/// A durable transport for events.
pub trait EventStore: Send + Sync + 'static {
    /// What this store guarantees.
    fn features(&self) -> Features;

    /// Appends a batch and returns the records' positions. Atomic (all or none) per
    /// partition; stores with one log per topic are atomic for the whole batch. With
    /// [`Features::idempotent_appends`], a record whose id is already stored in the
    /// topic is not stored twice (a retried append is idempotent); its existing
    /// position is returned.
    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: Vec<RawEvent>,
    ) -> BoxFuture<'a, Result<Vec<Position>, StoreError>>;

    /// Consumes `topic` as `consumer` of `group`.
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<DeliveryStream, StoreError>>;

    /// Reads records back, in append order, without touching any group.
    #[allow(clippy::type_complexity)]
    fn read<'a>(
        &'a self,
        topic: &'a str,
        range: ReadRange,
    ) -> BoxFuture<'a, Result<Vec<(Position, Result<RawEvent, Undecodable>)>, StoreError>>;

    /// Makes everything appended and acked so far durable (writes queued acks).
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records of `topic` that `group` has not acked: not yet delivered plus delivered
    /// and pending. Feeds the `eda_backlog` gauge. `None` (the default) when the store
    /// cannot tell, or the group does not exist yet.
    fn backlog<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let _ = (topic, group);
        Box::pin(async { Ok(None) })
    }
}

/// Committed positions per group and partition, for stores that track them outside the
/// transport (Kafka through rskafka).
pub trait OffsetStore: Send + Sync + 'static {
    /// Stores the next offset to read.
    fn commit<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The committed offset, if any.
    fn committed<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>>;
    /// Counts one more delivery of each record at `offsets` and returns the counts, so
    /// attempt counts survive a crash of the consumer (a record that kills it every
    /// time still reaches the dead letters).
    fn bump_attempts<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offsets: &'a [i64],
    ) -> BoxFuture<'a, Result<Vec<u32>, StoreError>>;
    /// Forgets the attempt counts of records below `offset` (committed).
    fn clear_attempts<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Named leases with a time to live, for sharing partitions between processes.
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease if it is free or expired, or renews it if `holder` has it.
    /// Returns whether `holder` holds it now.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Gives the lease up if `holder` has it.
    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The live leases whose names start with `prefix`, as `(name, holder)`: e.g. the
    /// members of a consumer group, each holding a membership lease.
    fn holders<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>>;
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The backend cannot be reached or refused the operation; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record is larger than the store accepts; nothing was written.
    #[error("record of {size} bytes exceeds the limit of {max} bytes; nothing was written")]
    TooLarge {
        /// The record's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The request itself is invalid (empty topic name, ...).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// The ack handle's delivery is no longer held (it timed out and went elsewhere).
    #[error("delivery at {0} is no longer held by this consumer")]
    NotHeld(Position),
}
