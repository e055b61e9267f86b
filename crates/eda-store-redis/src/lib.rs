//! The Redis Streams store of [eda](https://docs.rs/eda): one stream per topic, consumer
//! groups shared by any number of processes, redelivery of what stays pending past the
//! visibility timeout (`XAUTOCLAIM` by any live consumer of the group), delivery counts
//! kept by Redis (so they survive a crash of the consumer), batched `XACK`, replay with
//! `XRANGE`, retention by `MAXLEN ~` or `MINID ~`. It implements [`EventStore`],
//! [`OffsetStore`] and [`LeaseStore`] and passes the `eda-testkit` conformance suite
//! against a real Redis.
//!
//! Entries carry one field per CloudEvents attribute, named as in the CloudEvents Kafka
//! binding (`ce_id`, `ce_source`, `ce_type`, `ce_time`, `content-type`,
//! `ce_traceparent`, ...), and the data in a binary-safe `data` field, so
//! `redis-cli XRANGE eda:{orders} - +` shows readable events.
//!
//! ```no_run
//! use eda_core::{ConsumeOptions, Envelope, EventStore, JsonCodec, StartFrom};
//! use eda_store_redis::RedisStreamStore;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Ping { n: u32 }
//! # impl eda_core::Event for Ping { const TYPE: &'static str = "ping"; }
//! use futures_util::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStreamStore::connect("redis://127.0.0.1:6379").await?;
//! store.append("pings", vec![Envelope::new(Ping { n: 1 }).to_raw(&JsonCodec)?]).await?;
//!
//! let options = ConsumeOptions { start: StartFrom::Beginning, ..Default::default() };
//! let mut deliveries = store.subscribe("pings", "counter", "worker-1", options).await?;
//! let delivery = deliveries.next().await.unwrap()?;
//! delivery.ack().await?; // batched XACK
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## Security
//!
//! `redis://user:password@host:6379/0` authenticates with ACL credentials;
//! `rediss://...` uses TLS (feature `rustls`). Errors and logs name the host, never the
//! credentials: connection errors are reported through [`StoreError::Unavailable`] with
//! the URL's password removed.
#![forbid(unsafe_code)]

mod fields;
mod scripts;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eda_core::{
    AckBatchOptions, AckBatcher, AckHandle, BoxFuture, ConsumeOptions, Delivery, DeliveryStream,
    EventStore, Features, FlushAcks, LeaseStore, OffsetStore, Position, RawEvent, ReadRange,
    StartFrom, StoreError, Undecodable,
};
use fred::clients::Client;
use fred::interfaces::{
    ClientLike, HashesInterface, KeysInterface, StreamsInterface, TransactionInterface,
};
use fred::types::config::{Config, ReconnectPolicy};
use fred::types::scripts::Script;
use fred::types::{Builder, Value};

/// Records per script call of an idempotent append; a larger batch is split into calls
/// of this size within one MULTI/EXEC.
const APPEND_CHUNK: usize = 256;

/// `EVAL` queued in a transaction (fred's transactions have no Lua interface).
static EVAL: std::sync::LazyLock<fred::types::CustomCommand> = std::sync::LazyLock::new(|| {
    fred::types::CustomCommand::new_static("EVAL", fred::types::ClusterHash::FirstKey, false)
});

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A Redis error as a store error, without credentials (fred's errors carry none; the
/// URL is never part of them).
fn unavailable(e: fred::error::Error) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The stream entry fields the store writes for `record`, in order (`ce_id` first, the
/// data last): for tools that write entries our consumers read, and for comparisons.
pub fn entry_fields(record: &RawEvent) -> Vec<(String, eda_core::Bytes)> {
    fields::encode(record)
}

/// How much of a stream Redis keeps: applied by every append (`XADD ... ~`, so Redis
/// trims whole macro nodes, cheaply, keeping at least this much).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamRetention {
    /// About the newest `n` entries (`MAXLEN ~ n`).
    MaxLen(u64),
    /// Entries appended within this age (`MINID ~ <now - age>`).
    MaxAge(Duration),
}

/// Options of a [`RedisStreamStore`].
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    retention: Option<StreamRetention>,
    dedup_window: Duration,
    idempotent: bool,
    max_record_bytes: usize,
    command_timeout: Duration,
    block: Duration,
    acks: AckBatchOptions,
}

