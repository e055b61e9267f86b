//! The ring itself: pre-allocated slots, the publish cursor, the gating sequences of
//! its consumers, and the two notifiers (data published, space freed).
//!
//! # Why the slot accesses are sound
//!
//! A slot holds the event of every sequence `s` with `s & mask == index`, as a bare
//! `MaybeUninit<T>` (no `Option` tag: a `u64` event takes 8 bytes, not 16, which
//! halves the cache lines producer and consumer pass between them).
//! * **Initialised.** Every sequence a producer claims is written before it is
//!   published, and claims are handed out in order from 0, so the slot of `s` already
//!   holds the event of `s - capacity` when `s >= capacity`: a write moves that one out
//!   (dropped only after the new event is in place) and the ring's `Drop` drops what the
//!   slots hold. A single producer writes `s` only after `s - 1` (its batches publish
//!   only what their iterator yielded); a multi producer first waits until the slot's
//!   availability flag says `s - capacity` was published, and its batches are collected
//!   before they claim, so a claim is never left unwritten.
//! * **Writes.** A producer writes sequence `s` only after claiming it exclusively
//!   (single producer: the only handle; multi producer: a successful CAS of the claim
//!   cursor) and after observing, with Acquire, every gating sequence `>= s - capacity`:
//!   every consumer has finished with the slot's previous occupant and published that
//!   with Release, so its reads happen before this write. A multi producer also waits
//!   (Acquire) for the previous occupant's publication, so its writer is done with the
//!   slot too, even when no consumer gates the ring. Nobody reads `s` yet, because `s`
//!   becomes visible only when the producer publishes it (Release) afterwards.
//! * **Reads.** A consumer reads `s` only after observing it published (Acquire on the
//!   cursor, or on the slot's availability flag with several producers), so the write
//!   happens before the read. The slot cannot be rewritten (as `s + capacity`) until
//!   this consumer's sequence reaches `s`, which it stores (Release) only after its
//!   reads are done. Readers only share `&T`, hence `T: Sync`.

use super::sequence::{INITIAL, Sequence, min_sequence};
use std::mem::MaybeUninit;

use super::sync::{
    Arc, AtomicBool, AtomicI64, Mutex, Ordering, UnsafeCell, lock, spin_loop, yield_now,
};
use super::wait::{Notifier, WaitStrategy};

/// The ring could not take the events: every slot is still being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring buffer full")]
pub struct Full;

/// The ring was closed and everything published has been consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring buffer closed")]
pub struct Closed;

/// A pre-allocated, power-of-two ring of slots shared by producers and consumers.
pub struct RingBuffer<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: i64,
    /// Single producer: the last published sequence.
    /// Multi producer: the last *claimed* sequence (publication is per slot).
    pub(super) cursor: Sequence,
    /// Multi producer only: the sequence last published into each slot.
    available: Box<[AtomicI64]>,
    multi: bool,
    /// Consumers that may not be overrun (their sequences), as an immutable snapshot:
    /// read without a lock by producers, replaced under `gating_lock` by (un)registration.
    gating: GatingSnapshot,
    gating_lock: Mutex<()>,
    /// The smallest gating sequence seen last time; only a lower bound, refreshed lazily.
    pub(super) gating_cache: Sequence,
    pub(super) data: Notifier,
    pub(super) space: Notifier,
    closed: AtomicBool,
    /// Set once a consumer depends on another (a pipeline stage): consumers' progress
    /// must then wake waiting consumers too, not only producers.
    pub(super) pipelined: AtomicBool,
    /// How everyone waits on this ring. Only [`WaitStrategy::Blocking`] rings signal
    /// (a barrier and a load per publish and per consumed batch: a compiler fence while
    /// only threads wait, see [`Notifier`]); spinning and yielding rings never do, as in
    /// the LMAX Disruptor.
    pub(super) strategy: WaitStrategy,
}

// SAFETY: the ring moves `T`s between threads (Send) and lets several consumers read the
// same `T` at once (Sync); the slot protocol in the module docs rules out data races.
#[allow(unsafe_code)]
unsafe impl<T: Send + Sync> Sync for RingBuffer<T> {}

impl<T> std::fmt::Debug for RingBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBuffer")
            .field("capacity", &self.capacity())
            .field("cursor", &self.cursor.get())
            .field("multi_producer", &self.multi)
            .finish()
    }
}

