//! The SQLite store of [eda](https://docs.rs/eda): durable topics in one file, consumer
//! groups shared by any number of processes, visibility timeouts, crash-proof attempt
//! counts, replay. It implements [`EventStore`], [`OffsetStore`] and [`LeaseStore`] and
//! passes the `eda-testkit` conformance suite.
//!
//! Events are rows with one column per CloudEvents attribute (`id`, `source`, `type`,
//! `time`, `datacontenttype`, `partitionkey`, ...), other extensions as a JSON object and
//! the data as a BLOB, so `sqlite3` shows them without eda. The schema is created by
//! embedded sqlx migrations. WAL journal, `synchronous=NORMAL` by default (FULL
//! optional).
//!
//! ```
//! use eda_core::{ConsumeOptions, Envelope, EventStore, JsonCodec, StartFrom};
//! use eda_store_sqlite::SqliteStore;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Ping { n: u32 }
//! # impl eda_core::Event for Ping { const TYPE: &'static str = "ping"; }
//! use futures_util::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("events.db")).await?;
//! let record = Envelope::new(Ping { n: 1 }).to_raw(&JsonCodec)?;
//! store.append("pings", vec![record]).await?;
//!
//! let options = ConsumeOptions { start: StartFrom::Beginning, ..Default::default() };
//! let mut deliveries = store.subscribe("pings", "counter", "worker-1", options).await?;
//! let delivery = deliveries.next().await.unwrap()?;
//! assert_eq!(delivery.attempt, 1);
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eda_core::{
    AckBatchOptions, AckBatcher, AckHandle, BoxFuture, Bytes, ConsumeOptions, Delivery,
    DeliveryStream, EventId, EventStore, Features, FlushAcks, LeaseStore, Metadata, OffsetStore,
    Position, RawEvent, ReadRange, StartFrom, StoreError, Timestamp, Undecodable,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::Notify;

/// How often a consumer with nothing to do checks the file for work from other
/// processes (appends in this process wake it at once).
const POLL: Duration = Duration::from_millis(50);
/// Rows per multi-row INSERT (17 columns; SQLite allows 32,766 parameters).
const INSERT_CHUNK: usize = 500;
/// Acks per DELETE (4 parameters each).
const ACK_CHUNK: usize = 1000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn position(seq: i64) -> Position {
    Position::new(seq.to_string())
}

fn seq_of(position: &Position) -> Result<i64, StoreError> {
    position
        .as_str()
        .parse()
        .map_err(|_| StoreError::Invalid(format!("`{position}` is not an SQLite position")))
}

/// How much of a topic [`SqliteStore::prune`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// The newest `n` records.
    MaxCount(u64),
    /// Records whose CloudEvents `time` is at most this old.
    MaxAge(Duration),
}

/// Options of a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteStoreBuilder {
    path: std::path::PathBuf,
    full_sync: bool,
    max_record_bytes: usize,
    busy_timeout: Duration,
    max_connections: u32,
    acks: AckBatchOptions,
}

impl SqliteStoreBuilder {
    /// `synchronous=FULL`: every commit survives a power loss (default NORMAL: survives
    /// a crash of the process, may lose the last commits on power loss).
    pub fn full_sync(mut self, on: bool) -> Self {
        self.full_sync = on;
        self
    }
    /// Largest record accepted: its data plus its attributes (default 1 MiB).
    pub fn max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }
    /// How long an operation waits for a lock held by another connection or process
    /// before failing with `StoreError::Unavailable` (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
    /// When acks are written: they are queued and flushed together, at most
    /// `linger` late (default 100 ms) or as soon as `max_batch` wait (default 512), and
    /// also by the next take of deliveries in this process, [`EventStore::flush`],
    /// [`SqliteStore::close`] and drop. See [`eda_core::ack_batch`].
    pub fn ack_batching(mut self, options: AckBatchOptions) -> Self {
        self.acks = options;
        self
    }
    /// Connections in the pool (default 4).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }
    /// Opens (creating if needed) the file and applies the migrations.
    pub async fn open(self) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if self.full_sync {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(self.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(self.max_connections)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating the schema: {e}")))?;
        let acks = AckBatcher::spawn(AckWriter { pool: pool.clone() }, self.acks);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                pool,
                notify: Notify::new(),
                max_record_bytes: self.max_record_bytes,
                acks,
            }),
        })
    }
}

/// Durable topics in an SQLite file. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    notify: Notify,
    max_record_bytes: usize,
    acks: AckBatcher<AckKey>,
}

