//! Event identifiers and timestamps.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
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

thread_local! {
    /// Last millisecond and counter of this thread's v7 ids.
    static V7_STATE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

const COUNTER_BITS: u32 = 42;

/// RFC 9562 §6.2 method 1: a 42-bit counter below the millisecond timestamp, seeded at
/// random (41 bits, so there is room to count) each new millisecond, and 32 random bits.
/// Ids made on one thread strictly increase; ids of different threads order by
/// millisecond. A thread-local state avoids `Uuid::now_v7`'s process-wide lock.
fn next_v7(now_ms: u64) -> (u64, Uuid) {
    let (ms, counter) = V7_STATE.with(|state| {
        let (last_ms, last_counter) = state.get();
        let next = if now_ms > last_ms {
            (now_ms, fastrand::u64(..) >> (64 - (COUNTER_BITS - 1)))
        } else if last_counter + 1 < (1 << COUNTER_BITS) {
            (last_ms, last_counter + 1)
        } else {
            // Counter exhausted within one millisecond: borrow the next millisecond.
            (last_ms + 1, fastrand::u64(..) >> (64 - (COUNTER_BITS - 1)))
        };
        state.set(next);
        next
    });
    let high = (ms << 16) | 0x7000 | ((counter >> 30) & 0x0fff);
    let low = (0b10 << 62) | ((counter & 0x3fff_ffff) << 32) | u64::from(fastrand::u32(..));
    (ms, Uuid::from_u64_pair(high, low))
}

impl EventId {
    /// A new time-ordered (v7) id.
    pub fn new() -> Self {
        Self::new_with_time().0
    }

    /// A new v7 id and the timestamp it encodes, from one clock reading.
    pub fn new_with_time() -> (Self, Timestamp) {
        let now = Timestamp::now();
        let (ms, uuid) = next_v7(now.unix_millis().max(0) as u64);
        (Self(uuid), Timestamp::from_unix_millis(ms as i64))
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
    ///
    /// Read from the CPU's time-stamp counter ([quanta]) and anchored to the system
    /// clock, which is read again once a second: about a third of the cost of
    /// `SystemTime::now()` (every publish stamps its event). So a step of the system
    /// clock (an NTP correction, a manual change) shows here within a second. The
    /// first call in a process calibrates the counter against the system's monotonic
    /// clock (~0.6 ms here), unless something else used quanta's clock before.
    pub fn now() -> Self {
        Self(wall_clock_nanos().div_euclid(1_000_000))
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

/// The system clock in nanoseconds since the Unix epoch.
fn system_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The wall clock in nanoseconds since the Unix epoch: the time-stamp counter's
/// nanoseconds since an anchor plus the system clock's offset from them, taken again
/// when a second has passed since the last anchoring.
fn wall_clock_nanos() -> i64 {
    struct Anchor {
        clock: quanta::Clock,
        base: u64,
        /// System nanoseconds minus counter nanoseconds since `base`.
        offset: AtomicI64,
        /// Counter nanoseconds since `base` at which to anchor again.
        next: AtomicI64,
    }
    const REANCHOR_NANOS: i64 = 1_000_000_000;
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    let anchor = ANCHOR.get_or_init(|| {
        let clock = quanta::Clock::new();
        let base = clock.raw();
        Anchor {
            offset: AtomicI64::new(system_nanos()),
            next: AtomicI64::new(REANCHOR_NANOS),
            base,
            clock,
        }
    });
    let since = anchor.clock.delta_as_nanos(anchor.base, anchor.clock.raw()) as i64;
    if since >= anchor.next.load(Ordering::Relaxed) {
        // Racing threads each store a valid offset.
        anchor
            .offset
            .store(system_nanos() - since, Ordering::Relaxed);
        anchor.next.store(since + REANCHOR_NANOS, Ordering::Relaxed);
    }
    since + anchor.offset.load(Ordering::Relaxed)
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
    fn now_follows_the_system_clock() {
        for _ in 0..1_000 {
            let before = system_nanos().div_euclid(1_000_000);
            let now = Timestamp::now().unix_millis();
            let after = system_nanos().div_euclid(1_000_000);
            // The counter's rate is calibrated against the system clock, not equal to
            // it: allow a few milliseconds of drift between anchorings.
            assert!(
                before - 5 <= now && now <= after + 5,
                "{before} <= {now} <= {after}"
            );
        }
    }

    #[test]
    fn ids_are_rfc9562_v7_and_carry_their_time() {
        for _ in 0..10_000 {
            let (id, time) = EventId::new_with_time();
            assert_eq!(id.as_uuid().get_version_num(), 7);
            assert_eq!(id.as_uuid().get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id.timestamp(), Some(time));
        }
    }

    #[test]
    fn counter_overflow_borrows_the_next_millisecond() {
        V7_STATE.with(|s| s.set((1_000, (1 << COUNTER_BITS) - 1)));
        let (ms, a) = next_v7(1_000);
        assert_eq!(ms, 1_001);
        let (_, b) = next_v7(999);
        assert!(a < b, "a clock going backwards never breaks the order");
    }

    #[test]
    fn ids_sort_by_creation() {
        let ids: Vec<EventId> = (0..100_000).map(|_| EventId::new()).collect();
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