impl<T> RingBuffer<T> {
    pub(super) fn new(capacity: usize, multi: bool, strategy: WaitStrategy) -> Arc<Self> {
        let capacity = capacity.max(1).next_power_of_two();
        let slots = (0..capacity)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect();
        let available = if multi {
            (0..capacity).map(|_| AtomicI64::new(INITIAL)).collect()
        } else {
            Vec::new().into_boxed_slice()
        };
        Arc::new(Self {
            slots,
            mask: capacity as i64 - 1,
            cursor: Sequence::new(INITIAL),
            available,
            multi,
            gating: GatingSnapshot::new(),
            gating_lock: Mutex::new(()),
            gating_cache: Sequence::new(INITIAL),
            data: Notifier::default(),
            space: Notifier::default(),
            closed: AtomicBool::new(false),
            pipelined: AtomicBool::new(false),
            strategy,
        })
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether the ring has several producers.
    pub fn is_multi_producer(&self) -> bool {
        self.multi
    }

    /// The highest sequence claimed (multi producer) or published (single producer).
    pub fn cursor(&self) -> i64 {
        self.cursor.get()
    }

    /// How producers and consumers of this ring wait.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.strategy
    }

    #[inline]
    pub(super) fn signals(&self) -> bool {
        self.strategy == WaitStrategy::Blocking
    }

    /// Closes the ring: producers fail, consumers drain what was published, then stop.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.data.notify();
        self.space.notify();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The smallest sequence of the gating consumers (`default` when there are none).
    pub(super) fn min_gating(&self, default: i64) -> i64 {
        self.gating.with(|gating| min_sequence(gating, default))
    }

    /// Whether sequences up to `hi` may be written: every gating consumer is past
    /// `hi - capacity`. Refreshes the cached minimum when it is not enough.
    #[inline]
    pub(super) fn has_room(&self, hi: i64, published: i64) -> bool {
        let wrap_point = hi - self.capacity() as i64;
        if wrap_point <= self.gating_cache.get() {
            return true;
        }
        wrap_point <= self.refresh_gating_cache(published)
    }

    /// Reads the gating sequences again (the cached minimum was not enough).
    #[cold]
    fn refresh_gating_cache(&self, published: i64) -> i64 {
        let min = self.min_gating(published);
        self.gating_cache.set(min);
        min
    }

    /// Removes a consumer's sequence; producers no longer wait for it.
    pub(super) fn remove_gating(&self, sequence: &Arc<Sequence>) {
        {
            let _guard = lock(&self.gating_lock);
            let next: Vec<Arc<Sequence>> = self.gating.with(|gating| {
                gating
                    .iter()
                    .filter(|s| !Arc::ptr_eq(s, sequence))
                    .cloned()
                    .collect()
            });
            self.gating.store(next);
        }
        self.space.notify();
    }

    /// Registers a new consumer; it sees every event claimed after this call.
    ///
    /// It starts at the cursor read under the gating lock. A producer whose room check
    /// did not include it (a stale cache, or a check just before) was bounded by the
    /// older consumers, which are all at or below that cursor, so it only rewrites slots
    /// whose previous occupants precede this consumer's start.
    pub(super) fn register_consumer(&self) -> Arc<Sequence> {
        let _guard = lock(&self.gating_lock);
        let sequence = Arc::new(Sequence::new(self.cursor.get()));
        let mut next: Vec<Arc<Sequence>> = self.gating.with(|gating| gating.to_vec());
        next.push(sequence.clone());
        self.gating.store(next);
        sequence
    }

    /// Writes `value` into the slot of `sequence` and returns the event it replaces
    /// (`sequence - capacity`), for the caller to drop once `sequence` is published: a
    /// panicking `Drop` then cannot leave a claimed sequence unpublished.
    ///
    /// Callers must have claimed `sequence` exclusively, checked room for it
    /// ([`has_room`](Self::has_room)), and written every sequence below it that they
    /// claimed; see the module docs.
    #[inline]
    #[must_use = "the replaced event is dropped by the caller after publishing"]
    ///
    /// `MULTI` says which producer calls (a ring has one kind, fixed at construction),
    /// so the single producer's path carries no multi-producer check.
    pub(super) fn write<const MULTI: bool>(&self, sequence: i64, value: T) -> Option<T> {
        debug_assert_eq!(MULTI, self.multi);
        let index = (sequence & self.mask) as usize;
        let previous = sequence - self.capacity() as i64;
        let occupied = previous >= 0;
        if MULTI && occupied {
            self.wait_previous_published(index, previous);
        }
        // SAFETY: the caller claimed `sequence` exclusively, and every consumer has
        // released the slot's previous occupant (room checked with Acquire), as has its
        // writer (single producer: this thread; multi producer: its publication observed
        // with Acquire just above), so no other thread accesses this slot until
        // `sequence` is published. When `occupied`, the slot holds the initialised event
        // of `sequence - capacity` (module docs), moved out exactly once, here.
        #[allow(unsafe_code)]
        unsafe {
            Self::replace(&self.slots[index], occupied, value)
        }
    }