/// Runs a write transaction on a task of its own, so that it commits however its caller
/// polls. A transaction is otherwise driven by whoever polls its future: a consumer that
/// stops polling its delivery stream between two statements of a take (`ready_chunks`
/// hands a chunk over while the next take has begun) would keep SQLite's write lock, and
/// every other writer (that consumer's own dead letters and acks, the application's
/// outbox transactions) would wait out the busy timeout and fail with "database is
/// locked". Dropping the returned future does not cancel the transaction.
async fn detached<T: Send + 'static>(
    transaction: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(transaction)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store transaction task: {e}")))?
}

/// An acked delivery, until its in-flight row is deleted.
#[derive(Clone)]
struct AckKey {
    topic: Arc<str>,
    group: Arc<str>,
    seq: i64,
    token: i64,
}

/// Deletes the in-flight rows of acked deliveries, as long as the acking consumer still
/// holds them (the token matches).
struct AckWriter {
    pool: SqlitePool,
}

async fn delete_acked(
    conn: &mut sqlx::SqliteConnection,
    batch: &[AckKey],
) -> Result<(), sqlx::Error> {
    for chunk in batch.chunks(ACK_CHUNK) {
        let mut delete = QueryBuilder::<Sqlite>::new(
            "DELETE FROM eda_inflight WHERE rowid IN (SELECT i.rowid FROM (",
        );
        delete.push_values(chunk, |mut b, k| {
            b.push_bind(&*k.topic)
                .push_bind(&*k.group)
                .push_bind(k.seq)
                .push_bind(k.token);
        });
        delete.push(
            ") v JOIN eda_inflight i ON i.topic = v.column1 AND i.grp = v.column2 \
             AND i.seq = v.column3 AND i.token = v.column4)",
        );
        delete.build().execute(&mut *conn).await?;
    }
    Ok(())
}

impl FlushAcks<AckKey> for AckWriter {
    fn flush_acks<'a>(&'a self, batch: &'a [AckKey]) -> BoxFuture<'a, Result<(), StoreError>> {
        let (pool, batch) = (self.pool.clone(), batch.to_vec());
        Box::pin(detached(async move {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            delete_acked(&mut tx, &batch).await.map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)
        }))
    }
}

