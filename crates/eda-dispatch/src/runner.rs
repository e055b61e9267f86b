//! One member of an async group: runs each event it is given through the lifecycle:
//! TTL → middleware → retry → timeout → panic catch → handler, then the dead-letter
//! sink after the last failed attempt. The group's processor (group.rs) decides which
//! member gets which event.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use eda_core::{
    BoxFuture, Context, DeadLetter, DeadLetterSink, Endpoint, EventInfo, Handler, HandlerError,
    HandlerResult, Middleware, Next, SubscriptionInfo, Timestamp,
};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use tokio::time::Instant;

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
    /// The member itself, for the futures of events that outlive their first poll
    /// (the processor calls [`GroupMember::start`] by reference: no reference count is
    /// touched for the events that end there).
    pub(crate) me: Weak<Self>,
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
    /// Starts one event's lifecycle and polls it once. Most handlers finish on their
    /// first poll: then the lifecycle ends here, without a boxed future for it. The
    /// attempt's deadline counts from `clock`'s reading.
    fn start(&self, item: Item<M>, clock: &RunClock) -> Started<M>;
    fn weight(&self) -> u32;
    fn concurrency(&self) -> usize;
    fn gate(&self) -> &Arc<Gate>;
}

/// How [`GroupMember::start`] left an event.
pub(crate) enum Started<M> {
    /// Its lifecycle ended. The event comes back when the member left before an attempt
    /// could start, so that the group hands it to another member.
    Done(Option<Item<M>>),
    /// Still running (polled once): the rest of its lifecycle.
    Running(BoxFuture<'static, Option<Item<M>>>),
}

impl<M: EventInfo, H: Handler<M>> GroupMember<M> for Member<M, H> {
    fn start(&self, item: Item<M>, clock: &RunClock) -> Started<M> {
        let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        let event = match item {
            Item::Event(event) if self.fast(&event) => event,
            item => {
                // Undecodable, expired or behind middleware: the whole lifecycle, boxed.
                let this = self.this();
                let mut fut: BoxFuture<'static, Option<Item<M>>> =
                    Box::pin(async move { this.process_item(item).await });
                return match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(back) => Started::Done(back),
                    Poll::Pending => Started::Running(fut),
                };
            }
        };
        let Some(begun) = self.begin_attempt(&event, 1, &mut cx, clock) else {
            return Started::Done(Some(Item::Event(event)));
        };
        let first = match begun.first {
            Poll::Ready(result) => self.end_attempt(result, begun.started),
            Poll::Pending => {
                let this = self.this();
                return Started::Running(Box::pin(async move {
                    let result = this.rest_of_attempt(begun).await;
                    let outcome = match result {
                        Ok(ended) => Outcome::Delivered(ended),
                        Err(failure) => this.retry(&event, 1, failure).await,
                    };
                    this.conclude(event, outcome).await
                }));
            }
        };
        match first {
            Ok(ended) => {
                self.delivered(&event, ended);
                Started::Done(None)
            }
            Err(failure) => {
                let this = self.this();
                Started::Running(Box::pin(async move {
                    let outcome = this.retry(&event, 1, failure).await;
                    this.conclude(event, outcome).await
                }))
            }
        }
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

/// One reading of the clock for the attempts a group's processor starts in one run
/// (between two of its awaits): the first attempt that has a deadline reads it, the
/// others reuse it while it is under a millisecond old, checked on the CPU's
/// time-stamp counter (quanta's raw reading, ~13 ns here against ~32 for tokio's
/// clock). A reading per event was ~10 % of the handling side's cost. So a deadline is
/// never more than 1 ms early, which is tokio's timer resolution anyway (it rounds
/// deadlines up to the next millisecond).
#[derive(Debug, Default)]
pub(crate) struct RunClock(std::cell::Cell<Option<(Instant, u64)>>);

/// The counter, and how many of its ticks a [`RunClock`] reading may be reused for.
fn run_clock_counter() -> &'static (quanta::Clock, u64) {
    static COUNTER: std::sync::OnceLock<(quanta::Clock, u64)> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        let clock = quanta::Clock::new();
        // The most ticks, a power of two, that make under a millisecond (0.5–1 ms),
        // by the clock's calibration: nothing is waited for.
        let start = clock.raw();
        let mut ticks = 1u64;
        while clock.delta_as_nanos(start, start + ticks) < 1_000_000 && ticks < 1 << 40 {
            ticks *= 2;
        }
        (clock, ticks / 2)
    })
}

