//! Subscription options: name, group, delivery mode, lifecycle and executor.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use eda_core::Middleware;
use serde::Deserialize;

/// What happens to an event whose handler fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Retry with backoff up to the max attempts, then hand the event to the dead-letter
    /// sink. Within the process: a crash loses what is queued (use a store for that).
    #[default]
    AtLeastOnce,
    /// One attempt; a failure is counted and the event dropped.
    AtMostOnce,
}

/// Retries with exponential backoff and jitter.
///
/// Attempt `n` (counting from 1) that fails waits
/// `min(max_backoff, initial_backoff × multiplier^(n-1))`, reduced by up to `jitter`
/// (a fraction) at random so that retries from many events spread out.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1). Default 3.
    pub max_attempts: u32,
    /// Wait after the first failure. Default 100 ms.
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    /// Longest wait. Default 10 s.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
    /// Growth per attempt. Default 2.
    pub multiplier: f64,
    /// Fraction (0..=1) of each wait taken off at random. Default 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// `max_attempts` attempts with the default backoff.
    pub fn attempts(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            ..Self::default()
        }
    }

    /// Sets the backoff bounds.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Sets the jitter fraction.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The wait after failed attempt `attempt` (1-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1) as i32);
        let secs = self.initial_backoff.as_secs_f64() * factor;
        Duration::from_secs_f64(secs.min(self.max_backoff.as_secs_f64()))
    }

    /// The wait after failed attempt `attempt`, with jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let jitter = self.jitter.clamp(0.0, 1.0);
        base.mul_f64(1.0 - jitter * fastrand::f64())
    }
}

/// Where an async handler's future runs.
#[derive(Clone, Debug, Default)]
pub enum Executor {
    /// In the subscription's own task (the default, the fastest).
    #[default]
    Inline,
    /// Spawned on another tokio runtime, e.g. a dedicated pool for CPU-heavy handlers.
    /// A timed-out attempt is aborted there.
    Runtime(tokio::runtime::Handle),
}

/// Options of one subscription. Every field has a default that suits most users.
///
/// ```
/// use std::time::Duration;
/// use eda_dispatch::{DeliveryMode, RetryPolicy, SubscribeOptions};
///
/// let options = SubscribeOptions::new()
///     .name("send-confirmation")
///     .group("mailers")
///     .timeout(Duration::from_secs(5))
///     .retry(RetryPolicy::attempts(5))
///     .concurrency(8)
///     .queue_capacity(4096)
///     .mode(DeliveryMode::AtLeastOnce);
/// ```
#[derive(Clone, Default)]
pub struct SubscribeOptions {
    pub(crate) name: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) timeout: Option<Option<Duration>>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) mode: Option<DeliveryMode>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) queue_capacity: Option<usize>,
    pub(crate) executor: Executor,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) weight: Option<u32>,
    pub(crate) balancer: Option<crate::Balancer>,
    pub(crate) backpressure: Option<crate::Backpressure>,
    pub(crate) start: Option<eda_core::StartFrom>,
}

impl fmt::Debug for SubscribeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("name", &self.name)
            .field("group", &self.group)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("mode", &self.mode)
            .field("concurrency", &self.concurrency)
            .field("queue_capacity", &self.queue_capacity)
            .field("executor", &self.executor)
            .field("middleware", &self.middleware.len())
            .field("weight", &self.weight)
            .field("balancer", &self.balancer)
            .field("backpressure", &self.backpressure)
            .field("start", &self.start)
            .finish()
    }
}

impl SubscribeOptions {
    /// Defaults everywhere.
    pub fn new() -> Self {
        Self::default()
    }
    /// The subscription's name (default: `"{type or pattern}#{n}"`). Unique per bus.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The group to join (default: a group of one, named after the subscription).
    /// Every group receives every event; members of one group share them.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
    /// Processing timeout of each attempt (default 30 s), from the attempt's start.
    /// Attempts a group starts one after another share one clock reading for up to a
    /// millisecond, so a deadline may be up to 1 ms early (tokio's timer resolution).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(Some(timeout));
        self
    }
    /// No processing timeout.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = Some(None);
        self
    }
    /// Retry policy (default: 3 attempts, 100 ms doubling to 10 s, 20 % jitter).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }
    /// Delivery mode (default at-least-once).
    pub fn mode(mut self, mode: DeliveryMode) -> Self {
        self.mode = Some(mode);
        self
    }
    /// How many events this subscription handles at once (default 1: in order).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = Some(limit);
        self
    }
    /// Slots of the topic's ring buffer, used when this subscription creates the topic
    /// (default: the bus's `queue_capacity`, 1024). The ring is shared by every group of
    /// the topic, so it bounds how far any of them may lag behind publishers.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }
    /// Where the handler runs (default: in the subscription's task).
    pub fn executor(mut self, executor: Executor) -> Self {
        self.executor = executor;
        self
    }
    /// This member's weight in a [`Weighted`](crate::Balancer::Weighted) group (default 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }
    /// How the group's members share events (default round-robin). Set by the group's
    /// first member.
    pub fn balancer(mut self, balancer: crate::Balancer) -> Self {
        self.balancer = Some(balancer);
        self
    }
    /// What publishers do when this group is a whole ring behind (default: wait up to the
    /// dispatch timeout). Set by the group's first member.
    pub fn backpressure(mut self, policy: crate::Backpressure) -> Self {
        self.backpressure = Some(policy);
        self
    }
    /// Where a new group of a durable topic starts reading (default: the beginning of
    /// the log, so nothing stored before the group existed is skipped; an existing group
    /// always resumes where it is).
    pub fn start_from(mut self, start: eda_core::StartFrom) -> Self {
        self.start = Some(start);
        self
    }
    /// Adds middleware around this subscription's deliveries, after the bus's own
    /// (outermost first; all of it outside retry and timeout).
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }
}

pub(crate) mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

pub(crate) mod opt_millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|v| v.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(2), Duration::from_millis(200));
        assert_eq!(p.base_delay(4), Duration::from_millis(800));
        assert_eq!(p.base_delay(5), Duration::from_secs(1));
        assert_eq!(p.base_delay(60), Duration::from_secs(1));
        for _ in 0..1000 {
            let d = p.delay(2);
            assert!(
                d <= Duration::from_millis(200) && d >= Duration::from_millis(160),
                "{d:?}"
            );
        }
    }
}