impl SqliteStore {
    /// Options for the file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_path_buf(),
            full_sync: false,
            max_record_bytes: 1024 * 1024,
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
            acks: AckBatchOptions::default(),
        }
    }

    /// Opens (creating if needed) the file at `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::builder(path).open().await
    }

    /// Writes the queued acks and closes the connections. Clones of this store fail
    /// with `StoreError::Unavailable` afterwards.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.inner.acks.flush().await;
        self.inner.pool.close().await;
        flushed
    }

    /// Appends `records` inside the caller's own transaction on this store's file: the
    /// **transactional outbox**. The business write and the events commit together or
    /// not at all; consumers see the events once the caller commits (those of this
    /// process within their 50 ms poll). Same checks and idempotence as
    /// [`EventStore::append`].
    ///
    /// ```
    /// use eda_core::{Envelope, EventStore, JsonCodec, ReadRange};
    /// use eda_store_sqlite::SqliteStore;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { id: u64 }
    /// # impl eda_core::Event for OrderPlaced { const TYPE: &'static str = "order.placed"; }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let store = SqliteStore::open(dir.path().join("shop.db")).await?;
    /// sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(store.pool()).await?;
    ///
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (7)").execute(&mut *tx).await?;
    /// let event = Envelope::new(OrderPlaced { id: 7 }).to_raw(&JsonCodec)?;
    /// store.append_in(&mut tx, "orders", &[event]).await?;
    /// tx.commit().await?; // the order row and its event, together
    ///
    /// assert_eq!(store.read("orders", ReadRange::default()).await?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn append_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        topic: &str,
        records: &[RawEvent],
    ) -> Result<Vec<Position>, StoreError> {
        if topic.is_empty() {
            return Err(StoreError::Invalid("empty topic name".into()));
        }
        for r in records {
            let size = stored_size(r);
            if size > self.inner.max_record_bytes {
                return Err(StoreError::TooLarge {
                    size,
                    max: self.inner.max_record_bytes,
                });
            }
        }
        let mut positions = Vec::with_capacity(records.len());
        for chunk in records.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO eda_events (topic, id, source, type, time, time_ms, \
                 datacontenttype, dataschema, subject, traceparent, tracestate, \
                 partitionkey, correlationid, causationid, extensions, data) ",
            );
            insert.push_values(chunk, |mut b, r| {
                let m = &r.metadata;
                b.push_bind(topic)
                    .push_bind(r.id.to_string())
                    .push_bind(&*r.source)
                    .push_bind(&*r.event_type)
                    .push_bind(r.time.to_rfc3339())
                    .push_bind(r.time.unix_millis())
                    .push_bind(r.datacontenttype.as_deref())
                    .push_bind(r.dataschema.as_deref())
                    .push_bind(m.subject.as_deref())
                    .push_bind(m.traceparent.map(|t| t.to_string()))
                    .push_bind(m.tracestate.as_deref())
                    .push_bind(m.partition_key.as_deref())
                    .push_bind(m.correlation_id.as_deref())
                    .push_bind(m.causation_id.map(|c| c.to_string()))
                    .push_bind(extensions_json(m))
                    .push_bind(&r.data[..]);
            });
            insert.push(" ON CONFLICT (topic, id) DO NOTHING");
            let done = insert
                .build()
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if done.rows_affected() == chunk.len() as u64 {
                // Every row is new. Within this write transaction an INSERT ... VALUES
                // gives its rows consecutive AUTOINCREMENT sequences in VALUES order.
                let last = done.last_insert_rowid();
                let first = last - chunk.len() as i64 + 1;
                positions.extend((first..=last).map(position));
            } else {
                // Some ids were stored already (a retried append): look every one up.
                let mut select =
                    QueryBuilder::<Sqlite>::new("SELECT id, seq FROM eda_events WHERE topic = ");
                select.push_bind(topic).push(" AND id IN (");
                let mut ids = select.separated(", ");
                for r in chunk {
                    ids.push_bind(r.id.to_string());
                }
                select.push(")");
                let found: std::collections::HashMap<String, i64> = select
                    .build_query_as::<(String, i64)>()
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(unavailable)?
                    .into_iter()
                    .collect();
                for r in chunk {
                    let seq = found.get(&r.id.to_string()).ok_or_else(|| {
                        StoreError::Unavailable(format!("record {} vanished", r.id))
                    })?;
                    positions.push(position(*seq));
                }
            }
        }
        Ok(positions)
    }

    /// Deletes the oldest records of `topic` beyond `retention`, and returns how many
    /// went. Retention is by position, as in Kafka: a group that had not read a deleted
    /// record never will, and deliveries of deleted records in flight are dropped. Run
    /// it periodically (e.g. from a `tokio::time::interval`).
    pub async fn prune(&self, topic: &str, retention: Retention) -> Result<u64, StoreError> {
        let (store, topic) = (self.clone(), topic.to_owned());
        detached(async move { store.prune_in_tx(&topic, retention).await }).await
    }

    async fn prune_in_tx(&self, topic: &str, retention: Retention) -> Result<u64, StoreError> {
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        // The first sequence kept.
        let keep_from: Option<i64> = match retention {
            Retention::MaxCount(0) => Some(i64::MAX),
            Retention::MaxCount(n) => sqlx::query_scalar(
                "SELECT seq FROM eda_events WHERE topic = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            )
            .bind(topic)
            .bind(n.saturating_sub(1) as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?,
            Retention::MaxAge(age) => {
                let cutoff = now_ms() - age.as_millis() as i64;
                let first: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(seq) FROM eda_events WHERE topic = ? AND time_ms >= ?",
                )
                .bind(topic)
                .bind(cutoff)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
                // Nothing young enough: everything goes.
                Some(first.unwrap_or(i64::MAX))
            }
        };
        let Some(keep_from) = keep_from else {
            return Ok(0); // fewer records than the count kept
        };
        let deleted = sqlx::query("DELETE FROM eda_events WHERE topic = ? AND seq < ?")
            .bind(topic)
            .bind(keep_from)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        sqlx::query("DELETE FROM eda_inflight WHERE topic = ? AND seq < ?")
            .bind(topic)
            .bind(keep_from)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(deleted)
    }

    /// The **transactional inbox**: marks `key` (usually the event id) as handled by
    /// `group` inside the caller's transaction, and says whether this is the first
    /// time. Do the handler's writes in the same transaction and commit it before
    /// acking: the effect and the mark commit together, so a redelivery after any
    /// crash finds the mark (exactly-once effect), and a crash before the commit leaves
    /// neither (the redelivery does the work).
    ///
    /// ```
    /// use eda_store_sqlite::SqliteStore;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let store = SqliteStore::open(dir.path().join("ledger.db")).await?;
    /// sqlx::query("CREATE TABLE payments (order_id INTEGER)").execute(store.pool()).await?;
    /// for _delivery in 0..2 { // the same event, delivered twice
    ///     let mut tx = store.pool().begin().await?;
    ///     if store.inbox_mark(&mut tx, "ledger", "0193a4e0-event-id").await? {
    ///         sqlx::query("INSERT INTO payments VALUES (17)").execute(&mut *tx).await?;
    ///     }
    ///     tx.commit().await?;
    /// }
    /// let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM payments").fetch_one(store.pool()).await?;
    /// assert_eq!(n, 1);
    /// # Ok(()) }
    /// ```
    pub async fn inbox_mark(
        &self,
        conn: &mut sqlx::SqliteConnection,
        group: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO eda_inbox (grp, key, seen_ms) VALUES (?, ?, ?) \
             ON CONFLICT (grp, key) DO NOTHING",
        )
        .bind(group)
        .bind(key)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes inbox marks older than `age` (the dedup window): redeliveries older than
    /// that are handled again. Returns how many went.
    pub async fn prune_inbox(&self, age: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM eda_inbox WHERE seen_ms < ?")
            .bind(now_ms() - age.as_millis() as i64)
            .execute(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    /// The connection pool, e.g. for the caller's own queries in the same file.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Inserts a row as given, without validation: for tests of records that another
    /// tool wrote (an id that is not a UUID, data that does not decode).
    pub async fn insert_unchecked(
        &self,
        topic: &str,
        id: &str,
        event_type: &str,
        data: &[u8],
    ) -> Result<Position, StoreError> {
        let now = Timestamp::now();
        let row = sqlx::query(
            "INSERT INTO eda_events (topic, id, source, type, time, time_ms, data) \
             VALUES (?, ?, 'unknown', ?, ?, ?, ?) RETURNING seq",
        )
        .bind(topic)
        .bind(id)
        .bind(event_type)
        .bind(now.to_rfc3339())
        .bind(now.unix_millis())
        .bind(data)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        self.inner.notify.notify_waiters();
        Ok(position(row.get::<i64, _>(0)))
    }

    /// Takes up to `max` deliveries for the group: timed-out and nacked ones first,
    /// then new records, in one write transaction (safe across processes).
    async fn take(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        visibility: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let acked = self.inner.acks.drain();
        let store = self.clone();
        let (topic, group, consumer) = (topic.to_owned(), group.to_owned(), consumer.to_owned());
        detached(async move {
            let taken = store
                .take_in_tx(&topic, &group, &consumer, visibility, max, &acked)
                .await;
            if taken.is_err() {
                store.inner.acks.requeue(acked);
            }
            taken
        })
        .await
    }

    /// [`take`](Self::take)'s transaction, which first settles the acks queued in this
    /// process (one commit for both, and this consumer never sees its own acked records
    /// again).
    async fn take_in_tx(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        visibility: Duration,
        max: usize,
        acked: &[AckKey],
    ) -> Result<Vec<Delivery>, StoreError> {
        let now = now_ms();
        let deadline = now + visibility.as_millis() as i64;
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        // Write first, so the transaction holds the write lock from its first statement
        // (a deferred read-then-write transaction can fail to upgrade under WAL).
        sqlx::query("UPDATE eda_groups SET next_seq = next_seq WHERE topic = ? AND grp = ?")
            .bind(topic)
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        delete_acked(&mut tx, acked).await.map_err(unavailable)?;
        let mut picked: Vec<(i64, i64, i64)> = Vec::new(); // (seq, attempt, token)
        let again: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, attempts FROM eda_inflight WHERE topic = ? AND grp = ? \
             AND (deadline_ms IS NULL OR deadline_ms <= ?) ORDER BY seq LIMIT ?",
        )
        .bind(topic)
        .bind(group)
        .bind(now)
        .bind(max as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        for (seq, attempts) in again {
            let token = fastrand::i64(1..);
            sqlx::query(
                "UPDATE eda_inflight SET attempts = ?, holder = ?, deadline_ms = ?, token = ? \
                 WHERE topic = ? AND grp = ? AND seq = ?",
            )
            .bind(attempts + 1)
            .bind(consumer)
            .bind(deadline)
            .bind(token)
            .bind(topic)
            .bind(group)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            picked.push((seq, attempts + 1, token));
        }
        let room = max.saturating_sub(picked.len());
        // New records: one INSERT ... SELECT claims the next `room` of them for this
        // consumer (one token for the whole take: a redelivery is another take).
        let mut fresh: Vec<i64> = Vec::new();
        let take_token = fastrand::i64(1..);
        if room > 0 {
            fresh = sqlx::query_scalar(
                "INSERT INTO eda_inflight (topic, grp, seq, attempts, holder, deadline_ms, token) \
                 SELECT topic, ?, seq, 1, ?, ?, ? FROM eda_events \
                 WHERE topic = ? AND seq >= \
                   (SELECT next_seq FROM eda_groups WHERE topic = ? AND grp = ?) \
                 ORDER BY seq LIMIT ? RETURNING seq",
            )
            .bind(group)
            .bind(consumer)
            .bind(deadline)
            .bind(take_token)
            .bind(topic)
            .bind(topic)
            .bind(group)
            .bind(room as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            if let Some(last) = fresh.iter().max() {
                sqlx::query("UPDATE eda_groups SET next_seq = ? WHERE topic = ? AND grp = ?")
                    .bind(last + 1)
                    .bind(topic)
                    .bind(group)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
        }
        tx.commit().await.map_err(unavailable)?;
        if picked.is_empty() && fresh.is_empty() {
            return Ok(Vec::new());
        }
        let mut decoded: std::collections::HashMap<i64, Result<RawEvent, Undecodable>> =
            std::collections::HashMap::with_capacity(picked.len() + fresh.len());
        if let (Some(first), Some(last)) = (fresh.iter().min(), fresh.iter().max()) {
            // The fresh records are exactly the topic's records in [first, last]. One JSON
            // array for all of them: sqlx hands rows over from its SQLite thread one at a
            // time, which cost more than the query itself.
            let json: Option<String> = sqlx::query_scalar(&format!(
                "SELECT json_group_array({JSON_ROW}) FROM \
                 (SELECT * FROM eda_events WHERE topic = ? AND seq BETWEEN ? AND ? ORDER BY seq)"
            ))
            .bind(topic)
            .bind(first)
            .bind(last)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(unavailable)?;
            let rows: Vec<Vec<serde_json::Value>> =
                serde_json::from_str(json.as_deref().unwrap_or("[]"))
                    .map_err(|e| StoreError::Unavailable(format!("reading records: {e}")))?;
            for row in &rows {
                if let Some(seq) = row.first().and_then(serde_json::Value::as_i64) {
                    decoded.insert(seq, decode_row(&JsonRow(row)));
                }
            }
        }
        if !picked.is_empty() {
            let mut select = QueryBuilder::<Sqlite>::new("SELECT * FROM eda_events WHERE seq IN (");
            let mut list = select.separated(", ");
            for (seq, _, _) in &picked {
                list.push_bind(*seq);
            }
            select.push(")");
            let rows = select
                .build()
                .fetch_all(&self.inner.pool)
                .await
                .map_err(unavailable)?;
            for row in &rows {
                decoded.insert(row.get::<i64, _>("seq"), decode_row(row));
            }
        }
        picked.extend(fresh.iter().map(|seq| (*seq, 1, take_token)));
        picked.sort_unstable();
        let (topic, group): (Arc<str>, Arc<str>) = (topic.into(), group.into());
        Ok(picked
            .into_iter()
            .filter_map(|(seq, attempt, token)| {
                let record = decoded.remove(&seq)?;
                Some(Delivery::new(
                    position(seq),
                    attempt as u32,
                    record,
                    Box::new(SqliteAck {
                        store: self.clone(),
                        key: AckKey {
                            topic: topic.clone(),
                            group: group.clone(),
                            seq,
                            token,
                        },
                    }),
                ))
            })
            .collect())
    }
}

/// What a record takes in the store: its data and attributes (the size limit's measure).
fn stored_size(r: &RawEvent) -> usize {
    let m = &r.metadata;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    r.data.len()
        + r.source.len()
        + r.event_type.len()
        + 36 // id
        + 24 // time
        + opt(&r.datacontenttype)
        + opt(&r.dataschema)
        + opt(&m.subject)
        + opt(&m.tracestate)
        + opt(&m.partition_key)
        + opt(&m.correlation_id)
        + m.headers().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>()
        + if m.traceparent.is_some() { 55 } else { 0 }
        + if m.causation_id.is_some() { 36 } else { 0 }
}

/// The extensions column: headers as a JSON object of strings.
fn extensions_json(m: &Metadata) -> String {
    let mut headers = m.headers().peekable();
    if headers.peek().is_none() {
        return "{}".to_owned();
    }
    let object: serde_json::Map<String, serde_json::Value> = headers
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// Read access to a stored record's columns: an sqlx row, or one element of the JSON
/// array a batch is fetched as.
trait Columns {
    fn text(&self, name: &str) -> Result<&str, String>;
    fn opt(&self, name: &str) -> Result<Option<&str>, String>;
    fn data(&self) -> Result<Bytes, String>;
}

impl Columns for SqliteRow {
    fn text(&self, name: &str) -> Result<&str, String> {
        self.try_get::<&str, _>(name).map_err(|e| e.to_string())
    }
    fn opt(&self, name: &str) -> Result<Option<&str>, String> {
        self.try_get::<Option<&str>, _>(name)
            .map_err(|e| e.to_string())
    }
    fn data(&self) -> Result<Bytes, String> {
        self.try_get::<&[u8], _>("data")
            .map(Bytes::copy_from_slice)
            .map_err(|e| e.to_string())
    }
}

/// The columns of [`JSON_ROW`], in order.
const JSON_COLUMNS: [&str; 15] = [
    "seq",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "traceparent",
    "tracestate",
    "partitionkey",
    "correlationid",
    "causationid",
    "extensions",
    "data",
];

/// A record as a JSON array of [`JSON_COLUMNS`] (the data as hex).
const JSON_ROW: &str = "json_array(seq, id, source, type, time, datacontenttype, dataschema, \
     subject, traceparent, tracestate, partitionkey, correlationid, causationid, extensions, \
     hex(data))";

struct JsonRow<'a>(&'a [serde_json::Value]);

impl JsonRow<'_> {
    fn get(&self, name: &str) -> Option<&serde_json::Value> {
        let i = JSON_COLUMNS.iter().position(|c| *c == name)?;
        self.0.get(i)
    }
}

impl Columns for JsonRow<'_> {
    fn text(&self, name: &str) -> Result<&str, String> {
        self.opt(name)?
            .ok_or_else(|| format!("column `{name}` is NULL"))
    }
    fn opt(&self, name: &str) -> Result<Option<&str>, String> {
        match self.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("column `{name}` is not text: {other}")),
        }
    }
    fn data(&self) -> Result<Bytes, String> {
        let hex = self.text("data")?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err("data is not hex".to_owned()),
        };
        hex.as_bytes()
            .chunks(2)
            .map(|pair| match pair {
                [h, l] => Ok(digit(*h)? << 4 | digit(*l)?),
                _ => Err("data hex has an odd length".to_owned()),
            })
            .collect::<Result<Vec<u8>, String>>()
            .map(Bytes::from)
    }
}

