//! Bridges between stores, and from the in-memory bus to a store.
//!
//! * [`Forwarder`] moves a topic from one store to another as a consumer group of the
//!   source: it reads what is ready (up to a batch), appends it to the target in one
//!   append, and acks the source only after the target committed. A crash in between
//!   forwards those records again; the target's idempotent append (same event id)
//!   stores them once. With the SQLite store's transactional outbox
//!   (`SqliteStore::append_in`) as the source, a business write and its event reach
//!   Redis or Kafka exactly when the write committed.
//! * [`ToStore`] is a bus handler that appends what an in-memory topic carries to a
//!   store, for other services. It is **at-most-once across a crash**: an event
//!   published in memory and not yet appended when the process dies is gone. Publish
//!   through a durable topic or the outbox when that matters.

use std::sync::Arc;
use std::time::Duration;

use eda_core::{
    CancellationToken, ConsumeOptions, Context, Delivery, Envelope, Event, EventStore, Handler,
    HandlerError, HandlerResult, RawEvent, StartFrom,
};
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;

use crate::runner::{append_dead_letter, undecodable_record};

/// Settings of a [`Forwarder`].
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    /// The source topic's consumer group the forwarder reads as (default
    /// `"eda.forward.<target topic>"`): one progress per bridge, shared by every process
    /// that runs the same bridge.
    pub group: Option<String>,
    /// Most records per append to the target (default 500).
    pub batch: usize,
    /// Failed appends of a record before it goes to the source's `<topic>.dlq`
    /// (default 10).
    pub max_attempts: u32,
    /// Where a new group starts in the source (default: its beginning).
    pub start: StartFrom,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            group: None,
            batch: 500,
            max_attempts: 10,
            start: StartFrom::Beginning,
        }
    }
}

/// A running bridge from one store's topic to another store: it reads what is ready
/// (up to a batch), appends it to the target in one append, and acks the source only
/// after the target committed (at-least-once; the target's idempotent append stores
/// repeats once).
///
/// ```
/// use std::sync::Arc;
/// use eda_core::{Envelope, EventStore, JsonCodec, ReadRange};
/// use eda_dispatch::{ForwardOptions, Forwarder};
/// use eda_testkit::MemoryStore;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl eda_core::Event for Ping { const TYPE: &'static str = "ping"; }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (outbox, broker) = (MemoryStore::new(), MemoryStore::new());
/// outbox.append("pings", vec![Envelope::new(Ping).to_raw(&JsonCodec)?]).await?;
///
/// let bridge = Forwarder::spawn(
///     Arc::new(outbox), "pings", Arc::new(broker.clone()), "pings", ForwardOptions::default());
/// # for _ in 0..200 { if !broker.read("pings", ReadRange::default()).await?.is_empty() { break } tokio::time::sleep(std::time::Duration::from_millis(10)).await; }
/// assert_eq!(broker.read("pings", ReadRange::default()).await?.len(), 1);
/// bridge.stop().await;
/// # Ok(()) }
/// ```
pub struct Forwarder {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Starts forwarding `from_topic` of `from` to `to_topic` of `to`, on the current
    /// tokio runtime.
    pub fn spawn(
        from: Arc<dyn EventStore>,
        from_topic: impl Into<String>,
        to: Arc<dyn EventStore>,
        to_topic: impl Into<String>,
        options: ForwardOptions,
    ) -> Self {
        let stop = CancellationToken::new();
        let bridge = Bridge {
            from,
            from_topic: from_topic.into(),
            to,
            to_topic: to_topic.into(),
            options,
            stop: stop.clone(),
        };
        Self {
            stop,
            task: tokio::spawn(bridge.run()),
        }
    }

    /// Stops after the batch in hand and flushes the source's acks.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct Bridge {
    from: Arc<dyn EventStore>,
    from_topic: String,
    to: Arc<dyn EventStore>,
    to_topic: String,
    options: ForwardOptions,
    stop: CancellationToken,
}

