//! [`Envelope`]: a typed event with its CloudEvents attributes.

use std::any::Any;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{Codec, JsonCodec};
use crate::error::EnvelopeError;
use crate::event::Event;
use crate::id::{EventId, Timestamp};
use crate::metadata::Metadata;
use crate::raw::RawEvent;

/// The CloudEvents `specversion` eda writes and accepts.
pub const SPEC_VERSION: &str = "1.0";

static DEFAULT_SOURCE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("eda"));

/// The default `source` of an envelope built outside a bus (a bus stamps its own).
pub fn default_source() -> Arc<str> {
    DEFAULT_SOURCE.clone()
}

/// Whether `source` is the default one given by [`Envelope::new`] (not set by anyone).
pub fn is_default_source(source: &Arc<str>) -> bool {
    Arc::ptr_eq(source, &DEFAULT_SOURCE)
}

/// A typed event with its attributes: id, time, source, metadata and the payload.
///
/// Its serde form is a CloudEvents 1.0 JSON event:
///
/// ```
/// use eda_core::{Envelope, Event};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct OrderCreated { order_id: u64 }
/// impl Event for OrderCreated { const TYPE: &'static str = "order.created"; }
///
/// let env = Envelope::new(OrderCreated { order_id: 7 })
///     .with_source("shop-1.4.0")
///     .with_header("tenant", "acme")?;
/// let json = serde_json::to_value(&env)?;
/// assert_eq!(json["specversion"], "1.0");
/// assert_eq!(json["type"], "order.created");
/// assert_eq!(json["tenant"], "acme");
/// assert_eq!(json["data"]["order_id"], 7);
/// let back: Envelope<OrderCreated> = serde_json::from_value(json)?;
/// assert_eq!(back.payload, env.payload);
/// assert_eq!(back.id, env.id);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope<E> {
    /// Unique id (CloudEvents `id`).
    pub id: EventId,
    /// When the event happened (CloudEvents `time`).
    pub time: Timestamp,
    /// Who produced it, `"{service}-{version}"` by convention (CloudEvents `source`).
    pub source: Arc<str>,
    /// Trace context, correlation, routing key and headers.
    pub metadata: Metadata,
    /// The typed payload (CloudEvents `data`).
    pub payload: E,
}

impl<E: Event> Envelope<E> {
    /// Wraps a payload with a new v7 id, the id's timestamp, the default source and the
    /// payload's partition key.
    pub fn new(payload: E) -> Self {
        let (id, time) = EventId::new_with_time();
        let metadata = Metadata {
            partition_key: payload.partition_key(),
            ..Metadata::default()
        };
        Self {
            id,
            time,
            source: default_source(),
            metadata,
            payload,
        }
    }

    /// The event's CloudEvents `type`.
    pub fn event_type(&self) -> &'static str {
        E::TYPE
    }

    /// Sets the source.
    pub fn with_source(mut self, source: impl Into<Arc<str>>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.correlation_id = Some(id.into());
        self
    }

    /// Sets the routing key.
    pub fn with_partition_key(mut self, key: impl Into<String>) -> Self {
        self.metadata.partition_key = Some(key.into());
        self
    }

    /// Sets the CloudEvents `subject`.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.metadata.subject = Some(subject.into());
        self
    }

    /// Adds a free header; fails on a name CloudEvents does not allow.
    pub fn with_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, EnvelopeError> {
        self.metadata.insert_header(name, value)?;
        Ok(self)
    }

    /// Encodes the payload with `codec` into a type-erased record.
    pub fn to_raw<C: Codec>(&self, codec: &C) -> Result<RawEvent, EnvelopeError> {
        let data = codec
            .encode(&self.payload)
            .map_err(|source| EnvelopeError::Codec {
                id: Some(self.id),
                source,
            })?;
        let dataschema = (codec.content_type() != crate::codec::JSON)
            .then(|| format!("urn:eda:{}:v{}", E::TYPE, E::VERSION));
        Ok(RawEvent {
            id: self.id,
            time: self.time,
            source: self.source.clone(),
            event_type: Arc::from(E::TYPE),
            datacontenttype: Some(codec.content_type().to_owned()),
            dataschema,
            metadata: self.metadata.clone(),
            data,
        })
    }
}

impl<E: Event> Serialize for Envelope<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_raw(&JsonCodec)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de, E: Event> Deserialize<'de> for Envelope<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawEvent::deserialize(deserializer)?
            .decode()
            .map_err(serde::de::Error::custom)
    }
}

/// Read access to any event, typed or type-erased: what middleware and dead-letter
/// sinks see. `Arc<dyn EventInfo>` upcasts to `Arc<dyn Any + Send + Sync>` for downcasting.
pub trait EventInfo: Any + Send + Sync + 'static {
    /// CloudEvents `id`.
    fn id(&self) -> EventId;
    /// CloudEvents `type`.
    fn event_type(&self) -> &str;
    /// CloudEvents `time`.
    fn time(&self) -> Timestamp;
    /// CloudEvents `source`.
    fn source(&self) -> &str;
    /// Extensions and headers.
    fn metadata(&self) -> &Metadata;
    /// The record form (JSON-encoded for typed envelopes), e.g. for dead letters.
    fn to_raw_event(&self) -> Result<RawEvent, EnvelopeError>;
    /// Downcasting support (`Envelope<E>` or [`RawEvent`]).
    fn as_any(&self) -> &dyn Any;
}

impl<E: Event> EventInfo for Envelope<E> {
    fn id(&self) -> EventId {
        self.id
    }
    fn event_type(&self) -> &str {
        E::TYPE
    }
    fn time(&self) -> Timestamp {
        self.time
    }
    fn source(&self) -> &str {
        &self.source
    }
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn to_raw_event(&self) -> Result<RawEvent, EnvelopeError> {
        self.to_raw(&JsonCodec)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl EventInfo for RawEvent {
    fn id(&self) -> EventId {
        self.id
    }
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn time(&self) -> Timestamp {
        self.time
    }
    fn source(&self) -> &str {
        &self.source
    }
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    fn to_raw_event(&self) -> Result<RawEvent, EnvelopeError> {
        Ok(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
