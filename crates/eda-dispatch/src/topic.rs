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

/// One published event in a ring slot, shared by every group of the topic.
pub(crate) struct Published {
    pub(crate) event: Arc<dyn EventInfo>,
    /// The record form, encoded (as JSON) at most once, for pattern groups.
    raw: OnceLock<Result<Arc<RawEvent>, String>>,
}

impl Published {
    pub(crate) fn new(event: Arc<dyn EventInfo>) -> Self {
        Self {
            event,
            raw: OnceLock::new(),
        }
    }

    /// The event as a record: itself when published raw, else JSON-encoded once.
    pub(crate) fn as_raw(&self) -> Result<Arc<RawEvent>, String> {
        self.raw
            .get_or_init(|| {
                let any: Arc<dyn Any + Send + Sync> = self.event.clone();
                match any.downcast::<RawEvent>() {
                    Ok(raw) => Ok(raw),
                    Err(_) => self
                        .event
                        .to_raw_event()
                        .map(Arc::new)
                        .map_err(|e| e.to_string()),
                }
            })
            .clone()
    }

    /// The attributes alone, for an event whose payload would not encode.
    pub(crate) fn attributes_only(&self) -> Arc<RawEvent> {
        let e = &self.event;
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

struct Attachment {
    group: Arc<str>,
    policy: Backpressure,
    sequence: Arc<Sequence>,
}

pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) producer: TopicProducer,
    pub(crate) ring: TopicRing,
    pub(crate) dispatch_timeout: Duration,
    pub(crate) metrics: crate::obs::TopicMetrics,
    attached: Mutex<Vec<Attachment>>,
    consumers: AtomicUsize,
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
        })
    }

    /// Whether any group reads this topic (publishing is skipped otherwise).
    #[inline]
    pub(crate) fn has_consumers(&self) -> bool {
        self.consumers.load(Ordering::Acquire) > 0
    }

    /// A consumer for a group, registered for attribution of backpressure.
    pub(crate) fn attach(&self, group: Arc<str>, policy: Backpressure) -> GroupConsumer {
        let consumer = self.ring.consumer();
        lock(&self.attached).push(Attachment {
            group,
            policy,
            sequence: consumer.sequence().clone(),
        });
        self.consumers.fetch_add(1, Ordering::AcqRel);
        consumer
    }

    pub(crate) fn detach(&self, sequence: &Arc<Sequence>) {
        let mut attached = lock(&self.attached);
        let before = attached.len();
        attached.retain(|a| !Arc::ptr_eq(&a.sequence, sequence));
        if attached.len() < before {
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