impl RedisStoreBuilder {
    /// Prefix of every key (default `"eda:"`): the stream of topic `orders` is
    /// `eda:{orders}` (the braces keep a topic's keys in one cluster slot).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Trim streams on append (default: keep everything).
    pub fn retention(mut self, retention: StreamRetention) -> Self {
        self.retention = Some(retention);
        self
    }
    /// How long an appended event id is remembered, so that a retried append within it
    /// stores the event once (default 24 h): ids live in one hash per window, kept for
    /// two windows, so a retry is recognised for at least `window`, at most twice that.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }
    /// Whether appends are idempotent (default `true`): each record costs a dedup key
    /// (`GET` + `SET PX`) besides its `XADD`, in one Lua script per batch. `false`
    /// appends a batch as one `MULTI`/`XADD`.../`EXEC` transaction, about twice as fast,
    /// but a retried append (after a timeout whose write did land) stores the records
    /// again; consumers then need dedup (`eda-dedup`). Such a store does not pass the
    /// conformance suite's idempotence scenario.
    pub fn idempotent_appends(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }
    /// Largest record accepted: its data plus its fields (default 1 MiB).
    pub fn max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }
    /// How long a command may take, reconnection included, before it fails with
    /// `StoreError::Unavailable` (default 5 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }
    /// How long an idle consumer blocks in `XREADGROUP` before it looks for entries to
    /// claim again (default 200 ms; nacked entries come back within about this long).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }
    /// When acks are written (batched `XACK`; see [`eda_core::ack_batch`]).
    pub fn ack_batching(mut self, options: AckBatchOptions) -> Self {
        self.acks = options;
        self
    }

    fn client(&self) -> Result<Client, StoreError> {
        let config = Config::from_url(&self.url)
            .map_err(|e| StoreError::Invalid(format!("redis url `{}`: {e}", redact(&self.url))))?;
        let timeout = self.command_timeout;
        Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.max_command_attempts = 3;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()
            .map_err(unavailable)
    }

    /// Connects and loads the scripts.
    pub async fn connect(self) -> Result<RedisStreamStore, StoreError> {
        let client = self.client()?;
        client
            .init()
            .await
            .map_err(|e| StoreError::Unavailable(format!("redis at {}: {e}", redact(&self.url))))?;
        let scripts = Scripts {
            append: Script::from_lua(scripts::APPEND),
            claim: Script::from_lua(scripts::CLAIM),
            ack: Script::from_lua(scripts::ACK),
            settle: Script::from_lua(scripts::SETTLE),
            lease_acquire: Script::from_lua(scripts::LEASE_ACQUIRE),
            lease_release: Script::from_lua(scripts::LEASE_RELEASE),
            clear_attempts: Script::from_lua(scripts::CLEAR_ATTEMPTS),
        };
        let scripts = Arc::new(scripts);
        let acks = AckBatcher::spawn(
            AckWriter {
                client: client.clone(),
                scripts: scripts.clone(),
            },
            self.acks,
        );
        Ok(RedisStreamStore {
            inner: Arc::new(Inner {
                client,
                scripts,
                acks,
                options: self,
            }),
        })
    }
}

struct Scripts {
    append: Script,
    claim: Script,
    ack: Script,
    settle: Script,
    lease_acquire: Script,
    lease_release: Script,
    clear_attempts: Script,
}

/// Durable topics in Redis Streams. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisStreamStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    scripts: Arc<Scripts>,
    acks: AckBatcher<AckKey>,
    options: RedisStoreBuilder,
}

