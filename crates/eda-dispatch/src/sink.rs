//! How `publish` hands one event to one subscription group.

use std::any::Any;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use eda_core::{
    Context, Envelope, Event, EventInfo, HandlerError, RawEvent, SubscriptionInfo, SyncHandler,
};

use crate::error::SyncFailure;
use crate::gate::Gate;
use crate::item::Item;
use crate::obs::Attempted;
use crate::pattern::TypePattern;
use crate::runner::panic_message;
use crate::stats::{Counters, bump};
use crate::topic::Published;

/// One event being published, as every sink sees it: an `Envelope<E>` (typed
/// publishes) or a `RawEvent` (`publish_raw`). Borrowed: a synchronous sink that takes
/// it clones the `Arc`; the publish moves it into the topic's ring afterwards.
pub(crate) struct Offer<'a> {
    pub(crate) event_type: &'a str,
    pub(crate) event: &'a Arc<dyn EventInfo>,
}

/// Which events a group takes, and in what form, from a topic's ring.
pub(crate) trait Accepts<M>: Send + Sync + 'static {
    fn take(&self, published: &Published) -> Option<Item<M>>;
    fn describe(&self) -> String;
    /// Whether it takes events as records (a topic caches their encoding then).
    fn records(&self) -> bool {
        false
    }
}

