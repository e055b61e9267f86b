//! A record as stream entry fields, named as in the CloudEvents Kafka protocol binding
//! (`ce_id`, `ce_source`, `ce_type`, `ce_time`, `content-type`, `ce_traceparent`, ...),
//! with the data in a binary-safe `data` field, so `redis-cli XRANGE` shows a readable
//! event.

use std::sync::Arc;

use eda_core::{Bytes, EventId, Metadata, RawEvent, Timestamp, Undecodable};
use fred::types::Value;

/// The field that holds the data.
pub(crate) const DATA: &str = "data";

/// Fields of `record`: its binary-mode attributes (`ce_id` first: the append script
/// relies on it), then the data.
pub(crate) fn encode(r: &RawEvent) -> Vec<(String, Bytes)> {
    let mut fields: Vec<(String, Bytes)> = r
        .binary_headers()
        .into_iter()
        .map(|(name, value)| (name, Bytes::from(value)))
        .collect();
    fields.push((DATA.to_owned(), r.data.clone()));
    fields
}

/// Bytes a record takes as fields (the size limit's measure).
pub(crate) fn size(fields: &[(String, Bytes)]) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.len()).sum()
}

pub(crate) fn bytes_of(v: &Value) -> Option<Bytes> {
    match v {
        Value::Bytes(b) => Some(b.clone()),
        Value::String(s) => Some(s.inner().clone()),
        Value::Integer(i) => Some(Bytes::from(i.to_string())),
        Value::Double(d) => Some(Bytes::from(d.to_string())),
        _ => None,
    }
}

pub(crate) fn string_of(v: &Value) -> Option<String> {
    bytes_of(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// The field/value pairs of an entry (a flat array in RESP2, a map in RESP3).
pub(crate) fn pairs(v: &Value) -> Vec<(Bytes, Bytes)> {
    match v {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|kv| Some((bytes_of(&kv[0])?, bytes_of(&kv[1])?)))
            .collect(),
        Value::Map(map) => map
            .iter()
            .filter_map(|(k, v)| Some((k.as_bytes().to_vec().into(), bytes_of(v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The event in an entry's fields, or why it is not one.
pub(crate) fn decode(pairs: &[(Bytes, Bytes)]) -> Result<RawEvent, Undecodable> {
    let attempt = || -> Result<RawEvent, String> {
        let mut id = None;
        let mut source = None;
        let mut event_type = None;
        let mut time = None;
        let mut data = None;
        let mut raw = RawEvent {
            id: EventId::new(),
            time: Timestamp::now(),
            source: Arc::from(""),
            event_type: Arc::from(""),
            datacontenttype: None,
            dataschema: None,
            metadata: Metadata::default(),
            data: Bytes::new(),
        };
        for (name, value) in pairs {
            let name = std::str::from_utf8(name).map_err(|_| "a field name is not UTF-8")?;
            if name == DATA {
                data = Some(value.clone());
                continue;
            }
            let text = || {
                String::from_utf8(value.to_vec())
                    .map_err(|_| format!("field `{name}` is not UTF-8"))
            };
            let m = &mut raw.metadata;
            match name {
                "ce_id" => id = Some(text()?),
                "ce_specversion" => {
                    let v = text()?;
                    if v != eda_core::SPEC_VERSION {
                        return Err(format!("unsupported ce_specversion `{v}`"));
                    }
                }
                "ce_source" => source = Some(text()?),
                "ce_type" => event_type = Some(text()?),
                "ce_time" => time = Some(text()?),
                "content-type" => raw.datacontenttype = Some(text()?),
                "ce_dataschema" => raw.dataschema = Some(text()?),
                "ce_subject" => m.subject = Some(text()?),
                "ce_traceparent" => {
                    m.traceparent = Some(text()?.parse().map_err(|e| format!("{e}"))?)
                }
                "ce_tracestate" => m.tracestate = Some(text()?),
                "ce_partitionkey" => m.partition_key = Some(text()?),
                "ce_correlationid" => m.correlation_id = Some(text()?),
                "ce_causationid" => {
                    m.causation_id = Some(text()?.parse().map_err(|e| format!("{e}"))?)
                }
                other => {
                    if let Some(ext) = other.strip_prefix("ce_") {
                        m.insert_header(ext, text()?).map_err(|e| format!("{e}"))?;
                    }
                    // Fields of other tools without the ce_ prefix are not ours: ignored.
                }
            }
        }
        let id = id.ok_or("no ce_id field")?;
        raw.id = id
            .parse()
            .map_err(|e: eda_core::EnvelopeError| e.to_string())?;
        raw.source = Arc::from(source.ok_or("no ce_source field")?);
        raw.event_type = Arc::from(event_type.ok_or("no ce_type field")?);
        raw.time = Timestamp::parse_rfc3339(&time.ok_or("no ce_time field")?)
            .map_err(|e| e.to_string())?;
        raw.data = data.ok_or("no data field")?;
        Ok(raw)
    };
    attempt().map_err(|error| {
        let rendering: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        Undecodable {
            raw: Bytes::from(serde_json::Value::Object(rendering).to_string()),
            error,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eda_core::{Envelope, Event, JsonCodec};

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Ping {
        n: u32,
    }
    impl Event for Ping {
        const TYPE: &'static str = "ping";
    }

    fn round_trip(raw: &RawEvent) -> Result<RawEvent, Undecodable> {
        let fields: Vec<(Bytes, Bytes)> = encode(raw)
            .into_iter()
            .map(|(k, v)| (Bytes::from(k), v))
            .collect();
        decode(&fields)
    }

    #[test]
    fn every_attribute_survives() {
        let mut env = Envelope::new(Ping { n: 1 })
            .with_correlation_id("flow")
            .with_partition_key("k");
        env.metadata.subject = Some("s".into());
        env.metadata.insert_header("tenant", "acme").unwrap();
        let raw = env.to_raw(&JsonCodec).unwrap();
        assert_eq!(round_trip(&raw).unwrap(), raw);
        let names: Vec<String> = encode(&raw).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names[0], "ce_id");
        assert!(names.contains(&"ce_tenant".to_owned()));
        assert!(names.contains(&"content-type".to_owned()));
    }

    #[test]
    fn foreign_entries_are_undecodable_with_a_reason() {
        let foo = [(Bytes::from("foo"), Bytes::from("bar"))];
        let err = decode(&foo).unwrap_err();
        assert_eq!(err.error, "no ce_id field");
        assert!(String::from_utf8_lossy(&err.raw).contains("bar"));
        let garbage = [
            (Bytes::from("ce_id"), Bytes::from_static(b"\xff\xfe")),
            (Bytes::from("data"), Bytes::from_static(b"\x00")),
        ];
        assert!(decode(&garbage).unwrap_err().error.contains("not UTF-8"));
    }
}