/// The time-stamp counter's clock (quanta's; the OS clock where the counter is not
/// reliable), calibrated once per process.
pub(crate) fn tsc_clock() -> &'static quanta::Clock {
    &run_clock_counter().0
}

impl RunClock {
    /// The run's reading, taken again if it has none or it is too old.
    pub(crate) fn now(&self) -> Instant {
        let (counter, slack) = run_clock_counter();
        let raw = counter.raw();
        if let Some((now, taken)) = self.0.get()
            && raw.wrapping_sub(taken) < *slack
        {
            return now;
        }
        let now = Instant::now();
        self.0.set(Some((now, raw)));
        now
    }

    /// Ends the run: the next [`now`](Self::now) reads the clock again. (With tokio's
    /// clock paused, it moves only across awaits, while the counter hardly moves.)
    pub(crate) fn reset(&self) {
        self.0.set(None);
    }
}

/// An attempt whose handler was called and polled once (under the unsubscribe gate).
struct Begun {
    /// The first poll's result; the handler's future is in `rest` when pending.
    first: Poll<Result<(), Failure>>,
    rest: Option<BoxFuture<'static, Result<(), Failure>>>,
    /// The `rest` future applies the deadline itself (a handler on another runtime,
    /// aborted at its deadline).
    self_timed: bool,
    deadline: Option<Instant>,
    started: Option<quanta::Instant>,
    span: Option<tracing::Span>,
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

impl<M, H> Member<M, H>
where
    M: EventInfo,
    H: Handler<M>,
{
    /// The member, owned (for a future that outlives the call).
    fn this(&self) -> Arc<Self> {
        // A member is only reached through an `Arc` (its group's, its processor's).
        self.me
            .upgrade()
            .expect("a member in use has a strong reference")
    }

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
        if let Some(reason) = self.expired(&event) {
            bump(&self.counters.expired);
            // Counted as expired whether or not the sink took it.
            if self.dead_letter(&*event, 0, reason).await {
                self.metrics.dead_lettered(DeadReason::Expired);
            }
            return None;
        }
        let outcome = if self.settings.middleware.is_empty() {
            self.attempts(&event).await
        } else {
            self.through_middleware(&event).await
        };
        self.conclude(event, outcome).await
    }

    /// Whether an event can take the fast path of [`GroupMember::start`]: no
    /// middleware, and not expired.
    fn fast(&self, event: &M) -> bool {
        self.settings.middleware.is_empty() && self.expired(event).is_none()
    }

    /// Why the event is too old for the topic's TTL, if it is.
    fn expired(&self, event: &M) -> Option<String> {
        let ttl = self.settings.ttl?;
        let age = event.time().millis_until(Timestamp::now());
        (age > ttl.as_millis() as i64)
            .then(|| format!("expired: {age} ms old, topic TTL {} ms", ttl.as_millis()))
    }

    /// Counts a handled event.
    fn delivered(&self, event: &M, ended: Option<quanta::Instant>) {
        bump(&self.counters.delivered);
        self.metrics.acked(event, ended);
    }

