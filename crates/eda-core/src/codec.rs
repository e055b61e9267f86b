//! Payload codecs: JSON (interoperable, the default) and postcard (compact binary).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// Content type of [`JsonCodec`].
pub const JSON: &str = "application/json";
/// Content type of [`PostcardCodec`].
pub const POSTCARD: &str = "application/x-postcard";

/// Turns payloads into bytes and back.
///
/// Decoding never panics on bad input: arbitrary bytes give a [`CodecError`].
pub trait Codec: Send + Sync + 'static {
    /// The MIME type written to `datacontenttype`.
    fn content_type(&self) -> &'static str;
    /// Serializes a value.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError>;
    /// Deserializes a value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// JSON through `serde_json`: readable by any tool, the default on every wire.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn content_type(&self) -> &'static str {
        JSON
    }
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError::Encode {
                content_type: JSON,
                reason: e.to_string(),
            })
    }
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::Decode {
            content_type: JSON,
            reason: e.to_string(),
        })
    }
}

/// postcard: a compact, non-self-describing binary format (bincode's maintained successor
/// in practice). Both sides must agree on the type's shape, so stores record the schema
/// version beside postcard data.
#[derive(Clone, Copy, Debug, Default)]
pub struct PostcardCodec;

impl Codec for PostcardCodec {
    fn content_type(&self) -> &'static str {
        POSTCARD
    }
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        postcard::to_stdvec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError::Encode {
                content_type: POSTCARD,
                reason: e.to_string(),
            })
    }
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        match postcard::take_from_bytes::<T>(bytes) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(CodecError::Decode {
                content_type: POSTCARD,
                reason: format!("{} trailing bytes after the value", rest.len()),
            }),
            Err(e) => Err(CodecError::Decode {
                content_type: POSTCARD,
                reason: e.to_string(),
            }),
        }
    }
}

/// The codec chosen by a record's `datacontenttype`, for type-erased records; in
/// configuration files `"json"` or `"postcard"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentCodec {
    /// `application/json`, `text/json`, any `+json` type, or no content type at all
    /// (CloudEvents JSON data defaults to JSON).
    #[default]
    Json,
    /// `application/x-postcard`.
    Postcard,
}

impl ContentCodec {
    /// Picks the codec for a content type (parameters such as `; charset=utf-8` are ignored).
    pub fn for_content_type(content_type: Option<&str>) -> Result<Self, CodecError> {
        let Some(ct) = content_type else {
            return Ok(Self::Json);
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if is_json_essence(&essence) {
            Ok(Self::Json)
        } else if essence == POSTCARD {
            Ok(Self::Postcard)
        } else {
            Err(CodecError::UnsupportedContentType(ct.to_owned()))
        }
    }
}

impl Codec for ContentCodec {
    fn content_type(&self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::Postcard => POSTCARD,
        }
    }
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        match self {
            Self::Json => JsonCodec.encode(value),
            Self::Postcard => PostcardCodec.encode(value),
        }
    }
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Self::Json => JsonCodec.decode(bytes),
            Self::Postcard => PostcardCodec.decode(bytes),
        }
    }
}

pub(crate) fn is_json_essence(essence: &str) -> bool {
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Whether a content type's data is JSON (CloudEvents: absent means JSON).
pub(crate) fn is_json_content_type(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(ct) => {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            is_json_essence(&essence)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u64,
        customer: String,
        lines: Vec<(String, u32)>,
        note: Option<String>,
        total_cents: i64,
        express: bool,
    }

    fn order() -> impl Strategy<Value = Order> {
        (
            any::<u64>(),
            ".*",
            proptest::collection::vec((".{0,12}", any::<u32>()), 0..8),
            proptest::option::of(".*"),
            any::<i64>(),
            any::<bool>(),
        )
            .prop_map(|(id, customer, lines, note, total_cents, express)| Order {
                id,
                customer,
                lines,
                note,
                total_cents,
                express,
            })
    }

    proptest! {
        #[test]
        fn json_round_trips(o in order()) {
            let bytes = JsonCodec.encode(&o).unwrap();
            prop_assert_eq!(JsonCodec.decode::<Order>(&bytes).unwrap(), o);
        }

        #[test]
        fn postcard_round_trips(o in order()) {
            let bytes = PostcardCodec.encode(&o).unwrap();
            prop_assert_eq!(PostcardCodec.decode::<Order>(&bytes).unwrap(), o);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Either a typed error or (for postcard, which is not self-describing) a value;
            // never a panic, never an unbounded allocation.
            let _ = JsonCodec.decode::<Order>(&bytes);
            let _ = PostcardCodec.decode::<Order>(&bytes);
            let _ = PostcardCodec.decode::<Vec<String>>(&bytes);
        }
    }

    #[test]
    fn garbage_gives_typed_errors() {
        assert!(matches!(
            JsonCodec.decode::<Order>(b"{not json"),
            Err(CodecError::Decode {
                content_type: JSON,
                ..
            })
        ));
        // A length prefix claiming far more elements than there are bytes.
        assert!(matches!(
            PostcardCodec.decode::<Vec<u64>>(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1]),
            Err(CodecError::Decode {
                content_type: POSTCARD,
                ..
            })
        ));
        let bytes = PostcardCodec.encode(&7u32).unwrap();
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(
            PostcardCodec.decode::<u32>(&longer).is_err(),
            "trailing bytes are an error"
        );
    }

    #[test]
    fn content_types_pick_codecs() {
        assert_eq!(
            ContentCodec::for_content_type(None).unwrap(),
            ContentCodec::Json
        );
        assert_eq!(
            ContentCodec::for_content_type(Some("application/cloudevents+json; charset=utf-8"))
                .unwrap(),
            ContentCodec::Json
        );
        assert_eq!(
            ContentCodec::for_content_type(Some(POSTCARD)).unwrap(),
            ContentCodec::Postcard
        );
        assert!(matches!(
            ContentCodec::for_content_type(Some("application/xml")),
            Err(CodecError::UnsupportedContentType(_))
        ));
    }
}
