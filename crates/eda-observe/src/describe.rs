//! Help texts and units of eda's metrics.

use eda_core::observe::*;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Describes every eda metric (help text and unit) to the installed recorder.
/// [`PrometheusExporter::install`](crate::PrometheusExporter::install) calls it; call it
/// yourself after installing another recorder.
pub fn describe() {
    describe_counter!(
        EVENTS_PUBLISHED,
        Unit::Count,
        "Events published, by topic and event type"
    );
    describe_counter!(
        EVENTS_HANDLED,
        Unit::Count,
        "Handler attempts by outcome (ack, nack, timeout, panic) and settled deliveries (dead_letter, duplicate), by group"
    );
    describe_histogram!(
        HANDLE_DURATION,
        Unit::Seconds,
        "Time one handler attempt took, by group"
    );
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "Time from an event's publish time to its ack (millisecond resolution), by group"
    );
    describe_gauge!(
        BACKLOG,
        Unit::Count,
        "Events a group has not handled yet: ring lag in process, undelivered plus unacked in a store"
    );
    describe_counter!(RETRIES, Unit::Count, "Attempts beyond the first, by group");
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Dead letters written, by group and reason (failed, undecodable, expired)"
    );
    describe_counter!(
        DROPPED,
        Unit::Count,
        "Deliveries never handled (unsubscribed, lossy backlog, shutdown deadline), by group"
    );
    describe_counter!(
        DEDUP_HITS,
        Unit::Count,
        "Deliveries recognised as duplicates and skipped, by group"
    );
    describe_counter!(
        DEDUP_EVICTIONS,
        Unit::Count,
        "Live marks a full in-memory dedup window evicted"
    );
    describe_histogram!(
        STORE_APPEND_DURATION,
        Unit::Seconds,
        "Time a store took to commit one append batch, by topic"
    );
    describe_histogram!(
        STORE_APPEND_BATCH,
        Unit::Count,
        "Records per committed append batch, by topic"
    );
    describe_counter!(
        PUBLISH_WAITS,
        Unit::Count,
        "Publishes that found the topic's ring full and waited, by topic"
    );
    describe_counter!(
        DISPATCH_TIMEOUTS,
        Unit::Count,
        "Publishes refused because the ring stayed full, by topic"
    );
    describe_histogram!(
        UNACK_DURATION,
        Unit::Seconds,
        "Time from a store's delivery to its ack or nack, by group"
    );
    describe_counter!(
        ACK_FLUSHES,
        Unit::Count,
        "Flushes of batched acks by outcome; error ones gave their acks up"
    );
}
