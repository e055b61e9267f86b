//! Group commit for durable topics: concurrent publishes share one `append`.
//!
//! Every `publish` to a durable topic sends its record to the topic's committer task
//! and waits for the answer. The task takes the first waiting record, then whatever
//! else is already queued (or arrives within `linger`), up to `max_batch`, appends them
//! in one batch, and answers each publisher. While an append is in flight the next
//! batch fills, so throughput grows with the number of concurrent publishers and a lone
//! publisher pays no extra latency (linger 0, the default).
//!
//! One bad record does not fail its neighbours: when a batch is refused as a whole for
//! something a single record can cause (too large, invalid), its records are appended
//! one by one and only the bad one's publisher gets the error.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use eda_core::{EventStore, RawEvent, StoreError};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// How concurrent publishes to one durable topic are batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CommitOptions {
    pub(crate) max_batch: usize,
    pub(crate) linger: Duration,
    /// How the topic's event data is encoded.
    pub(crate) codec: eda_core::ContentCodec,
}

/// The committer of one durable topic; its task starts with the first publish.
pub(crate) struct GroupCommit {
    pub(crate) store: Arc<dyn EventStore>,
    topic: Arc<str>,
    pub(crate) options: CommitOptions,
    pub(crate) metrics: Arc<crate::obs::AppendMetrics>,
    sender: OnceLock<mpsc::Sender<(RawEvent, Reply)>>,
}

impl GroupCommit {
    pub(crate) fn new(
        topic: &str,
        store: Arc<dyn EventStore>,
        options: CommitOptions,
        observe: bool,
    ) -> Self {
        Self {
            store,
            metrics: Arc::new(crate::obs::AppendMetrics::new(topic, observe)),
            topic: topic.into(),
            options: CommitOptions {
                max_batch: options.max_batch.max(1),
                ..options
            },
            sender: OnceLock::new(),
        }
    }

    /// Appends `record` with whatever other publishes are waiting; returns once the
    /// store committed it.
    pub(crate) async fn append(
        &self,
        runtime: Option<&Handle>,
        record: RawEvent,
    ) -> Result<(), StoreError> {
        let sender = self.sender.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.options.max_batch * 4);
            let task = run(
                self.store.clone(),
                self.topic.clone(),
                rx,
                self.options,
                self.metrics.clone(),
            );
            match runtime {
                Some(handle) => drop(handle.spawn(task)),
                None => drop(tokio::spawn(task)),
            }
            tx
        });
        let (reply, answer) = oneshot::channel();
        sender
            .send((record, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }
}

