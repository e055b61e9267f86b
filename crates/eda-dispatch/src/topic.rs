//! A topic: one ring buffer that every async group of the topic reads (multicast),
//! so a slow topic never blocks another.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use eda_core::{EventInfo, RawEvent};

use crate::ring::Sequence;
#[cfg(not(eda_mpsc_baseline))]
use crate::ring::{self, Consumer, MultiProducer, RingBuffer};

/// The topic's producer handle, its ring, and a group's consumer: the ring's types, or
/// the mpsc baseline's under `--cfg eda_mpsc_baseline` (benchmarks only).
#[cfg(not(eda_mpsc_baseline))]
pub(crate) type TopicProducer = MultiProducer<Published>;
#[cfg(not(eda_mpsc_baseline))]
pub(crate) type TopicRing = Arc<RingBuffer<Published>>;
#[cfg(not(eda_mpsc_baseline))]
pub(crate) type GroupConsumer = Consumer<Published>;
#[cfg(eda_mpsc_baseline)]
pub(crate) type TopicProducer = Arc<crate::mpsc_baseline::Ring>;
#[cfg(eda_mpsc_baseline)]
pub(crate) type TopicRing = Arc<crate::mpsc_baseline::Ring>;
#[cfg(eda_mpsc_baseline)]
pub(crate) type GroupConsumer = crate::mpsc_baseline::Consumer;

/// What publishers do when a group is a whole ring behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backpressure {
    /// `publish` waits for room up to the topic's dispatch timeout (`try_publish` fails).
    #[default]
    Block,
    /// `publish` fails at once with `PublishError::Full` naming the group.
    Fail,
    /// For lossy groups: the group keeps reading into a bounded backlog (1024 events)
    /// and, when its members fall behind that, drops its own oldest unhandled events
    /// (counted as not delivered). Publishers wait for it only as long as its processor
    /// task takes to be scheduled; other groups still get everything.
    DropOldest,
}

/// One published event in a ring slot, shared by every group of the topic. 16 bytes,
/// four slots to a cache line: with the record cache in every slot (48 bytes) the
/// whole bus (async, 1 subscriber) ran ~10 % slower, the processor's reads pulling
/// more of the lines the publisher was writing. While pattern groups read the topic,
/// the event is published wrapped in a [`WithRecord`] that holds the cache.
pub(crate) struct Published {
    pub(crate) event: Arc<dyn EventInfo>,
}

/// An event and its record form, encoded (as JSON) at most once for the pattern groups
/// of its topic; an [`EventInfo`] itself (the event's), so that a slot holds either.
pub(crate) struct WithRecord {
    event: Arc<dyn EventInfo>,
    raw: OnceLock<Result<Arc<RawEvent>, String>>,
}

impl EventInfo for WithRecord {
    fn id(&self) -> eda_core::EventId {
        self.event.id()
    }
    fn event_type(&self) -> &str {
        self.event.event_type()
    }
    fn time(&self) -> eda_core::Timestamp {
        self.event.time()
    }
    fn source(&self) -> &str {
        self.event.source()
    }
    fn metadata(&self) -> &eda_core::Metadata {
        self.event.metadata()
    }
    fn to_raw_event(&self) -> Result<RawEvent, eda_core::EnvelopeError> {
        self.event.to_raw_event()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Published {
    /// `records`: pattern groups read the topic, so that the record form is cached.
    pub(crate) fn new(event: Arc<dyn EventInfo>, records: bool) -> Self {
        let event = if records {
            Arc::new(WithRecord {
                event,
                raw: OnceLock::new(),
            })
        } else {
            event
        };
        Self { event }
    }

    fn with_record(&self) -> Option<&WithRecord> {
        self.event.as_any().downcast_ref::<WithRecord>()
    }

    /// The event as published (out of its [`WithRecord`], if in one).
    pub(crate) fn event(&self) -> &Arc<dyn EventInfo> {
        match self.with_record() {
            Some(with) => &with.event,
            None => &self.event,
        }
    }

    /// The event as a record: itself when published raw, else JSON-encoded (once, when
    /// pattern groups read the topic at publish time; else by each group that asks).
    pub(crate) fn as_raw(&self) -> Result<Arc<RawEvent>, String> {
        match self.with_record() {
            Some(with) => with.raw.get_or_init(|| record_of(&with.event)).clone(),
            None => record_of(&self.event),
        }
    }

    /// The attributes alone, for an event whose payload would not encode.
    pub(crate) fn attributes_only(&self) -> Arc<RawEvent> {
        let e = self.event();
        Arc::new(RawEvent {
            id: e.id(),
            time: e.time(),
            source: Arc::from(e.source()),
            event_type: Arc::from(e.event_type()),
            datacontenttype: None,
            dataschema: None,
            metadata: e.metadata().clone(),
            data: Default::default(),
        })
    }
}

fn record_of(event: &Arc<dyn EventInfo>) -> Result<Arc<RawEvent>, String> {
    let any: Arc<dyn Any + Send + Sync> = event.clone();
    match any.downcast::<RawEvent>() {
        Ok(raw) => Ok(raw),
        Err(_) => event
            .to_raw_event()
            .map(Arc::new)
            .map_err(|e| e.to_string()),
    }
}

struct Attachment {
    group: Arc<str>,
    policy: Backpressure,
    sequence: Arc<Sequence>,
    records: bool,
}

pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) producer: TopicProducer,
    pub(crate) ring: TopicRing,
    pub(crate) dispatch_timeout: Duration,
    pub(crate) metrics: crate::obs::TopicMetrics,
    attached: Mutex<Vec<Attachment>>,
    consumers: AtomicUsize,
    /// Attached groups that read records (pattern groups).
    record_readers: AtomicUsize,
}

