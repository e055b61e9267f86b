//! Acks flushed in batches: a building block for stores.
//!
//! A store's `AckHandle::ack` pushes what it needs to settle the delivery (an SQLite
//! row key, a Redis stream id) into an [`AckBatcher`] and returns at once. A background
//! task flushes the queue when it holds `max_batch` entries or `linger` after the oldest
//! one arrived, whichever comes first; [`AckBatcher::flush`] flushes now, and dropping
//! the batcher flushes what is left before its task ends. A store may also [`drain`]
//! the queue into a write of its own (SQLite settles acks in the transaction that takes
//! the next deliveries).
//!
//! An ack that is queued but not yet flushed when the process dies is lost: its record
//! is redelivered after the visibility timeout. That is the at-least-once contract, and
//! the window is at most `linger` long. A flush that keeps failing is retried, then
//! logged and given up, with the same consequence.
//!
//! [`drain`]: AckBatcher::drain

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::handler::BoxFuture;
use crate::store::StoreError;

/// Writes a batch of acks to the backend.
pub trait FlushAcks<T>: Send + Sync + 'static {
    /// Settles every entry of `batch` in as few round trips as the backend allows.
    fn flush_acks<'a>(&'a self, batch: &'a [T]) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// When an [`AckBatcher`] flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckBatchOptions {
    /// The longest an ack waits in the queue (default 100 ms; keep it well under the
    /// visibility timeout, or acked records are redelivered).
    pub linger: Duration,
    /// Flush as soon as this many acks wait (default 512).
    pub max_batch: usize,
    /// Attempts of a failing flush before its acks are given up (default 3).
    pub attempts: u32,
}

impl Default for AckBatchOptions {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(100),
            max_batch: 512,
            attempts: 3,
        }
    }
}

/// A queue of acks with a task that flushes it. See the [module docs](self).
pub struct AckBatcher<T: Send + 'static> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    pending: Mutex<Vec<T>>,
    wake: Notify,
    closed: AtomicBool,
    options: AckBatchOptions,
    flusher: Arc<dyn FlushAcks<T>>,
    flushed: metrics::Counter,
    given_up: metrics::Counter,
}

impl<T: Send + 'static> Shared<T> {
    fn pending(&self) -> MutexGuard<'_, Vec<T>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn flush_batch(&self, batch: Vec<T>) -> Result<(), StoreError> {
        let mut attempt = 1;
        loop {
            match self.flusher.flush_acks(&batch).await {
                Ok(()) => {
                    self.flushed.increment(1);
                    return Ok(());
                }
                Err(e) if attempt >= self.options.attempts.max(1) => {
                    self.given_up.increment(1);
                    tracing::warn!(
                        acks = batch.len(),
                        error = %e,
                        "giving up flushing acks; their records will be redelivered"
                    );
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "flushing acks failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50) * 2u32.pow(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

impl<T: Send + 'static> AckBatcher<T> {
    /// Starts the flushing task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (stores are opened by async functions, so inside one).
    pub fn spawn(flusher: impl FlushAcks<T>, options: AckBatchOptions) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            options,
            flusher: Arc::new(flusher),
            flushed: metrics::counter!(crate::observe::ACK_FLUSHES, "outcome" => "ok"),
            given_up: metrics::counter!(crate::observe::ACK_FLUSHES, "outcome" => "error"),
        });
        tokio::spawn(run(shared.clone()));
        Self { shared }
    }

    /// Queues an ack; the task flushes it within `linger`.
    pub fn push(&self, ack: T) {
        let len = {
            let mut pending = self.shared.pending();
            pending.push(ack);
            pending.len()
        };
        if len == 1 || len >= self.shared.options.max_batch {
            // The first entry starts the linger clock; a full batch flushes at once.
            self.shared.wake.notify_one();
        }
    }

    /// Takes every queued ack, for a store that settles them in a write of its own.
    /// Give them back with [`requeue`](Self::requeue) if that write fails.
    pub fn drain(&self) -> Vec<T> {
        std::mem::take(&mut *self.shared.pending())
    }

    /// Puts acks taken by [`drain`](Self::drain) back in the queue.
    pub fn requeue(&self, acks: Vec<T>) {
        if acks.is_empty() {
            return;
        }
        self.shared.pending().extend(acks);
        self.shared.wake.notify_one();
    }

    /// Acks waiting to be flushed.
    pub fn len(&self) -> usize {
        self.shared.pending().len()
    }

    /// No ack is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flushes every queued ack now and waits for the backend's answer.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let batch = self.drain();
        if batch.is_empty() {
            return Ok(());
        }
        self.shared.flush_batch(batch).await
    }
}

