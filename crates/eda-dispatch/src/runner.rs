//! One member of an async group: runs each event it is given through the lifecycle:
//! TTL → middleware → retry → timeout → panic catch → handler, then the dead-letter
//! sink after the last failed attempt. The group's processor (group.rs) decides which
//! member gets which event.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use eda_core::{
    BoxFuture, Context, DeadLetter, DeadLetterSink, Endpoint, EventInfo, Handler, HandlerError,
    HandlerResult, Middleware, Next, SubscriptionInfo, Timestamp,
};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use tokio::time::Instant;

use crate::cause::CURRENT_EVENT;
use crate::gate::Gate;
use crate::item::Item;
use crate::obs::{Attempted, DeadReason, GroupMetrics};
use crate::options::{DeliveryMode, Executor, RetryPolicy};
use crate::stats::{Counters, bump};

/// The resolved lifecycle settings of one subscription.
pub(crate) struct Settings {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    pub(crate) mode: DeliveryMode,
    pub(crate) concurrency: usize,
    pub(crate) executor: Executor,
    pub(crate) ttl: Option<Duration>,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    /// Links `eda.handle` spans to the event's trace.
    pub(crate) trace: Option<Arc<dyn eda_core::TraceContext>>,
}

pub(crate) struct Member<M, H> {
    pub(crate) handler: Arc<H>,
    pub(crate) info: Arc<SubscriptionInfo>,
    pub(crate) settings: Settings,
    pub(crate) gate: Arc<Gate>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) dead_letters: Arc<dyn DeadLetterSink>,
    pub(crate) weight: u32,
    pub(crate) metrics: Arc<GroupMetrics>,
    pub(crate) _event: std::marker::PhantomData<fn() -> M>,
}

/// A member as its group sees it, whatever its handler type.
pub(crate) trait GroupMember<M>: Send + Sync + 'static {
    /// Runs one event's lifecycle. Gives the event back when the member left before an
    /// attempt could start, so that the group hands it to another member.
    fn process(self: Arc<Self>, item: Item<M>) -> BoxFuture<'static, Option<Item<M>>>;
    fn weight(&self) -> u32;
    fn concurrency(&self) -> usize;
    fn gate(&self) -> &Arc<Gate>;
}

impl<M: EventInfo, H: Handler<M>> GroupMember<M> for Member<M, H> {
    fn process(self: Arc<Self>, item: Item<M>) -> BoxFuture<'static, Option<Item<M>>> {
        Box::pin(async move { self.process_item(item).await })
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn concurrency(&self) -> usize {
        self.settings.concurrency.max(1)
    }
    fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

/// Why one attempt failed.
enum Failure {
    Error(HandlerError),
    Panic(String),
    Timeout(Duration),
    Unsubscribed,
}

impl Failure {
    /// Why the attempt failed.
    fn reason(&self) -> String {
        match self {
            Failure::Error(e) => e.to_string(),
            Failure::Panic(msg) => format!("handler panicked: {msg}"),
            Failure::Timeout(t) => format!("timed out after {t:?}"),
            Failure::Unsubscribed => "unsubscribed".to_owned(),
        }
    }

