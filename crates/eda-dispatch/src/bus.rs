//! [`Bus`]: the in-process event bus.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use eda_core::{
    CancellationToken, DeadLetterSink, Envelope, Event, EventId, Handler, Interceptor,
    MemoryDeadLetters, Metadata, Middleware, PublishAttributes, RawEvent, SubscriptionInfo,
    SyncHandler, Timestamp, TraceParent, is_default_source,
};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cause::CURRENT_EVENT;
use crate::config::{BusConfig, TopicConfig};
use crate::error::{PublishError, SubscribeError, SyncFailure};
use crate::gate::Gate;
use crate::options::{DeliveryMode, RetryPolicy, SubscribeOptions};
use crate::pattern::TypePattern;
use crate::queue::Queue;
use crate::runner::{Member, Settings};
use crate::sink::{
    Accepts, AsyncSink, Offer, OfferOutcome, PatternFilter, Sink, SyncMember, SyncSink, TypedFilter,
};
use crate::stats::{BusStats, Counters, ShutdownReport, bump};

/// The in-process event bus: a cheap `Clone` handle.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use eda_dispatch::Bus;
/// use eda_core::{Context, Envelope, Event};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
/// struct OrderCreated { order_id: u64 }
/// impl Event for OrderCreated { const TYPE: &'static str = "order.created"; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().service("shop", "1.0.0").build();
/// let total = Arc::new(AtomicU64::new(0));
/// let seen = total.clone();
/// let _sub = bus.subscribe(move |event: Arc<Envelope<OrderCreated>>, _ctx: Context| {
///     let seen = seen.clone();
///     async move {
///         seen.fetch_add(event.payload.order_id, Ordering::Relaxed);
///         Ok(())
///     }
/// })?;
/// bus.publish(OrderCreated { order_id: 7 }).await?;
/// let report = bus.shutdown(std::time::Duration::from_secs(1)).await;
/// assert_eq!(total.load(Ordering::Relaxed), 7);
/// assert_eq!(report.stats.delivered, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: BusConfig,
    source: Arc<str>,
    interceptors: Vec<Arc<dyn Interceptor>>,
    middleware: Vec<Arc<dyn Middleware>>,
    routing: ArcSwap<Routing>,
    registry: Mutex<Registry>,
    counters: Arc<Counters>,
    dead_letters: Arc<dyn DeadLetterSink>,
    shutdown: CancellationToken,
    closed: AtomicBool,
    runtime: Option<Handle>,
    next_name: AtomicU64,
}

/// Who gets what: read on every publish, rebuilt on every (un)subscribe.
#[derive(Clone, Default)]
struct Routing {
    /// Looked up on every publish: foldhash, not SipHash (keys are our own type names).
    by_type: HashMap<Arc<str>, TypeRoute, foldhash::fast::RandomState>,
    patterns: Vec<Arc<dyn Sink>>,
}

