//! [`RawEvent`]: the type-erased record transports carry, and its CloudEvents JSON form.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::codec::{Codec, ContentCodec, is_json_content_type};
use crate::envelope::{Envelope, SPEC_VERSION};
use crate::error::EnvelopeError;
use crate::event::Event;
use crate::id::{EventId, Timestamp};
use crate::metadata::{Metadata, validate_extension_name};

/// A type-erased event: the CloudEvents attributes and the encoded data.
///
/// Transports store and move this; [`RawEvent::decode`] turns it back into a typed
/// [`Envelope`]. Its serde form is a CloudEvents 1.0 JSON event (JSON data inline as
/// `data`, text as a string, anything else as `data_base64`).
#[derive(Clone, Debug, PartialEq)]
pub struct RawEvent {
    /// CloudEvents `id`.
    pub id: EventId,
    /// CloudEvents `time`.
    pub time: Timestamp,
    /// CloudEvents `source`.
    pub source: Arc<str>,
    /// CloudEvents `type`.
    pub event_type: Arc<str>,
    /// CloudEvents `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// CloudEvents `dataschema` (eda writes `urn:eda:{type}:v{version}` for binary data).
    pub dataschema: Option<String>,
    /// Extensions and headers.
    pub metadata: Metadata,
    /// The encoded payload.
    pub data: Bytes,
}

impl RawEvent {
    /// Decodes into a typed envelope, choosing the codec by `datacontenttype`.
    ///
    /// Fails with a typed error, carrying the event id, when the type does not match or
    /// the data does not decode; never panics.
    pub fn decode<E: Event>(&self) -> Result<Envelope<E>, EnvelopeError> {
        if &*self.event_type != E::TYPE {
            return Err(EnvelopeError::TypeMismatch {
                id: self.id,
                expected: E::TYPE,
                found: self.event_type.to_string(),
            });
        }
        let codec_err = |source| EnvelopeError::Codec {
            id: Some(self.id),
            source,
        };
        let codec =
            ContentCodec::for_content_type(self.datacontenttype.as_deref()).map_err(codec_err)?;
        // Binary data is not self-describing: refuse another version rather than misread
        // it. (JSON carries field names; serde's defaults handle added fields.)
        if codec == ContentCodec::Postcard
            && let Some(schema) = self.dataschema.as_deref()
            && let Some(version) = schema.strip_prefix(&format!("urn:eda:{}:v", E::TYPE))
            && version != E::VERSION.to_string()
        {
            return Err(EnvelopeError::SchemaVersion {
                id: self.id,
                expected: E::VERSION,
                dataschema: schema.to_owned(),
            });
        }
        let payload = codec.decode::<E>(&self.data).map_err(codec_err)?;
        Ok(Envelope {
            id: self.id,
            time: self.time,
            source: self.source.clone(),
            metadata: self.metadata.clone(),
            payload,
        })
    }

