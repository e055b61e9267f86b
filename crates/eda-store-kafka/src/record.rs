//! Events as Kafka records, in the CloudEvents Kafka protocol binding's binary content
//! mode: the data is the value, `content-type` carries `datacontenttype`, every other
//! attribute is a `ce_<name>` header, the key is the partition key (or, without one,
//! the event type, so each type stays in order). A plain W3C `traceparent` (and
//! `tracestate`) header is added for OpenTelemetry-instrumented consumers.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use eda_core::{Bytes, EventId, Metadata, RawEvent, Timestamp, Undecodable};
use rskafka::record::Record;

/// The record key of an event: its partition key, else its type.
pub fn key_of(r: &RawEvent) -> &str {
    r.metadata.partition_key.as_deref().unwrap_or(&r.event_type)
}

/// The partition of `key` among `partitions`: murmur2 of the key bytes (Kafka's seed),
/// made positive, modulo the count, as the Java client's default partitioner does, so
/// every Kafka client agrees on where a key lives.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED);
    ((hash & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// The record of an event.
pub fn to_record(r: &RawEvent) -> Record {
    let mut headers: BTreeMap<String, Vec<u8>> = r
        .binary_headers()
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    // Plain W3C headers too, for OpenTelemetry-instrumented consumers.
    let m = &r.metadata;
    if let Some(tp) = m.traceparent {
        headers.insert("traceparent".to_owned(), tp.to_string().into_bytes());
    }
    if let Some(ts) = &m.tracestate {
        headers.insert("tracestate".to_owned(), ts.clone().into_bytes());
    }
    Record {
        key: Some(key_of(r).as_bytes().to_vec()),
        value: Some(r.data.to_vec()),
        headers,
        timestamp: DateTime::<Utc>::from_timestamp_millis(r.time.unix_millis())
            .unwrap_or_else(Utc::now),
    }
}

/// The event in a record, or why it is not one.
pub fn from_record(record: &Record) -> Result<RawEvent, Undecodable> {
    let attempt = || -> Result<RawEvent, String> {
        // Borrowed: headers only parsed are not copied.
        let text_ref = |name: &str| -> Result<Option<&str>, String> {
            record
                .headers
                .get(name)
                .map(|v| {
                    std::str::from_utf8(v).map_err(|_| format!("header `{name}` is not UTF-8"))
                })
                .transpose()
        };
        let text = |name: &str| -> Result<Option<String>, String> {
            Ok(text_ref(name)?.map(str::to_owned))
        };
        let required = |name: &str| text_ref(name)?.ok_or_else(|| format!("no `{name}` header"));
        let spec = required("ce_specversion")?;
        if spec != eda_core::SPEC_VERSION {
            return Err(format!("unsupported ce_specversion `{spec}`"));
        }
        let id: EventId = required("ce_id")?
            .parse()
            .map_err(|e: eda_core::EnvelopeError| e.to_string())?;
        let time = Timestamp::parse_rfc3339(required("ce_time")?).map_err(|e| e.to_string())?;
        let mut metadata = Metadata::default();
        metadata.subject = text("ce_subject")?;
        metadata.traceparent = text("ce_traceparent")?
            .map(|t| t.parse())
            .transpose()
            .map_err(|e: eda_core::EnvelopeError| e.to_string())?;
        metadata.tracestate = text("ce_tracestate")?;
        // The binding maps `partitionkey` to the key and writes no header for it (the
        // Python SDK does so); we also write `ce_partitionkey`, so that a key which is
        // only the event type (no partition key) is not read back as one.
        metadata.partition_key = match text("ce_partitionkey")? {
            Some(key) => Some(key),
            None => record
                .key
                .as_ref()
                .and_then(|k| String::from_utf8(k.clone()).ok())
                .filter(|k| {
                    Some(k.as_str())
                        != record
                            .headers
                            .get("ce_type")
                            .and_then(|t| std::str::from_utf8(t).ok())
                }),
        };
        metadata.correlation_id = text("ce_correlationid")?;
        metadata.causation_id = text("ce_causationid")?
            .map(|c| c.parse())
            .transpose()
            .map_err(|e: eda_core::EnvelopeError| e.to_string())?;
        const KNOWN: &[&str] = &[
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_dataschema",
            "ce_subject",
            "ce_traceparent",
            "ce_tracestate",
            "ce_partitionkey",
            "ce_correlationid",
            "ce_causationid",
        ];
        for name in record.headers.keys() {
            if let Some(ext) = name.strip_prefix("ce_")
                && !KNOWN.contains(&name.as_str())
            {
                let value = text(name)?.unwrap_or_default();
                metadata
                    .insert_header(ext, value)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(RawEvent {
            id,
            time,
            source: Arc::from(required("ce_source")?),
            event_type: Arc::from(required("ce_type")?),
            datacontenttype: text("content-type")?,
            dataschema: text("ce_dataschema")?,
            metadata,
            data: Bytes::from(record.value.clone().unwrap_or_default()),
        })
    };
    attempt().map_err(|error| Undecodable {
        raw: Bytes::from(record.value.clone().unwrap_or_default()),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eda_core::{Envelope, Event, JsonCodec};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Ping {
        n: u32,
    }
    impl Event for Ping {
        const TYPE: &'static str = "ping";
    }

    /// Kafka's own test vectors for `Utils.murmur2` (clients' `UtilsTest`).
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32,
                expected,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        // toPositive(murmur2) % n
        assert_eq!(
            partition_for(b"21", 10),
            ((-973932308i32 & 0x7fffffff) % 10)
        );
    }

    #[test]
    fn records_round_trip_in_binary_mode() {
        let mut env = Envelope::new(Ping { n: 1 })
            .with_partition_key("cust-7")
            .with_correlation_id("flow");
        env.metadata.insert_header("tenant", "acme").unwrap();
        env.metadata.traceparent = Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let raw = env.to_raw(&JsonCodec).unwrap();
        let record = to_record(&raw);
        assert_eq!(record.key.as_deref(), Some(&b"cust-7"[..]));
        assert_eq!(record.headers["ce_type"], b"ping");
        assert_eq!(record.headers["content-type"], b"application/json");
        assert_eq!(record.headers["ce_tenant"], b"acme");
        assert!(record.headers.contains_key("traceparent"));
        assert_eq!(from_record(&record).unwrap(), raw);
        // Without a partition key the type is the key.
        let plain = Envelope::new(Ping { n: 2 }).to_raw(&JsonCodec).unwrap();
        assert_eq!(to_record(&plain).key.as_deref(), Some(&b"ping"[..]));
    }

    #[test]
    fn foreign_records_are_undecodable() {
        let record = Record {
            key: None,
            value: Some(b"\xff garbage".to_vec()),
            headers: BTreeMap::new(),
            timestamp: Utc::now(),
        };
        let err = from_record(&record).unwrap_err();
        assert_eq!(err.error, "no `ce_specversion` header");
    }
}
