//! Names of the metrics eda emits, and the hook that links the engine's spans to a
//! distributed trace.
//!
//! The engine and the stores record through the [`metrics`](https://docs.rs/metrics)
//! facade under these names, so any recorder can collect them; `eda-observe` describes
//! them and exports them to Prometheus. `docs/observability.md` lists each one with its
//! labels.

use crate::metadata::Metadata;

/// Counter `{topic, type}`: events published (accepted by the bus or committed by a store).
pub const EVENTS_PUBLISHED: &str = "eda_events_published_total";
/// Counter `{group, outcome}`: handler attempts and settled deliveries by outcome, one of
/// the `OUTCOME_*` values.
pub const EVENTS_HANDLED: &str = "eda_events_handled_total";
/// Histogram `{group}`: seconds one handler attempt took.
pub const HANDLE_DURATION: &str = "eda_handle_duration_seconds";
/// Histogram `{group}`: seconds from the event's `time` (set at publish) to its ack.
pub const END_TO_END: &str = "eda_end_to_end_seconds";
/// Gauge `{topic, group}`: events waiting for a group (ring lag in process; for a
/// store, records not yet delivered plus delivered but not acked).
pub const BACKLOG: &str = "eda_backlog";
/// Counter `{group}`: attempts beyond a delivery's first.
pub const RETRIES: &str = "eda_retries_total";
/// Counter `{group, reason}`: dead letters written, by `reason` (`failed`,
/// `undecodable`, `expired`).
pub const DEAD_LETTERS: &str = "eda_dead_letters_total";
/// Counter `{group}`: deliveries never handled (subscription dropped, a lossy group's
/// oldest events, shutdown's deadline).
pub const DROPPED: &str = "eda_dropped_total";
/// Counter `{group}`: deliveries a deduplicator recognised as seen before.
pub const DEDUP_HITS: &str = "eda_dedup_hits_total";
/// Counter: live marks an in-memory dedup window evicted because it was full (their
/// duplicates would pass; raise its capacity if this grows).
pub const DEDUP_EVICTIONS: &str = "eda_dedup_evictions_total";
/// Histogram `{topic}`: seconds a store took to commit one append batch.
pub const STORE_APPEND_DURATION: &str = "eda_store_append_seconds";
/// Histogram `{topic}`: records per committed append batch.
pub const STORE_APPEND_BATCH: &str = "eda_store_append_batch_size";
/// Counter `{topic}`: publishes that found the ring full and waited for room.
pub const PUBLISH_WAITS: &str = "eda_publish_waits_total";
/// Counter `{topic}`: publishes that failed because the ring stayed full (dispatch
/// timeout) or was full under the `Fail` policy.
pub const DISPATCH_TIMEOUTS: &str = "eda_dispatch_timeouts_total";
/// Histogram `{group}`: seconds from a store's delivery to its ack (the seed's
/// `unack_duration`).
pub const UNACK_DURATION: &str = "eda_unack_duration_seconds";
/// Counter `{outcome=ok|error}`: flushes of batched acks; `error` ones gave their acks
/// up (the records come back), so `error / (ok + error)` is the ack failure rate.
pub const ACK_FLUSHES: &str = "eda_ack_flushes_total";

/// `outcome` of an attempt whose handler succeeded (the event is acked).
pub const OUTCOME_ACK: &str = "ack";
/// `outcome` of an attempt whose handler returned an error.
pub const OUTCOME_NACK: &str = "nack";
/// `outcome` of an attempt that ran past its deadline.
pub const OUTCOME_TIMEOUT: &str = "timeout";
/// `outcome` of an attempt whose handler panicked.
pub const OUTCOME_PANIC: &str = "panic";
/// `outcome` of a delivery that ended in the dead letters.
pub const OUTCOME_DEAD_LETTER: &str = "dead_letter";
/// `outcome` of a delivery skipped as a duplicate.
pub const OUTCOME_DUPLICATE: &str = "duplicate";

/// Every metric name, for describing or filtering them.
pub const ALL_METRICS: &[&str] = &[
    EVENTS_PUBLISHED,
    EVENTS_HANDLED,
    HANDLE_DURATION,
    END_TO_END,
    BACKLOG,
    RETRIES,
    DEAD_LETTERS,
    DROPPED,
    DEDUP_HITS,
    DEDUP_EVICTIONS,
    STORE_APPEND_DURATION,
    STORE_APPEND_BATCH,
    PUBLISH_WAITS,
    DISPATCH_TIMEOUTS,
    UNACK_DURATION,
    ACK_FLUSHES,
];

/// Links the engine's `eda.handle` spans to the trace an event carries.
///
/// The engine opens a `tracing` span `eda.publish` around each publish (interceptors run
/// inside it, so one can write the span's context into the event's metadata) and a span
/// `eda.handle` around each handler attempt. Before entering an `eda.handle` span it
/// calls [`TraceContext::link`] with the event's metadata, so the span can take the
/// publisher's span as its parent. `eda-observe` implements this with the OpenTelemetry
/// propagator; without one the spans are plain `tracing` spans.
pub trait TraceContext: Send + Sync + 'static {
    /// Makes `span` (not entered yet) a child of the context carried in `metadata`.
    fn link(&self, span: &tracing::Span, metadata: &Metadata);
}