    /// Moves `value` into `slot` and returns the event it held when `occupied` (an
    /// event without drop glue is simply written over, and `None` comes back).
    ///
    /// # Safety
    ///
    /// No other thread may access `slot` until the caller publishes it, and when
    /// `occupied` the slot must hold an initialised event that nobody else moves out or
    /// drops.
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn replace(slot: &UnsafeCell<MaybeUninit<T>>, occupied: bool, value: T) -> Option<T> {
        let take_previous = occupied && std::mem::needs_drop::<T>();
        // SAFETY: exclusive access, and an initialised event when `occupied`, are this
        // function's contract.
        slot.with_mut(|ptr| unsafe {
            let replaced = take_previous.then(|| (*ptr).assume_init_read());
            (*ptr).write(value);
            replaced
        })
    }

    /// Multi producer: waits until the slot's previous occupant was published (its
    /// producer may have claimed it and not written it yet). Almost always immediate:
    /// gating consumers already read it, unless none gates the ring.
    #[inline]
    fn wait_previous_published(&self, index: usize, previous: i64) {
        if self.available[index].load(Ordering::Acquire) != previous {
            self.spin_until_published(index, previous);
        }
    }

    #[cold]
    #[inline(never)]
    fn spin_until_published(&self, index: usize, previous: i64) {
        let mut tries = 0u32;
        while self.available[index].load(Ordering::Acquire) != previous {
            if tries < 100 {
                tries += 1;
                spin_loop();
            } else {
                yield_now();
            }
        }
    }

    /// Reads the slots of `lo..=hi` in order through `f(sequence, &event)`, walking the
    /// (at most two) contiguous runs of slots the range covers, without an index check
    /// per event. `hi - lo < capacity`.
    ///
    /// Callers must have observed `hi` published (and with it every sequence below) and
    /// must hold a gating sequence below `lo` until this returns; see the module docs.
    #[inline]
    pub(super) fn read_range(&self, lo: i64, hi: i64, mut f: impl FnMut(i64, &T)) {
        let mut sequence = lo;
        for run in self.runs(lo, hi) {
            for slot in run {
                // SAFETY: `sequence <= hi` was published (Acquire), so its write (which
                // initialised the slot) happened before this read, and the caller's gating
                // sequence keeps producers from rewriting the slot until the caller stores
                // a sequence >= `sequence` after this returns. Concurrent readers only
                // share `&T` (`T: Sync`).
                #[allow(unsafe_code)]
                slot.with(|ptr| unsafe { f(sequence, (*ptr).assume_init_ref()) });
                sequence += 1;
            }
        }
    }

    /// The slots of `lo..=hi` as at most two contiguous runs (the second one after the
    /// ring wraps, empty otherwise). `0 <= hi - lo + 1 <= capacity`.
    #[inline]
    fn runs(&self, lo: i64, hi: i64) -> [&[UnsafeCell<MaybeUninit<T>>]; 2] {
        let len = (hi - lo + 1).max(0) as usize;
        debug_assert!(len <= self.capacity());
        let start = (lo & self.mask) as usize;
        let (tail, head) = self.slots.split_at(start);
        let first = len.min(head.len());
        [&head[..first], &tail[..len - first]]
    }

    /// Single producer: writes the next `n` sequences from `lo` with what `values`
    /// yields, in order, dropping each replaced event after its slot is written; returns
    /// how many were written (fewer when `values` ends early). Publishes nothing.
    ///
    /// Callers must be the ring's only producer, have checked room for `lo + n - 1`
    /// and have written every sequence below `lo`; see [`write`](Self::write). If
    /// `values` (or a replaced event's `Drop`) panics, what was written stays
    /// unpublished and is written over (and dropped) by the next write.
    #[inline]
    pub(super) fn write_run(&self, lo: i64, n: usize, values: impl Iterator<Item = T>) -> usize {
        debug_assert!(!self.multi);
        let mut values = values.take(n);
        let mut written = 0;
        for run in self.runs(lo, lo + n as i64 - 1) {
            for slot in run {
                let Some(value) = values.next() else {
                    return written;
                };
                let occupied = lo + written as i64 >= self.capacity() as i64;
                // SAFETY: as in `write`, single producer: this thread is the only writer,
                // it wrote every sequence below this one, and room was checked (Acquire
                // of every gating sequence) for the whole run, so no consumer reads the
                // slot until it is published. When `occupied`, the slot holds the
                // initialised event of `sequence - capacity` (or an unpublished write of
                // this sequence left by a panic), moved out exactly once, here.
                #[allow(unsafe_code)]
                let previous = unsafe { Self::replace(slot, occupied, value) };
                written += 1;
                drop(previous);
            }
        }
        written
    }