impl RedisStreamStore {
    /// Options for the server at `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` with the `rustls` feature).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "eda:".into(),
            retention: None,
            dedup_window: Duration::from_secs(24 * 3600),
            idempotent: true,
            max_record_bytes: 1024 * 1024,
            command_timeout: Duration::from_secs(5),
            block: Duration::from_millis(200),
            acks: AckBatchOptions::default(),
        }
    }

    /// Connects with default options.
    pub async fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// The connection, e.g. for commands of the caller's own.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The stream key of `topic`.
    pub fn stream_key(&self, topic: &str) -> String {
        format!("{}{{{topic}}}", self.inner.options.prefix)
    }

    fn lease_key(&self, name: &str) -> String {
        format!("{}lease:{name}", self.inner.options.prefix)
    }

    fn lease_index(&self) -> String {
        format!("{}leases", self.inner.options.prefix)
    }

    fn attempts_key(&self, group: &str, topic: &str, partition: u32) -> String {
        format!(
            "{}attempts:{{{topic}}}:{group}:{partition}",
            self.inner.options.prefix
        )
    }

    /// Writes the queued acks and closes the connection.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.inner.acks.flush().await;
        let _ = self.inner.client.quit().await;
        flushed
    }

    async fn ensure_group(
        client: &Client,
        key: &str,
        group: &str,
        start: &StartFrom,
    ) -> Result<(), StoreError> {
        let id = match start {
            StartFrom::Beginning => "0".to_owned(),
            StartFrom::NewOnly => "$".to_owned(),
            StartFrom::After(p) => p.as_str().to_owned(),
        };
        let created: Result<Value, _> = client.xgroup_create(key, group, id, true).await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Appends without dedup keys: one MULTI/EXEC of XADDs (all or none).
    async fn append_plain(
        &self,
        key: &str,
        records: &[RawEvent],
        trim: String,
        value: String,
    ) -> Result<Vec<Position>, StoreError> {
        let options = &self.inner.options;
        let tx = self.inner.client.multi();
        for r in records {
            let fields = fields::encode(r);
            let size = fields::size(&fields);
            if size > options.max_record_bytes {
                return Err(StoreError::TooLarge {
                    size,
                    max: options.max_record_bytes,
                });
            }
            let fields: Vec<(String, Value)> = fields
                .into_iter()
                .map(|(k, v)| (k, Value::Bytes(v)))
                .collect();
            let queued: Result<(), _> = if trim.is_empty() {
                tx.xadd(key, false, None, "*", fields).await
            } else {
                tx.xadd(
                    key,
                    false,
                    (trim.as_str(), "~", value.as_str()),
                    "*",
                    fields,
                )
                .await
            };
            queued.map_err(unavailable)?;
        }
        let ids: Vec<String> = tx.exec(true).await.map_err(unavailable)?;
        Ok(ids.into_iter().map(Position::new).collect())
    }

    fn delivery(
        &self,
        key: &Arc<str>,
        group: &Arc<str>,
        consumer: &Arc<str>,
        id: String,
        count: u32,
        fields: &Value,
    ) -> Delivery {
        let pairs = fields::pairs(fields);
        let record = fields::decode(&pairs);
        Delivery::new(
            Position::new(id.clone()),
            count,
            record,
            Box::new(RedisAck {
                store: self.clone(),
                key: AckKey {
                    stream: key.clone(),
                    group: group.clone(),
                    consumer: consumer.clone(),
                    id,
                    count,
                },
            }),
        )
    }
}

/// A delivered entry, as the ack script checks it.
#[derive(Clone)]
struct AckKey {
    stream: Arc<str>,
    group: Arc<str>,
    consumer: Arc<str>,
    id: String,
    count: u32,
}

struct AckWriter {
    client: Client,
    scripts: Arc<Scripts>,
}

impl FlushAcks<AckKey> for AckWriter {
    fn flush_acks<'a>(&'a self, batch: &'a [AckKey]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut by_holder: HashMap<(&str, &str, &str), Vec<String>> = HashMap::new();
            for k in batch {
                by_holder
                    .entry((&k.stream, &k.group, &k.consumer))
                    .or_default()
                    .extend([k.id.clone(), k.count.to_string()]);
            }
            for ((stream, group, consumer), pairs) in by_holder {
                let mut args = Vec::with_capacity(pairs.len() + 2);
                args.push(group.to_owned());
                args.push(consumer.to_owned());
                args.extend(pairs);
                let _: i64 = self
                    .scripts
                    .ack
                    .evalsha_with_reload(&self.client, stream, args)
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        })
    }
}

struct RedisAck {
    store: RedisStreamStore,
    key: AckKey,
}

impl RedisAck {
    async fn settle(&self, mode: &str, ms: u64) -> Result<(), StoreError> {
        let k = &self.key;
        let args = vec![
            k.group.to_string(),
            k.consumer.to_string(),
            k.id.clone(),
            k.count.to_string(),
            mode.to_owned(),
            ms.to_string(),
        ];
        let held: i64 = self
            .store
            .inner
            .scripts
            .settle
            .evalsha_with_reload(&self.store.inner.client, &*k.stream, args)
            .await
            .map_err(unavailable)?;
        if held == 0 {
            return Err(StoreError::NotHeld(Position::new(k.id.clone())));
        }
        Ok(())
    }
}