#[derive(Clone)]
struct TypeRoute {
    sinks: Vec<Arc<dyn Sink>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum GroupKey {
    Type(Arc<str>),
    Pattern(String),
}

struct GroupEntry {
    sink: Arc<dyn Sink>,
    any: Arc<dyn Any + Send + Sync>,
    members: usize,
}

#[derive(Default)]
struct Registry {
    groups: HashMap<(GroupKey, String), GroupEntry>,
    names: HashSet<String>,
    tasks: Vec<JoinHandle<()>>,
}

/// Builds a [`Bus`]. Every setting has a default; see [`BusConfig`].
#[must_use]
pub struct BusBuilder {
    config: BusConfig,
    interceptors: Vec<Arc<dyn Interceptor>>,
    middleware: Vec<Arc<dyn Middleware>>,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    runtime: Option<Handle>,
}

impl BusBuilder {
    /// Replaces the whole configuration (e.g. one read from a file).
    pub fn config(mut self, config: BusConfig) -> Self {
        self.config = config;
        self
    }
    /// Service name and version: the CloudEvents `source` is `"{service}-{version}"`.
    pub fn service(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.config.service = name.into();
        self.config.version = version.into();
        self
    }
    /// Default processing timeout of each attempt (30 s).
    pub fn processing_timeout(mut self, timeout: Duration) -> Self {
        self.config.processing_timeout = Some(timeout);
        self
    }
    /// How long `publish` waits for room in a full queue before failing (5 s).
    pub fn dispatch_timeout(mut self, timeout: Duration) -> Self {
        self.config.dispatch_timeout = timeout;
        self
    }
    /// Default bound of each group's queue (1024).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity;
        self
    }
    /// Default retry policy of subscriptions.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }
    /// Default delivery mode of subscriptions.
    pub fn mode(mut self, mode: DeliveryMode) -> Self {
        self.config.mode = mode;
        self
    }
    /// Puts events of type `E` on `topic` (by default a type is its own topic).
    pub fn route<E: Event>(self, topic: impl Into<String>) -> Self {
        self.route_type(E::TYPE, topic)
    }
    /// Puts events of type `event_type` on `topic`.
    pub fn route_type(mut self, event_type: impl Into<String>, topic: impl Into<String>) -> Self {
        self.config.routes.insert(event_type.into(), topic.into());
        self
    }
    /// Settings of one topic (TTL, dispatch timeout).
    pub fn topic(mut self, topic: impl Into<String>, config: TopicConfig) -> Self {
        self.config.topics.insert(topic.into(), config);
        self
    }
    /// Adds a publish interceptor, run after the built-in ones (source, cause, trace).
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }
    /// Adds middleware around every async subscription's deliveries (outermost first).
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }
    /// Where dead letters go (default: a [`MemoryDeadLetters`] that logs each one).
    pub fn dead_letter_sink(mut self, sink: impl DeadLetterSink) -> Self {
        self.dead_letters = Some(Arc::new(sink));
        self
    }
    /// The runtime subscription tasks run on (default: the one `subscribe` is called from).
    pub fn runtime(mut self, runtime: Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }
    /// Builds the bus.
    pub fn build(self) -> Bus {
        let source: Arc<str> = Arc::from(self.config.source());
        Bus {
            inner: Arc::new(Inner {
                source,
                interceptors: self.interceptors,
                middleware: self.middleware,
                routing: ArcSwap::from_pointee(Routing::default()),
                registry: Mutex::new(Registry::default()),
                counters: Arc::new(Counters::default()),
                dead_letters: self
                    .dead_letters
                    .unwrap_or_else(|| Arc::new(MemoryDeadLetters::default())),
                shutdown: CancellationToken::new(),
                closed: AtomicBool::new(false),
                runtime: self.runtime,
                next_name: AtomicU64::new(1),
                config: self.config,
            }),
        }
    }
}