/// The event in a row, or why it is not one.
fn decode_row(row: &impl Columns) -> Result<RawEvent, Undecodable> {
    let attempt = || -> Result<RawEvent, String> {
        let text = |name: &str| row.text(name);
        let opt_str = |name: &str| row.opt(name);
        let opt = |name: &str| opt_str(name).map(|v| v.map(str::to_owned));
        let id: EventId = text("id")?
            .parse()
            .map_err(|e: eda_core::EnvelopeError| e.to_string())?;
        let time = Timestamp::parse_rfc3339(text("time")?).map_err(|e| e.to_string())?;
        let mut metadata = Metadata::default();
        metadata.subject = opt("subject")?;
        metadata.traceparent = opt_str("traceparent")?
            .map(|t| t.parse())
            .transpose()
            .map_err(|e: eda_core::EnvelopeError| e.to_string())?;
        metadata.tracestate = opt("tracestate")?;
        metadata.partition_key = opt("partitionkey")?;
        metadata.correlation_id = opt("correlationid")?;
        metadata.causation_id = opt_str("causationid")?
            .map(|c| c.parse())
            .transpose()
            .map_err(|e: eda_core::EnvelopeError| e.to_string())?;
        let extensions_text = text("extensions")?;
        let extensions: serde_json::Map<String, serde_json::Value> = if extensions_text == "{}" {
            serde_json::Map::new()
        } else {
            serde_json::from_str(extensions_text).map_err(|e| e.to_string())?
        };
        for (name, value) in extensions {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            metadata
                .insert_header(name, value)
                .map_err(|e| e.to_string())?;
        }
        Ok(RawEvent {
            id,
            time,
            source: Arc::from(text("source")?),
            event_type: Arc::from(text("type")?),
            datacontenttype: opt("datacontenttype")?,
            dataschema: opt("dataschema")?,
            metadata,
            data: row.data()?,
        })
    };
    attempt().map_err(|error| {
        let data = row.data().unwrap_or_default();
        let raw = serde_json::json!({
            "id": row.opt("id").ok().flatten().unwrap_or_default(),
            "type": row.opt("type").ok().flatten().unwrap_or_default(),
            "data": String::from_utf8_lossy(&data),
        });
        Undecodable {
            raw: Bytes::from(raw.to_string()),
            error,
        }
    })
}

