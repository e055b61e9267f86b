//! [`Bus`]: the in-process event bus.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use eda_core::{
    CancellationToken, DeadLetterSink, Envelope, Event, EventId, EventInfo, EventStore, Handler,
    Interceptor, MemoryDeadLetters, Metadata, Middleware, PublishAttributes, RawEvent, StoreError,
    SubscriptionInfo, SyncHandler, Timestamp, TraceContext, TraceParent, is_default_source,
};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::commit::{CommitOptions, GroupCommit};
use crate::config::{BusConfig, TopicConfig};
use crate::error::{PublishError, SubscribeError, SyncFailure};
use crate::gate::Gate;
use crate::group::{AnyGroup, Group};
use crate::options::{DeliveryMode, RetryPolicy, SubscribeOptions};
use crate::pattern::TypePattern;
use crate::runner::{Member, Settings};
use crate::sink::{
    Accepts, Offer, OfferOutcome, PatternFilter, Sink, SyncMember, SyncSink, TypedFilter,
};
use crate::stats::{BusStats, Counters, ShutdownReport, Tally, bump};
use crate::topic::{Backpressure, Published, Topic};

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
    trace: Option<Arc<dyn TraceContext>>,
    /// Metrics and spans on (the default) or off.
    observe: bool,
    routing: ArcSwap<Routing>,
    registry: Mutex<Registry>,
    counters: Tally,
    dead_letters: Arc<dyn DeadLetterSink>,
    shutdown: CancellationToken,
    closed: AtomicBool,
    runtime: Option<Handle>,
    next_name: AtomicU64,
    /// Topics bound to a store, by topic name.
    durable: HashMap<String, GroupCommit>,
    /// Cancelled when shutdown begins: durable runners stop taking deliveries.
    intake: CancellationToken,
}

/// What is left of a publish that must wait (for room in a ring, or for a store).
type Rest<'a> = eda_core::BoxFuture<'a, Result<(), PublishError>>;

/// Runs a publish's synchronous part (`now`) in the publish's span, if there is one;
/// what it left to await comes back in the span too (boxed once more; only a publish
/// that waits, with spans on). The publish's own future does not carry the span.
fn start_in_span<'a>(
    span: Option<tracing::Span>,
    now: impl FnOnce() -> Result<Option<Rest<'a>>, PublishError>,
) -> Result<Option<Rest<'a>>, PublishError> {
    let Some(span) = span else {
        return now();
    };
    let rest = span.in_scope(now)?;
    Ok(rest.map(|rest| Box::pin(rest.instrument(span)) as Rest<'a>))
}

/// Who gets what: read on every publish, rebuilt on every (un)subscribe.
#[derive(Clone, Default)]
struct Routing {
    /// Looked up on every publish: foldhash, not SipHash (keys are our own type names).
    by_type: HashMap<Arc<str>, TypeRoute, foldhash::fast::RandomState>,
    /// Whether pattern groups exist: then every published type needs a topic.
    patterns: bool,
}

#[derive(Clone, Default)]
struct TypeRoute {
    /// Synchronous groups, run inline by `publish`.
    sinks: Vec<Arc<dyn Sink>>,
    /// The topic whose ring the asynchronous groups read.
    topic: Option<Arc<Topic>>,
    /// `eda_events_published_total{topic, type}`.
    published: Option<metrics::Counter>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum GroupKey {
    Type(Arc<str>),
    Pattern(String),
}

#[derive(Clone)]
enum GroupKind {
    Sync(Arc<dyn Sink>),
    Async(Arc<dyn AnyGroup>),
}

impl GroupKind {
    fn describe(&self) -> String {
        match self {
            Self::Sync(s) => s.describe(),
            Self::Async(g) => g.describe(),
        }
    }
}

struct GroupEntry {
    kind: GroupKind,
    any: Arc<dyn Any + Send + Sync>,
    members: usize,
}

#[derive(Default)]
struct Registry {
    groups: HashMap<(GroupKey, String), GroupEntry>,
    names: HashSet<String>,
    /// Processor tasks of async groups.
    tasks: Vec<JoinHandle<()>>,
    /// Topics by name.
    topics: HashMap<Arc<str>, Arc<Topic>>,
    /// Pattern groups: they read every topic.
    pattern_groups: Vec<Arc<dyn AnyGroup>>,
    /// Subscriptions of durable topics, by name: (topic, group).
    durable_subs: HashMap<String, (String, String)>,
}

/// Events waiting for one subscription group on one topic: see [`Bus::backlog`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backlog {
    /// The topic.
    pub topic: String,
    /// The subscription group.
    pub group: String,
    /// Events not yet taken by the group (in process: its lag behind the topic's ring;
    /// durable: what the store reports, `None` when it cannot tell).
    pub pending: Option<u64>,
    /// Whether the topic is durable (bound to a store).
    pub durable: bool,
}

/// Builds a [`Bus`]. Every setting has a default; see [`BusConfig`].
#[must_use]
pub struct BusBuilder {
    config: BusConfig,
    interceptors: Vec<Arc<dyn Interceptor>>,
    middleware: Vec<Arc<dyn Middleware>>,
    trace: Option<Arc<dyn TraceContext>>,
    observe: bool,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    runtime: Option<Handle>,
    durable: HashMap<String, Arc<dyn EventStore>>,
}

impl BusBuilder {
    /// Binds `topic` to a store: `publish` appends (and returns once the store committed),
    /// async subscribers consume from the store through the same lifecycle, acking only
    /// after their handler succeeded. Retries are the store's redeliveries; after the
    /// last attempt the event goes to `<topic>.dlq` in the same store. At-least-once
    /// across crashes. Synchronous subscribers are refused on durable topics.
    pub fn durable_topic(mut self, topic: impl Into<String>, store: impl EventStore) -> Self {
        self.durable.insert(topic.into(), Arc::new(store));
        self
    }

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
    /// Links each `eda.handle` span to the trace its event carries (e.g. the
    /// OpenTelemetry propagation of `eda-observe`). Without it the spans stand alone.
    pub fn trace_context(mut self, trace: impl TraceContext) -> Self {
        self.trace = Some(Arc::new(trace));
        self
    }
    /// Metrics and spans (default: on). Off, the bus registers no-op metric handles,
    /// reads no clock for the histograms and opens no `eda.publish`/`eda.handle` spans:
    /// for a service that measures nothing, or to measure what observability costs
    /// (`cargo xtask bench observe`). With no recorder and no `tracing` subscriber
    /// installed, on costs little already.
    pub fn observability(mut self, on: bool) -> Self {
        self.observe = on;
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
                trace: self.trace,
                observe: self.observe,
                routing: ArcSwap::from_pointee(Routing::default()),
                registry: Mutex::new(Registry::default()),
                counters: Tally::default(),
                dead_letters: self
                    .dead_letters
                    .unwrap_or_else(|| Arc::new(MemoryDeadLetters::default())),
                shutdown: CancellationToken::new(),
                closed: AtomicBool::new(false),
                runtime: self.runtime,
                next_name: AtomicU64::new(1),
                durable: self
                    .durable
                    .into_iter()
                    .map(|(topic, store)| {
                        let settings = self.config.topic_config(&topic);
                        let options = CommitOptions {
                            max_batch: settings.commit_batch.unwrap_or(1000),
                            linger: settings.commit_linger.unwrap_or_default(),
                            codec: settings.codec.unwrap_or_default(),
                        };
                        let commit = GroupCommit::new(&topic, store, options, self.observe);
                        (topic, commit)
                    })
                    .collect(),
                intake: CancellationToken::new(),
                config: self.config,
            }),
        }
    }
}

