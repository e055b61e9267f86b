//! [`Context`]: what a handler knows about the delivery it is running.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::id::EventId;

/// Facts about one subscription, shared by all its deliveries.
#[derive(Debug)]
pub struct SubscriptionInfo {
    name: Arc<str>,
    group: Arc<str>,
    topic: Arc<str>,
    shutdown: CancellationToken,
}

impl SubscriptionInfo {
    /// Describes a subscription; `shutdown` fires when the subscription or its bus stops.
    pub fn new(
        name: impl Into<Arc<str>>,
        group: impl Into<Arc<str>>,
        topic: impl Into<Arc<str>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            name: name.into(),
            group: group.into(),
            topic: topic.into(),
            shutdown,
        }
    }
    /// The subscription's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
    /// Its group.
    pub fn group(&self) -> &Arc<str> {
        &self.group
    }
    /// The topic (or pattern) it consumes.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }
    /// Fired on shutdown.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// The context of one delivery attempt, given to every handler.
///
/// Like Go's `context.Context` in the seed design: a deadline (the processing timeout),
/// cancellation (fired at the deadline and on shutdown), the attempt number, and the
/// subscription's name and group.
#[derive(Clone)]
pub struct Context {
    info: Arc<SubscriptionInfo>,
    event_id: EventId,
    deadline: Option<Instant>,
    attempt: u32,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("subscription", &self.info.name)
            .field("event_id", &self.event_id)
            .field("attempt", &self.attempt)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Context {
    /// A context for attempt `attempt` (1-based) of delivering event `event_id`.
    pub fn new(
        info: Arc<SubscriptionInfo>,
        event_id: EventId,
        deadline: Option<Instant>,
        attempt: u32,
    ) -> Self {
        Self {
            info,
            event_id,
            deadline,
            attempt,
        }
    }

    /// The id of the event being handled.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }
    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The subscription's name (labels metrics, dead letters and dedup namespaces).
    pub fn subscription(&self) -> &str {
        &self.info.name
    }
    /// The subscription's group.
    pub fn group(&self) -> &str {
        &self.info.group
    }
    /// The topic or pattern subscribed to.
    pub fn topic(&self) -> &str {
        &self.info.topic
    }
    /// When this attempt times out, if it has a timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    /// Time left before the deadline (`None` without a deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
    /// Whether the deadline passed or shutdown began.
    pub fn is_cancelled(&self) -> bool {
        self.info.shutdown.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
    /// Completes at the deadline or at shutdown, whichever comes first. Use it to stop
    /// work that the handler spawned; the handler's own future is dropped at the deadline.
    pub async fn cancelled(&self) {
        match self.deadline {
            Some(deadline) => tokio::select! {
                _ = self.info.shutdown.cancelled() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            },
            None => self.info.shutdown.cancelled().await,
        }
    }
    /// The token fired at shutdown (not at the deadline), to hand to other libraries.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.info.shutdown
    }
    /// The subscription this delivery belongs to.
    pub fn info(&self) -> &Arc<SubscriptionInfo> {
        &self.info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(deadline: Option<Instant>) -> (Context, CancellationToken) {
        let token = CancellationToken::new();
        let info = Arc::new(SubscriptionInfo::new(
            "mail",
            "mailers",
            "order.created",
            token.clone(),
        ));
        (Context::new(info, EventId::new(), deadline, 2), token)
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_fires_at_the_deadline() {
        let (c, _t) = ctx(Some(Instant::now() + Duration::from_secs(5)));
        assert!(!c.is_cancelled());
        assert_eq!(c.attempt(), 2);
        assert_eq!(c.subscription(), "mail");
        assert_eq!(c.group(), "mailers");
        let start = Instant::now();
        c.cancelled().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(c.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_fires_on_shutdown() {
        let (c, token) = ctx(None);
        assert_eq!(c.remaining(), None);
        let waiter = c.clone();
        let task = tokio::spawn(async move { waiter.cancelled().await });
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        token.cancel();
        task.await.unwrap();
        assert!(c.is_cancelled());
    }
}