    /// Ends a delivery: counts it, or dead-letters it after its last failed attempt.
    /// Gives the event back when the member left before an attempt could start.
    async fn conclude(&self, event: Arc<M>, outcome: Outcome) -> Option<Item<M>> {
        match outcome {
            Outcome::Delivered(ended) => self.delivered(&event, ended),
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
        match self.timed_attempt(event, 1).await {
            Ok(ended) => Outcome::Delivered(ended),
            Err(failure) => self.retry(event, 1, failure).await,
        }
    }

    /// Attempt `attempt` failed: tries again after the retry delay while attempts remain.
    async fn retry(&self, event: &Arc<M>, mut attempt: u32, mut failure: Failure) -> Outcome {
        let max = match self.settings.mode {
            DeliveryMode::AtMostOnce => 1,
            DeliveryMode::AtLeastOnce => self.settings.retry.max_attempts.max(1),
        };
        loop {
            if let Failure::Unsubscribed = failure {
                return Outcome::Unsubscribed;
            }
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
            failure = match self.timed_attempt(event, attempt).await {
                Ok(ended) => return Outcome::Delivered(ended),
                Err(failure) => failure,
            };
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
        let begun = std::future::poll_fn(|cx| {
            Poll::Ready(self.begin_attempt(event, attempt, cx, &RunClock::default()))
        })
        .await;
        let Some(begun) = begun else {
            return Err(Failure::Unsubscribed);
        };
        if let Poll::Ready(result) = begun.first {
            return self.end_attempt(result, begun.started);
        }
        self.rest_of_attempt(begun).await
    }

    /// Calls the handler and polls its future once, under the unsubscribe gate (`None`:
    /// the member left). No timer is armed: most handlers finish on that poll.
    fn begin_attempt(
        &self,
        event: &Arc<M>,
        attempt: u32,
        cx: &mut std::task::Context<'_>,
        clock: &RunClock,
    ) -> Option<Begun> {
        let deadline = self.settings.timeout.map(|t| clock.now() + t);
        let ctx = Context::new(self.info.clone(), event.id(), deadline, attempt);
        let guard = self.gate.enter()?;
        let span = (self.metrics.on() && crate::obs::spans_wanted()).then(|| {
            crate::obs::handle_span(
                &**event,
                &self.info,
                attempt,
                self.settings.trace.as_deref(),
            )
        });
        let started = self.metrics.clock();
        let call = || {
            let (mut fut, self_timed) = self.handler_future(event.clone(), ctx, deadline);
            let first = fut.as_mut().poll(cx);
            (fut, self_timed, first)
        };
        let (fut, self_timed, first) = match &span {
            Some(span) => span.in_scope(call),
            None => call(),
        };
        drop(guard);
        Some(Begun {
            rest: first.is_pending().then_some(fut),
            first,
            self_timed,
            deadline,
            started,
            span,
        })
    }

    /// Waits for a handler that did not finish on its first poll, up to its deadline.
    async fn rest_of_attempt(&self, begun: Begun) -> Result<Option<quanta::Instant>, Failure> {
        let Some(fut) = begun.rest else {
            unreachable!("an attempt pending after its first poll keeps its future");
        };
        let fut = match begun.span {
            Some(span) => Either::Left(tracing::Instrument::instrument(fut, span)),
            None => Either::Right(fut),
        };
        let result = match begun.deadline {
            Some(deadline) if !begun.self_timed => {
                match tokio::time::timeout_at(deadline, fut).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure::Timeout(self.settings.timeout.unwrap_or_default())),
                }
            }
            _ => fut.await,
        };
        self.end_attempt(result, begun.started)
    }

    /// Records how an attempt ended; returns when it ended (if timed).
    fn end_attempt(
        &self,
        result: Result<(), Failure>,
        started: Option<quanta::Instant>,
    ) -> Result<Option<quanta::Instant>, Failure> {
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

    /// The handler's future for one attempt, not yet polled: it catches panics and sets
    /// the current event (the cause of what the handler publishes). The flag says
    /// whether it applies the deadline itself.
    fn handler_future(
        &self,
        event: Arc<M>,
        ctx: Context,
        deadline: Option<Instant>,
    ) -> (BoxFuture<'static, Result<(), Failure>>, bool) {
        let current: Arc<dyn EventInfo> = event.clone();
        let handler = self.handler.clone();
        let call = async move {
            let fut = std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(event, ctx)))
                .map_err(|panic| Failure::Panic(panic_message(&*panic)))?;
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(result) => result.map_err(Failure::Error),
                Err(panic) => Err(Failure::Panic(panic_message(&*panic))),
            }
        };
        match &self.settings.executor {
            Executor::Inline => (Box::pin(crate::cause::scope(current, call)), false),
            Executor::Runtime(runtime) => {
                let timeout = self.settings.timeout.unwrap_or_default();
                let task = runtime.spawn(tracing::Instrument::in_current_span(
                    crate::cause::scope(current, call),
                ));
                let abort = task.abort_handle();
                let joined = async move {
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
                        Ok(result) => result,
                        Err(e) if e.is_panic() => {
                            Err(Failure::Panic(panic_message(&*e.into_panic())))
                        }
                        Err(e) => Err(Failure::Error(HandlerError::msg(format!(
                            "handler task cancelled: {e}"
                        )))),
                    }
                };
                (Box::pin(joined), true)
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
        if let Some(reason) = self.expired(&event) {
            match event.to_raw_event() {
                Ok(raw) => {
                    self.durable_dead_letter(store, raw, 0, reason, delivery, DeadReason::Expired)
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
