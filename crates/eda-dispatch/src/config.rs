//! Bus configuration, deserializable for file-based setup.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::options::{DeliveryMode, RetryPolicy, millis, opt_millis};

/// Settings of one topic.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TopicConfig {
    /// Events older than this when they reach a handler are not handled: they count as
    /// expired and go to the dead-letter sink. Default: no TTL.
    #[serde(rename = "ttl_ms", with = "opt_millis")]
    pub ttl: Option<Duration>,
    /// How long `publish` waits for room in a full subscription queue (default: the bus's).
    #[serde(rename = "dispatch_timeout_ms", with = "opt_millis")]
    pub dispatch_timeout: Option<Duration>,
    /// Slots of the topic's ring buffer (rounded up to a power of two; default: the
    /// bus's `queue_capacity`). Bounds how far any group may lag behind publishers.
    pub capacity: Option<usize>,
    /// Durable topics: how event data is stored (default `json`). `postcard` is
    /// compact binary and writes `dataschema = urn:eda:{type}:v{VERSION}`; a subscriber
    /// whose type has another `Event::VERSION` gets a typed error (the record is
    /// dead-lettered with it) instead of misreading the bytes.
    pub codec: Option<eda_core::ContentCodec>,
    /// Durable topics: most records one store append carries when concurrent
    /// publishes are grouped (default 1000).
    pub commit_batch: Option<usize>,
    /// Durable topics: how long the committer waits for more publishes before it
    /// appends (default 0: it takes only those already waiting, so a lone publisher
    /// pays no extra latency, and concurrent ones share appends anyway).
    #[serde(rename = "commit_linger_ms", with = "opt_millis")]
    pub commit_linger: Option<Duration>,
}

/// Everything a [`Bus`](crate::Bus) can be configured with. Deserializable, e.g. from TOML:
///
/// ```
/// # use eda_dispatch::BusConfig;
/// let config: BusConfig = serde_json::from_str(r#"{
///     "service": "shop", "version": "1.4.0",
///     "processing_timeout_ms": 10000,
///     "routes": { "order.created": "orders", "order.cancelled": "orders" },
///     "topics": { "orders": { "ttl_ms": 60000 } }
/// }"#)?;
/// assert_eq!(config.source(), "shop-1.4.0");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct BusConfig {
    /// Service name; with `version` it forms the CloudEvents `source` `"{service}-{version}"`.
    pub service: String,
    /// Service version.
    pub version: String,
    /// Default processing timeout per attempt (30 s, the seed's `process_timeout`).
    #[serde(rename = "processing_timeout_ms", with = "opt_millis")]
    pub processing_timeout: Option<Duration>,
    /// Default wait of `publish` for room in a full queue (5 s, the seed's `dispatch_timeout`).
    #[serde(rename = "dispatch_timeout_ms", with = "millis")]
    pub dispatch_timeout: Duration,
    /// Default slots of each topic's ring buffer (1024): how far a group may lag behind.
    pub queue_capacity: usize,
    /// Default retry policy.
    pub retry: RetryPolicy,
    /// Default delivery mode.
    pub mode: DeliveryMode,
    /// Event type → topic. Unmapped types are their own topic.
    pub routes: HashMap<String, String>,
    /// Per-topic settings, by topic name.
    pub topics: HashMap<String, TopicConfig>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            service: "eda".into(),
            version: String::new(),
            processing_timeout: Some(Duration::from_secs(30)),
            dispatch_timeout: Duration::from_secs(5),
            queue_capacity: 1024,
            retry: RetryPolicy::default(),
            mode: DeliveryMode::default(),
            routes: HashMap::new(),
            topics: HashMap::new(),
        }
    }
}

impl BusConfig {
    /// The CloudEvents `source` stamped on published events.
    pub fn source(&self) -> String {
        if self.version.is_empty() {
            self.service.clone()
        } else {
            format!("{}-{}", self.service, self.version)
        }
    }

    /// The topic an event type belongs to.
    pub fn topic_of<'a>(&'a self, event_type: &'a str) -> &'a str {
        self.routes
            .get(event_type)
            .map(String::as_str)
            .unwrap_or(event_type)
    }

    pub(crate) fn topic_config(&self, topic: &str) -> TopicConfig {
        self.topics.get(topic).cloned().unwrap_or_default()
    }
}
