//! Event metadata: W3C trace context, correlation, routing key and free headers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::EnvelopeError;
use crate::id::EventId;

/// Attribute names that CloudEvents itself defines or that eda maps to typed fields;
/// they cannot be used as free headers.
pub const RESERVED_NAMES: &[&str] = &[
    "id",
    "source",
    "specversion",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "data",
    "data_base64",
    "traceparent",
    "tracestate",
    "partitionkey",
    "correlationid",
    "causationid",
];

/// Checks a CloudEvents extension name: 1 to 20 characters, lowercase ASCII letters and digits.
///
/// ```
/// use eda_core::validate_extension_name;
/// assert!(validate_extension_name("tenant").is_ok());
/// assert!(validate_extension_name("X-Tenant").is_err());
/// ```
pub fn validate_extension_name(name: &str) -> Result<(), EnvelopeError> {
    let invalid = |reason| {
        Err(EnvelopeError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > 20 {
        return invalid("it is longer than 20 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return invalid("it contains a character other than a-z and 0-9");
    }
    Ok(())
}

/// A W3C `traceparent` (version 00): trace id, parent span id and flags.
///
/// Stored compactly and formatted only on the wire
/// (`00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// 128-bit trace id (never zero).
    pub trace_id: u128,
    /// 64-bit id of the parent span (never zero).
    pub span_id: u64,
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Whether the sampled flag is set.
    pub const fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl FromStr for TraceParent {
    type Err = EnvelopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| EnvelopeError::InvalidAttribute {
            attribute: "traceparent",
            reason: format!("`{s}`: {reason}"),
        };
        let parts: Vec<&str> = s.trim().split('-').collect();
        if parts.len() < 4 {
            return Err(bad("expected version-traceid-spanid-flags"));
        }
        let hex = |p: &'_ str, len: usize| -> Result<String, EnvelopeError> {
            if p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                Ok(p.to_owned())
            } else {
                Err(bad("fields must be lowercase hex of the W3C lengths"))
            }
        };
        let version = hex(parts[0], 2)?;
        if version == "ff" || (version == "00" && parts.len() != 4) {
            return Err(bad("invalid version"));
        }
        let trace_id =
            u128::from_str_radix(&hex(parts[1], 32)?, 16).map_err(|_| bad("trace id"))?;
        let span_id = u64::from_str_radix(&hex(parts[2], 16)?, 16).map_err(|_| bad("span id"))?;
        let flags = u8::from_str_radix(&hex(parts[3], 2)?, 16).map_err(|_| bad("flags"))?;
        if trace_id == 0 || span_id == 0 {
            return Err(bad("all-zero ids are invalid"));
        }
        Ok(Self {
            trace_id,
            span_id,
            flags,
        })
    }
}

/// Metadata carried by every event besides its core attributes.
///
/// Each field maps to a CloudEvents extension attribute: `traceparent`, `tracestate`
/// (the distributed-tracing extension), `correlationid`, `causationid`, `partitionkey`
/// (the routing key), plus the optional `subject` attribute and free headers whose
/// names follow the CloudEvents rule (see [`validate_extension_name`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// W3C trace context of the publishing span.
    pub traceparent: Option<TraceParent>,
    /// W3C `tracestate`, vendor-specific trace data.
    pub tracestate: Option<String>,
    /// Correlation id shared by every event of one business flow.
    pub correlation_id: Option<String>,
    /// Id of the event whose handler published this one.
    pub causation_id: Option<EventId>,
    /// Routing key (`partitionkey`): events with the same key keep their order.
    pub partition_key: Option<String>,
    /// CloudEvents `subject`: what the event is about, within its source.
    pub subject: Option<String>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl Metadata {
    /// Sets a free header. The name must be a valid CloudEvents extension name and must
    /// not be one of the [`RESERVED_NAMES`].
    pub fn insert_header(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Option<String>, EnvelopeError> {
        let name = name.into();
        validate_extension_name(&name)?;
        if RESERVED_NAMES.contains(&name.as_str()) {
            return Err(EnvelopeError::InvalidName {
                name,
                reason: "it is a reserved attribute name; use the typed field instead",
            });
        }
        Ok(self.headers.insert(name, value.into()))
    }

    /// A free header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Removes a free header.
    pub fn remove_header(&mut self, name: &str) -> Option<String> {
        self.headers.remove(name)
    }

    /// All free headers, sorted by name.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Makes this event a consequence of `cause`: records its id as `causationid` and
    /// inherits its correlation id and trace context where this event has none.
    pub fn inherit_from(&mut self, cause: &Cause) {
        self.causation_id = Some(cause.id);
        if self.correlation_id.is_none() {
            self.correlation_id = cause.correlation_id.clone();
        }
        if self.traceparent.is_none() {
            self.traceparent = cause.traceparent;
            if self.tracestate.is_none() {
                self.tracestate = cause.tracestate.clone();
            }
        }
    }
}

/// What an event published from inside a handler inherits from the event being handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// The handled event's id.
    pub id: EventId,
    /// Its correlation id (or its own id when it had none, so a flow always correlates).
    pub correlation_id: Option<String>,
    /// Its trace context.
    pub traceparent: Option<TraceParent>,
    /// Its trace state.
    pub tracestate: Option<String>,
}

impl Cause {
    /// The cause described by an event's id and metadata.
    pub fn of(id: EventId, metadata: &Metadata) -> Self {
        Self {
            id,
            correlation_id: Some(
                metadata
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| id.to_string()),
            ),
            traceparent: metadata.traceparent,
            tracestate: metadata.tracestate.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_cloudevents() {
        for ok in ["tenant", "a", "x1", "abcdefghij0123456789"] {
            validate_extension_name(ok).unwrap();
        }
        for bad in [
            "",
            "X-Tenant",
            "tenant_id",
            "tenant-id",
            "Tenant",
            "abcdefghij0123456789x",
            "é",
        ] {
            assert!(
                matches!(
                    validate_extension_name(bad),
                    Err(EnvelopeError::InvalidName { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn headers_reject_bad_and_reserved_names() {
        let mut m = Metadata::default();
        assert!(m.insert_header("X-Tenant", "acme").is_err());
        assert!(m.insert_header("traceparent", "x").is_err());
        assert!(m.insert_header("id", "x").is_err());
        m.insert_header("tenant", "acme").unwrap();
        assert_eq!(m.header("tenant"), Some("acme"));
        assert_eq!(m.headers().len(), 1);
    }

    #[test]
    fn traceparent_parses_and_formats() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp: TraceParent = s.parse().unwrap();
        assert_eq!(tp.to_string(), s);
        assert!(tp.sampled());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn inheritance_keeps_own_values() {
        let cause_id = EventId::new();
        let mut parent = Metadata {
            correlation_id: Some("flow-1".into()),
            ..Default::default()
        };
        parent.traceparent = Some(TraceParent {
            trace_id: 7,
            span_id: 9,
            flags: 1,
        });
        let cause = Cause::of(cause_id, &parent);
        let mut child = Metadata::default();
        child.inherit_from(&cause);
        assert_eq!(child.causation_id, Some(cause_id));
        assert_eq!(child.correlation_id.as_deref(), Some("flow-1"));
        assert_eq!(child.traceparent, parent.traceparent);

        let mut own = Metadata {
            correlation_id: Some("mine".into()),
            ..Default::default()
        };
        own.inherit_from(&cause);
        assert_eq!(own.correlation_id.as_deref(), Some("mine"));
        // A cause without correlation id correlates by its own id.
        let bare = Cause::of(cause_id, &Metadata::default());
        assert_eq!(bare.correlation_id, Some(cause_id.to_string()));
    }
}
