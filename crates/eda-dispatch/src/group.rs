//! An async subscription group: its members, and the processor task (one per topic the
//! group reads) that takes events from the topic's ring in batches and hands them to
//! members through the group's balancer.
//!
//! * The processor reads only as many events as its members can take (the sum of their
//!   concurrency limits), so a slow group stops reading, fills the ring and applies
//!   backpressure to publishers — memory stays bounded.
//! * With [`Balancer::KeyHash`], events with the same routing key are handled one at a
//!   time in publish order (later ones wait, parked, behind the one in flight), different
//!   keys in parallel. On a membership change the processor drains what is in flight
//!   before re-mapping keys.
//! * A member that left before an event's attempt could start gives it back; another
//!   member takes it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::{BoxFuture, CancellationToken, EventInfo};
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Notify;

use crate::balancer::{Balancer, BalancerState, MemberLoad};
use crate::gate::Gate;
use crate::item::Item;
use crate::runner::{GroupMember, RunClock, Started};
use crate::sink::Accepts;
use crate::stats::{Counters, bump};
use crate::topic::{Backpressure, Topic, lock};

/// Events a processor reads from its ring at most at once.
const MAX_BATCH: usize = 256;
/// A read of fewer events than this makes the processor wait briefly before its next
/// read, so that a publisher that is still publishing gets ahead (see
/// `Processor::gather`).
const GATHER: usize = MAX_BATCH / 4;
/// How often [`Processor::gather`] looks at the ring: it stops when no event came
/// between two looks (the publisher paused)...
const GATHER_LOOK: Duration = Duration::from_micros(1);
/// ...and waits this long at most.
const GATHER_MAX: Duration = Duration::from_micros(20);
/// How long a processor runs without an await before it yields to the other tasks of its
/// worker (a group that always finds events would otherwise keep the worker to itself).
/// Not shorter: on a multi-thread runtime a yield wakes an idle worker, which may take
/// the processor's task over (at every 1,024 events, the whole bus ran 5–30 % slower
/// in the transport bench's runs).
const FAIR_SHARE: Duration = Duration::from_millis(1);
/// Backlog of a [`Backpressure::DropOldest`] group before it drops its oldest events.
const LOSSY_BACKLOG: usize = 1024;

pub(crate) struct Group<M, A> {
    pub(crate) name: Arc<str>,
    pub(crate) balancer: Balancer,
    pub(crate) policy: Backpressure,
    pub(crate) accepts: A,
    pub(crate) counters: Arc<Counters>,
    /// `eda_dropped_total{group}`.
    dropped: metrics::Counter,
    members: Mutex<Vec<Arc<dyn GroupMember<M>>>>,
    version: AtomicU64,
    changed: Notify,
    /// Cancelled when the group's last member leaves: finish in-flight work, then stop.
    pub(crate) removed: CancellationToken,
    /// Cancelled at the shutdown deadline: stop at once.
    pub(crate) halt: CancellationToken,
    /// Per topic read: the topic, the group's sequence on its ring, and how many events
    /// the processor took but has not finished (read ahead, parked, in flight).
    attachments: Mutex<Vec<Attachment>>,
}

struct Attachment {
    topic: Arc<Topic>,
    sequence: Arc<crate::ring::Sequence>,
    held: Arc<AtomicUsize>,
}

/// A group, whatever its event type, as the bus's registry sees it.
pub(crate) trait AnyGroup: Send + Sync + 'static {
    fn describe(&self) -> String;
    /// Removes the member with this gate; returns how many are left.
    fn remove_member(&self, gate: &Arc<Gate>) -> usize;
    /// Starts the group's processor on `topic`.
    fn attach(
        self: Arc<Self>,
        topic: &Arc<Topic>,
        runtime: &tokio::runtime::Handle,
    ) -> tokio::task::JoinHandle<()>;
    /// Stops the group after its in-flight work (its last member left).
    fn remove(&self);
    /// Events waiting for this group (the largest lag over its topics).
    fn lag(&self) -> usize;
    /// Events waiting for this group on each topic it reads.
    fn lags(&self) -> Vec<(Arc<str>, usize)>;
}