    /// The event's attributes as the CloudEvents Kafka protocol binding names them in
    /// binary mode: `ce_<attribute>` (`content-type` for `datacontenttype`, extensions as
    /// `ce_<name>`), `ce_id` first, then `ce_specversion`, `ce_source`, `ce_type`,
    /// `ce_time`, the optional attributes present and the extensions. The data is not
    /// included. The Redis store writes these as stream fields, the Kafka store as
    /// record headers.
    pub fn binary_headers(&self) -> Vec<(String, String)> {
        let m = &self.metadata;
        let mut headers = vec![
            ("ce_id".to_owned(), self.id.to_string()),
            ("ce_specversion".to_owned(), SPEC_VERSION.to_owned()),
            ("ce_source".to_owned(), self.source.to_string()),
            ("ce_type".to_owned(), self.event_type.to_string()),
            ("ce_time".to_owned(), self.time.to_rfc3339()),
        ];
        let optional = [
            ("content-type", self.datacontenttype.clone()),
            ("ce_dataschema", self.dataschema.clone()),
            ("ce_subject", m.subject.clone()),
            ("ce_traceparent", m.traceparent.map(|t| t.to_string())),
            ("ce_tracestate", m.tracestate.clone()),
            ("ce_partitionkey", m.partition_key.clone()),
            ("ce_correlationid", m.correlation_id.clone()),
            ("ce_causationid", m.causation_id.map(|c| c.to_string())),
        ];
        headers.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| Some((name.to_owned(), value?))),
        );
        headers.extend(m.headers().map(|(k, v)| (format!("ce_{k}"), v.to_owned())));
        headers
    }

    /// This event as a CloudEvents JSON document.
    pub fn to_json(&self) -> Result<String, EnvelopeError> {
        serde_json::to_string(self).map_err(|e| EnvelopeError::Format(e.to_string()))
    }

    /// Parses a CloudEvents JSON document.
    pub fn from_json(json: &[u8]) -> Result<Self, EnvelopeError> {
        let attrs: BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(json).map_err(|e| EnvelopeError::Format(e.to_string()))?;
        Self::from_attributes(attrs)
    }

    fn from_attributes(mut attrs: BTreeMap<String, Box<RawValue>>) -> Result<Self, EnvelopeError> {
        let mut take_string = |name: &'static str| -> Result<Option<String>, EnvelopeError> {
            match attrs.remove(name) {
                None => Ok(None),
                Some(raw) if raw.get() == "null" => Ok(None),
                Some(raw) => serde_json::from_str::<String>(raw.get())
                    .map(Some)
                    .map_err(|_| EnvelopeError::InvalidAttribute {
                        attribute: name,
                        reason: format!("expected a string, found {}", raw.get()),
                    }),
            }
        };
        let required = |v: Option<String>, name| v.ok_or(EnvelopeError::MissingAttribute(name));

        let specversion = required(take_string("specversion")?, "specversion")?;
        if specversion != SPEC_VERSION {
            return Err(EnvelopeError::InvalidAttribute {
                attribute: "specversion",
                reason: format!("`{specversion}` is not supported, only {SPEC_VERSION}"),
            });
        }
        let id: EventId = required(take_string("id")?, "id")?.parse()?;
        let source = required(take_string("source")?, "source")?;
        let event_type = required(take_string("type")?, "type")?;
        if source.is_empty() || event_type.is_empty() {
            return Err(EnvelopeError::InvalidAttribute {
                attribute: if source.is_empty() { "source" } else { "type" },
                reason: "must not be empty".into(),
            });
        }
        let time = match take_string("time")? {
            Some(t) => Timestamp::parse_rfc3339(&t)?,
            // CloudEvents makes `time` optional; a v7 id still knows when it was made.
            None => id.timestamp().unwrap_or_default(),
        };
        let datacontenttype = take_string("datacontenttype")?;
        let dataschema = take_string("dataschema")?;
        let mut metadata = Metadata {
            subject: take_string("subject")?,
            traceparent: take_string("traceparent")?.map(|s| s.parse()).transpose()?,
            tracestate: take_string("tracestate")?,
            correlation_id: take_string("correlationid")?,
            causation_id: take_string("causationid")?.map(|s| s.parse()).transpose()?,
            partition_key: take_string("partitionkey")?,
            ..Metadata::default()
        };
        let data_base64 = take_string("data_base64")?;
        let data = match (attrs.remove("data"), data_base64) {
            (Some(_), Some(_)) => {
                return Err(EnvelopeError::Format(
                    "both `data` and `data_base64` are present".into(),
                ));
            }
            (None, Some(b64)) => Bytes::from(BASE64.decode(b64.as_bytes()).map_err(|e| {
                EnvelopeError::InvalidAttribute {
                    attribute: "data_base64",
                    reason: e.to_string(),
                }
            })?),
            (Some(raw), None) => {
                if is_json_content_type(datacontenttype.as_deref()) {
                    Bytes::copy_from_slice(raw.get().as_bytes())
                } else if let Ok(text) = serde_json::from_str::<String>(raw.get()) {
                    Bytes::from(text)
                } else {
                    Bytes::copy_from_slice(raw.get().as_bytes())
                }
            }
            (None, None) => Bytes::new(),
        };
        for (name, raw) in attrs {
            validate_extension_name(&name)?;
            let value: serde_json::Value = serde_json::from_str(raw.get())
                .map_err(|e| EnvelopeError::Format(e.to_string()))?;
            let value = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => continue,
                _ => {
                    return Err(EnvelopeError::InvalidAttribute {
                        attribute: "extension",
                        reason: format!("extension `{name}` must be a string, number or boolean"),
                    });
                }
            };
            metadata.insert_header(name, value)?;
        }
        Ok(Self {
            id,
            time,
            source: Arc::from(source),
            event_type: Arc::from(event_type),
            datacontenttype,
            dataschema,
            metadata,
            data,
        })
    }
}