impl<T: Send + 'static> Drop for AckBatcher<T> {
    fn drop(&mut self) {
        // The task flushes what is left, then ends.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

async fn run<T: Send + 'static>(shared: Arc<Shared<T>>) {
    loop {
        // Sleep until the first ack of a batch arrives (or the batcher closes) ...
        shared.wake.notified().await;
        // ... then give the batch `linger` to fill, unless it is full already or closing.
        let full = || {
            shared.pending().len() >= shared.options.max_batch
                || shared.closed.load(Ordering::Acquire)
        };
        if !full() {
            let deadline = tokio::time::Instant::now() + shared.options.linger;
            while !full() {
                if tokio::time::timeout_at(deadline, shared.wake.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        let batch = std::mem::take(&mut *shared.pending());
        if !batch.is_empty() {
            let _ = shared.flush_batch(batch).await;
        }
        if shared.closed.load(Ordering::Acquire) {
            let rest = std::mem::take(&mut *shared.pending());
            if !rest.is_empty() {
                let _ = shared.flush_batch(rest).await;
            }
            return;
        }
        if !shared.pending().is_empty() {
            // More arrived while flushing: start the next batch's clock now.
            shared.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default, Clone)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        fail_first: Arc<AtomicUsize>,
    }

    impl FlushAcks<u32> for Recorder {
        fn flush_acks<'a>(&'a self, batch: &'a [u32]) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                if self
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err(StoreError::Unavailable("down".into()));
                }
                self.batches.lock().unwrap().push(batch.to_vec());
                Ok(())
            })
        }
    }

    fn options(linger_ms: u64, max_batch: usize) -> AckBatchOptions {
        AckBatchOptions {
            linger: Duration::from_millis(linger_ms),
            max_batch,
            attempts: 3,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_after_linger_in_one_batch() {
        let rec = Recorder::default();
        let batcher = AckBatcher::spawn(rec.clone(), options(100, 1000));
        for i in 0..10 {
            batcher.push(i);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            rec.batches.lock().unwrap().is_empty(),
            "flushed before linger"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            *rec.batches.lock().unwrap(),
            vec![(0..10).collect::<Vec<_>>()]
        );
        assert!(batcher.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_flushes_without_waiting() {
        let rec = Recorder::default();
        let batcher = AckBatcher::spawn(rec.clone(), options(10_000, 4));
        for i in 0..8 {
            batcher.push(i);
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let batches = rec.batches.lock().unwrap().clone();
        let flushed: Vec<u32> = batches.concat();
        assert_eq!(flushed, (0..8).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| b.len() <= 4 + 1), "{batches:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_flushes_are_retried() {
        let rec = Recorder::default();
        rec.fail_first.store(2, Ordering::SeqCst);
        let batcher = AckBatcher::spawn(rec.clone(), options(10, 100));
        batcher.push(7);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(*rec.batches.lock().unwrap(), vec![vec![7]]);
    }

    #[tokio::test(start_paused = true)]
    async fn drop_flushes_what_is_left() {
        let rec = Recorder::default();
        let batcher = AckBatcher::spawn(rec.clone(), options(60_000, 1000));
        batcher.push(1);
        batcher.push(2);
        drop(batcher);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*rec.batches.lock().unwrap(), vec![vec![1, 2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn flush_and_drain() {
        let rec = Recorder::default();
        let batcher = AckBatcher::spawn(rec.clone(), options(60_000, 1000));
        batcher.push(1);
        assert_eq!(batcher.drain(), vec![1]);
        batcher.requeue(vec![1]);
        batcher.push(2);
        batcher.flush().await.unwrap();
        assert_eq!(*rec.batches.lock().unwrap(), vec![vec![1, 2]]);
        assert!(batcher.is_empty());
    }
}
