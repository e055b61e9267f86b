//! The engine's metrics (through the `metrics` facade) and spans.
//!
//! Handles are registered once, when a subscription, topic or durable topic is created,
//! and kept: recording through a kept handle costs an atomic add with a recorder and
//! nothing without one. So install the recorder before building the bus; a recorder
//! installed later sees only what is created after it.
//!
//! Durations are timed only when a recorder is installed (at registration): without
//! one, the histograms would drop the values anyway, and two clock reads per attempt
//! are most of what observability would cost. The clock is `quanta`'s (the TSC where
//! it is invariant: about half the cost of `std::time::Instant`), and the wall clock of
//! the end-to-end histogram is derived from it, re-anchored every second.
//!
//! [`BusBuilder::observability(false)`](crate::BusBuilder::observability) turns all of
//! it off: no-op handles, no clock reads, no spans.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use quanta::Instant;

use eda_core::observe::{
    DEAD_LETTERS, DISPATCH_TIMEOUTS, DROPPED, END_TO_END, EVENTS_HANDLED, EVENTS_PUBLISHED,
    HANDLE_DURATION, OUTCOME_ACK, OUTCOME_DEAD_LETTER, OUTCOME_NACK, OUTCOME_PANIC,
    OUTCOME_TIMEOUT, PUBLISH_WAITS, RETRIES, STORE_APPEND_BATCH, STORE_APPEND_DURATION,
    UNACK_DURATION,
};
use eda_core::{EventId, EventInfo, Timestamp};
use metrics::{Counter, Histogram};

/// Whether a `metrics` recorder (global, or local to this thread) is installed. The
/// facade falls back to its `NoopRecorder`, a zero-sized type, when none is; so a
/// recorder that is itself zero-sized counts as none (give it a field).
pub(crate) fn recorder_installed() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// The wall clock in Unix milliseconds at `now`, derived from the monotonic clock:
/// `SystemTime::now()` once a second instead of once per event.
fn wall_millis(now: Instant) -> i64 {
    struct Anchor {
        base: Instant,
        /// Wall milliseconds minus monotonic milliseconds since `base`.
        offset: AtomicI64,
        /// Monotonic milliseconds since `base` at the last anchoring.
        anchored: AtomicI64,
    }
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    let anchor = ANCHOR.get_or_init(|| {
        let base = Instant::now();
        Anchor {
            base,
            offset: AtomicI64::new(Timestamp::now().unix_millis()),
            anchored: AtomicI64::new(0),
        }
    });
    let since = now.saturating_duration_since(anchor.base);
    // Not `as_millis`: its `u128` division shows in a profile of the sync path.
    let mono = (since.as_secs() * 1000 + u64::from(since.subsec_millis())) as i64;
    if mono - anchor.anchored.load(Ordering::Relaxed) >= 1000 {
        // Racing re-anchors each store a valid offset.
        anchor
            .offset
            .store(Timestamp::now().unix_millis() - mono, Ordering::Relaxed);
        anchor.anchored.store(mono, Ordering::Relaxed);
    }
    mono + anchor.offset.load(Ordering::Relaxed)
}

/// What a handler attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempted {
    Ack,
    Nack,
    Timeout,
    Panic,
}

/// Why a dead letter was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeadReason {
    Failed,
    Undecodable,
    Expired,
}

/// The metrics of one subscription group.
pub(crate) struct GroupMetrics {
    /// Off: every handle is a no-op and spans are not opened.
    on: bool,
    /// On, and a recorder was installed at registration: durations are timed.
    timed: bool,
    ack: Counter,
    nack: Counter,
    timeout: Counter,
    panic: Counter,
    dead_letter: Counter,
    handle: Histogram,
    end_to_end: Histogram,
    unack: Histogram,
    retries: Counter,
    dead_failed: Counter,
    dead_undecodable: Counter,
    dead_expired: Counter,
}