/// What a synchronous group takes from a publish in progress (typed groups only:
/// pattern subscriptions are always asynchronous).
pub(crate) trait AcceptsOffer<M>: Accepts<M> {
    fn item(&self, offer: &Offer<'_>) -> Option<Item<M>>;
}

fn decode_raw<E: Event>(raw: Arc<RawEvent>) -> Item<Envelope<E>> {
    match raw.decode::<E>() {
        Ok(env) => Item::Event(Arc::new(env)),
        Err(e) => Item::Undecodable {
            raw,
            reason: e.to_string(),
        },
    }
}

/// Events of one Rust type, decoded from records when published raw.
pub(crate) struct TypedFilter<E>(PhantomData<fn() -> E>);

impl<E> TypedFilter<E> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<E: Event> AcceptsOffer<Envelope<E>> for TypedFilter<E> {
    fn item(&self, offer: &Offer<'_>) -> Option<Item<Envelope<E>>> {
        if offer.event_type != E::TYPE {
            return None;
        }
        item_of(offer.event)
    }
}

/// `event` as an item for a group of `Envelope<E>`: itself if it is one, decoded if it
/// is a record (`None` for anything else).
fn item_of<E: Event>(event: &Arc<dyn EventInfo>) -> Option<Item<Envelope<E>>> {
    let any: Arc<dyn Any + Send + Sync> = event.clone();
    match any.downcast::<Envelope<E>>() {
        Ok(env) => Some(Item::Event(env)),
        Err(any) => any.downcast::<RawEvent>().ok().map(decode_raw),
    }
}

impl<E: Event> Accepts<Envelope<E>> for TypedFilter<E> {
    fn take(&self, published: &Published) -> Option<Item<Envelope<E>>> {
        if published.event.event_type() != E::TYPE {
            return None;
        }
        // The slot's event as it is first (the common case), then out of the wrapper
        // that carries its record form while pattern groups read the topic.
        item_of(&published.event).or_else(|| item_of(published.event()))
    }
    fn describe(&self) -> String {
        format!("events of type `{}`", E::TYPE)
    }
}

/// Records whose type matches a pattern.
pub(crate) struct PatternFilter(pub(crate) TypePattern);

impl Accepts<RawEvent> for PatternFilter {
    fn take(&self, published: &Published) -> Option<Item<RawEvent>> {
        if !self.0.matches(published.event.event_type()) {
            return None;
        }
        Some(match published.as_raw() {
            Ok(raw) => Item::Event(raw),
            Err(reason) => Item::Undecodable {
                raw: published.attributes_only(),
                reason,
            },
        })
    }
    fn describe(&self) -> String {
        format!("pattern `{}`", self.0.as_str())
    }
    fn records(&self) -> bool {
        true
    }
}

pub(crate) enum OfferOutcome {
    Accepted,
    NotForMe,
    Closed,
    SyncFailed(SyncFailure),
}

/// A synchronous group, as `publish` sees it (async groups read topic rings).
pub(crate) trait Sink: Send + Sync + 'static {
    /// "async events of type `x`" — groups only take members of the same description.
    fn describe(&self) -> String;
    fn try_offer(&self, offer: &Offer<'_>) -> OfferOutcome;
    /// A member (identified by its gate) left the group.
    fn leave(&self, gate: &Arc<Gate>);
}

/// A member of a synchronous group.
pub(crate) struct SyncMember<M> {
    pub(crate) handler: Box<dyn SyncHandler<M>>,
    pub(crate) info: Arc<SubscriptionInfo>,
    pub(crate) gate: Arc<Gate>,
}

/// A synchronous group: `publish` runs one member's handler inline (members take turns).
pub(crate) struct SyncSink<M, A> {
    pub(crate) members: ArcSwap<Vec<Arc<SyncMember<M>>>>,
    pub(crate) next: AtomicUsize,
    pub(crate) accepts: A,
    pub(crate) counters: Arc<Counters>,
    pub(crate) metrics: crate::obs::GroupMetrics,
}

impl<M: EventInfo, A: AcceptsOffer<M>> SyncSink<M, A> {
    /// `None` when the member unsubscribed before the call could start. The call runs in
    /// an `eda.handle` span, a child of the publish's span (the publisher's thread).
    fn run(&self, member: &SyncMember<M>, event: Arc<M>) -> Option<Result<(), HandlerError>> {
        let _guard = member.gate.enter()?;
        let ctx = Context::new(member.info.clone(), event.id(), None, 1);
        let current: Arc<dyn EventInfo> = event.clone();
        let span = (self.metrics.on() && crate::obs::spans_wanted())
            .then(|| crate::obs::handle_span(&*event, &member.info, 1, None));
        let started = self.metrics.clock();
        let call = || {
            crate::obs::in_span(span, || {
                std::panic::catch_unwind(AssertUnwindSafe(|| member.handler.handle(&event, &ctx)))
            })
        };
        let (result, outcome) = match crate::cause::sync_scope(current, call) {
            Ok(Ok(())) => (Ok(()), Attempted::Ack),
            Ok(Err(e)) => (Err(e), Attempted::Nack),
            Err(panic) => (
                Err(HandlerError::msg(format!(
                    "handler panicked: {}",
                    panic_message(&*panic)
                ))),
                Attempted::Panic,
            ),
        };
        let ended = self.metrics.attempted(outcome, started);
        if result.is_ok() {
            self.metrics.acked(&*event, ended);
        }
        Some(result)
    }
}

impl<M: EventInfo, A: AcceptsOffer<M>> Sink for SyncSink<M, A> {
    fn describe(&self) -> String {
        format!("sync {}", self.accepts.describe())
    }
    fn try_offer(&self, offer: &Offer<'_>) -> OfferOutcome {
        let Some(item) = self.accepts.item(offer) else {
            return OfferOutcome::NotForMe;
        };
        let members = self.members.load();
        if members.is_empty() {
            return OfferOutcome::Closed;
        }
        let member = &members[self.next.fetch_add(1, Ordering::Relaxed) % members.len()];
        bump(&self.counters.deliveries);
        let result = match item {
            Item::Event(event) => self.run(member, event),
            Item::Undecodable { reason, .. } => {
                Some(Err(HandlerError::permanent(HandlerError::msg(reason))))
            }
        };
        match result {
            None => {
                bump(&self.counters.dropped);
                OfferOutcome::Closed
            }
            Some(Ok(())) => {
                bump(&self.counters.delivered);
                OfferOutcome::Accepted
            }
            Some(Err(error)) => {
                bump(&self.counters.failed);
                OfferOutcome::SyncFailed(SyncFailure {
                    subscription: member.info.name().to_string(),
                    error,
                })
            }
        }
    }
    fn leave(&self, gate: &Arc<Gate>) {
        self.members.rcu(|members| {
            members
                .iter()
                .filter(|m| !Arc::ptr_eq(&m.gate, gate))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}