    /// The reason, and whether retrying cannot help.
    fn describe(self) -> (String, bool) {
        let permanent = matches!(&self, Failure::Error(e) if e.is_permanent());
        (self.reason(), permanent)
    }
}

fn settle(result: Result<(), eda_core::StoreError>, what: &str) {
    if let Err(e) = result {
        // The store redelivers what it did not see acked: at-least-once.
        tracing::warn!(error = %e, "{what} failed; the record may be delivered again");
    }
}

/// A record for bytes that were not an event, so they can go to a dead-letter topic.
pub(crate) fn undecodable_record(bytes: &eda_core::Bytes, source: &Arc<str>) -> eda_core::RawEvent {
    eda_core::RawEvent {
        id: eda_core::EventId::new(),
        time: Timestamp::now(),
        source: source.clone(),
        event_type: Arc::from("eda.undecodable"),
        datacontenttype: Some("application/octet-stream".to_owned()),
        dataschema: None,
        metadata: Default::default(),
        data: bytes.clone(),
    }
}

/// Writes a dead letter of `raw` (read from `topic` by `subscriber`) to `<topic>.dlq` in
/// `store`: the durable runner's and the forwarder's last resort.
pub(crate) async fn append_dead_letter(
    store: &dyn eda_core::EventStore,
    topic: String,
    subscriber: String,
    raw: eda_core::RawEvent,
    attempts: u32,
    reason: String,
) -> Result<(), eda_core::StoreError> {
    let dlq = eda_core::dead_letter_topic(&topic);
    let letter = DeadLetter::new(raw, topic, subscriber, attempts, reason);
    store.append(&dlq, vec![letter.event]).await.map(drop)
}

/// How one delivery ended.
enum Outcome {
    /// Handled; when the last attempt ended (if timed), the ack's time for
    /// `eda_end_to_end_seconds` without reading the clock again.
    Delivered(Option<quanta::Instant>),
    Failed {
        attempts: u32,
        reason: String,
    },
    Unsubscribed,
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The deadline of an attempt passed.
struct TimedOut;

pin_project_lite::pin_project! {
    /// `tokio::time::timeout_at` that arms its timer only when the inner future is still
    /// pending after a poll: most handlers finish on their first poll and never pay for
    /// a timer entry.
    struct LazyTimeout<F> {
        #[pin]
        fut: F,
        deadline: Option<Instant>,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl<F> LazyTimeout<F> {
    fn new(fut: F, deadline: Option<Instant>) -> Self {
        Self {
            fut,
            deadline,
            sleep: None,
        }
    }
}

impl<F: Future> Future for LazyTimeout<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.fut.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(deadline)));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(TimedOut)),
            _ => Poll::Pending,
        }
    }
}

/// Polls `fut` once; the caller keeps it if it is still pending.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx))).await
}