fn new_trace() -> TraceParent {
    TraceParent {
        trace_id: fastrand::u128(1..),
        span_id: fastrand::u64(1..),
        flags: 1,
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Bus {
    /// A builder with default settings.
    pub fn builder() -> BusBuilder {
        BusBuilder {
            config: BusConfig::default(),
            interceptors: Vec::new(),
            middleware: Vec::new(),
            dead_letters: None,
            runtime: None,
        }
    }

    /// A bus with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration in force.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Current counters.
    pub fn stats(&self) -> BusStats {
        self.inner.counters.snapshot()
    }

    // ----- publishing -------------------------------------------------------------------

    /// Publishes an event: stamps it (id, time, source, trace context, cause), runs the
    /// synchronous subscribers inline, and queues it for the asynchronous ones, waiting
    /// up to the topic's dispatch timeout where a queue is full.
    ///
    /// Errors of synchronous subscribers come back as [`PublishError::Handlers`] after
    /// every subscriber got the event.
    pub async fn publish<E: Event>(&self, payload: E) -> Result<EventId, PublishError> {
        self.publish_envelope(Envelope::new(payload)).await
    }

    /// Publishes an envelope built by the caller (its id, time, source and metadata are
    /// kept; a missing trace context is generated).
    pub async fn publish_envelope<E: Event>(
        &self,
        mut envelope: Envelope<E>,
    ) -> Result<EventId, PublishError> {
        self.check_open(envelope.id)?;
        self.stamp(
            E::TYPE,
            envelope.id,
            &mut envelope.time,
            &mut envelope.source,
            &mut envelope.metadata,
        );
        let envelope = Arc::new(envelope);
        self.dispatch(&Offer::typed(&envelope)).await?;
        Ok(envelope.id)
    }

    /// Publishes events one after another; stops at the first error.
    pub async fn publish_batch<E: Event>(
        &self,
        events: impl IntoIterator<Item = E>,
    ) -> Result<Vec<EventId>, PublishError> {
        let events = events.into_iter();
        let mut ids = Vec::with_capacity(events.size_hint().0);
        for event in events {
            ids.push(self.publish(event).await?);
        }
        Ok(ids)
    }

    /// Publishes without waiting: a full queue is [`PublishError::Full`] at once.
    /// Callable outside async code, e.g. from a synchronous handler.
    pub fn try_publish<E: Event>(&self, payload: E) -> Result<EventId, PublishError> {
        self.try_publish_envelope(Envelope::new(payload))
    }

    /// [`try_publish`](Self::try_publish) for a caller-built envelope.
    pub fn try_publish_envelope<E: Event>(
        &self,
        mut envelope: Envelope<E>,
    ) -> Result<EventId, PublishError> {
        self.check_open(envelope.id)?;
        self.stamp(
            E::TYPE,
            envelope.id,
            &mut envelope.time,
            &mut envelope.source,
            &mut envelope.metadata,
        );
        let envelope = Arc::new(envelope);
        self.try_dispatch(&Offer::typed(&envelope))?;
        Ok(envelope.id)
    }

    /// Publishes a type-erased record (e.g. from a store or another service). Typed
    /// subscribers decode it; one that cannot decode it dead-letters it with the reason,
    /// and the events around it flow on.
    pub async fn publish_raw(&self, mut raw: RawEvent) -> Result<EventId, PublishError> {
        self.check_open(raw.id)?;
        let event_type = raw.event_type.clone();
        self.stamp(
            &event_type,
            raw.id,
            &mut raw.time,
            &mut raw.source,
            &mut raw.metadata,
        );
        let raw = Arc::new(raw);
        self.dispatch(&Offer::raw(&raw)).await?;
        Ok(raw.id)
    }

    fn check_open(&self, event_id: EventId) -> Result<(), PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShutDown { event_id });
        }
        Ok(())
    }

    fn stamp(
        &self,
        event_type: &str,
        id: EventId,
        time: &mut Timestamp,
        source: &mut Arc<str>,
        metadata: &mut Metadata,
    ) {
        if is_default_source(source) {
            *source = self.inner.source.clone();
        }
        let _ = CURRENT_EVENT.try_with(|cause| {
            metadata.inherit_from(&eda_core::Cause::of(cause.id(), cause.metadata()));
        });
        if metadata.traceparent.is_none() {
            metadata.traceparent = Some(new_trace());
        }
        for interceptor in &self.inner.interceptors {
            interceptor.on_publish(&mut PublishAttributes {
                event_type,
                id,
                time,
                source,
                metadata,
            });
        }
    }

    /// Offers the event to every sink without waiting. Returns where to resume if a
    /// queue was full.
    fn offer_all(
        &self,
        offer: &Offer<'_>,
        failures: &mut Vec<SyncFailure>,
    ) -> Option<(Arc<Routing>, usize)> {
        let routing = self.inner.routing.load();
        let mut full_at = None;
        for (i, sink) in sinks_of(&routing, offer.event_type).enumerate() {
            match sink.try_offer(offer) {
                OfferOutcome::Full => {
                    full_at = Some(i);
                    break;
                }
                OfferOutcome::SyncFailed(failure) => failures.push(failure),
                OfferOutcome::Accepted | OfferOutcome::NotForMe | OfferOutcome::Closed => {}
            }
        }
        full_at.map(|i| (Guard::into_inner(routing), i))
    }

    async fn dispatch(&self, offer: &Offer<'_>) -> Result<(), PublishError> {
        let mut failures = Vec::new();
        if let Some((routing, start)) = self.offer_all(offer, &mut failures) {
            let wait = self.dispatch_timeout(offer.event_type);
            let deadline = Instant::now() + wait;
            for (i, sink) in sinks_of(&routing, offer.event_type).enumerate().skip(start) {
                let mut outcome = if i == start {
                    OfferOutcome::Full
                } else {
                    sink.try_offer(offer)
                };
                if matches!(outcome, OfferOutcome::Full) {
                    outcome = sink.offer_until(offer, deadline).await;
                }
                match outcome {
                    OfferOutcome::Full => {
                        return Err(PublishError::Timeout {
                            event_id: offer.info.id(),
                            subscription: sink.group().to_owned(),
                            waited: wait,
                        });
                    }
                    OfferOutcome::SyncFailed(failure) => failures.push(failure),
                    OfferOutcome::Accepted | OfferOutcome::NotForMe | OfferOutcome::Closed => {}
                }
            }
        }
        self.finish(offer, failures)
    }

    fn try_dispatch(&self, offer: &Offer<'_>) -> Result<(), PublishError> {
        let mut failures = Vec::new();
        if let Some((routing, start)) = self.offer_all(offer, &mut failures) {
            let sink = sinks_of(&routing, offer.event_type)
                .nth(start)
                .expect("index found by offer_all");
            return Err(PublishError::Full {
                event_id: offer.info.id(),
                subscription: sink.group().to_owned(),
            });
        }
        self.finish(offer, failures)
    }

    /// The event reached every subscription.
    fn finish(&self, offer: &Offer<'_>, failures: Vec<SyncFailure>) -> Result<(), PublishError> {
        bump(&self.inner.counters.published);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(PublishError::Handlers {
                event_id: offer.info.id(),
                failures,
            })
        }
    }

    fn dispatch_timeout(&self, event_type: &str) -> Duration {
        let config = &self.inner.config;
        config
            .topics
            .get(config.topic_of(event_type))
            .and_then(|t| t.dispatch_timeout)
            .unwrap_or(config.dispatch_timeout)
    }

    // ----- subscribing ------------------------------------------------------------------

    /// Subscribes an async handler to events of type `E` with default options.
    pub fn subscribe<E, H>(&self, handler: H) -> Result<Subscription, SubscribeError>
    where
        E: Event,
        H: Handler<Envelope<E>>,
    {
        self.subscribe_with(SubscribeOptions::new(), handler)
    }

    /// Subscribes an async handler to events of type `E`.
    ///
    /// It runs on its own task, bounded by the group's queue, with the lifecycle of
    /// `options`: per-attempt timeout, retries with backoff, then the dead-letter sink.
    pub fn subscribe_with<E, H>(
        &self,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, SubscribeError>
    where
        E: Event,
        H: Handler<Envelope<E>>,
    {
        let key = GroupKey::Type(Arc::from(E::TYPE));
        let topic = self.inner.config.topic_of(E::TYPE).to_owned();
        self.subscribe_async(key, topic, TypedFilter::<E>::new(), options, handler)
    }

    /// Subscribes an async handler to every event whose type matches `pattern`
    /// (`*` matches any run of characters: `"order.*"`, `"*"`). It receives type-erased
    /// [`RawEvent`]s (JSON-encoded once per publish).
    pub fn subscribe_pattern<H>(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, SubscribeError>
    where
        H: Handler<RawEvent>,
    {
        let key = GroupKey::Pattern(pattern.to_owned());
        let filter = PatternFilter(TypePattern::new(pattern));
        self.subscribe_async(key, pattern.to_owned(), filter, options, handler)
    }

    /// Subscribes a synchronous handler to events of type `E` with default options: it
    /// runs inline, before `publish` returns, and its error goes back to the publisher.
    /// One attempt, no timeout (it cannot be preempted); a panic is an error.
    pub fn subscribe_sync<E, H>(&self, handler: H) -> Result<Subscription, SubscribeError>
    where
        E: Event,
        H: SyncHandler<Envelope<E>>,
    {
        self.subscribe_sync_with(SubscribeOptions::new(), handler)
    }

    /// [`subscribe_sync`](Self::subscribe_sync) with options (name and group are used).
    pub fn subscribe_sync_with<E, H>(
        &self,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, SubscribeError>
    where
        E: Event,
        H: SyncHandler<Envelope<E>>,
    {
        let key = GroupKey::Type(Arc::from(E::TYPE));
        let topic = self.inner.config.topic_of(E::TYPE).to_owned();
        self.subscribe_sync_inner(
            key,
            topic,
            TypedFilter::<E>::new(),
            options,
            Box::new(handler),
        )
    }

    /// Subscribes a blocking (CPU-heavy or synchronous-I/O) handler: each call runs on
    /// tokio's blocking pool through `spawn_blocking`, with the full async lifecycle.
    /// A timed-out call is abandoned, not stopped: the thread finishes it.
    pub fn subscribe_blocking<E, F>(
        &self,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<Subscription, SubscribeError>
    where
        E: Event,
        F: Fn(&Envelope<E>, &eda_core::Context) -> eda_core::HandlerResult + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        self.subscribe_with(
            options,
            move |event: Arc<Envelope<E>>, ctx: eda_core::Context| {
                let handler = handler.clone();
                async move {
                    match tokio::task::spawn_blocking(move || handler(&event, &ctx)).await {
                        Ok(result) => result,
                        Err(e) if e.is_panic() => Err(eda_core::HandlerError::msg(format!(
                            "handler panicked: {}",
                            crate::runner::panic_message(&*e.into_panic())
                        ))),
                        Err(e) => Err(eda_core::HandlerError::msg(e)),
                    }
                }
            },
        )
    }

    fn runtime(&self) -> Result<Handle, SubscribeError> {
        match &self.inner.runtime {
            Some(handle) => Ok(handle.clone()),
            None => Handle::try_current().map_err(|_| SubscribeError::NoRuntime),
        }
    }

    /// Name and group of a new subscription; registers the name.
    fn claim_name(
        &self,
        registry: &mut Registry,
        key: &GroupKey,
        options: &SubscribeOptions,
    ) -> Result<(String, String), SubscribeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::ShutDown);
        }
        let name = match &options.name {
            Some(name) => name.clone(),
            None => {
                let base = match key {
                    GroupKey::Type(t) => t.to_string(),
                    GroupKey::Pattern(p) => p.clone(),
                };
                loop {
                    let n = self.inner.next_name.fetch_add(1, Ordering::Relaxed);
                    let candidate = format!("{base}#{n}");
                    if !registry.names.contains(&candidate) {
                        break candidate;
                    }
                }
            }
        };
        if name.is_empty() {
            return Err(SubscribeError::InvalidOption(
                "empty subscription name".into(),
            ));
        }
        if registry.names.contains(&name) {
            return Err(SubscribeError::DuplicateName(name));
        }
        let group = options.group.clone().unwrap_or_else(|| name.clone());
        registry.names.insert(name.clone());
        Ok((name, group))
    }

    /// The group's sink: the existing one (checked to take the same events the same
    /// way), or a new one made by `create` and added to the routing table.
    fn join_group<S: Sink>(
        &self,
        registry: &mut Registry,
        key: &GroupKey,
        group: &str,
        name: &str,
        describe: String,
        create: impl FnOnce() -> Arc<S>,
    ) -> Result<Arc<S>, SubscribeError> {
        let map_key = (key.clone(), group.to_owned());
        if let Some(entry) = registry.groups.get_mut(&map_key) {
            let existing = entry.sink.describe();
            return match entry.any.clone().downcast::<S>() {
                Ok(sink) if existing == describe => {
                    entry.members += 1;
                    Ok(sink)
                }
                _ => {
                    registry.names.remove(name);
                    Err(SubscribeError::GroupMismatch {
                        group: group.to_owned(),
                        existing,
                    })
                }
            };
        }
        let sink = create();
        let dyn_sink: Arc<dyn Sink> = sink.clone();
        registry.groups.insert(
            map_key,
            GroupEntry {
                sink: dyn_sink.clone(),
                any: sink.clone(),
                members: 1,
            },
        );
        self.inner.routing.rcu(|routing| {
            let mut routing = Routing::clone(routing);
            match key {
                GroupKey::Type(t) => routing
                    .by_type
                    .entry(t.clone())
                    .or_insert_with(|| TypeRoute { sinks: Vec::new() })
                    .sinks
                    .push(dyn_sink.clone()),
                GroupKey::Pattern(_) => routing.patterns.push(dyn_sink.clone()),
            }
            routing
        });
        Ok(sink)
    }

    fn subscribe_async<M, H, A>(
        &self,
        key: GroupKey,
        topic: String,
        accepts: A,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, SubscribeError>
    where
        M: eda_core::EventInfo,
        H: Handler<M>,
        A: Accepts<M>,
    {
        let runtime = self.runtime()?;
        let config = &self.inner.config;
        let capacity = options.queue_capacity.unwrap_or(config.queue_capacity);
        if capacity == 0 || options.concurrency == Some(0) {
            return Err(SubscribeError::InvalidOption(
                "queue capacity and concurrency must be at least 1".into(),
            ));
        }
        let mut registry = lock(&self.inner.registry);
        let (name, group) = self.claim_name(&mut registry, &key, &options)?;
        let describe = format!("async {}", accepts.describe());
        let counters = self.inner.counters.clone();
        let sink = self.join_group(&mut registry, &key, &group, &name, describe, || {
            Arc::new(AsyncSink {
                group: Arc::from(group.as_str()),
                queue: Queue::bounded(capacity),
                accepts,
                counters,
                live_members: AtomicUsize::new(0),
            })
        })?;
        sink.live_members.fetch_add(1, Ordering::AcqRel);
        let token = self.inner.shutdown.child_token();
        let info = Arc::new(SubscriptionInfo::new(
            name.as_str(),
            group.as_str(),
            topic.as_str(),
            token.clone(),
        ));
        let gate = Arc::new(Gate::new());
        let mut middleware = self.inner.middleware.clone();
        middleware.extend(options.middleware.iter().cloned());
        let member = Arc::new(Member {
            handler: Arc::new(handler),
            info,
            settings: Settings {
                timeout: options.timeout.unwrap_or(config.processing_timeout),
                retry: options
                    .retry
                    .clone()
                    .unwrap_or_else(|| config.retry.clone()),
                mode: options.mode.unwrap_or(config.mode),
                concurrency: options.concurrency.unwrap_or(1),
                executor: options.executor.clone(),
                ttl: config.topic_config(&topic).ttl,
                middleware,
            },
            gate: gate.clone(),
            sink: sink.clone(),
            counters: self.inner.counters.clone(),
            dead_letters: self.inner.dead_letters.clone(),
        });
        registry.tasks.retain(|t| !t.is_finished());
        registry.tasks.push(runtime.spawn(member.run()));
        Ok(Subscription::new(
            &self.inner,
            name,
            group,
            key,
            gate,
            token,
        ))
    }

    fn subscribe_sync_inner<M, A>(
        &self,
        key: GroupKey,
        topic: String,
        accepts: A,
        options: SubscribeOptions,
        handler: Box<dyn SyncHandler<M>>,
    ) -> Result<Subscription, SubscribeError>
    where
        M: eda_core::EventInfo,
        A: Accepts<M>,
    {
        let mut registry = lock(&self.inner.registry);
        let (name, group) = self.claim_name(&mut registry, &key, &options)?;
        let describe = format!("sync {}", accepts.describe());
        let counters = self.inner.counters.clone();
        let sink = self.join_group(&mut registry, &key, &group, &name, describe, || {
            Arc::new(SyncSink {
                group: Arc::from(group.as_str()),
                members: ArcSwap::from_pointee(Vec::new()),
                next: AtomicUsize::new(0),
                accepts,
                counters,
            })
        })?;
        let token = self.inner.shutdown.child_token();
        let gate = Arc::new(Gate::new());
        let member = Arc::new(SyncMember {
            handler,
            info: Arc::new(SubscriptionInfo::new(
                name.as_str(),
                group.as_str(),
                topic.as_str(),
                token.clone(),
            )),
            gate: gate.clone(),
        });
        sink.members.rcu(|members| {
            let mut members = Vec::clone(members);
            members.push(member.clone());
            members
        });
        Ok(Subscription::new(
            &self.inner,
            name,
            group,
            key,
            gate,
            token,
        ))
    }

    // ----- shutdown ---------------------------------------------------------------------

    /// Stops intake (publish and subscribe fail with `ShutDown`), lets every queued and
    /// running delivery finish until `deadline`, then cancels (handlers see
    /// [`Context::cancelled`](eda_core::Context::cancelled)) and aborts what is left.
    /// Returns the final counters.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let until = Instant::now() + deadline;
        self.inner.closed.store(true, Ordering::Release);
        let (sinks, tasks) = {
            let mut registry = lock(&self.inner.registry);
            let sinks: Vec<Arc<dyn Sink>> =
                registry.groups.values().map(|g| g.sink.clone()).collect();
            (sinks, std::mem::take(&mut registry.tasks))
        };
        for sink in &sinks {
            sink.close();
        }
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let joined = tokio::time::timeout_at(until, futures_util::future::join_all(tasks)).await;
        let drained = joined.is_ok();
        if !drained {
            self.inner.shutdown.cancel();
            for abort in &aborts {
                abort.abort();
            }
        }
        self.inner.shutdown.cancel();
        for sink in &sinks {
            sink.discard_queued();
        }
        let mut stats = self.stats();
        stats.not_delivered += stats.in_flight;
        stats.in_flight = 0;
        ShutdownReport { stats, drained }
    }
}