impl GroupMetrics {
    pub(crate) fn new(group: &str, on: bool) -> Self {
        if !on {
            return Self::off();
        }
        let handled = |outcome: &'static str| metrics::counter!(EVENTS_HANDLED, "group" => group.to_owned(), "outcome" => outcome);
        let dead = |reason: &'static str| metrics::counter!(DEAD_LETTERS, "group" => group.to_owned(), "reason" => reason);
        Self {
            on,
            timed: recorder_installed(),
            ack: handled(OUTCOME_ACK),
            nack: handled(OUTCOME_NACK),
            timeout: handled(OUTCOME_TIMEOUT),
            panic: handled(OUTCOME_PANIC),
            dead_letter: handled(OUTCOME_DEAD_LETTER),
            handle: metrics::histogram!(HANDLE_DURATION, "group" => group.to_owned()),
            end_to_end: metrics::histogram!(END_TO_END, "group" => group.to_owned()),
            unack: metrics::histogram!(UNACK_DURATION, "group" => group.to_owned()),
            retries: metrics::counter!(RETRIES, "group" => group.to_owned()),
            dead_failed: dead("failed"),
            dead_undecodable: dead("undecodable"),
            dead_expired: dead("expired"),
        }
    }

    fn off() -> Self {
        Self {
            on: false,
            timed: false,
            ack: Counter::noop(),
            nack: Counter::noop(),
            timeout: Counter::noop(),
            panic: Counter::noop(),
            dead_letter: Counter::noop(),
            handle: Histogram::noop(),
            end_to_end: Histogram::noop(),
            unack: Histogram::noop(),
            retries: Counter::noop(),
            dead_failed: Counter::noop(),
            dead_undecodable: Counter::noop(),
            dead_expired: Counter::noop(),
        }
    }

    /// Whether this group records anything (and opens spans).
    pub(crate) fn on(&self) -> bool {
        self.on
    }

    /// The start of a measured interval (`None` when nothing is timed: no clock read).
    pub(crate) fn clock(&self) -> Option<Instant> {
        self.timed.then(Instant::now)
    }

    /// An attempt ended; returns when (if timed), for [`acked`](Self::acked).
    pub(crate) fn attempted(
        &self,
        outcome: Attempted,
        started: Option<Instant>,
    ) -> Option<Instant> {
        let ended = started.map(|started| {
            let now = Instant::now();
            self.handle
                .record(now.saturating_duration_since(started).as_secs_f64());
            now
        });
        match outcome {
            Attempted::Ack => &self.ack,
            Attempted::Nack => &self.nack,
            Attempted::Timeout => &self.timeout,
            Attempted::Panic => &self.panic,
        }
        .increment(1);
        ended
    }

    /// A delivery was acked at `now` (from [`attempted`](Self::attempted); read here
    /// when `None`): its publish time to now.
    pub(crate) fn acked(&self, event: &dyn EventInfo, now: Option<Instant>) {
        if !self.timed {
            return;
        }
        let now = wall_millis(now.unwrap_or_else(Instant::now));
        let millis = (now - event.time().unix_millis()).max(0);
        self.end_to_end.record(millis as f64 / 1000.0);
    }

    /// A store's delivery was settled; it arrived at `arrived`.
    pub(crate) fn unacked_since(&self, arrived: Option<Instant>) {
        if let Some(arrived) = arrived {
            self.unack.record(
                Instant::now()
                    .saturating_duration_since(arrived)
                    .as_secs_f64(),
            );
        }
    }

    pub(crate) fn retried(&self) {
        self.retries.increment(1);
    }

    pub(crate) fn dead_lettered(&self, reason: DeadReason) {
        self.dead_letter.increment(1);
        match reason {
            DeadReason::Failed => &self.dead_failed,
            DeadReason::Undecodable => &self.dead_undecodable,
            DeadReason::Expired => &self.dead_expired,
        }
        .increment(1);
    }
}

/// The publish-side metrics of one in-memory topic.
pub(crate) struct TopicMetrics {
    pub(crate) waits: Counter,
    pub(crate) timeouts: Counter,
}

