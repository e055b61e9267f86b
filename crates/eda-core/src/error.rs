//! Typed errors of the core vocabulary.

use crate::id::EventId;

/// Encoding or decoding a payload failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be serialized.
    #[error("cannot encode payload as {content_type}: {reason}")]
    Encode {
        /// The codec's content type.
        content_type: &'static str,
        /// What the serializer said.
        reason: String,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode {content_type} payload: {reason}")]
    Decode {
        /// The codec's content type.
        content_type: &'static str,
        /// What the deserializer said.
        reason: String,
    },
    /// No codec of ours reads this content type.
    #[error(
        "unsupported content type `{0}`: eda reads application/json (and +json types) and application/x-postcard"
    )]
    UnsupportedContentType(String),
}

/// An envelope, an attribute or a CloudEvents document is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// An extension or header name breaks the CloudEvents naming rule.
    #[error(
        "invalid extension name `{name}`: {reason} (CloudEvents names are 1-20 characters of lowercase a-z and 0-9, e.g. `tenant`)"
    )]
    InvalidName {
        /// The offending name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A required CloudEvents attribute is missing.
    #[error("missing required CloudEvents attribute `{0}`")]
    MissingAttribute(&'static str),
    /// An attribute has a value of the wrong form.
    #[error("invalid CloudEvents attribute `{attribute}`: {reason}")]
    InvalidAttribute {
        /// The attribute name.
        attribute: &'static str,
        /// Why the value is rejected.
        reason: String,
    },
    /// The document is not CloudEvents JSON at all.
    #[error("not a CloudEvents JSON event: {0}")]
    Format(String),
    /// A type-erased event was decoded as the wrong Rust type.
    #[error("event {id} has type `{found}`, expected `{expected}`")]
    TypeMismatch {
        /// The event's id.
        id: EventId,
        /// The type the caller asked for.
        expected: &'static str,
        /// The type the event carries.
        found: String,
    },
    /// Binary data written for another version of the event type (its `dataschema`
    /// names the version); decoding it as this version could misread it.
    #[error(
        "event {id} carries `{dataschema}`, written for another version than v{expected}; decode it with the type version that wrote it"
    )]
    SchemaVersion {
        /// The event's id.
        id: EventId,
        /// The version of the type the caller asked for.
        expected: u32,
        /// The event's `dataschema`.
        dataschema: String,
    },
    /// The payload could not be encoded or decoded.
    #[error("event {id:?}: {source}")]
    Codec {
        /// The event's id, when known.
        id: Option<EventId>,
        /// The codec failure.
        #[source]
        source: CodecError,
    },
}

impl EnvelopeError {
    /// The id of the event concerned, when there is one.
    pub fn event_id(&self) -> Option<EventId> {
        match self {
            Self::TypeMismatch { id, .. } => Some(*id),
            Self::Codec { id, .. } => *id,
            _ => None,
        }
    }
}
