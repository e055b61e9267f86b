//! Dedup as bus middleware.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eda_core::{BoxFuture, Context, EventInfo, HandlerError, HandlerResult, Middleware, Next};

use crate::Deduplicator;

/// Extracts the dedup key of an event (`None`: do not dedup this one).
pub type KeyFn = Arc<dyn Fn(&dyn EventInfo) -> Option<String> + Send + Sync>;

/// Drops deliveries whose key the subscription's group already handled within the
/// window. Keys are namespaced by group (`<group>:<key>`), so two groups never
/// suppress each other. See the [crate docs](crate) for how marks are claimed,
/// confirmed and forgotten.
///
/// ```
/// use std::sync::Arc;
/// use eda_core::{Context, Envelope};
/// use eda_dedup::{DedupMiddleware, MemoryDedup};
/// use eda_dispatch::{Bus, SubscribeOptions};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Paid { order: u64 }
/// # impl eda_core::Event for Paid { const TYPE: &'static str = "paid"; }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dedup = DedupMiddleware::new(MemoryDedup::default());
/// let duplicates = dedup.clone();
/// let bus = Bus::new();
/// let _sub = bus.subscribe_with(
///     SubscribeOptions::new().name("ledger").middleware(dedup),
///     |_e: Arc<Envelope<Paid>>, _ctx: Context| async { Ok(()) },
/// )?;
/// let event = Envelope::new(Paid { order: 7 });
/// bus.publish_envelope(event.clone()).await?;
/// bus.publish_envelope(event).await?; // the same id again: dropped
/// bus.shutdown(std::time::Duration::from_secs(1)).await;
/// assert_eq!(duplicates.duplicates(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DedupMiddleware {
    dedup: Arc<dyn Deduplicator>,
    key: KeyFn,
    hold: Duration,
    duplicates: Arc<AtomicU64>,
}

impl DedupMiddleware {
    /// Dedup by event id.
    pub fn new(dedup: impl Deduplicator) -> Self {
        Self {
            dedup: Arc::new(dedup),
            key: Arc::new(|e: &dyn EventInfo| Some(e.id().to_string())),
            hold: Duration::from_secs(60),
            duplicates: Arc::default(),
        }
    }

    /// Dedup by a key of yours: a business key, a payload hash. `None` lets an event
    /// through unchecked.
    pub fn key_fn(
        mut self,
        key: impl Fn(&dyn EventInfo) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// How long a claim lasts when the delivery has no deadline (default 60 s);
    /// otherwise the claim lasts until the delivery's deadline.
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Deliveries dropped as duplicates so far (shared by clones).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

impl Middleware for DedupMiddleware {
    fn handle<'a>(
        &'a self,
        event: &'a dyn EventInfo,
        ctx: &'a Context,
        next: Next<'a>,
    ) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let Some(key) = (self.key)(event) else {
                return next.run(event, ctx).await;
            };
            let key = format!("{}:{key}", ctx.group());
            let time = event.time();
            // Past the delivery's deadline the claim lapses, so a process that died
            // mid-handler does not swallow the redelivery.
            let hold = ctx
                .remaining()
                .map_or(self.hold, |r| r + Duration::from_secs(1));
            match self.dedup.claim(&key, time, hold).await {
                Ok(true) => {}
                Ok(false) => {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                    let group = ctx.group().to_owned();
                    metrics::counter!(eda_core::observe::DEDUP_HITS, "group" => group.clone())
                        .increment(1);
                    metrics::counter!(
                        eda_core::observe::EVENTS_HANDLED,
                        "group" => group,
                        "outcome" => eda_core::observe::OUTCOME_DUPLICATE
                    )
                    .increment(1);
                    tracing::debug!(event_id = %event.id(), %key, "duplicate dropped");
                    return Ok(());
                }
                // Not knowing is not a duplicate: fail, so the delivery is retried.
                Err(e) => return Err(HandlerError::msg(format!("dedup check failed: {e}"))),
            }
            let result = next.run(event, ctx).await;
            let settled = match &result {
                Ok(()) => self.dedup.confirm(&key, time).await,
                Err(_) => self.dedup.forget(&key).await,
            };
            if let Err(e) = settled {
                tracing::warn!(event_id = %event.id(), error = %e, "dedup mark not updated");
            }
            result
        })
    }
}
