//! The engine's metrics (through the `metrics` facade) and spans.
//!
//! Handles are registered once, when a subscription, topic or durable topic is created,
//! and kept: recording through a kept handle costs an atomic add with a recorder and
//! nothing without one. So install the recorder before building the bus; a recorder
//! installed later sees only what is created after it.

use std::time::Duration;

use eda_core::observe::{
    DEAD_LETTERS, DISPATCH_TIMEOUTS, END_TO_END, EVENTS_HANDLED, EVENTS_PUBLISHED, HANDLE_DURATION,
    OUTCOME_ACK, OUTCOME_DEAD_LETTER, OUTCOME_NACK, OUTCOME_PANIC, OUTCOME_TIMEOUT, PUBLISH_WAITS,
    RETRIES, STORE_APPEND_BATCH, STORE_APPEND_DURATION, UNACK_DURATION,
};
use eda_core::{EventId, EventInfo, Timestamp};
use metrics::{Counter, Histogram};

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
    pub(crate) fn new(group: &str) -> Self {
        let handled = |outcome: &'static str| metrics::counter!(EVENTS_HANDLED, "group" => group.to_owned(), "outcome" => outcome);
        let dead = |reason: &'static str| metrics::counter!(DEAD_LETTERS, "group" => group.to_owned(), "reason" => reason);
        Self {
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

    pub(crate) fn attempted(&self, outcome: Attempted, took: Duration) {
        self.handle.record(took.as_secs_f64());
        match outcome {
            Attempted::Ack => &self.ack,
            Attempted::Nack => &self.nack,
            Attempted::Timeout => &self.timeout,
            Attempted::Panic => &self.panic,
        }
        .increment(1);
    }

    /// A delivery was acked: publish time → now.
    pub(crate) fn acked(&self, event: &dyn EventInfo) {
        let millis = event.time().millis_until(Timestamp::now()).max(0);
        self.end_to_end.record(millis as f64 / 1000.0);
    }

    /// A store's delivery was settled `held` after it arrived.
    pub(crate) fn unacked_for(&self, held: Duration) {
        self.unack.record(held.as_secs_f64());
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
    pub(crate) fn new(topic: &str) -> Self {
        Self {
            waits: metrics::counter!(PUBLISH_WAITS, "topic" => topic.to_owned()),
            timeouts: metrics::counter!(DISPATCH_TIMEOUTS, "topic" => topic.to_owned()),
        }
    }
}

/// `eda_events_published_total{topic, type}`.
pub(crate) fn published_counter(topic: &str, event_type: &str) -> Counter {
    metrics::counter!(EVENTS_PUBLISHED, "topic" => topic.to_owned(), "type" => event_type.to_owned())
}

/// The append metrics of one durable topic.
pub(crate) struct AppendMetrics {
    duration: Histogram,
    batch: Histogram,
}

impl AppendMetrics {
    pub(crate) fn new(topic: &str) -> Self {
        Self {
            duration: metrics::histogram!(STORE_APPEND_DURATION, "topic" => topic.to_owned()),
            batch: metrics::histogram!(STORE_APPEND_BATCH, "topic" => topic.to_owned()),
        }
    }

    pub(crate) fn appended(&self, records: usize, took: Duration) {
        self.duration.record(took.as_secs_f64());
        self.batch.record(records as f64);
    }
}

/// The `eda.publish` span of one publish.
pub(crate) fn publish_span(event_type: &str, id: EventId, topic: &str) -> tracing::Span {
    tracing::info_span!(
        target: "eda",
        "eda.publish",
        otel.kind = "producer",
        event_id = %id,
        event_type,
        topic,
    )
}

/// The `eda.handle` span of one attempt, linked to the event's trace when a
/// [`TraceContext`](eda_core::TraceContext) is installed.
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