impl AckHandle for RedisAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.store.inner.acks.push(self.key.clone());
        Box::pin(std::future::ready(Ok(())))
    }
    fn nack(&self, _reason: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.settle("nack", 0))
    }
    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.settle("extend", by.as_millis() as u64))
    }
}

/// One subscription's state between deliveries.
struct Consumer {
    store: RedisStreamStore,
    /// A connection of its own: `XREADGROUP ... BLOCK` holds it.
    reader: Client,
    key: Arc<str>,
    group: Arc<str>,
    name: Arc<str>,
    options: ConsumeOptions,
    cursor: String,
    /// When this consumer last looked for entries to claim: it looks at most once per
    /// `block` while the cursor is back at the start of the pending list.
    last_claim: Option<std::time::Instant>,
    buffered: VecDeque<Delivery>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let reader = self.reader.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = reader.quit().await;
            });
        }
    }
}

impl Consumer {
    /// Fills the buffer: entries to redeliver first, then new ones (blocking a while
    /// when there are none).
    async fn fetch(&mut self) -> Result<(), StoreError> {
        // Acks of this process first, in one round trip per holder.
        if !self.store.inner.acks.is_empty() {
            self.store.inner.acks.flush().await?;
        }
        let block = self.store.inner.options.block;
        let count = self.options.batch_size.max(1);
        // `XAUTOCLAIM` scans the group's pending list from the cursor (up to ten
        // entries per one it may claim): on every fetch, that is a scan of everything
        // in flight per batch read. It runs when the last scan stopped midway, or once
        // per `block` (the documented delay of a nacked entry's return).
        let claim_due =
            self.cursor != "0-0" || self.last_claim.is_none_or(|at| at.elapsed() >= block);
        if claim_due {
            self.claim(count).await?;
            if !self.buffered.is_empty() {
                return Ok(());
            }
        }
        let block = block.as_millis() as u64;
        let read: Result<Value, _> = self
            .reader
            .xreadgroup(
                &*self.group,
                &*self.name,
                Some(count as u64),
                Some(block),
                false,
                &*self.key,
                ">",
            )
            .await;
        let read = match read {
            Ok(v) => v,
            Err(e) if e.details().contains("NOGROUP") => {
                self.recreate_group().await?;
                return Ok(());
            }
            Err(e) => return Err(unavailable(e)),
        };
        for entry in stream_entries(&read) {
            let d = self
                .store
                .delivery(&self.key, &self.group, &self.name, entry.0, 1, entry.1);
            self.buffered.push_back(d);
        }
        Ok(())
    }

    /// Claims entries of the group idle past the visibility timeout (timed out or
    /// nacked) into the buffer.
    async fn claim(&mut self, count: usize) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        self.last_claim = Some(std::time::Instant::now());
        let claimed: Value = match inner
            .scripts
            .claim
            .evalsha_with_reload(
                &inner.client,
                &*self.key,
                vec![
                    self.group.to_string(),
                    self.name.to_string(),
                    self.options.visibility_timeout.as_millis().to_string(),
                    self.cursor.clone(),
                    count.to_string(),
                ],
            )
            .await
        {
            Ok(v) => v,
            Err(e) if e.details().contains("NOGROUP") => {
                self.recreate_group().await?;
                return Ok(());
            }
            Err(e) => return Err(unavailable(e)),
        };
        if let Value::Array(items) = claimed {
            let mut items = items.into_iter();
            self.cursor = items
                .next()
                .and_then(|c| fields::string_of(&c))
                .unwrap_or_else(|| "0-0".into());
            for item in items {
                let Value::Array(entry) = item else { continue };
                let (Some(id), Some(n), Some(fields)) = (
                    entry.first().and_then(fields::string_of),
                    entry.get(1).and_then(|v| v.as_u64()),
                    entry.get(2),
                ) else {
                    continue;
                };
                let d =
                    self.store
                        .delivery(&self.key, &self.group, &self.name, id, n as u32, fields);
                self.buffered.push_back(d);
            }
        }
        Ok(())
    }

    /// The stream or the group vanished (Redis restarted without persistence, or the
    /// key was deleted): create them again.
    async fn recreate_group(&self) -> Result<(), StoreError> {
        tracing::warn!(stream = %self.key, group = %self.group, "consumer group missing; recreating it");
        RedisStreamStore::ensure_group(
            &self.store.inner.client,
            &self.key,
            &self.group,
            &self.options.start,
        )
        .await
    }
}