impl<M, H> Member<M, H>
where
    M: EventInfo,
    H: Handler<M>,
{
    async fn process_item(&self, item: Item<M>) -> Option<Item<M>> {
        let event = match item {
            Item::Event(event) => event,
            Item::Undecodable { raw, reason } => {
                let reason = format!("undecodable event: {reason}");
                let sent = self.dead_letter(&*raw, 0, reason).await;
                self.count_dead_letter(sent, DeadReason::Undecodable);
                return None;
            }
        };
        if let Some(ttl) = self.settings.ttl {
            let age = event.time().millis_until(Timestamp::now());
            if age > ttl.as_millis() as i64 {
                bump(&self.counters.expired);
                let reason = format!("expired: {age} ms old, topic TTL {} ms", ttl.as_millis());
                // Counted as expired whether or not the sink took it.
                if self.dead_letter(&*event, 0, reason).await {
                    self.metrics.dead_lettered(DeadReason::Expired);
                }
                return None;
            }
        }
        let outcome = if self.settings.middleware.is_empty() {
            self.attempts(&event).await
        } else {
            self.through_middleware(&event).await
        };
        match outcome {
            Outcome::Delivered(ended) => {
                bump(&self.counters.delivered);
                self.metrics.acked(&*event, ended);
            }
            Outcome::Unsubscribed => return Some(Item::Event(event)),
            Outcome::Failed { attempts, reason } => match self.settings.mode {
                DeliveryMode::AtMostOnce => {
                    bump(&self.counters.failed);
                    tracing::debug!(
                        subscription = %self.info.name(), event_id = %event.id(), %reason,
                        "at-most-once delivery failed; event dropped"
                    );
                }
                DeliveryMode::AtLeastOnce => {
                    let sent = self.dead_letter(&*event, attempts, reason).await;
                    self.count_dead_letter(sent, DeadReason::Failed);
                }
            },
        }
        None
    }

    async fn through_middleware(&self, event: &Arc<M>) -> Outcome {
        let answer = |outcome: &Outcome| match outcome {
            Outcome::Delivered(_) => Ok(()),
            Outcome::Failed { reason, .. } => Err(HandlerError::msg(reason)),
            Outcome::Unsubscribed => Err(HandlerError::msg("unsubscribed")),
        };
        let (ran, result) = self
            .with_middleware(event, 1, None, || self.attempts(event), answer)
            .await;
        match (ran, result) {
            // Acked once the middleware is done: the clock is read then.
            (Some(Outcome::Delivered(_)), _) => Outcome::Delivered(None),
            (Some(outcome), _) => outcome,
            // Middleware answered without calling the handler (e.g. a duplicate).
            (None, Ok(())) => Outcome::Delivered(None),
            (None, Err(e)) => Outcome::Failed {
                attempts: 0,
                reason: format!("middleware: {e}"),
            },
        }
    }

    /// Runs the subscription's middleware around `inner` (the lifecycle's rest): returns
    /// what `inner` produced, `None` when middleware answered without calling it, and
    /// the chain's answer. `answer` is how `inner`'s output looks to middleware.
    async fn with_middleware<T, F, Fut>(
        &self,
        event: &Arc<M>,
        attempt: u32,
        deadline: Option<Instant>,
        inner: F,
        answer: fn(&T) -> HandlerResult,
    ) -> (Option<T>, HandlerResult)
    where
        T: Send,
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = T> + Send,
    {
        struct Inner<F, T> {
            run: F,
            answer: fn(&T) -> HandlerResult,
            output: Mutex<Option<T>>,
        }
        impl<F, Fut, T> Endpoint for Inner<F, T>
        where
            T: Send,
            F: Fn() -> Fut + Send + Sync,
            Fut: Future<Output = T> + Send,
        {
            fn call<'b>(&'b self, _ctx: &'b Context) -> BoxFuture<'b, HandlerResult> {
                Box::pin(async move {
                    let output = (self.run)().await;
                    let answer = (self.answer)(&output);
                    *self.output.lock().unwrap_or_else(|p| p.into_inner()) = Some(output);
                    answer
                })
            }
        }
        let endpoint = Inner {
            run: inner,
            answer,
            output: Mutex::new(None),
        };
        let ctx = Context::new(self.info.clone(), event.id(), deadline, attempt);
        let answer = Next::new(&self.settings.middleware, &endpoint)
            .run(&**event, &ctx)
            .await;
        let output = endpoint
            .output
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        (output, answer)
    }

    async fn attempts(&self, event: &Arc<M>) -> Outcome {
        let max = match self.settings.mode {
            DeliveryMode::AtMostOnce => 1,
            DeliveryMode::AtLeastOnce => self.settings.retry.max_attempts.max(1),
        };
        let mut attempt = 1;
        loop {
            let failure = match self.timed_attempt(event, attempt).await {
                Ok(ended) => return Outcome::Delivered(ended),
                Err(Failure::Unsubscribed) => return Outcome::Unsubscribed,
                Err(failure) => failure,
            };
            let (reason, permanent) = failure.describe();
            if attempt >= max || permanent {
                return Outcome::Failed {
                    attempts: attempt,
                    reason,
                };
            }
            tracing::debug!(
                subscription = %self.info.name(), event_id = %event.id(), attempt, %reason,
                "handler failed; retrying"
            );
            tokio::time::sleep(self.settings.retry.delay(attempt)).await;
            bump(&self.counters.retries);
            self.metrics.retried();
            attempt += 1;
        }
    }

    /// One attempt. The gate is held while the attempt starts (the handler call and its
    /// first poll), so that once the subscription is dropped no attempt starts.
    async fn attempt(&self, event: &Arc<M>, attempt: u32) -> Result<(), Failure> {
        self.timed_attempt(event, attempt).await.map(drop)
    }

    /// [`attempt`](Self::attempt), returning when it ended (if timed).
    async fn timed_attempt(
        &self,
        event: &Arc<M>,
        attempt: u32,
    ) -> Result<Option<quanta::Instant>, Failure> {
        let deadline = self.settings.timeout.map(|t| Instant::now() + t);
        let current: Arc<dyn EventInfo> = event.clone();
        let ctx = Context::new(self.info.clone(), event.id(), deadline, attempt);
        let Some(guard) = self.gate.enter() else {
            return Err(Failure::Unsubscribed);
        };
        let span = (self.metrics.on() && crate::obs::spans_wanted()).then(|| {
            crate::obs::handle_span(
                &**event,
                &self.info,
                attempt,
                self.settings.trace.as_deref(),
            )
        });
        let started = self.metrics.clock();
        let run = self.run_handler(event.clone(), ctx, current, deadline);
        // No span at all when none is wanted (see `obs::handle_span`).
        let mut fut = pin!(match span {
            Some(span) => Either::Left(tracing::Instrument::instrument(run, span)),
            None => Either::Right(run),
        });
        let first = poll_once(&mut fut).await;
        drop(guard);
        let result = match first {
            Poll::Ready(result) => result,
            Poll::Pending => fut.await,
        };
        let outcome = match &result {
            Ok(()) => Attempted::Ack,
            Err(Failure::Error(_)) => Attempted::Nack,
            Err(Failure::Timeout(_)) => Attempted::Timeout,
            Err(Failure::Panic(_)) => Attempted::Panic,
            Err(Failure::Unsubscribed) => return Err(Failure::Unsubscribed),
        };
        let ended = self.metrics.attempted(outcome, started);
        result.map(|()| ended)
    }

    async fn run_handler(
        &self,
        event: Arc<M>,
        ctx: Context,
        current: Arc<dyn EventInfo>,
        deadline: Option<Instant>,
    ) -> Result<(), Failure> {
        let timeout = self.settings.timeout.unwrap_or_default();
        match &self.settings.executor {
            Executor::Inline => {
                let handler = &self.handler;
                let call =
                    std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(event, ctx)));
                let fut = match call {
                    Ok(fut) => fut,
                    Err(panic) => return Err(Failure::Panic(panic_message(&*panic))),
                };
                let fut = CURRENT_EVENT.scope(current, AssertUnwindSafe(fut).catch_unwind());
                let result = match LazyTimeout::new(fut, deadline).await {
                    Ok(result) => result,
                    Err(TimedOut) => return Err(Failure::Timeout(timeout)),
                };
                match result {
                    Ok(result) => result.map_err(Failure::Error),
                    Err(panic) => Err(Failure::Panic(panic_message(&*panic))),
                }
            }
            Executor::Runtime(runtime) => {
                let handler = self.handler.clone();
                let task = runtime.spawn(tracing::Instrument::in_current_span(
                    CURRENT_EVENT.scope(current, async move { handler.handle(event, ctx).await }),
                ));
                let abort = task.abort_handle();
                let joined = match deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline, task).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            abort.abort();
                            return Err(Failure::Timeout(timeout));
                        }
                    },
                    None => task.await,
                };
                match joined {
                    Ok(result) => result.map_err(Failure::Error),
                    Err(e) if e.is_panic() => Err(Failure::Panic(panic_message(&*e.into_panic()))),
                    Err(e) => Err(Failure::Error(HandlerError::msg(format!(
                        "handler task cancelled: {e}"
                    )))),
                }
            }
        }
    }

    /// Runs one delivery of a durable topic: one attempt (redeliveries are the retries),
    /// ack on success, nack while attempts remain, else `<topic>.dlq` in the same store
    /// and ack. Returns without acking if the member left (the store redelivers).
    pub(crate) async fn handle_delivery(
        &self,
        delivery: eda_core::Delivery,
        decoded: Result<M, String>,
        store: &dyn eda_core::EventStore,
        source: &Arc<str>,
    ) {
        let attempt = delivery.attempt;
        let max = self.settings.retry.max_attempts.max(1);
        let arrived = self.metrics.clock();
        let event = match decoded {
            Ok(event) => Arc::new(event),
            Err(reason) => {
                let raw = match &delivery.record {
                    Ok(raw) => raw.clone(),
                    Err(u) => undecodable_record(&u.raw, source),
                };
                let reason = format!("undecodable event: {reason}");
                self.durable_dead_letter(
                    store,
                    raw,
                    attempt,
                    reason,
                    delivery,
                    DeadReason::Undecodable,
                )
                .await;
                return;
            }
        };
        if let Some(ttl) = self.settings.ttl {
            let age = event.time().millis_until(Timestamp::now());
            if age > ttl.as_millis() as i64 {
                let reason = format!("expired: {age} ms old, topic TTL {} ms", ttl.as_millis());
                match event.to_raw_event() {
                    Ok(raw) => {
                        self.durable_dead_letter(
                            store,
                            raw,
                            0,
                            reason,
                            delivery,
                            DeadReason::Expired,
                        )
                        .await
                    }
                    Err(e) => {
                        tracing::error!(event_id = %event.id(), error = %e, "cannot encode expired event");
                        // Not acked: it comes back, and the write is tried again.
                        bump(&self.counters.deliveries);
                        bump(&self.counters.failed);
                    }
                }
                return;
            }
        }
        match self.durable_attempt(&event, attempt).await {
            Ok(()) => {
                bump(&self.counters.deliveries);
                bump(&self.counters.delivered);
                settle(delivery.ack().await, "ack");
                self.metrics.acked(&*event, None);
                self.metrics.unacked_since(arrived);
            }
            Err(Failure::Unsubscribed) => {
                // Not acked: the store redelivers it to another consumer of the group.
            }
            Err(failure) => {
                let (reason, permanent) = failure.describe();
                if attempt >= max || permanent || self.settings.mode == DeliveryMode::AtMostOnce {
                    match event.to_raw_event() {
                        Ok(raw) => {
                            self.durable_dead_letter(
                                store,
                                raw,
                                attempt,
                                reason,
                                delivery,
                                DeadReason::Failed,
                            )
                            .await
                        }
                        Err(e) => {
                            tracing::error!(event_id = %event.id(), error = %e, "cannot encode failed event");
                            bump(&self.counters.deliveries);
                            bump(&self.counters.failed);
                            settle(delivery.ack().await, "ack");
                        }
                    }
                } else {
                    bump(&self.counters.retries);
                    self.metrics.retried();
                    settle(delivery.nack(reason).await, "nack");
                    self.metrics.unacked_since(arrived);
                }
            }
        }
    }

    /// One attempt of a durable delivery, through the subscription's middleware (which
    /// sees it once per delivery, as on in-process topics).
    async fn durable_attempt(&self, event: &Arc<M>, attempt: u32) -> Result<(), Failure> {
        if self.settings.middleware.is_empty() {
            return self.attempt(event, attempt).await;
        }
        let answer = |result: &Result<(), Failure>| match result {
            Ok(()) => Ok(()),
            Err(failure) => Err(HandlerError::msg(failure.reason())),
        };
        // The middleware sees the attempt's deadline: a store redelivers after it (the
        // visibility timeout is longer), so what middleware holds for the delivery (a
        // dedup claim) must lapse by then, or a process that died mid-handler would
        // have its redelivery taken for a duplicate.
        let deadline = self.settings.timeout.map(|t| Instant::now() + t);
        let (ran, answer) = self
            .with_middleware(
                event,
                attempt,
                deadline,
                || self.attempt(event, attempt),
                answer,
            )
            .await;
        match (ran, answer) {
            (Some(result), _) => result,
            // Middleware answered without calling the handler (e.g. a duplicate).
            (None, Ok(())) => Ok(()),
            (None, Err(e)) => Err(Failure::Error(HandlerError::msg(format!(
                "middleware: {e}"
            )))),
        }
    }

    async fn durable_dead_letter(
        &self,
        store: &dyn eda_core::EventStore,
        raw: eda_core::RawEvent,
        attempts: u32,
        reason: String,
        delivery: eda_core::Delivery,
        why: DeadReason,
    ) {
        bump(&self.counters.deliveries);
        if self.store_dead_letter(store, raw, attempts, reason).await {
            // An expired event is counted as expired, not as dead-lettered.
            bump(match why {
                DeadReason::Expired => &self.counters.expired,
                _ => &self.counters.dead_lettered,
            });
            self.metrics.dead_lettered(why);
            settle(delivery.ack().await, "ack");
        } else {
            // Not acked: it comes back, and the dead-letter write is tried again.
            bump(&self.counters.failed);
        }
    }

    /// Appends the dead letter to `<topic>.dlq` in the same store.
    async fn store_dead_letter(
        &self,
        store: &dyn eda_core::EventStore,
        raw: eda_core::RawEvent,
        attempts: u32,
        reason: String,
    ) -> bool {
        let topic = self.info.topic().to_string();
        let subscriber = self.info.name().to_string();
        match append_dead_letter(store, topic, subscriber, raw, attempts, reason).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(subscription = %self.info.name(), error = %e, "cannot write the dead letter");
                false
            }
        }
    }

    /// Hands the event to the dead-letter sink; `false` (and logged) when it could not be
    /// encoded or the sink failed.
    async fn dead_letter(&self, event: &dyn EventInfo, attempts: u32, reason: String) -> bool {
        let raw = match event.to_raw_event() {
            Ok(raw) => raw,
            Err(e) => {
                tracing::error!(
                    subscription = %self.info.name(), event_id = %event.id(), error = %e, %reason,
                    "cannot encode event for the dead-letter sink; event dropped"
                );
                return false;
            }
        };
        let topic = self.info.topic().to_string();
        let letter = DeadLetter::new(raw, topic, self.info.name().to_string(), attempts, reason);
        match self.dead_letters.send(letter).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(subscription = %self.info.name(), error = %e, "dead-letter sink failed; event dropped");
                false
            }
        }
    }

    /// Counts a dead letter the sink took, or a failure when it could not.
    fn count_dead_letter(&self, sent: bool, why: DeadReason) {
        if sent {
            bump(&self.counters.dead_lettered);
            self.metrics.dead_lettered(why);
        } else {
            bump(&self.counters.failed);
        }
    }
}
