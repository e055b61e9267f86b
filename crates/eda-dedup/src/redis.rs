//! The dedup window in Redis: `SET <prefix><key> 1 NX PX <ms>`.

use std::time::Duration;

use eda_core::{BoxFuture, Timestamp};
use eda_store_redis::RedisStreamStore;
use fred::clients::Client;
use fred::interfaces::KeysInterface;
use fred::types::{Expiration, SetOptions, Value};

use crate::{Clock, DedupError, Deduplicator, SystemClock, Window};

fn unavailable(e: fred::error::Error) -> DedupError {
    DedupError::Unavailable(format!("redis: {e}"))
}

/// The dedup window in Redis, shared by every process of a group. Uses the Redis
/// store's connection (its reconnect policy, timeouts and credentials).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use eda_dedup::{Deduplicator, RedisDedup, Window};
/// let store = eda_store_redis::RedisStreamStore::connect("redis://127.0.0.1:6379").await?;
/// let dedup = RedisDedup::new(&store, Window::default());
/// assert!(dedup.first_seen("billing:order-17", eda_core::Timestamp::now()).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDedup {
    client: Client,
    prefix: String,
    window: Window,
    clock: std::sync::Arc<dyn Clock>,
}

impl RedisDedup {
    /// A window on `store`'s connection, keys under `eda:dedup:`.
    pub fn new(store: &RedisStreamStore, window: Window) -> Self {
        Self {
            client: store.client().clone(),
            prefix: "eda:dedup:".into(),
            window,
            clock: std::sync::Arc::new(SystemClock),
        }
    }

    /// Another key prefix (default `eda:dedup:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Milliseconds left in the window for an event first seen now.
    fn window_ms(&self, event_time: Timestamp) -> i64 {
        let now = self.clock.now();
        self.window.expires_at(now, event_time) - now.unix_millis()
    }

    async fn set_nx(&self, key: &str, ms: i64) -> Result<bool, DedupError> {
        let set: Value = self
            .client
            .set(
                format!("{}{key}", self.prefix),
                1,
                Some(Expiration::PX(ms)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(!set.is_null())
    }
}

impl Deduplicator for RedisDedup {
    fn first_seen<'a>(
        &'a self,
        key: &'a str,
        event_time: Timestamp,
    ) -> BoxFuture<'a, Result<bool, DedupError>> {
        Box::pin(async move {
            let ms = self.window_ms(event_time);
            if ms <= 0 {
                return Ok(true); // already out of the window: handled, never marked
            }
            self.set_nx(key, ms).await
        })
    }

    fn first_seen_batch<'a>(
        &'a self,
        keys: &'a [(String, Timestamp)],
    ) -> BoxFuture<'a, Result<Vec<bool>, DedupError>> {
        Box::pin(async move {
            let pipeline = self.client.pipeline();
            let mut sent = Vec::with_capacity(keys.len());
            for (key, time) in keys {
                let ms = self.window_ms(*time);
                if ms <= 0 {
                    sent.push(false);
                    continue;
                }
                let _: () = pipeline
                    .set(
                        format!("{}{key}", self.prefix),
                        1,
                        Some(Expiration::PX(ms)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .map_err(unavailable)?;
                sent.push(true);
            }
            let replies: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
            let mut replies = replies.into_iter();
            Ok(sent
                .into_iter()
                .map(|was_sent| !was_sent || replies.next().is_some_and(|r| !r.is_null()))
                .collect())
        })
    }

    fn claim<'a>(
        &'a self,
        key: &'a str,
        _event_time: Timestamp,
        hold: Duration,
    ) -> BoxFuture<'a, Result<bool, DedupError>> {
        Box::pin(self.set_nx(key, hold.as_millis().max(1) as i64))
    }

    fn confirm<'a>(
        &'a self,
        key: &'a str,
        event_time: Timestamp,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            let ms = self.window_ms(event_time);
            let key = format!("{}{key}", self.prefix);
            if ms <= 0 {
                let _: i64 = self.client.del(key).await.map_err(unavailable)?;
            } else {
                let _: Value = self
                    .client
                    .set(key, 1, Some(Expiration::PX(ms)), None, false)
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        })
    }

    fn forget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            let _: i64 = self
                .client
                .del(format!("{}{key}", self.prefix))
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
}