impl<M, A> Group<M, A>
where
    M: EventInfo,
    A: Accepts<M>,
{
    pub(crate) fn new(
        name: Arc<str>,
        balancer: Balancer,
        policy: Backpressure,
        accepts: A,
        counters: Arc<Counters>,
        dropped: metrics::Counter,
        halt: CancellationToken,
    ) -> Self {
        Self {
            dropped,
            name,
            balancer,
            policy,
            accepts,
            counters,
            members: Mutex::new(Vec::new()),
            version: AtomicU64::new(0),
            changed: Notify::new(),
            removed: CancellationToken::new(),
            halt,
            attachments: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn add_member(&self, member: Arc<dyn GroupMember<M>>) {
        lock(&self.members).push(member);
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Counts deliveries that will never be handled.
    fn drop_n(&self, n: usize) {
        if n > 0 {
            self.counters.dropped.fetch_add(n as u64, Ordering::Relaxed);
            self.dropped.increment(n as u64);
        }
    }

    fn snapshot(&self) -> (u64, Vec<Arc<dyn GroupMember<M>>>) {
        let members = lock(&self.members);
        (self.version.load(Ordering::Acquire), members.clone())
    }
}

impl<M, A> AnyGroup for Group<M, A>
where
    M: EventInfo,
    A: Accepts<M>,
{
    fn describe(&self) -> String {
        format!("async {}", self.accepts.describe())
    }

    fn remove_member(&self, gate: &Arc<Gate>) -> usize {
        let left = {
            let mut members = lock(&self.members);
            members.retain(|m| !Arc::ptr_eq(m.gate(), gate));
            members.len()
        };
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        left
    }

    fn attach(
        self: Arc<Self>,
        topic: &Arc<Topic>,
        runtime: &tokio::runtime::Handle,
    ) -> tokio::task::JoinHandle<()> {
        let consumer = topic.attach(self.name.clone(), self.policy, self.accepts.records());
        let held = Arc::new(AtomicUsize::new(0));
        lock(&self.attachments).push(Attachment {
            topic: topic.clone(),
            sequence: consumer.sequence().clone(),
            held: held.clone(),
        });
        runtime.spawn(Processor::new(self, topic.clone(), consumer, held).run())
    }

    fn remove(&self) {
        self.removed.cancel();
        self.changed.notify_waiters();
    }

    fn lag(&self) -> usize {
        lock(&self.attachments)
            .iter()
            .map(|a| a.topic.lag_of(&a.sequence))
            .max()
            .unwrap_or(0)
    }

    fn lags(&self) -> Vec<(Arc<str>, usize)> {
        lock(&self.attachments)
            .iter()
            .map(|a| {
                let held = a.held.load(Ordering::Relaxed);
                (a.topic.name.clone(), a.topic.lag_of(&a.sequence) + held)
            })
            .collect()
    }
}

/// A finished event: the member (by gate address), its key, and the event if given back.
type Done<M> = (usize, Option<String>, Option<Item<M>>);

struct Processor<M, A> {
    group: Arc<Group<M, A>>,
    topic: Arc<Topic>,
    consumer: crate::topic::GroupConsumer,
    version: u64,
    members: Vec<Arc<dyn GroupMember<M>>>,
    /// Weight and events in flight of each member, aligned with `members`.
    view: Vec<MemberLoad>,
    balancer: BalancerState,
    in_flight: FuturesUnordered<BoxFuture<'static, Done<M>>>,
    /// KeyHash: keys with an event in flight, and the events of that key waiting behind it.
    keys: HashMap<String, VecDeque<Item<M>>>,
    parked: usize,
    /// An event whose chosen member is at its concurrency limit.
    stalled: Option<(usize, Item<M>)>,
    /// Read from the ring, not yet handed to a member (at most MAX_BATCH).
    backlog: VecDeque<Item<M>>,
    /// The clock reading the attempts started in one run of the loop share.
    clock: RunClock,
    /// Taken from the ring and not finished, for [`AnyGroup::lags`].
    held: Arc<AtomicUsize>,
}

fn member_id<M: 'static>(member: &Arc<dyn GroupMember<M>>) -> usize {
    Arc::as_ptr(member.gate()) as usize
}

impl<M, A> Processor<M, A>
where
    M: EventInfo,
    A: Accepts<M>,
{
    fn new(
        group: Arc<Group<M, A>>,
        topic: Arc<Topic>,
        consumer: crate::topic::GroupConsumer,
        held: Arc<AtomicUsize>,
    ) -> Self {
        let balancer = BalancerState::new(group.balancer);
        Self {
            group,
            topic,
            consumer,
            version: u64::MAX,
            members: Vec::new(),
            view: Vec::new(),
            balancer,
            in_flight: FuturesUnordered::new(),
            keys: HashMap::new(),
            parked: 0,
            stalled: None,
            backlog: VecDeque::with_capacity(MAX_BATCH),
            clock: RunClock::default(),
            held,
        }
    }

    fn capacity(&self) -> usize {
        self.members.iter().map(|m| m.concurrency()).sum()
    }

    /// In flight, parked or stalled: taken by the group but not finished.
    fn busy(&self) -> usize {
        self.in_flight.len() + self.parked + usize::from(self.stalled.is_some())
    }

    fn lossy(&self) -> bool {
        self.group.policy == Backpressure::DropOldest
    }

    fn keyed(&self) -> bool {
        self.group.balancer == Balancer::KeyHash
    }

    /// Whether a membership change waits for KeyHash to drain.
    fn draining(&self) -> bool {
        self.version != self.group.version.load(Ordering::Acquire)
    }

    /// Takes the group's current members, unless KeyHash must drain first.
    fn refresh(&mut self) {
        if !self.draining() {
            return;
        }
        if self.keyed() && self.busy() > 0 {
            return;
        }
        let (version, members) = self.group.snapshot();
        let old: HashMap<usize, usize> = self
            .members
            .iter()
            .zip(&self.view)
            .map(|(m, v)| (member_id(m), v.in_flight))
            .collect();
        self.view = members
            .iter()
            .map(|m| MemberLoad {
                weight: m.weight(),
                in_flight: old.get(&member_id(m)).copied().unwrap_or(0),
            })
            .collect();
        self.version = version;
        self.members = members;
        self.balancer.reset();
        if let Some((_, item)) = self.stalled.take() {
            // Indices changed: choose again (never keyed here: KeyHash drained first).
            self.dispatch(item);
        }
    }

    fn can_dispatch(&self) -> bool {
        !self.members.is_empty()
            && self.stalled.is_none()
            && !(self.keyed() && self.draining())
            && self.in_flight.len() + self.parked < self.capacity()
    }

    fn dispatch(&mut self, item: Item<M>) {
        if self.members.is_empty() {
            self.group.drop_n(1);
            return;
        }
        let key = match self.group.balancer {
            Balancer::KeyHash => item.key().map(str::to_owned),
            _ => None,
        };
        if let Some(k) = &key {
            if let Some(waiting) = self.keys.get_mut(k) {
                waiting.push_back(item);
                self.parked += 1;
                return;
            }
            self.keys.insert(k.clone(), VecDeque::new());
        }
        let idx = self.balancer.pick(&self.view, key.as_deref());
        self.start(idx, key, item);
    }

    /// Starts `item` on member `idx`, or stalls it until the member has room.
    fn start(&mut self, idx: usize, key: Option<String>, item: Item<M>) {
        let member = &self.members[idx];
        if self.view[idx].in_flight >= member.concurrency() {
            // A keyed event keeps its key reserved: the stalled event is its head.
            debug_assert!(self.stalled.is_none());
            self.stalled = Some((idx, item));
            return;
        }
        self.view[idx].in_flight += 1;
        let id = member_id(member);
        // Most handlers finish on their first poll: no FuturesUnordered entry then.
        match member.start(item, &self.clock) {
            Started::Done(back) => self.complete((id, key, back)),
            Started::Running(fut) => self
                .in_flight
                .push(fut.map(move |back| (id, key, back)).boxed()),
        }
    }

    fn complete(&mut self, (id, key, back): Done<M>) {
        let idx = self.members.iter().position(|m| member_id(m) == id);
        if let Some(i) = idx {
            self.view[i].in_flight = self.view[i].in_flight.saturating_sub(1);
        }
        if let Some(item) = back {
            // The member left before the attempt started: another member takes it. A
            // keyed event keeps its key reserved, so the events parked behind it wait.
            if let Some(i) = idx {
                self.members.remove(i);
                self.view.remove(i);
                self.balancer.reset();
            }
            if self.members.is_empty() {
                self.group.drop_n(1);
                if let Some(waiting) = key.as_ref().and_then(|k| self.keys.remove(k)) {
                    self.group.drop_n(waiting.len());
                    self.parked -= waiting.len();
                }
            } else {
                let i = self.balancer.pick(&self.view, key.as_deref());
                self.start(i, key, item);
            }
        } else if let Some(k) = key {
            match self.keys.get_mut(&k).and_then(VecDeque::pop_front) {
                Some(item) => {
                    self.parked -= 1;
                    let i = self.balancer.pick(&self.view, Some(&k));
                    self.start(i, Some(k), item);
                }
                None => {
                    self.keys.remove(&k);
                }
            }
        }
        if let Some((i, item)) = self.stalled.take() {
            if i < self.members.len() && self.view[i].in_flight < self.members[i].concurrency() {
                let key = match self.group.balancer {
                    Balancer::KeyHash => item.key().map(str::to_owned),
                    _ => None,
                };
                self.start(i, key, item);
            } else {
                self.stalled = Some((i, item));
            }
        }
    }

    /// Hands backlog events to members while they have room.
    fn drain_backlog(&mut self) {
        while self.can_dispatch() {
            let Some(item) = self.backlog.pop_front() else {
                break;
            };
            self.dispatch(item);
        }
    }

    /// Reads a batch from the ring into the backlog; returns how many entries it consumed.
    fn read(&mut self) -> usize {
        let accepts = &self.group.accepts;
        let backlog = &mut self.backlog;
        let before = backlog.len();
        let n = self.consumer.try_read_batch(MAX_BATCH, |_, published| {
            if let Some(item) = accepts.take(published) {
                backlog.push_back(item);
            }
        });
        let taken = self.backlog.len() - before;
        if n > 0 {
            bump(&self.group.counters.batches);
        }
        if taken > 0 {
            self.group
                .counters
                .deliveries
                .fetch_add(taken as u64, Ordering::Relaxed);
        }
        if self.lossy() && self.backlog.len() > LOSSY_BACKLOG {
            let excess = self.backlog.len() - LOSSY_BACKLOG;
            self.backlog.drain(..excess);
            self.group.drop_n(excess);
        }
        n
    }

    /// After a small read (its events are handled by now), on a runtime with several
    /// worker threads, while the publisher is still publishing: spins until [`GATHER`]
    /// events are there, none came in the last [`GATHER_LOOK`], or [`GATHER_MAX`]
    /// passed.
    ///
    /// A processor that keeps up with its publisher finds one or two events per read:
    /// it would chase the publisher an event at a time, each read pulling back the slot
    /// and event lines the publisher is writing, with a loop iteration and a
    /// consumer-progress barrier per event. Waiting here lets the publisher get ahead;
    /// the next read takes dozens. What was read is never delayed; the next event at most
    /// by `GATHER_MAX`, and a publisher that stopped costs `GATHER_LOOK`. (It used to
    /// `tokio::task::yield_now` here, which made every small read a trip through the
    /// scheduler that woke the runtime's idle worker: in the bus bench's runs with small
    /// batches, 6,000–15,000 switches per worker thread per 500,000 events, the
    /// processor task moving between the two. Spinning: none, and the runs with large
    /// batches 3–8 % faster; docs/benchmarks.md.)
    fn gather(&self) {
        let clock = crate::runner::tsc_clock();
        let start = clock.now();
        let (mut lag, mut looked) = (self.consumer.claimed_lag(), start);
        while lag < GATHER as i64 {
            // Between looks it reads only the CPU's time-stamp counter: polling the
            // ring's cursor, a line the publisher writes per event, would slow it.
            let now = loop {
                std::hint::spin_loop();
                let now = clock.now();
                if now - looked >= GATHER_LOOK {
                    break now;
                }
            };
            let seen = self.consumer.claimed_lag();
            if seen == lag || now - start >= GATHER_MAX {
                return;
            }
            (lag, looked) = (seen, now);
        }
    }

    async fn run(mut self) {
        let group = self.group.clone();
        let mut changed = Box::pin(group.changed.notified());
        changed.as_mut().enable();
        let mut closed = false;
        let mut gather = false;
        // With several workers a publisher can run beside this task: `gather` spins.
        // With one (a current-thread runtime), it yields instead.
        let spin = tokio::runtime::Handle::current().metrics().num_workers() > 1;
        let clock = crate::runner::tsc_clock();
        // When this task last awaited something that could wait.
        let mut unbroken = clock.now();
        loop {
            self.clock.reset();
            self.refresh();
            self.drain_backlog();
            self.held
                .store(self.backlog.len() + self.busy(), Ordering::Relaxed);
            let finishing = group.removed.is_cancelled();
            let lossy = self.lossy();
            // A lossy group reads whatever its members' state (dropping its oldest events
            // past LOSSY_BACKLOG), so it never holds publishers back for long.
            let can_read = !finishing
                && !closed
                && (lossy || (self.backlog.is_empty() && self.can_dispatch()));
            if can_read && gather {
                gather = false;
                if spin {
                    self.gather();
                } else {
                    // One thread: a publisher can only get ahead while this task waits.
                    tokio::task::yield_now().await;
                    unbroken = clock.now();
                }
            }
            let n = if can_read { self.read() } else { 0 };
            if n > 0 {
                gather = n < GATHER;
                if clock.now() - unbroken >= FAIR_SHARE {
                    // A group that always finds events (its handlers no faster than
                    // its publishers) awaits nothing below: let the worker's other
                    // tasks run.
                    tokio::task::yield_now().await;
                    unbroken = clock.now();
                }
                if lossy {
                    // Let other tasks run between batches; the select below then polls
                    // this group's in-flight handlers before reading again.
                    tokio::task::consume_budget().await;
                } else {
                    continue;
                }
            }
            if (closed || finishing) && self.busy() == 0 && (finishing || self.backlog.is_empty()) {
                break;
            }
            let waited = AtomicBool::new(false);
            tokio::select! {
                biased;
                _ = group.halt.cancelled() => break,
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.clock.reset();
                    self.complete(done);
                }
                ready = noting_waits(self.consumer.ready(), &waited), if can_read => {
                    if ready.is_err() {
                        closed = true;
                    } else if waited.load(Ordering::Relaxed) {
                        bump(&group.counters.wakeups);
                    }
                }
                _ = &mut changed => {
                    changed.set(group.changed.notified());
                    changed.as_mut().enable();
                }
                _ = group.removed.cancelled(), if !finishing => {}
            }
            // After the wait, not before it: a processor woken after a quiet spell has
            // not kept its worker for that long.
            unbroken = clock.now();
        }
        self.finish();
    }

    /// Counts what will never be handled: in flight (at a halt), parked, stalled, read
    /// but not started, and what the group had not read yet.
    fn finish(mut self) {
        let counters = self.group.counters.clone();
        let dropped = self.in_flight.len()
            + self.parked
            + usize::from(self.stalled.is_some())
            + self.backlog.len();
        self.group.drop_n(dropped);
        self.held.store(0, Ordering::Relaxed);
        self.in_flight = FuturesUnordered::new();
        let group = &self.group;
        loop {
            let n = self.consumer.try_read_batch(MAX_BATCH, |_, published| {
                if group.accepts.take(published).is_some() {
                    bump(&counters.deliveries);
                    group.drop_n(1);
                }
            });
            if n == 0 {
                break;
            }
        }
        self.topic.detach(self.consumer.sequence());
    }
}

/// Awaits `ready`, noting in `waited` whether it had to wait (was ever pending).
async fn noting_waits<F: Future>(ready: F, waited: &AtomicBool) -> F::Output {
    let mut ready = std::pin::pin!(ready);
    std::future::poll_fn(|cx| {
        let poll = ready.as_mut().poll(cx);
        if poll.is_pending() {
            waited.store(true, Ordering::Relaxed);
        }
        poll
    })
    .await
}