fn new_trace() -> TraceParent {
    // Zero is invalid in both. Drawing again is cheaper than a range, whose u128
    // modulo cost ~13 ns per publish.
    fn nonzero<T: PartialEq + Default>(draw: impl Fn() -> T) -> T {
        loop {
            let v = draw();
            if v != T::default() {
                return v;
            }
        }
    }
    TraceParent {
        trace_id: nonzero(|| fastrand::u128(..)),
        span_id: nonzero(|| fastrand::u64(..)),
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
            trace: None,
            observe: true,
            dead_letters: None,
            runtime: None,
            durable: HashMap::new(),
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

    /// What every async group has yet to handle, per topic: for in-process topics the
    /// group's lag behind the ring, for durable topics the store's
    /// [`backlog`](EventStore::backlog) (a store error is logged and reported as
    /// `None`). `eda-observe` samples this into the `eda_backlog` gauge.
    pub async fn backlog(&self) -> Vec<Backlog> {
        let (mut out, durable) = {
            let registry = lock(&self.inner.registry);
            let mut out = Vec::new();
            for ((_, group), entry) in &registry.groups {
                if let GroupKind::Async(g) = &entry.kind {
                    for (topic, lag) in g.lags() {
                        out.push(Backlog {
                            topic: topic.to_string(),
                            group: group.clone(),
                            pending: Some(lag as u64),
                            durable: false,
                        });
                    }
                }
            }
            let durable: HashSet<(String, String)> =
                registry.durable_subs.values().cloned().collect();
            (out, durable)
        };
        for (topic, group) in durable {
            let Some(commit) = self.inner.durable.get(&topic) else {
                continue;
            };
            let pending = match commit.store.backlog(&topic, &group).await {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::debug!(%topic, %group, error = %e, "cannot read the store's backlog");
                    None
                }
            };
            out.push(Backlog {
                topic,
                group,
                pending,
                durable: true,
            });
        }
        out.sort_by(|a, b| (&a.topic, &a.group).cmp(&(&b.topic, &b.group)));
        out
    }

    // ----- publishing -------------------------------------------------------------------

    /// Publishes an event: stamps it (id, time, source, trace context, cause), runs the
    /// synchronous subscribers inline, and queues it for the asynchronous ones, waiting
    /// up to the topic's dispatch timeout where a queue is full.
    ///
    /// Errors of synchronous subscribers come back as [`PublishError::Handlers`] after
    /// every subscriber got the event.
    pub async fn publish<E: Event>(&self, payload: E) -> Result<EventId, PublishError> {
        // `new_cyclic` builds the envelope where it will live: `Arc::new(Envelope::new(..))`
        // built it on the stack and copied it (~240 bytes) into the allocation.
        self.publish_shared(Arc::new_cyclic(|_| Envelope::new(payload)))
            .await
    }

    /// Publishes an envelope built by the caller (its id, time, source and metadata are
    /// kept; a missing trace context is generated).
    pub async fn publish_envelope<E: Event>(
        &self,
        envelope: Envelope<E>,
    ) -> Result<EventId, PublishError> {
        self.publish_shared(Arc::new(envelope)).await
    }

    /// Publishes a new envelope (not shared yet: it is stamped in place). In an `Arc`
    /// from the start, so that the publish futures carry a pointer, not the envelope.
    async fn publish_shared<E: Event>(
        &self,
        envelope: Arc<Envelope<E>>,
    ) -> Result<EventId, PublishError> {
        let id = envelope.id;
        let span = self.publish_span(E::TYPE, id);
        if let Some(rest) = start_in_span(span, || self.publish_envelope_now(envelope))? {
            rest.await?;
        }
        Ok(id)
    }

    /// The `eda.publish` span of one event.
    #[inline]
    fn publish_span(&self, event_type: &str, id: EventId) -> Option<tracing::Span> {
        if !self.inner.observe {
            return None;
        }
        crate::obs::publish_span(event_type, id, || self.inner.config.topic_of(event_type))
    }

    /// A publish up to where it would wait: stamps the envelope, runs the synchronous
    /// groups and appends to the topic's ring if it has room. What is left (waiting for
    /// room, or a durable topic's store append) comes back boxed, so that the future of
    /// `publish` stays small (it was ~2.9 KB, moved around on every publish).
    fn publish_envelope_now<E: Event>(
        &self,
        mut envelope: Arc<Envelope<E>>,
    ) -> Result<Option<Rest<'_>>, PublishError> {
        self.check_open(envelope.id)?;
        // Always: the envelope is new, nobody else holds it yet.
        if let Some(envelope) = Arc::get_mut(&mut envelope) {
            self.stamp_envelope(envelope);
        }
        if let Some((topic, commit)) = self.durable_of(E::TYPE) {
            let raw = envelope
                .to_raw(&commit.options.codec)
                .map_err(|e| PublishError::Encode {
                    event_id: envelope.id,
                    topic: topic.to_owned(),
                    reason: e.to_string(),
                })?;
            return Ok(Some(Box::pin(self.append_durable(topic, commit, raw))));
        }
        self.dispatch_now(envelope, true)
    }

    /// Publishes events one after another; stops at the first error. On a durable topic
    /// the events are appended as one batch instead: all of them or none.
    pub async fn publish_batch<E: Event>(
        &self,
        events: impl IntoIterator<Item = E>,
    ) -> Result<Vec<EventId>, PublishError> {
        let events = events.into_iter();
        if let Some((topic, commit)) = self.durable_of(E::TYPE) {
            let mut records = Vec::with_capacity(events.size_hint().0);
            for event in events {
                let mut envelope = Envelope::new(event);
                self.check_open(envelope.id)?;
                crate::obs::in_span(self.publish_span(E::TYPE, envelope.id), || {
                    self.stamp_envelope(&mut envelope)
                });
                let raw =
                    envelope
                        .to_raw(&commit.options.codec)
                        .map_err(|e| PublishError::Encode {
                            event_id: envelope.id,
                            topic: topic.to_owned(),
                            reason: e.to_string(),
                        })?;
                records.push(raw);
            }
            let ids: Vec<EventId> = records.iter().map(|r| r.id).collect();
            let Some(&first) = ids.first() else {
                return Ok(ids);
            };
            let started = commit.metrics.clock();
            commit
                .store
                .append(topic, records)
                .await
                .map_err(|source| PublishError::Store {
                    event_id: first,
                    topic: topic.to_owned(),
                    source,
                })?;
            commit.metrics.appended(ids.len(), started);
            self.published_counter(E::TYPE).increment(ids.len() as u64);
            self.inner
                .counters
                .published()
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            return Ok(ids);
        }
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
        let span = self.publish_span(E::TYPE, envelope.id);
        let _entered = span.as_ref().map(tracing::Span::enter);
        self.check_open(envelope.id)?;
        self.stamp_envelope(&mut envelope);
        if let Some((topic, _)) = self.durable_of(E::TYPE) {
            return Err(PublishError::Store {
                event_id: envelope.id,
                topic: topic.to_owned(),
                source: StoreError::Invalid(
                    "appending to a durable topic waits for the store: use `publish(..).await`"
                        .into(),
                ),
            });
        }
        let id = envelope.id;
        self.try_dispatch(Arc::new(envelope))?;
        Ok(id)
    }

    /// Publishes a type-erased record (e.g. from a store or another service). Typed
    /// subscribers decode it; one that cannot decode it dead-letters it with the reason,
    /// and the events around it flow on.
    pub fn publish_raw(
        &self,
        raw: RawEvent,
    ) -> impl Future<Output = Result<EventId, PublishError>> + Send + '_ {
        // Into an `Arc` at once: the future carries a pointer, not the record.
        self.publish_raw_shared(Arc::new(raw))
    }

    /// [`publish_shared`](Self::publish_shared) for a record.
    async fn publish_raw_shared(&self, raw: Arc<RawEvent>) -> Result<EventId, PublishError> {
        let id = raw.id;
        let span = self.publish_span(&raw.event_type, id);
        if let Some(rest) = start_in_span(span, || self.publish_raw_now(raw))? {
            rest.await?;
        }
        Ok(id)
    }

    /// [`publish_envelope_now`](Self::publish_envelope_now) for a record.
    fn publish_raw_now(&self, mut raw: Arc<RawEvent>) -> Result<Option<Rest<'_>>, PublishError> {
        self.check_open(raw.id)?;
        // Always: the record is new, nobody else holds it yet.
        if let Some(raw) = Arc::get_mut(&mut raw) {
            let event_type = raw.event_type.clone();
            self.stamp(
                &event_type,
                raw.id,
                &mut raw.time,
                &mut raw.source,
                &mut raw.metadata,
            );
        }
        if let Some((topic, commit)) = self.durable_of(&raw.event_type) {
            let raw = Arc::unwrap_or_clone(raw);
            return Ok(Some(Box::pin(self.append_durable(topic, commit, raw))));
        }
        self.dispatch_now(raw, true)
    }

    /// The committer of `event_type`'s topic, if that topic is durable.
    fn durable_of(&self, event_type: &str) -> Option<(&str, &GroupCommit)> {
        if self.inner.durable.is_empty() {
            return None;
        }
        let topic = self.inner.config.topic_of(event_type);
        self.inner
            .durable
            .get_key_value(topic)
            .map(|(name, store)| (name.as_str(), store))
    }

    async fn append_durable(
        &self,
        topic: &str,
        commit: &GroupCommit,
        raw: RawEvent,
    ) -> Result<(), PublishError> {
        let event_id = raw.id;
        let event_type = raw.event_type.clone();
        commit
            .append(self.inner.runtime.as_ref(), raw)
            .await
            .map_err(|source| PublishError::Store {
                event_id,
                topic: topic.to_owned(),
                source,
            })?;
        self.published_counter(&event_type).increment(1);
        bump(self.inner.counters.published());
        Ok(())
    }

    fn check_open(&self, event_id: EventId) -> Result<(), PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShutDown { event_id });
        }
        Ok(())
    }

    /// [`stamp`](Self::stamp) for a typed envelope.
    fn stamp_envelope<E: Event>(&self, envelope: &mut Envelope<E>) {
        self.stamp(
            E::TYPE,
            envelope.id,
            &mut envelope.time,
            &mut envelope.source,
            &mut envelope.metadata,
        );
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
        crate::cause::with_current(|cause| {
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

    /// Runs the synchronous groups and returns the topic for the asynchronous ones,
    /// and the type's published counter.
    fn run_sync<'r>(
        &self,
        routing: &'r Routing,
        offer: &Offer<'_>,
        failures: &mut Vec<SyncFailure>,
    ) -> (Option<Cow<'r, Arc<Topic>>>, Cow<'r, metrics::Counter>) {
        match routing.by_type.get(offer.event_type) {
            Some(route) => {
                for sink in &route.sinks {
                    if let OfferOutcome::SyncFailed(failure) = sink.try_offer(offer) {
                        failures.push(failure);
                    }
                }
                let published = match &route.published {
                    Some(counter) => Cow::Borrowed(counter),
                    None => Cow::Owned(self.register_published(offer.event_type)),
                };
                (route.topic.as_ref().map(Cow::Borrowed), published)
            }
            // First event of a type while pattern groups exist: they need its topic.
            None if routing.patterns => {
                let topic = {
                    let mut registry = lock(&self.inner.registry);
                    self.ensure_topic(&mut registry, offer.event_type, None)
                };
                (
                    Some(Cow::Owned(topic)),
                    Cow::Owned(self.register_published(offer.event_type)),
                )
            }
            None => (None, Cow::Owned(self.register_published(offer.event_type))),
        }
    }

    /// The type's `eda_events_published_total{topic, type}`, kept in its route (durable
    /// topics have a route only for it).
    fn published_counter(&self, event_type: &str) -> metrics::Counter {
        let cached = self
            .inner
            .routing
            .load()
            .by_type
            .get(event_type)
            .and_then(|route| route.published.clone());
        cached.unwrap_or_else(|| self.register_published(event_type))
    }

    /// Registers `eda_events_published_total{topic, type}` for a type and keeps it in
    /// the type's route (the first publish of each type comes here).
    fn register_published(&self, event_type: &str) -> metrics::Counter {
        let topic = self.inner.config.topic_of(event_type);
        let counter = crate::obs::published_counter(topic, event_type, self.inner.observe);
        let event_type: Arc<str> = Arc::from(event_type);
        self.inner.routing.rcu(|routing| {
            let mut routing = Routing::clone(routing);
            let route = routing.by_type.entry(event_type.clone()).or_default();
            route.published.get_or_insert_with(|| counter.clone());
            routing
        });
        counter
    }

    /// Appends the event to the topic's ring if it has room (or nobody reads the topic).
    /// `Ok(Some(slot))`: the ring is full and its slowest group blocks publishers, so
    /// the caller may wait for room ([`append_waiting`](Self::append_waiting)); without
    /// `wait`, a full ring is an error.
    fn try_append(
        &self,
        topic: &Topic,
        event: Arc<dyn EventInfo>,
        wait: bool,
    ) -> Result<Option<Published>, PublishError> {
        if !topic.has_consumers() {
            return Ok(None);
        }
        match topic
            .producer
            .try_publish(Published::new(event, topic.has_record_readers()))
        {
            Ok(_) => Ok(None),
            Err(slot) => Self::full(topic, slot, wait).map(Some),
        }
    }

    /// The ring had no room for `slot`: gives it back if publishers should wait, else
    /// the error.
    fn full(topic: &Topic, slot: Published, wait: bool) -> Result<Published, PublishError> {
        let event_id = slot.event.id();
        if topic.ring.is_closed() {
            return Err(PublishError::ShutDown { event_id });
        }
        let (group, policy) = Self::slowest(topic);
        if !wait || policy == Backpressure::Fail {
            topic.metrics.timeouts.increment(1);
            return Err(PublishError::Full {
                event_id,
                subscription: group.to_string(),
            });
        }
        Ok(slot)
    }

    /// The group a full ring waits for, and its policy.
    fn slowest(topic: &Topic) -> (Arc<str>, Backpressure) {
        topic
            .slowest_group()
            .unwrap_or_else(|| (Arc::from("?"), Backpressure::Block))
    }

    /// Waits up to the topic's dispatch timeout for room for `slot` in its full ring.
    async fn append_waiting(&self, topic: &Topic, mut slot: Published) -> Result<(), PublishError> {
        let event_id = slot.event.id();
        topic.metrics.waits.increment(1);
        let until = Instant::now() + topic.dispatch_timeout;
        loop {
            match tokio::time::timeout_at(until, topic.producer.room()).await {
                Ok(Ok(())) => {}
                Ok(Err(_closed)) => return Err(PublishError::ShutDown { event_id }),
                Err(_) => {
                    topic.metrics.timeouts.increment(1);
                    return Err(PublishError::Timeout {
                        event_id,
                        subscription: Self::slowest(topic).0.to_string(),
                        waited: topic.dispatch_timeout,
                    });
                }
            }
            slot = match topic.producer.try_publish(slot) {
                Ok(_) => return Ok(()),
                Err(slot) => Self::full(topic, slot, true)?,
            };
        }
    }

    /// Runs the synchronous groups and appends to the topic's ring if it has room.
    /// `Ok(Some(rest))`: the ring is full and `wait` allows waiting; `rest` waits for
    /// room (up to the dispatch timeout) and appends. The event is moved into the
    /// ring: no reference count is touched on the way unless a synchronous group
    /// takes it.
    fn dispatch_now(
        &self,
        event: Arc<dyn EventInfo>,
        wait: bool,
    ) -> Result<Option<Rest<'_>>, PublishError> {
        let mut failures = Vec::new();
        let event_id = event.id();
        // Borrowed from the routing snapshot: no reference count touched while the ring
        // has room; owned by what is left when the publish must wait.
        let routing = self.inner.routing.load();
        let offer = Offer {
            event_type: event.event_type(),
            event: &event,
        };
        let (topic, published) = self.run_sync(&routing, &offer, &mut failures);
        let slot = match &topic {
            Some(topic) => self.try_append(topic, event, wait)?,
            None => None,
        };
        match (slot, topic) {
            (Some(slot), Some(topic)) => {
                let (topic, published) = (topic.into_owned(), published.into_owned());
                Ok(Some(Box::pin(async move {
                    self.append_waiting(&topic, slot).await?;
                    published.increment(1);
                    self.finish(event_id, failures)
                })))
            }
            _ => {
                published.increment(1);
                self.finish(event_id, failures).map(|()| None)
            }
        }
    }

    fn try_dispatch(&self, event: Arc<dyn EventInfo>) -> Result<(), PublishError> {
        match self.dispatch_now(event, false)? {
            None => Ok(()),
            Some(_) => unreachable!("a publish that may not wait never waits"),
        }
    }

    /// The event reached every subscription.
    fn finish(&self, event_id: EventId, failures: Vec<SyncFailure>) -> Result<(), PublishError> {
        bump(self.inner.counters.published());
        if failures.is_empty() {
            Ok(())
        } else {
            Err(PublishError::Handlers { event_id, failures })
        }
    }

    /// The topic of `event_type`, created (with the pattern groups attached) if needed;
    /// `capacity` sizes its ring when this call creates it (a subscription's
    /// `queue_capacity`), else the topic's or the bus's setting does.
    fn ensure_topic(
        &self,
        registry: &mut Registry,
        event_type: &str,
        capacity: Option<usize>,
    ) -> Arc<Topic> {
        let config = &self.inner.config;
        let name: Arc<str> = Arc::from(config.topic_of(event_type));
        let topic = match registry.topics.get(&name) {
            Some(topic) => topic.clone(),
            None => {
                let tc = config.topic_config(&name);
                let topic = Topic::new(
                    &name,
                    capacity.or(tc.capacity).unwrap_or(config.queue_capacity),
                    tc.dispatch_timeout.unwrap_or(config.dispatch_timeout),
                    self.inner.observe,
                );
                registry.topics.insert(name, topic.clone());
                if let Ok(runtime) = self.runtime() {
                    for group in registry.pattern_groups.clone() {
                        registry.tasks.push(group.attach(&topic, &runtime));
                    }
                }
                topic
            }
        };
        let needs_route = self
            .inner
            .routing
            .load()
            .by_type
            .get(event_type)
            .is_none_or(|r| r.topic.is_none());
        if needs_route {
            let event_type: Arc<str> = Arc::from(event_type);
            self.inner.routing.rcu(|routing| {
                let mut routing = Routing::clone(routing);
                routing.by_type.entry(event_type.clone()).or_default().topic = Some(topic.clone());
                routing
            });
        }
        topic
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
    /// Its group's processor takes events from the topic's ring and runs each through
    /// the lifecycle of `options`: per-attempt timeout, retries with backoff, then the
    /// dead-letter sink.
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
        if let Some(commit) = self.inner.durable.get(&topic) {
            let store = commit.store.clone();
            return self.subscribe_durable::<E, H>(key, topic, store, options, handler);
        }
        self.subscribe_async(key, topic, TypedFilter::<E>::new(), options, handler)
    }

    /// A member with the subscription's lifecycle settings, its gate and its token.
    fn new_member<M, H>(
        &self,
        (name, group, topic): (&str, &str, &str),
        options: &SubscribeOptions,
        handler: H,
        concurrency: Option<usize>,
        counters: Arc<Counters>,
    ) -> (Arc<Member<M, H>>, Arc<Gate>, CancellationToken)
    where
        M: EventInfo,
        H: Handler<M>,
    {
        let config = &self.inner.config;
        let token = self.inner.shutdown.child_token();
        let info = Arc::new(SubscriptionInfo::new(name, group, topic, token.clone()));
        let gate = Arc::new(Gate::new());
        let mut middleware = self.inner.middleware.clone();
        middleware.extend(options.middleware.iter().cloned());
        let member = Arc::new_cyclic(|me| Member {
            me: me.clone(),
            handler: Arc::new(handler),
            info,
            settings: Settings {
                timeout: options.timeout.unwrap_or(config.processing_timeout),
                retry: options
                    .retry
                    .clone()
                    .unwrap_or_else(|| config.retry.clone()),
                mode: options.mode.unwrap_or(config.mode),
                concurrency: concurrency.unwrap_or(1),
                executor: options.executor.clone(),
                ttl: config.topic_config(topic).ttl,
                middleware,
                trace: self.inner.trace.clone(),
            },
            metrics: Arc::new(crate::obs::GroupMetrics::new(group, self.inner.observe)),
            gate: gate.clone(),
            counters,
            dead_letters: self.inner.dead_letters.clone(),
            weight: options.weight.unwrap_or(1),
            _event: std::marker::PhantomData,
        });
        (member, gate, token)
    }

    fn subscribe_durable<E, H>(
        &self,
        key: GroupKey,
        topic: String,
        store: Arc<dyn EventStore>,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, SubscribeError>
    where
        E: Event,
        H: Handler<Envelope<E>>,
    {
        let runtime = self.runtime()?;
        let mut registry = lock(&self.inner.registry);
        let (name, group) = self.claim_name(&mut registry, &key, &options)?;
        let (member, gate, token) = self.new_member(
            (&name, &group, &topic),
            &options,
            handler,
            Some(1),
            self.inner.counters.group(),
        );
        let settings = &member.settings;
        let consume = eda_core::ConsumeOptions {
            // A new durable group sees what was stored before it subscribed: the runner
            // subscribes asynchronously, and "new only" would race with the first publishes.
            start: options
                .start
                .clone()
                .unwrap_or(eda_core::StartFrom::Beginning),
            // Longer than an attempt may run, so a slow attempt is not redelivered meanwhile.
            visibility_timeout: settings
                .timeout
                .map_or(Duration::from_secs(300), |t| t + Duration::from_secs(10)),
            max_attempts: settings.retry.max_attempts,
            ..eda_core::ConsumeOptions::default()
        };
        let topic_name = topic.clone();
        let runner = crate::durable::run::<E, H>(crate::durable::Runner {
            member,
            store,
            topic,
            group: group.clone(),
            consumer: name.clone(),
            options: consume,
            stop: token.clone(),
            intake: self.inner.intake.clone(),
            source: self.inner.source.clone(),
        });
        registry.tasks.retain(|t| !t.is_finished());
        registry.tasks.push(runtime.spawn(runner));
        registry
            .durable_subs
            .insert(name.clone(), (topic_name, group.clone()));
        Ok(Subscription::new(
            &self.inner,
            name,
            group,
            key,
            gate,
            token,
        ))
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
        if self.inner.durable.contains_key(&topic) {
            return Err(SubscribeError::InvalidOption(format!(
                "topic `{topic}` is durable: its subscribers consume from the store, so they are async"
            )));
        }
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

    /// The existing group `(key, group)` if it takes the same events the same way
    /// (`describe`), downcast to `G`; `Ok(None)` when there is none.
    fn existing_group<G: Send + Sync + 'static>(
        registry: &mut Registry,
        key: &GroupKey,
        group: &str,
        name: &str,
        describe: &str,
    ) -> Result<Option<Arc<G>>, SubscribeError> {
        let Some(entry) = registry.groups.get_mut(&(key.clone(), group.to_owned())) else {
            return Ok(None);
        };
        let existing = entry.kind.describe();
        match entry.any.clone().downcast::<G>() {
            Ok(g) if existing == describe => {
                entry.members += 1;
                Ok(Some(g))
            }
            _ => {
                registry.names.remove(name);
                Err(SubscribeError::GroupMismatch {
                    group: group.to_owned(),
                    existing,
                })
            }
        }
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
        M: EventInfo,
        H: Handler<M>,
        A: Accepts<M>,
    {
        let runtime = self.runtime()?;
        if options.queue_capacity == Some(0) || options.concurrency == Some(0) {
            return Err(SubscribeError::InvalidOption(
                "queue capacity and concurrency must be at least 1".into(),
            ));
        }
        let mut registry = lock(&self.inner.registry);
        let (name, group_name) = self.claim_name(&mut registry, &key, &options)?;
        let describe = format!("async {}", accepts.describe());
        let group = match Self::existing_group::<Group<M, A>>(
            &mut registry,
            &key,
            &group_name,
            &name,
            &describe,
        )? {
            Some(group) => group,
            None => {
                let group = Arc::new(Group::new(
                    Arc::from(group_name.as_str()),
                    options.balancer.unwrap_or_default(),
                    options.backpressure.unwrap_or_default(),
                    accepts,
                    self.inner.counters.group(),
                    crate::obs::dropped_counter(&group_name, self.inner.observe),
                    self.inner.shutdown.clone(),
                ));
                registry.groups.insert(
                    (key.clone(), group_name.clone()),
                    GroupEntry {
                        kind: GroupKind::Async(group.clone()),
                        any: group.clone(),
                        members: 1,
                    },
                );
                match &key {
                    GroupKey::Type(event_type) => {
                        let topic =
                            self.ensure_topic(&mut registry, event_type, options.queue_capacity);
                        registry.tasks.push(group.clone().attach(&topic, &runtime));
                    }
                    GroupKey::Pattern(_) => {
                        registry.pattern_groups.push(group.clone());
                        let topics: Vec<Arc<Topic>> = registry.topics.values().cloned().collect();
                        for topic in &topics {
                            registry.tasks.push(group.clone().attach(topic, &runtime));
                        }
                        self.inner.routing.rcu(|routing| {
                            let mut routing = Routing::clone(routing);
                            routing.patterns = true;
                            routing
                        });
                    }
                }
                group
            }
        };
        let (member, gate, token) = self.new_member(
            (&name, &group_name, &topic),
            &options,
            handler,
            options.concurrency,
            group.counters.clone(),
        );
        group.add_member(member);
        registry.tasks.retain(|t| !t.is_finished());
        Ok(Subscription::new(
            &self.inner,
            name,
            group_name,
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
        M: EventInfo,
        A: crate::sink::AcceptsOffer<M>,
    {
        let mut registry = lock(&self.inner.registry);
        let (name, group_name) = self.claim_name(&mut registry, &key, &options)?;
        let describe = format!("sync {}", accepts.describe());
        let sink = match Self::existing_group::<SyncSink<M, A>>(
            &mut registry,
            &key,
            &group_name,
            &name,
            &describe,
        )? {
            Some(sink) => sink,
            None => {
                let sink = Arc::new(SyncSink {
                    members: ArcSwap::from_pointee(Vec::new()),
                    next: AtomicUsize::new(0),
                    accepts,
                    counters: self.inner.counters.group(),
                    metrics: crate::obs::GroupMetrics::new(&group_name, self.inner.observe),
                });
                let dyn_sink: Arc<dyn Sink> = sink.clone();
                registry.groups.insert(
                    (key.clone(), group_name.clone()),
                    GroupEntry {
                        kind: GroupKind::Sync(dyn_sink.clone()),
                        any: sink.clone(),
                        members: 1,
                    },
                );
                if let GroupKey::Type(event_type) = &key {
                    self.inner.routing.rcu(|routing| {
                        let mut routing = Routing::clone(routing);
                        routing
                            .by_type
                            .entry(event_type.clone())
                            .or_default()
                            .sinks
                            .push(dyn_sink.clone());
                        routing
                    });
                }
                sink
            }
        };
        let token = self.inner.shutdown.child_token();
        let gate = Arc::new(Gate::new());
        let member = Arc::new(SyncMember {
            handler,
            info: Arc::new(SubscriptionInfo::new(
                name.as_str(),
                group_name.as_str(),
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
            group_name,
            key,
            gate,
            token,
        ))
    }

    // ----- shutdown ---------------------------------------------------------------------

    /// Stops intake (publish and subscribe fail with `ShutDown`), lets every queued and
    /// running delivery finish until `deadline`, then cancels (handlers see
    /// [`Context::cancelled`](eda_core::Context::cancelled)) and stops what is left.
    /// Returns the final counters.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let until = Instant::now() + deadline;
        self.inner.closed.store(true, Ordering::Release);
        self.inner.intake.cancel();
        let (topics, tasks) = {
            let mut registry = lock(&self.inner.registry);
            let topics: Vec<Arc<Topic>> = registry.topics.values().cloned().collect();
            (topics, std::mem::take(&mut registry.tasks))
        };
        // Closed rings refuse new events; processors drain what was published, then stop.
        for topic in &topics {
            topic.ring.close();
        }
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let mut joined = futures_util::future::join_all(tasks);
        let drained = tokio::time::timeout_at(until, &mut joined).await.is_ok();
        // Cancel contexts; processors still running stop at once and count what is left.
        self.inner.shutdown.cancel();
        if !drained {
            let grace = Instant::now() + Duration::from_secs(1);
            if tokio::time::timeout_at(grace, &mut joined).await.is_err() {
                for abort in &aborts {
                    abort.abort();
                }
            }
        }
        let mut stats = self.stats();
        stats.not_delivered += stats.in_flight;
        stats.in_flight = 0;
        ShutdownReport { stats, drained }
    }
}

impl Drop for Inner {
    /// The last `Bus` handle is gone without `shutdown`: close every ring, so that group
    /// processors hand out what was published, then stop (instead of waiting forever).
    fn drop(&mut self) {
        let registry = self.registry.get_mut().unwrap_or_else(|p| p.into_inner());
        for topic in registry.topics.values() {
            topic.ring.close();
        }
    }
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

    /// Events published but not yet taken by its group (0 for synchronous subscriptions):
    /// the group's lag behind its topic's ring.
    pub fn queue_len(&self) -> usize {
        let Some(bus) = self.bus.upgrade() else {
            return 0;
        };
        let registry = lock(&bus.registry);
        match registry.groups.get(&(self.key.clone(), self.group.clone())) {
            Some(GroupEntry {
                kind: GroupKind::Async(group),
                ..
            }) => group.lag(),
            _ => 0,
        }
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
        registry.durable_subs.remove(&self.name);
        let map_key = (self.key.clone(), self.group.clone());
        let Some(entry) = registry.groups.get_mut(&map_key) else {
            return;
        };
        entry.members -= 1;
        match &entry.kind {
            GroupKind::Sync(sink) => sink.leave(&self.gate),
            GroupKind::Async(group) => {
                group.remove_member(&self.gate);
            }
        }
        if entry.members > 0 {
            return;
        }
        let Some(entry) = registry.groups.remove(&map_key) else {
            return;
        };
        match entry.kind {
            GroupKind::Async(group) => {
                // Its processors finish what is in flight, count what is left, and stop.
                group.remove();
                if matches!(self.key, GroupKey::Pattern(_)) {
                    registry.pattern_groups.retain(|g| !Arc::ptr_eq(g, &group));
                    let any_left = !registry.pattern_groups.is_empty();
                    bus.routing.rcu(|routing| {
                        let mut routing = Routing::clone(routing);
                        routing.patterns = any_left;
                        routing
                    });
                }
            }
            GroupKind::Sync(gone) => {
                drop(registry);
                bus.routing.rcu(|routing| {
                    let mut routing = Routing::clone(routing);
                    if let GroupKey::Type(t) = &self.key
                        && let Some(route) = routing.by_type.get_mut(t)
                    {
                        route.sinks.retain(|s| !Arc::ptr_eq(s, &gone));
                    }
                    routing
                });
            }
        }
    }
}