    /// Brings the slot of `sequence` into this CPU's cache while a consumer waits for
    /// it: its read after the wait then finds the line here (or on its way) instead of
    /// fetching it from the producer's core after the cursor's line came, a cross-core
    /// transfer less on the waiting path (docs/benchmarks.md, round trip).
    #[inline]
    pub(super) fn prefetch_slot(&self, sequence: i64) {
        #[cfg(not(loom))]
        self.slots[(sequence & self.mask) as usize].with(super::sync::prefetch);
        #[cfg(loom)]
        let _ = sequence;
    }

    /// A consumer finished everything up to its new sequence: wake producers waiting for
    /// room and, in a pipeline, later stages waiting for it.
    #[inline]
    pub(super) fn consumer_progressed(&self) {
        if !self.signals() {
            return;
        }
        self.space.notify();
        if self.pipelined.load(Ordering::Relaxed) {
            self.data.notify();
        }
    }

    /// Marks `lo..=hi` published.
    #[inline]
    pub(super) fn publish_range<const MULTI: bool>(&self, lo: i64, hi: i64) {
        debug_assert_eq!(MULTI, self.multi);
        if MULTI {
            for sequence in lo..=hi {
                // Release: the slot write above happens before a consumer's Acquire of it.
                self.available[(sequence & self.mask) as usize].store(sequence, Ordering::Release);
            }
        } else {
            self.cursor.set(hi);
        }
        if self.signals() {
            self.data.notify();
        }
    }

    /// The highest sequence in `next..=claimed` such that all of `next..=it` are
    /// published (`next - 1` when `next` itself is not).
    #[inline]
    pub(super) fn highest_published(&self, next: i64, claimed: i64) -> i64 {
        if !self.multi {
            return claimed;
        }
        let mut sequence = next;
        while sequence <= claimed {
            if self.available[(sequence & self.mask) as usize].load(Ordering::Acquire) != sequence {
                return sequence - 1;
            }
            sequence += 1;
        }
        claimed
    }
}

impl<T> Drop for RingBuffer<T> {
    fn drop(&mut self) {
        for (index, slot) in self.slots.iter().enumerate() {
            // Which slots hold an event (module docs): with several producers, those
            // whose availability flag shows a publication (each write is published);
            // with one, the first `cursor + 1` (it writes in order and publishes what it
            // wrote; a batch that panicked midway leaks what it wrote past the cursor).
            let initialised = if self.multi {
                self.available[index].load(Ordering::Acquire) != INITIAL
            } else {
                (index as i64) <= self.cursor.get()
            };
            if initialised {
                // SAFETY: `&mut self`: no producer or consumer is left, and the slot holds
                // an initialised event (above), dropped once.
                #[allow(unsafe_code)]
                slot.with_mut(|ptr| unsafe { (*ptr).assume_init_drop() });
            }
        }
    }
}

/// The gating sequences: an `ArcSwap` snapshot (lock-free reads); under loom, which
/// cannot model arc-swap, a mutex (the snapshot logic is the same).
struct GatingSnapshot {
    #[cfg(not(loom))]
    inner: arc_swap::ArcSwap<Vec<Arc<Sequence>>>,
    #[cfg(loom)]
    inner: Mutex<Arc<Vec<Arc<Sequence>>>>,
}

impl GatingSnapshot {
    fn new() -> Self {
        Self {
            #[cfg(not(loom))]
            inner: arc_swap::ArcSwap::from_pointee(Vec::new()),
            #[cfg(loom)]
            inner: Mutex::new(Arc::new(Vec::new())),
        }
    }

    #[inline]
    fn with<R>(&self, f: impl FnOnce(&[Arc<Sequence>]) -> R) -> R {
        #[cfg(not(loom))]
        {
            f(&self.inner.load())
        }
        #[cfg(loom)]
        {
            let snapshot = lock(&self.inner).clone();
            f(&snapshot)
        }
    }

    fn store(&self, sequences: Vec<Arc<Sequence>>) {
        #[cfg(not(loom))]
        self.inner.store(Arc::new(sequences));
        #[cfg(loom)]
        {
            *lock(&self.inner) = Arc::new(sequences);
        }
    }
}