struct SqliteAck {
    store: SqliteStore,
    key: AckKey,
}

impl SqliteAck {
    async fn held<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<(), StoreError> {
        let done = query
            .bind(&*self.key.topic)
            .bind(&*self.key.group)
            .bind(self.key.seq)
            .bind(self.key.token)
            .execute(&self.store.inner.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotHeld(position(self.key.seq)));
        }
        Ok(())
    }
}

impl AckHandle for SqliteAck {
    fn ack(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Queued: flushed in a batch (see `SqliteStoreBuilder::ack_batching`). An ack of
        // a delivery that timed out meanwhile matches no row and has no effect.
        self.store.inner.acks.push(self.key.clone());
        Box::pin(std::future::ready(Ok(())))
    }
    fn nack(&self, _reason: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.held(sqlx::query(
                "UPDATE eda_inflight SET deadline_ms = NULL, holder = NULL \
                 WHERE topic = ? AND grp = ? AND seq = ? AND token = ?",
            ))
            .await?;
            self.store.inner.notify.notify_waiters();
            Ok(())
        })
    }
    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let query = sqlx::query(
                "UPDATE eda_inflight SET deadline_ms = deadline_ms + ? \
                 WHERE topic = ? AND grp = ? AND seq = ? AND token = ?",
            )
            .bind(by.as_millis() as i64);
            self.held(query).await
        })
    }
}