async fn run(
    store: Arc<dyn EventStore>,
    topic: Arc<str>,
    mut queue: mpsc::Receiver<(RawEvent, Reply)>,
    options: CommitOptions,
    metrics: Arc<crate::obs::AppendMetrics>,
) {
    let mut records = Vec::with_capacity(options.max_batch);
    let mut replies = Vec::with_capacity(options.max_batch);
    // Ends when the bus (which holds the sender) is gone and the queue is empty.
    while let Some((record, reply)) = queue.recv().await {
        records.push(record);
        replies.push(reply);
        let deadline = tokio::time::Instant::now() + options.linger;
        while records.len() < options.max_batch {
            let next = match queue.try_recv() {
                Ok(next) => Some(next),
                Err(_) if options.linger.is_zero() => None,
                Err(_) => tokio::time::timeout_at(deadline, queue.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            let Some((record, reply)) = next else { break };
            records.push(record);
            replies.push(reply);
        }
        let (batch, started) = (records.len(), metrics.clock());
        commit(&*store, &topic, &mut records, &mut replies).await;
        metrics.appended(batch, started);
    }
}

async fn commit(
    store: &dyn EventStore,
    topic: &str,
    records: &mut Vec<RawEvent>,
    replies: &mut Vec<Reply>,
) {
    // Kept only when a refused batch may have to be split.
    let copies = (records.len() > 1).then(|| records.clone());
    let result = store.append(topic, std::mem::take(records)).await;
    match (result, copies) {
        (Err(StoreError::TooLarge { .. } | StoreError::Invalid(_)), Some(copies)) => {
            for (record, reply) in copies.into_iter().zip(replies.drain(..)) {
                let one = store.append(topic, vec![record]).await.map(drop);
                let _ = reply.send(one);
            }
        }
        (result, _) => {
            let result = result.map(drop);
            for reply in replies.drain(..) {
                let _ = reply.send(clone_result(&result));
            }
        }
    }
}

/// `StoreError` is not `Clone` (it may grow sources); every publisher of a failed batch
/// gets an equivalent error.
fn clone_result(result: &Result<(), StoreError>) -> Result<(), StoreError> {
    match result {
        Ok(()) => Ok(()),
        Err(StoreError::Closed) => Err(StoreError::Closed),
        Err(StoreError::TooLarge { size, max }) => Err(StoreError::TooLarge {
            size: *size,
            max: *max,
        }),
        Err(StoreError::Invalid(s)) => Err(StoreError::Invalid(s.clone())),
        Err(StoreError::NotHeld(p)) => Err(StoreError::NotHeld(p.clone())),
        Err(other) => Err(StoreError::Unavailable(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eda_core::{
        BoxFuture, ConsumeOptions, DeliveryStream, Envelope, Event, Features, JsonCodec, Position,
        ReadRange, Undecodable,
    };
    use eda_testkit::MemoryStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A MemoryStore that counts appends.
    struct Counting(MemoryStore, AtomicUsize);

    impl EventStore for Counting {
        fn features(&self) -> Features {
            self.0.features()
        }
        fn append<'a>(
            &'a self,
            topic: &'a str,
            records: Vec<RawEvent>,
        ) -> BoxFuture<'a, Result<Vec<Position>, StoreError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.append(topic, records)
        }
        fn subscribe<'a>(
            &'a self,
            topic: &'a str,
            group: &'a str,
            consumer: &'a str,
            options: ConsumeOptions,
        ) -> BoxFuture<'a, Result<DeliveryStream, StoreError>> {
            self.0.subscribe(topic, group, consumer, options)
        }
        #[allow(clippy::type_complexity)]
        fn read<'a>(
            &'a self,
            topic: &'a str,
            range: ReadRange,
        ) -> BoxFuture<'a, Result<Vec<(Position, Result<RawEvent, Undecodable>)>, StoreError>>
        {
            self.0.read(topic, range)
        }
        fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.0.flush()
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Blob(String);
    impl Event for Blob {
        const TYPE: &'static str = "blob";
    }

    fn record(size: usize) -> RawEvent {
        Envelope::new(Blob("x".repeat(size)))
            .to_raw(&JsonCodec)
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishes_share_batches_and_a_bad_one_fails_alone() {
        let store = Arc::new(Counting(
            MemoryStore::with_max_record_bytes(1000),
            AtomicUsize::new(0),
        ));
        let commit = Arc::new(GroupCommit::new(
            "t",
            store.clone(),
            CommitOptions {
                max_batch: 64,
                linger: Duration::from_millis(5),
                codec: Default::default(),
            },
            true,
        ));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let commit = commit.clone();
            tasks.push(tokio::spawn(async move {
                let size = if i == 57 { 5000 } else { 10 };
                commit.append(None, record(size)).await
            }));
        }
        let mut failed = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            if let Err(e) = task.await.unwrap() {
                assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
                failed.push(i);
            }
        }
        assert_eq!(failed, vec![57]);
        let stored = store.read("t", Default::default()).await.unwrap();
        assert_eq!(stored.len(), 199);
        // One append per batch, plus one per record of the batch split by the bad one.
        let appends = store.1.load(Ordering::SeqCst);
        assert!(
            appends < 199,
            "{appends} appends for 199 records: publishes were not grouped"
        );
    }
}