fn sinks_of<'a>(routing: &'a Routing, event_type: &str) -> impl Iterator<Item = &'a Arc<dyn Sink>> {
    routing
        .by_type
        .get(event_type)
        .map(|r| r.sinks.as_slice())
        .unwrap_or_default()
        .iter()
        .chain(routing.patterns.iter())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Registry updates are small and complete; a panic elsewhere cannot leave them half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A live subscription. Dropping it (or calling [`unsubscribe`](Self::unsubscribe))
/// detaches the handler: once the drop returns, no new handler attempt of it starts
/// (one already running finishes, and sees its context cancelled).
#[must_use = "dropping a Subscription unsubscribes it at once"]
pub struct Subscription {
    bus: Weak<Inner>,
    name: String,
    group: String,
    key: GroupKey,
    gate: Arc<Gate>,
    token: CancellationToken,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("group", &self.group)
            .finish()
    }
}

impl Subscription {
    fn new(
        bus: &Arc<Inner>,
        name: String,
        group: String,
        key: GroupKey,
        gate: Arc<Gate>,
        token: CancellationToken,
    ) -> Self {
        Self {
            bus: Arc::downgrade(bus),
            name,
            group,
            key,
            gate,
            token,
        }
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Events waiting in its group's queue (0 for synchronous subscriptions).
    pub fn queue_len(&self) -> usize {
        let Some(bus) = self.bus.upgrade() else {
            return 0;
        };
        let registry = lock(&bus.registry);
        registry
            .groups
            .get(&(self.key.clone(), self.group.clone()))
            .map_or(0, |g| g.sink.queue_len())
    }

    /// Detaches the handler (same as dropping the guard).
    pub fn unsubscribe(self) {}
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.gate.close();
        self.token.cancel();
        let Some(bus) = self.bus.upgrade() else {
            return;
        };
        let mut registry = lock(&bus.registry);
        registry.names.remove(&self.name);
        let map_key = (self.key.clone(), self.group.clone());
        let Some(entry) = registry.groups.get_mut(&map_key) else {
            return;
        };
        entry.members -= 1;
        entry.sink.leave(&self.gate);
        if entry.members > 0 {
            return;
        }
        let Some(entry) = registry.groups.remove(&map_key) else {
            return;
        };
        drop(registry);
        let gone = entry.sink.clone();
        bus.routing.rcu(|routing| {
            let mut routing = Routing::clone(routing);
            let keep = |s: &Arc<dyn Sink>| !Arc::ptr_eq(s, &gone);
            match &self.key {
                GroupKey::Type(t) => {
                    if let Some(route) = routing.by_type.get_mut(t) {
                        route.sinks.retain(keep);
                        if route.sinks.is_empty() {
                            routing.by_type.remove(t);
                        }
                    }
                }
                GroupKey::Pattern(_) => routing.patterns.retain(keep),
            }
            routing
        });
        entry.sink.close();
        entry.sink.discard_queued();
    }
}