impl EventStore for SqliteStore {
    fn features(&self) -> Features {
        Features::none()
            .ordered_per_key(true)
            .redelivers_to_other_consumers(true)
            .persistent(true)
            .idempotent_appends(true)
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: Vec<RawEvent>,
    ) -> BoxFuture<'a, Result<Vec<Position>, StoreError>> {
        let (store, topic) = (self.clone(), topic.to_owned());
        Box::pin(detached(async move {
            let mut tx = store.inner.pool.begin().await.map_err(unavailable)?;
            let positions = store.append_in(&mut tx, &topic, &records).await?;
            tx.commit().await.map_err(unavailable)?;
            store.inner.notify.notify_waiters();
            Ok(positions)
        }))
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<DeliveryStream, StoreError>> {
        Box::pin(async move {
            let start = match &options.start {
                StartFrom::Beginning => 0,
                StartFrom::NewOnly => {
                    let max: Option<i64> =
                        sqlx::query_scalar("SELECT MAX(seq) FROM eda_events WHERE topic = ?")
                            .bind(topic)
                            .fetch_one(&self.inner.pool)
                            .await
                            .map_err(unavailable)?;
                    max.unwrap_or(0) + 1
                }
                StartFrom::After(p) => seq_of(p)? + 1,
            };
            sqlx::query("INSERT OR IGNORE INTO eda_groups (topic, grp, next_seq) VALUES (?, ?, ?)")
                .bind(topic)
                .bind(group)
                .bind(start)
                .execute(&self.inner.pool)
                .await
                .map_err(unavailable)?;
            let state = (
                self.clone(),
                topic.to_owned(),
                group.to_owned(),
                consumer.to_owned(),
                options,
                std::collections::VecDeque::<Delivery>::new(),
            );
            let stream = futures_util::stream::unfold(state, |mut state| async move {
                loop {
                    if let Some(d) = state.5.pop_front() {
                        return Some((Ok(d), state));
                    }
                    let failed = {
                        let (store, topic, group, consumer, options, buffered) = &mut state;
                        let notified = store.inner.notify.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        let max = options.batch_size.max(1);
                        match store
                            .take(topic, group, consumer, options.visibility_timeout, max)
                            .await
                        {
                            Ok(batch) if !batch.is_empty() => {
                                buffered.extend(batch);
                                None
                            }
                            Ok(_) => {
                                let _ = tokio::time::timeout(POLL, notified).await;
                                None
                            }
                            Err(e) => Some(e),
                        }
                    };
                    if let Some(e) = failed {
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
            let after = match &range.after {
                Some(p) => seq_of(p)?,
                None => 0,
            };
            let limit = if range.limit == 0 {
                -1
            } else {
                range.limit as i64
            };
            let rows = sqlx::query(
                "SELECT * FROM eda_events WHERE topic = ? AND seq > ? AND time_ms >= ? \
                 ORDER BY seq LIMIT ?",
            )
            .bind(topic)
            .bind(after)
            .bind(range.since.map_or(i64::MIN, |t| t.unix_millis()))
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable)?;
            Ok(rows
                .iter()
                .map(|row| (position(row.get::<i64, _>("seq")), decode_row(row)))
                .collect())
        })
    }

    fn backlog<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            // Not yet delivered (at or past the group's next_seq) plus delivered and not
            // acked (in flight; acks still queued count until they are flushed).
            let pending: Option<i64> = sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM eda_events e                          WHERE e.topic = g.topic AND e.seq >= g.next_seq)                       + (SELECT COUNT(*) FROM eda_inflight f                          WHERE f.topic = g.topic AND f.grp = g.grp)                  FROM eda_groups g WHERE g.topic = ? AND g.grp = ?",
            )
            .bind(topic)
            .bind(group)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(unavailable)?;
            Ok(pending.map(|n| n.max(0) as u64))
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Every append is its own committed transaction already; acks may be queued.
        Box::pin(self.inner.acks.flush())
    }
}