/// `(id, fields)` of the entries of an `XREADGROUP`/`XREAD` reply for one stream (RESP2:
/// `[[key, [[id, [f, v, ...]], ...]]]`; RESP3 maps are handled too).
fn stream_entries(reply: &Value) -> Vec<(String, &Value)> {
    let streams: Vec<&Value> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => Some(&kv[1]),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.values().collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        if let Value::Array(entries) = entries {
            for entry in entries {
                if let Value::Array(e) = entry
                    && let (Some(id), Some(fields)) =
                        (e.first().and_then(fields::string_of), e.get(1))
                {
                    out.push((id, fields));
                }
            }
        }
    }
    out
}

impl EventStore for RedisStreamStore {
    fn features(&self) -> Features {
        Features::none()
            .ordered_per_key(true)
            .redelivers_to_other_consumers(true)
            .persistent(true)
            .idempotent_appends(self.inner.options.idempotent)
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: Vec<RawEvent>,
    ) -> BoxFuture<'a, Result<Vec<Position>, StoreError>> {
        Box::pin(async move {
            if topic.is_empty() {
                return Err(StoreError::Invalid("empty topic name".into()));
            }
            if records.is_empty() {
                return Ok(Vec::new());
            }
            let options = &self.inner.options;
            let key = self.stream_key(topic);
            let (trim, value) = match options.retention {
                None => (String::new(), String::new()),
                Some(StreamRetention::MaxLen(n)) => ("MAXLEN".into(), n.to_string()),
                Some(StreamRetention::MaxAge(age)) => (
                    "MINID".into(),
                    format!("{}-0", now_ms().saturating_sub(age.as_millis() as u64)),
                ),
            };
            if !options.idempotent {
                return self.append_plain(&key, &records, trim, value).await;
            }
            // Event ids are remembered in one hash per dedup window (the current and the
            // previous window are checked), so a retried append within at least the
            // window returns the first positions.
            let window = options.dedup_window.as_millis().max(1) as u64;
            let bucket = now_ms() / window;
            let keys = vec![
                key.clone(),
                format!("{key}:ids:{bucket}"),
                format!("{key}:ids:{}", bucket.saturating_sub(1)),
            ];
            let mut encoded = Vec::with_capacity(records.len());
            for r in &records {
                let fields = fields::encode(r);
                let size = fields::size(&fields);
                if size > options.max_record_bytes {
                    return Err(StoreError::TooLarge {
                        size,
                        max: options.max_record_bytes,
                    });
                }
                encoded.push((r.id.to_string(), fields));
            }
            // ARGV of the append script for `records` (see scripts::APPEND).
            let args = |records: Vec<(String, Vec<(String, eda_core::Bytes)>)>| {
                let mut args: Vec<Value> = Vec::with_capacity(4 + records.len() * 17);
                args.push(((window * 2) as i64).into());
                args.push(trim.as_str().into());
                args.push(value.as_str().into());
                args.push((records.len() as i64).into());
                let (ids, entries): (Vec<String>, Vec<_>) = records.into_iter().unzip();
                args.extend(ids.into_iter().map(Value::from));
                for fields in entries {
                    args.push(((fields.len() * 2) as i64).into());
                    for (name, value) in fields {
                        args.push(name.into());
                        args.push(Value::Bytes(value));
                    }
                }
                args
            };
            let ids: Vec<String> = if encoded.len() <= APPEND_CHUNK {
                self.inner
                    .scripts
                    .append
                    .evalsha_with_reload(&self.inner.client, keys, args(encoded))
                    .await
                    .map_err(unavailable)?
            } else {
                // A large batch as several script calls in one MULTI/EXEC: still atomic
                // (nothing runs between them), and Redis parses each chunk as it
                // arrives instead of waiting for one call of ~20 arguments per record
                // (batches of 1,000: 0.68-0.70 of raw pipelined XADDs as one call,
                // 0.89-0.91 in chunks of 256; 64, 128 and 512 did worse). EVAL, not
                // EVALSHA: a script missing after a restart would fail inside EXEC,
                // after the chunks before it ran.
                let tx = self.inner.client.multi();
                let mut rest = encoded;
                while !rest.is_empty() {
                    let chunk: Vec<_> = rest.drain(..rest.len().min(APPEND_CHUNK)).collect();
                    let mut eval: Vec<Value> = vec![scripts::APPEND.into(), 3i64.into()];
                    eval.extend(keys.iter().map(|k| Value::from(k.as_str())));
                    eval.extend(args(chunk));
                    let queued: Result<(), _> = tx.custom(EVAL.clone(), eval).await;
                    queued.map_err(unavailable)?;
                }
                let chunks: Vec<Vec<String>> = tx.exec(true).await.map_err(unavailable)?;
                chunks.into_iter().flatten().collect()
            };
            Ok(ids.into_iter().map(Position::new).collect())
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<DeliveryStream, StoreError>> {
        Box::pin(async move {
            if topic.is_empty() || group.is_empty() || consumer.is_empty() {
                return Err(StoreError::Invalid(
                    "topic, group and consumer names must not be empty".into(),
                ));
            }
            let key = self.stream_key(topic);
            Self::ensure_group(&self.inner.client, &key, group, &options.start).await?;
            let reader = self.inner.client.clone_new();
            reader.init().await.map_err(unavailable)?;
            let state = Consumer {
                store: self.clone(),
                reader,
                key: key.into(),
                group: group.into(),
                name: consumer.into(),
                options,
                cursor: "0-0".into(),
                last_claim: None,
                buffered: VecDeque::new(),
            };
            let stream = futures_util::stream::unfold(state, |mut state| async move {
                loop {
                    if let Some(d) = state.buffered.pop_front() {
                        return Some((Ok(d), state));
                    }
                    if let Err(e) = state.fetch().await {
                        return Some((Err(e), state));
                    }
                }
            });
            Ok(Box::pin(stream) as DeliveryStream)
        })
    }

    fn read<'a>(
        &'a self,
        topic: &'a str,
        range: ReadRange,
    ) -> BoxFuture<'a, Result<Vec<(Position, Result<RawEvent, Undecodable>)>, StoreError>> {
        Box::pin(async move {
            let key = self.stream_key(topic);
            let mut start = match &range.after {
                Some(p) => format!("({}", p.as_str()),
                None => "-".to_owned(),
            };
            if range.after.is_none()
                && let Some(since) = range.since
            {
                // Entry ids are append times; an event is appended after its time.
                start = format!("{}-0", since.unix_millis().max(0));
            }
            let mut out = Vec::new();
            loop {
                let page = 1000;
                let entries: Value = self
                    .inner
                    .client
                    .xrange(&key, start.as_str(), "+", Some(page))
                    .await
                    .map_err(unavailable)?;
                let Value::Array(entries) = entries else {
                    break;
                };
                let n = entries.len();
                for entry in &entries {
                    let Value::Array(e) = entry else { continue };
                    let (Some(id), Some(fields)) =
                        (e.first().and_then(fields::string_of), e.get(1))
                    else {
                        continue;
                    };
                    start = format!("({id}");
                    let record = fields::decode(&fields::pairs(fields));
                    if let (Some(since), Ok(r)) = (range.since, &record)
                        && r.time < since
                    {
                        continue;
                    }
                    out.push((Position::new(id), record));
                    if range.limit > 0 && out.len() >= range.limit {
                        return Ok(out);
                    }
                }
                if n < page as usize {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn backlog<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            // XINFO GROUPS (Redis 7): `lag` = entries not yet delivered to the group,
            // `pending` = delivered and not acked. `lag` is nil when Redis cannot tell
            // (entries deleted inside the group's range): then so do we.
            let key = self.stream_key(topic);
            let groups: Vec<HashMap<String, Value>> =
                match self.inner.client.xinfo_groups(key).await {
                    Ok(groups) => groups,
                    Err(e) if e.details().contains("no such key") => return Ok(None),
                    Err(e) => return Err(unavailable(e)),
                };
            let Some(info) = groups
                .iter()
                .find(|g| g.get("name").and_then(Value::as_str).as_deref() == Some(group))
            else {
                return Ok(None);
            };
            let number = |field: &str| info.get(field).and_then(Value::as_u64);
            Ok(number("lag")
                .zip(number("pending"))
                .map(|(lag, pending)| lag + pending))
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Appends are acknowledged by Redis when they return; acks may be queued.
        Box::pin(self.inner.acks.flush())
    }
}

impl OffsetStore for RedisStreamStore {
    fn commit<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = format!("{}offsets:{{{topic}}}:{group}", self.inner.options.prefix);
            let _: Value = self
                .inner
                .client
                .hset(key, (partition.to_string(), offset))
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
    fn committed<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            let key = format!("{}offsets:{{{topic}}}:{group}", self.inner.options.prefix);
            self.inner
                .client
                .hget(key, partition.to_string())
                .await
                .map_err(unavailable)
        })
    }
    fn bump_attempts<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offsets: &'a [i64],
    ) -> BoxFuture<'a, Result<Vec<u32>, StoreError>> {
        Box::pin(async move {
            if offsets.is_empty() {
                return Ok(Vec::new());
            }
            let key = self.attempts_key(group, topic, partition);
            let pipeline = self.inner.client.pipeline();
            for o in offsets {
                let _: () = pipeline
                    .hincrby(&key, o.to_string(), 1)
                    .await
                    .map_err(unavailable)?;
            }
            let counts: Vec<i64> = pipeline.all().await.map_err(unavailable)?;
            Ok(counts.into_iter().map(|c| c.max(1) as u32).collect())
        })
    }
    fn clear_attempts<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.attempts_key(group, topic, partition);
            let _: i64 = self
                .inner
                .scripts
                .clear_attempts
                .evalsha_with_reload(&self.inner.client, key, vec![offset.to_string()])
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
}