impl TopicMetrics {
    pub(crate) fn new(topic: &str, on: bool) -> Self {
        if !on {
            return Self {
                waits: Counter::noop(),
                timeouts: Counter::noop(),
            };
        }
        Self {
            waits: metrics::counter!(PUBLISH_WAITS, "topic" => topic.to_owned()),
            timeouts: metrics::counter!(DISPATCH_TIMEOUTS, "topic" => topic.to_owned()),
        }
    }
}

/// `eda_events_published_total{topic, type}`.
pub(crate) fn published_counter(topic: &str, event_type: &str, on: bool) -> Counter {
    if !on {
        return Counter::noop();
    }
    metrics::counter!(EVENTS_PUBLISHED, "topic" => topic.to_owned(), "type" => event_type.to_owned())
}

/// `eda_dropped_total{group}`: deliveries a group will never handle.
pub(crate) fn dropped_counter(group: &str, on: bool) -> Counter {
    if !on {
        return Counter::noop();
    }
    metrics::counter!(DROPPED, "group" => group.to_owned())
}

/// The append metrics of one durable topic.
pub(crate) struct AppendMetrics {
    timed: bool,
    duration: Histogram,
    batch: Histogram,
}

impl AppendMetrics {
    pub(crate) fn new(topic: &str, on: bool) -> Self {
        if !on {
            return Self {
                timed: false,
                duration: Histogram::noop(),
                batch: Histogram::noop(),
            };
        }
        Self {
            timed: recorder_installed(),
            duration: metrics::histogram!(STORE_APPEND_DURATION, "topic" => topic.to_owned()),
            batch: metrics::histogram!(STORE_APPEND_BATCH, "topic" => topic.to_owned()),
        }
    }

    /// The start of an append (`None` when off).
    pub(crate) fn clock(&self) -> Option<Instant> {
        self.timed.then(Instant::now)
    }

    pub(crate) fn appended(&self, records: usize, started: Option<Instant>) {
        if let Some(started) = started {
            self.duration.record(
                Instant::now()
                    .saturating_duration_since(started)
                    .as_secs_f64(),
            );
            self.batch.record(records as f64);
        }
    }
}

/// Whether spans can go anywhere: a `tracing` dispatcher was ever installed. Without
/// one, a disabled span still evaluates its fields and checks the `log` crate (when
/// `tracing`'s `log` feature is on, as sqlx turns it on): ~10 ns a span for nothing.
#[inline]
pub(crate) fn spans_wanted() -> bool {
    tracing::dispatcher::has_been_set()
}

/// Runs `f` in `span`, if there is one.
#[inline]
pub(crate) fn in_span<R>(span: Option<tracing::Span>, f: impl FnOnce() -> R) -> R {
    match span {
        Some(span) => span.in_scope(f),
        None => f(),
    }
}

/// The `eda.publish` span of one publish (`None` with no subscriber: not even a
/// disabled span is built).
#[inline]
pub(crate) fn publish_span<'a>(
    event_type: &str,
    id: EventId,
    topic: impl FnOnce() -> &'a str,
) -> Option<tracing::Span> {
    if !spans_wanted() {
        return None;
    }
    let topic = topic();
    Some(tracing::info_span!(
        target: "eda",
        "eda.publish",
        otel.kind = "producer",
        event_id = %id,
        event_type,
        topic,
    ))
}

/// The `eda.handle` span of one attempt, linked to the event's trace when a
/// [`TraceContext`](eda_core::TraceContext) is installed. Callers build it only when
/// [`spans_wanted`]: no span at all is cheaper than `Span::none()`, whose enter, exit
/// and drop still consult the `log` crate.
pub(crate) fn handle_span(
    event: &dyn EventInfo,
    info: &eda_core::SubscriptionInfo,
    attempt: u32,
    trace: Option<&dyn eda_core::TraceContext>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: "eda",
        "eda.handle",
        otel.kind = "consumer",
        event_id = %event.id(),
        event_type = event.event_type(),
        group = %info.group(),
        subscription = %info.name(),
        attempt,
    );
    if let Some(trace) = trace
        && !span.is_disabled()
    {
        trace.link(&span, event.metadata());
    }
    span
}