impl OffsetStore for SqliteStore {
    fn commit<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO eda_offsets (grp, topic, partition, offset) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (grp, topic, partition) DO UPDATE SET offset = excluded.offset",
            )
            .bind(group)
            .bind(topic)
            .bind(i64::from(partition))
            .bind(offset)
            .execute(&self.inner.pool)
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
            sqlx::query_scalar(
                "SELECT offset FROM eda_offsets WHERE grp = ? AND topic = ? AND partition = ?",
            )
            .bind(group)
            .bind(topic)
            .bind(i64::from(partition))
            .fetch_optional(&self.inner.pool)
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
        let store = self.clone();
        let (group, topic, offsets) = (group.to_owned(), topic.to_owned(), offsets.to_vec());
        Box::pin(detached(async move {
            store
                .bump_attempts_in_tx(&group, &topic, partition, &offsets)
                .await
        }))
    }
    fn clear_attempts<'a>(
        &'a self,
        group: &'a str,
        topic: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "DELETE FROM eda_attempts WHERE grp = ? AND topic = ? AND partition = ? AND offset < ?",
            )
            .bind(group)
            .bind(topic)
            .bind(i64::from(partition))
            .bind(offset)
            .execute(&self.inner.pool)
            .await
            .map_err(unavailable)?;
            Ok(())
        })
    }
}

