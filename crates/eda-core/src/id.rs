//! Event identifiers and timestamps.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::error::EnvelopeError;

/// The identifier of one event: a UUID, version 7 by default so that ids sort by creation time.
///
/// Version 4 (random) ids are accepted everywhere, for events written by other tools.
/// On the wire it is the CloudEvents `id` attribute in hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    /// A new time-ordered (v7) id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID (any version).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The creation time encoded in a v7 id (`None` for other versions).
    pub fn timestamp(&self) -> Option<Timestamp> {
        let ts = self.0.get_timestamp()?;
        let (secs, nanos) = ts.to_unix();
        Some(Timestamp::from_unix_millis(
            secs as i64 * 1000 + i64::from(nanos / 1_000_000),
        ))
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0.hyphenated())
    }
}

impl FromStr for EventId {
    type Err = EnvelopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|e| EnvelopeError::InvalidAttribute {
                attribute: "id",
                reason: format!("`{s}` is not a UUID: {e}"),
            })
    }
}

impl From<Uuid> for EventId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

/// A point in time with millisecond precision: milliseconds since the Unix epoch, UTC.
///
/// On the wire it is the CloudEvents `time` attribute, RFC 3339 with milliseconds
/// (`2026-11-28T12:00:00.123Z`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(d.as_millis() as i64)
    }

    /// From milliseconds since the Unix epoch.
    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(&self) -> i64 {
        self.0
    }

    /// Milliseconds elapsed from `self` to `later` (negative if `later` is earlier).
    pub const fn millis_until(&self, later: Timestamp) -> i64 {
        later.0 - self.0
    }

    /// RFC 3339 in UTC with exactly three fractional digits.
    pub fn to_rfc3339(&self) -> String {
        let secs = self.0.div_euclid(1000);
        let ms = self.0.rem_euclid(1000);
        match OffsetDateTime::from_unix_timestamp(secs) {
            Ok(dt) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                ms
            ),
            // Out of the representable range (beyond year ±9999): keep the raw value visible.
            Err(_) => format!("@{}ms", self.0),
        }
    }

    /// Parses any RFC 3339 timestamp (any offset, any precision); sub-millisecond digits are dropped.
    pub fn parse_rfc3339(s: &str) -> Result<Self, EnvelopeError> {
        let dt =
            OffsetDateTime::parse(s, &Rfc3339).map_err(|e| EnvelopeError::InvalidAttribute {
                attribute: "time",
                reason: format!("`{s}` is not an RFC 3339 timestamp: {e}"),
            })?;
        let nanos = dt.unix_timestamp_nanos();
        Ok(Self(nanos.div_euclid(1_000_000) as i64))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_id_carries_its_time() {
        let before = Timestamp::now();
        let id = EventId::new();
        let after = Timestamp::now();
        let t = id.timestamp().expect("v7 has a timestamp");
        assert!(
            before <= t && t <= after,
            "{before:?} <= {t:?} <= {after:?}"
        );
        assert_eq!(EventId::from_uuid(Uuid::new_v4()).timestamp(), None);
    }

    #[test]
    fn ids_sort_by_creation() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn rfc3339_round_trip_and_offsets() {
        let t = Timestamp::from_unix_millis(1_764_331_200_123);
        assert_eq!(t.to_rfc3339(), "2025-11-28T12:00:00.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        let offset = Timestamp::parse_rfc3339("2025-11-28T13:00:00.123456+01:00").unwrap();
        assert_eq!(offset, t);
        assert_eq!(
            Timestamp::from_unix_millis(-1).to_rfc3339(),
            "1969-12-31T23:59:59.999Z"
        );
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn bad_id_is_a_typed_error() {
        let err = "not-a-uuid".parse::<EventId>().unwrap_err();
        assert!(matches!(
            err,
            EnvelopeError::InvalidAttribute {
                attribute: "id",
                ..
            }
        ));
    }
}