impl Bridge {
    async fn run(self) {
        let group = self
            .options
            .group
            .clone()
            .unwrap_or_else(|| format!("eda.forward.{}", self.to_topic));
        let consume = ConsumeOptions {
            start: self.options.start.clone(),
            max_attempts: self.options.max_attempts,
            batch_size: self.options.batch.max(1),
            ..ConsumeOptions::default()
        };
        let consumer = format!("forwarder-{}", eda_core::EventId::new());
        let mut deliveries = loop {
            match self
                .from
                .subscribe(&self.from_topic, &group, &consumer, consume.clone())
                .await
            {
                Ok(stream) => break stream.ready_chunks(self.options.batch.max(1)),
                Err(e) => {
                    tracing::warn!(topic = %self.from_topic, error = %e, "forwarder cannot subscribe; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            let chunk = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                chunk = deliveries.next() => chunk,
            };
            let Some(chunk) = chunk else { break };
            let mut batch = Vec::with_capacity(chunk.len());
            for delivery in chunk {
                match delivery {
                    Ok(d) => batch.push(d),
                    Err(e) => {
                        tracing::warn!(topic = %self.from_topic, error = %e, "forwarder: source error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            self.forward(batch).await;
        }
        if let Err(e) = self.from.flush().await {
            tracing::warn!(topic = %self.from_topic, error = %e, "forwarder: flushing acks failed");
        }
    }

    async fn forward(&self, batch: Vec<Delivery>) {
        let mut good = Vec::with_capacity(batch.len());
        let mut records: Vec<RawEvent> = Vec::with_capacity(batch.len());
        for d in batch {
            match &d.record {
                Ok(raw) => {
                    records.push(raw.clone());
                    good.push(d);
                }
                Err(u) => {
                    let raw = undecodable_record(&u.raw, &Arc::from(self.from_topic.as_str()));
                    let reason = format!("undecodable record: {}", u.error);
                    self.dead_letter(d, raw, reason).await;
                }
            }
        }
        if good.is_empty() {
            return;
        }
        match self.to.append(&self.to_topic, records).await {
            Ok(_) => {
                for d in good {
                    settle(d.ack().await);
                }
            }
            Err(e) => {
                tracing::warn!(to = %self.to_topic, error = %e, "forwarder: append to the target failed");
                let reason = format!("append to `{}` failed: {e}", self.to_topic);
                for d in good {
                    match d.record.clone() {
                        Ok(raw) if d.attempt >= self.options.max_attempts.max(1) => {
                            self.dead_letter(d, raw, reason.clone()).await;
                        }
                        _ => settle(d.nack(reason.clone()).await),
                    }
                }
                // Give a failing target a moment before the redeliveries come back.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Writes `<source topic>.dlq` in the source store and acks; leaves the delivery
    /// unacked (so it comes back) if the dead letter cannot be written.
    async fn dead_letter(&self, d: Delivery, raw: RawEvent, reason: String) {
        let subscriber = format!("forward:{}", self.to_topic);
        let written = append_dead_letter(
            &*self.from,
            self.from_topic.clone(),
            subscriber,
            raw,
            d.attempt,
            reason,
        )
        .await;
        match written {
            Ok(()) => settle(d.ack().await),
            Err(e) => {
                tracing::error!(topic = %self.from_topic, error = %e, "forwarder: cannot write the dead letter")
            }
        }
    }
}

fn settle(result: Result<(), eda_core::StoreError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "forwarder: settling a delivery failed; it will be redelivered");
    }
}

/// A bus handler that appends every event it receives to a store topic: the explicit
/// bridge from an in-memory topic to other services. **At-most-once across a crash**
/// (an event still in memory when the process dies never reaches the store); a failed
/// append fails the handler, so the bus's retries and dead letters apply.
///
/// ```
/// use eda_core::{EventStore, ReadRange};
/// use eda_dispatch::{Bus, ToStore};
/// use eda_testkit::MemoryStore;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl eda_core::Event for Ping { const TYPE: &'static str = "ping"; }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// let bus = Bus::new();
/// let _bridge = bus.subscribe::<Ping, _>(ToStore::new(store.clone(), "pings"))?;
/// bus.publish(Ping).await?;
/// bus.shutdown(std::time::Duration::from_secs(1)).await;
/// assert_eq!(store.read("pings", ReadRange::default()).await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ToStore {
    store: Arc<dyn EventStore>,
    topic: Arc<str>,
}

impl ToStore {
    /// Appends to `topic` of `store`.
    pub fn new(store: impl EventStore, topic: impl Into<Arc<str>>) -> Self {
        Self::from_arc(Arc::new(store), topic)
    }
    /// [`new`](Self::new) for a shared store.
    pub fn from_arc(store: Arc<dyn EventStore>, topic: impl Into<Arc<str>>) -> Self {
        Self {
            store,
            topic: topic.into(),
        }
    }
}

impl<E: Event> Handler<Envelope<E>> for ToStore {
    async fn handle(&self, event: Arc<Envelope<E>>, _ctx: Context) -> HandlerResult {
        let raw = event.to_raw(&eda_core::JsonCodec).map_err(|e| {
            HandlerError::permanent(HandlerError::msg(format!("cannot encode: {e}")))
        })?;
        self.store
            .append(&self.topic, vec![raw])
            .await
            .map_err(|e| HandlerError::msg(format!("append to `{}`: {e}", self.topic)))?;
        Ok(())
    }
}