impl SqliteStore {
    /// [`OffsetStore::bump_attempts`]'s transaction.
    async fn bump_attempts_in_tx(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offsets: &[i64],
    ) -> Result<Vec<u32>, StoreError> {
        if offsets.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        for chunk in offsets.chunks(INSERT_CHUNK) {
            let mut upsert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO eda_attempts (grp, topic, partition, offset, attempts) ",
            );
            upsert.push_values(chunk, |mut b, o| {
                b.push_bind(group)
                    .push_bind(topic)
                    .push_bind(i64::from(partition))
                    .push_bind(*o)
                    .push_bind(1i64);
            });
            upsert.push(
                " ON CONFLICT (grp, topic, partition, offset) \
                 DO UPDATE SET attempts = attempts + 1",
            );
            upsert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        // The counts back as one JSON row (sqlx hands rows over one at a time).
        let (low, high) = (
            offsets.iter().min().copied().unwrap_or(0),
            offsets.iter().max().copied().unwrap_or(0),
        );
        let json: Option<String> = sqlx::query_scalar(
            "SELECT json_group_object(offset, attempts) FROM eda_attempts \
             WHERE grp = ? AND topic = ? AND partition = ? AND offset BETWEEN ? AND ?",
        )
        .bind(group)
        .bind(topic)
        .bind(i64::from(partition))
        .bind(low)
        .bind(high)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let counts: std::collections::HashMap<String, i64> =
            serde_json::from_str(json.as_deref().unwrap_or("{}"))
                .map_err(|e| StoreError::Unavailable(format!("reading attempts: {e}")))?;
        tx.commit().await.map_err(unavailable)?;
        Ok(offsets
            .iter()
            .map(|o| counts.get(&o.to_string()).copied().unwrap_or(1) as u32)
            .collect())
    }
}

impl LeaseStore for SqliteStore {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let done = sqlx::query(
                "INSERT INTO eda_leases (name, holder, until_ms) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
                 WHERE eda_leases.holder = excluded.holder OR eda_leases.until_ms <= ?",
            )
            .bind(name)
            .bind(holder)
            .bind(now + ttl.as_millis() as i64)
            .bind(now)
            .execute(&self.inner.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }
    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM eda_leases WHERE name = ? AND holder = ?")
                .bind(name)
                .bind(holder)
                .execute(&self.inner.pool)
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
            sqlx::query_as(
                "SELECT name, holder FROM eda_leases \
                 WHERE substr(name, 1, ?) = ? AND until_ms > ? ORDER BY name",
            )
            .bind(prefix.chars().count() as i64)
            .bind(prefix)
            .bind(now_ms())
            .fetch_all(&self.inner.pool)
            .await
            .map_err(unavailable)
        })
    }
}