impl Serialize for RawEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = &self.metadata;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", SPEC_VERSION)?;
        map.serialize_entry("id", &self.id.to_string())?;
        map.serialize_entry("source", &*self.source)?;
        map.serialize_entry("type", &*self.event_type)?;
        map.serialize_entry("time", &self.time.to_rfc3339())?;
        if let Some(v) = &self.datacontenttype {
            map.serialize_entry("datacontenttype", v)?;
        }
        if let Some(v) = &self.dataschema {
            map.serialize_entry("dataschema", v)?;
        }
        if let Some(v) = &m.subject {
            map.serialize_entry("subject", v)?;
        }
        if let Some(v) = &m.traceparent {
            map.serialize_entry("traceparent", &v.to_string())?;
        }
        if let Some(v) = &m.tracestate {
            map.serialize_entry("tracestate", v)?;
        }
        if let Some(v) = &m.partition_key {
            map.serialize_entry("partitionkey", v)?;
        }
        if let Some(v) = &m.correlation_id {
            map.serialize_entry("correlationid", v)?;
        }
        if let Some(v) = &m.causation_id {
            map.serialize_entry("causationid", &v.to_string())?;
        }
        for (k, v) in m.headers() {
            map.serialize_entry(k, v)?;
        }
        if !self.data.is_empty() {
            let ct = self.datacontenttype.as_deref();
            if is_json_content_type(ct) {
                if let Ok(raw) = serde_json::from_slice::<&RawValue>(&self.data) {
                    map.serialize_entry("data", raw)?;
                } else {
                    map.serialize_entry("data_base64", &BASE64.encode(&self.data))?;
                }
            } else if ct.is_some_and(|c| c.trim_start().starts_with("text/"))
                && let Ok(text) = std::str::from_utf8(&self.data)
            {
                map.serialize_entry("data", text)?;
            } else {
                map.serialize_entry("data_base64", &BASE64.encode(&self.data))?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RawEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let attrs = BTreeMap::<String, Box<RawValue>>::deserialize(deserializer)?;
        Self::from_attributes(attrs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{JsonCodec, POSTCARD, PostcardCodec};
    use crate::metadata::TraceParent;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct OrderCreated {
        order_id: u64,
        customer: String,
        amount_cents: i64,
    }
    impl Event for OrderCreated {
        const TYPE: &'static str = "order.created";
        fn partition_key(&self) -> Option<String> {
            Some(self.customer.clone())
        }
    }

    fn sample() -> Envelope<OrderCreated> {
        let mut env = Envelope::new(OrderCreated {
            order_id: 42,
            customer: "ada".into(),
            amount_cents: 1999,
        })
        .with_source("shop-1.2.0")
        .with_correlation_id("flow-9")
        .with_subject("orders/42")
        .with_header("tenant", "acme")
        .unwrap();
        env.metadata.traceparent = Some(TraceParent {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x00f067aa0ba902b7,
            flags: 1,
        });
        env.metadata.tracestate = Some("vendor=1".into());
        env.metadata.causation_id = Some(EventId::new());
        env
    }

    #[test]
    fn json_form_is_cloudevents() {
        let env = sample();
        let v: serde_json::Value = serde_json::to_value(&env).unwrap();
        // Required attributes.
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], env.id.to_string());
        assert_eq!(v["source"], "shop-1.2.0");
        assert_eq!(v["type"], "order.created");
        // Optional and extension attributes.
        assert_eq!(v["time"], env.time.to_rfc3339());
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["subject"], "orders/42");
        assert_eq!(
            v["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(v["tracestate"], "vendor=1");
        assert_eq!(v["partitionkey"], "ada");
        assert_eq!(v["correlationid"], "flow-9");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["data"]["order_id"], 42);
        assert!(v.get("data_base64").is_none());
        let time = v["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == "2026-11-28T12:00:00.123Z".len());
    }

    #[test]
    fn envelope_survives_json_round_trip_unchanged() {
        let env = sample();
        let first = serde_json::to_string(&env).unwrap();
        let back: Envelope<OrderCreated> = serde_json::from_str(&first).unwrap();
        assert_eq!(back, env);
        let second = serde_json::to_string(&back).unwrap();
        assert_eq!(first, second);
        // The raw form round-trips byte for byte too.
        let raw = RawEvent::from_json(first.as_bytes()).unwrap();
        assert_eq!(raw.to_json().unwrap(), first);
    }

    #[test]
    fn postcard_data_is_base64_with_schema() {
        let env = sample();
        let raw = env.to_raw(&PostcardCodec).unwrap();
        assert_eq!(raw.datacontenttype.as_deref(), Some(POSTCARD));
        assert_eq!(raw.dataschema.as_deref(), Some("urn:eda:order.created:v1"));
        let v: serde_json::Value = serde_json::from_str(&raw.to_json().unwrap()).unwrap();
        assert!(v.get("data").is_none());
        assert!(v["data_base64"].is_string());
        let back = RawEvent::from_json(raw.to_json().unwrap().as_bytes()).unwrap();
        assert_eq!(back, raw);
        assert_eq!(back.decode::<OrderCreated>().unwrap(), env);
    }

    #[test]
    fn binary_data_of_another_schema_version_is_refused_not_misread() {
        #[derive(Debug, Serialize, Deserialize)]
        struct OrderCreatedV2 {
            order_id: u64,
            total_cents: u64,
        }
        impl Event for OrderCreatedV2 {
            const TYPE: &'static str = "order.created";
            const VERSION: u32 = 2;
        }
        let raw = sample().to_raw(&PostcardCodec).unwrap();
        let err = raw.decode::<OrderCreatedV2>().unwrap_err();
        assert!(
            matches!(err, EnvelopeError::SchemaVersion { expected: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("urn:eda:order.created:v1"));
        // JSON data names its fields, so it is decoded (serde decides what is missing).
        let json = sample().to_raw(&JsonCodec).unwrap();
        assert!(json.dataschema.is_none());
    }

    #[test]
    fn foreign_events_are_read() {
        // As written by another CloudEvents SDK: v4 id, offset time, text data, numeric extension.
        let json = br#"{"specversion":"1.0","id":"0f4c1c36-2b1e-4a58-9c1e-7d3b6a3c9f10",
            "source":"/sensors/12","type":"reading.taken","time":"2026-11-28T13:00:00+01:00",
            "datacontenttype":"text/plain","data":"21.5C","priority":3,"urgent":true}"#;
        let raw = RawEvent::from_json(json).unwrap();
        assert_eq!(&*raw.event_type, "reading.taken");
        assert_eq!(&raw.data[..], b"21.5C");
        assert_eq!(raw.metadata.header("priority"), Some("3"));
        assert_eq!(raw.metadata.header("urgent"), Some("true"));
        assert_eq!(raw.time.to_rfc3339(), "2026-11-28T12:00:00.000Z");
        let again = RawEvent::from_json(raw.to_json().unwrap().as_bytes()).unwrap();
        assert_eq!(again, raw);
    }

    #[test]
    fn invalid_documents_are_typed_errors() {
        let id = EventId::new();
        let cases: Vec<(String, &str)> = vec![
            ("{}".into(), "missing"),
            (
                format!(r#"{{"specversion":"0.3","id":"{id}","source":"s","type":"t"}}"#),
                "specversion",
            ),
            (
                r#"{"specversion":"1.0","id":"nope","source":"s","type":"t"}"#.into(),
                "id",
            ),
            (
                format!(
                    r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"t","X-Tenant":"a"}}"#
                ),
                "name",
            ),
            (
                format!(
                    r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"t","time":"noon"}}"#
                ),
                "time",
            ),
            (
                format!(
                    r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"t","ext":{{"a":1}}}}"#
                ),
                "ext",
            ),
            (
                format!(
                    r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"t","data_base64":"!!"}}"#
                ),
                "b64",
            ),
            ("[1,2]".into(), "format"),
        ];
        for (doc, what) in cases {
            assert!(
                RawEvent::from_json(doc.as_bytes()).is_err(),
                "{what}: {doc}"
            );
        }
    }

    #[test]
    fn decode_reports_type_and_payload_errors_with_id() {
        let env = sample();
        let mut raw = env.to_raw(&JsonCodec).unwrap();
        raw.data = Bytes::from_static(b"{\"order_id\":\"oops\"}");
        let err = raw.decode::<OrderCreated>().unwrap_err();
        assert_eq!(err.event_id(), Some(env.id));
        raw.event_type = Arc::from("order.cancelled");
        assert!(matches!(
            raw.decode::<OrderCreated>(),
            Err(EnvelopeError::TypeMismatch { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RawEvent::from_json(&bytes);
        }

        #[test]
        fn envelopes_round_trip_through_both_codecs(
            order_id in any::<u64>(), customer in ".{0,20}", amount_cents in any::<i64>(),
            corr in proptest::option::of("[a-z0-9-]{1,20}"),
        ) {
            let mut env = Envelope::new(OrderCreated { order_id, customer, amount_cents });
            env.metadata.correlation_id = corr;
            for raw in [env.to_raw(&JsonCodec).unwrap(), env.to_raw(&PostcardCodec).unwrap()] {
                let parsed = RawEvent::from_json(raw.to_json().unwrap().as_bytes()).unwrap();
                prop_assert_eq!(&parsed, &raw);
                prop_assert_eq!(parsed.decode::<OrderCreated>().unwrap(), env.clone());
            }
        }
    }
}