impl LeaseStore for RedisStreamStore {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let keys = vec![self.lease_key(name), self.lease_index()];
            let held: i64 = self
                .inner
                .scripts
                .lease_acquire
                .evalsha_with_reload(
                    &self.inner.client,
                    keys,
                    vec![
                        holder.to_owned(),
                        ttl.as_millis().max(1).to_string(),
                        name.to_owned(),
                    ],
                )
                .await
                .map_err(unavailable)?;
            Ok(held == 1)
        })
    }
    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let keys = vec![self.lease_key(name), self.lease_index()];
            let _: i64 = self
                .inner
                .scripts
                .lease_release
                .evalsha_with_reload(
                    &self.inner.client,
                    keys,
                    vec![holder.to_owned(), name.to_owned()],
                )
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
    fn holders<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            // Lease names are indexed in a sorted set (all scores 0: ordered by name), so a
            // prefix is a lexicographic range.
            let index = self.lease_index();
            let names: Vec<String> = self
                .inner
                .client
                .custom(
                    fred::cmd!("ZRANGE"),
                    vec![
                        index.clone(),
                        format!("[{prefix}"),
                        format!("[{prefix}\u{10FFFF}"),
                        "BYLEX".into(),
                    ],
                )
                .await
                .map_err(unavailable)?;
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = names.iter().map(|n| self.lease_key(n)).collect();
            let values: Vec<Option<String>> =
                self.inner.client.mget(keys).await.map_err(unavailable)?;
            let mut live = Vec::new();
            let mut expired = Vec::new();
            for (name, holder) in names.into_iter().zip(values) {
                match holder {
                    Some(holder) => live.push((name, holder)),
                    None => expired.push(name),
                }
            }
            if !expired.is_empty() {
                // Expired leases leave their names behind: tidy the index.
                let _: i64 = self
                    .inner
                    .client
                    .custom(fred::cmd!("ZREM"), {
                        let mut args = vec![index];
                        args.extend(expired);
                        args
                    })
                    .await
                    .map_err(unavailable)?;
            }
            Ok(live)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eda_core::Bytes;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://app:s3cret@db:6379/0"),
            "redis://app:***@db:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("rediss://:pw@h"), "rediss://:***@h");
    }

    #[test]
    fn bytes_are_kept_as_given() {
        let b = Bytes::from_static(b"\x00\xff");
        assert_eq!(fields::bytes_of(&Value::Bytes(b.clone())), Some(b));
    }
}
