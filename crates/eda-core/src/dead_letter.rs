//! Dead letters: events that could not be handled, with the reason.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::handler::BoxFuture;
use crate::raw::RawEvent;

/// Extension carrying why the event was dead-lettered.
pub const DLQ_REASON: &str = "dlqreason";
/// Extension carrying how many attempts were made.
pub const DLQ_ATTEMPTS: &str = "dlqattempts";
/// Extension carrying the topic the event came from.
pub const DLQ_TOPIC: &str = "dlqtopic";
/// Extension carrying the subscription that gave up.
pub const DLQ_SUBSCRIBER: &str = "dlqsubscriber";

/// The name of a topic's dead-letter topic: `<topic>.dlq`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// An event that a subscription gave up on.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The event, with the `dlq*` extensions set.
    pub event: RawEvent,
    /// Why it was given up.
    pub reason: String,
    /// Attempts made (0 when it never reached the handler, e.g. expired or undecodable).
    pub attempts: u32,
    /// The topic it came from.
    pub topic: String,
    /// The subscription that gave up.
    pub subscriber: String,
}

impl DeadLetter {
    /// Builds a dead letter and stamps the `dlqreason`, `dlqattempts`, `dlqtopic` and
    /// `dlqsubscriber` extensions onto the event.
    pub fn new(
        mut event: RawEvent,
        topic: impl Into<String>,
        subscriber: impl Into<String>,
        attempts: u32,
        reason: impl Into<String>,
    ) -> Self {
        let (topic, subscriber, reason) = (topic.into(), subscriber.into(), reason.into());
        let m = &mut event.metadata;
        // The names are constants known to be valid.
        for (k, v) in [
            (DLQ_REASON, reason.clone()),
            (DLQ_ATTEMPTS, attempts.to_string()),
            (DLQ_TOPIC, topic.clone()),
            (DLQ_SUBSCRIBER, subscriber.clone()),
        ] {
            let _ = m.insert_header(k, v);
        }
        Self {
            event,
            reason,
            attempts,
            topic,
            subscriber,
        }
    }
}

/// A dead-letter sink could not take a letter.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter sink failed: {0}")]
pub struct DeadLetterError(pub String);

/// Where dead letters go. The bus defaults to [`MemoryDeadLetters`]; stores provide
/// `<topic>.dlq` in the same store.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Takes one dead letter.
    fn send(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), DeadLetterError>>;
}

/// Keeps the most recent dead letters in memory (bounded) and logs each at WARN.
///
/// Cloning shares the same buffer, so keep a clone to inspect what the bus put there.
#[derive(Clone, Debug)]
pub struct MemoryDeadLetters {
    inner: Arc<MemoryInner>,
}

#[derive(Debug)]
struct MemoryInner {
    letters: Mutex<VecDeque<DeadLetter>>,
    capacity: usize,
    total: AtomicU64,
}

impl MemoryDeadLetters {
    /// Keeps at most `capacity` letters, dropping the oldest.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(MemoryInner {
                letters: Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                total: AtomicU64::new(0),
            }),
        }
    }
    /// The letters kept, oldest first.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.lock().iter().cloned().collect()
    }
    /// Takes the letters kept out of the buffer.
    pub fn drain(&self) -> Vec<DeadLetter> {
        self.lock().drain(..).collect()
    }
    /// Letters received since creation (including those dropped for capacity).
    pub fn total(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<DeadLetter>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.inner
            .letters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryDeadLetters {
    /// Keeps the last 10,000 letters.
    fn default() -> Self {
        Self::with_capacity(10_000)
    }
}

impl DeadLetterSink for MemoryDeadLetters {
    fn send(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), DeadLetterError>> {
        tracing::warn!(
            event_id = %letter.event.id,
            event_type = %letter.event.event_type,
            topic = %letter.topic,
            subscriber = %letter.subscriber,
            attempts = letter.attempts,
            reason = %letter.reason,
            "event dead-lettered"
        );
        self.inner.total.fetch_add(1, Ordering::Relaxed);
        let mut letters = self.lock();
        if letters.len() == self.inner.capacity {
            letters.pop_front();
        }
        letters.push_back(letter);
        Box::pin(std::future::ready(Ok(())))
    }
}