impl Topic {
    pub(crate) fn new(
        name: &str,
        capacity: usize,
        dispatch_timeout: Duration,
        observe: bool,
    ) -> Arc<Self> {
        #[cfg(not(eda_mpsc_baseline))]
        let (producer, ring) = ring::multi_producer(capacity);
        #[cfg(eda_mpsc_baseline)]
        let (producer, ring) = {
            let ring = crate::mpsc_baseline::Ring::new(capacity);
            (ring.clone(), ring)
        };
        Arc::new(Self {
            name: Arc::from(name),
            producer,
            ring,
            dispatch_timeout,
            metrics: crate::obs::TopicMetrics::new(name, observe),
            attached: Mutex::new(Vec::new()),
            consumers: AtomicUsize::new(0),
            record_readers: AtomicUsize::new(0),
        })
    }

    /// Whether any group reads this topic (publishing is skipped otherwise).
    #[inline]
    pub(crate) fn has_consumers(&self) -> bool {
        self.consumers.load(Ordering::Acquire) > 0
    }

    /// Whether pattern groups read this topic: a publish caches the record form then.
    /// (One that races with a pattern group attaching may not: that group encodes it.)
    #[inline]
    pub(crate) fn has_record_readers(&self) -> bool {
        self.record_readers.load(Ordering::Relaxed) > 0
    }

    /// A consumer for a group, registered for attribution of backpressure; `records`:
    /// the group reads events as records (a pattern group).
    pub(crate) fn attach(
        &self,
        group: Arc<str>,
        policy: Backpressure,
        records: bool,
    ) -> GroupConsumer {
        let consumer = self.ring.consumer();
        lock(&self.attached).push(Attachment {
            group,
            policy,
            sequence: consumer.sequence().clone(),
            records,
        });
        if records {
            self.record_readers.fetch_add(1, Ordering::Relaxed);
        }
        self.consumers.fetch_add(1, Ordering::AcqRel);
        consumer
    }

    pub(crate) fn detach(&self, sequence: &Arc<Sequence>) {
        let mut attached = lock(&self.attached);
        if let Some(i) = attached
            .iter()
            .position(|a| Arc::ptr_eq(&a.sequence, sequence))
        {
            if attached.remove(i).records {
                self.record_readers.fetch_sub(1, Ordering::Relaxed);
            }
            self.consumers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The group furthest behind (the one a full ring waits for) and its policy.
    pub(crate) fn slowest_group(&self) -> Option<(Arc<str>, Backpressure)> {
        lock(&self.attached)
            .iter()
            .min_by_key(|a| a.sequence.get())
            .map(|a| (a.group.clone(), a.policy))
    }

    /// Events published but not yet read by the group's consumer on this topic.
    pub(crate) fn lag_of(&self, sequence: &Arc<Sequence>) -> usize {
        (self.ring.cursor() - sequence.get()).max(0) as usize
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections here are short and complete; a panic cannot leave them half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
