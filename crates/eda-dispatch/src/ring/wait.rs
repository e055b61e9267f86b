//! Waiting for a sequence: wait strategies for consumer threads, and the [`Notifier`]
//! that lets producers (and consumers, for space) wake only those actually waiting.

use std::task::Waker;
use std::time::Duration;

use super::sync::{
    AtomicBool, AtomicUsize, Condvar, Mutex, Ordering, asymmetric, compiler_fence, fence, lock,
    spin_loop, yield_now,
};

/// How a consumer thread waits for the next sequence.
///
/// With more threads than cores, busy-spinning collapses throughput (a spinning thread
/// steals the core its producer needs), so the bus never spins: its consumers are async
/// tasks woken through the [`Notifier`]. These strategies are for dedicated threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin on the CPU: lowest latency, one core per waiting thread.
    BusySpin,
    /// Yield the thread to the scheduler whenever the sequence is not there yet (the
    /// `disruptor` crate's yielding strategy; the LMAX one spins 100 times first). A
    /// consumer that yields instead of spinning lets its producer run ahead and then
    /// reads a whole batch, instead of chasing the cursor one event at a time and pulling
    /// the producer's cache lines back on every publish; for the same reason
    /// [`Consumer::wait`](super::Consumer::wait) that finds only a few events yields
    /// while the producer is still publishing (every strategy pauses there in its way).
    Yielding,
    /// Yield a few times, then park on a condition variable until signalled (async
    /// consumers: register and await). Never burns a core while idle, and while events
    /// flow it rarely parks, so publishers rarely pay for a wake-up. (On Linux a thread
    /// pays a `membarrier` when it parks, so that publishers' sleeper checks need no
    /// fence: [`Notifier`].) It does not spin:
    /// with more threads than cores (three consumers and a producer on two), a spinning
    /// consumer holds the core its producer needs; a yield gives it up, and returns at
    /// once when nobody else wants it. (With 100 spins first, multicast 1P–3C on two
    /// cores measured 15–21 M/s; without them 25–89, median 59: docs/benchmarks.md.)
    ///
    /// The default: what [`single_producer`](super::single_producer),
    /// [`multi_producer`](super::multi_producer) and the bus's topics use.
    #[default]
    Blocking,
}

/// Spins in one [`WaitStrategy::BusySpin`] pause (see `Consumer::wait`): one spin is
/// too short for the producer to get ahead, so the consumer would still chase it.
const PAUSE_SPINS: u32 = 16;

/// Yields before parking in [`WaitStrategy::Blocking`].
const YIELD_TRIES: u32 = if cfg!(loom) { 0 } else { 8 };

/// Wakes waiters of one condition ("data published" or "space freed").
///
/// The hot path of the signalling side is a barrier and one load when nobody waits. A
/// waiter announces itself (count + barrier) *before* its final check of the condition,
/// and the signaller makes its change visible (barrier) *before* reading the count: by
/// the two barriers, either the signaller sees the waiter or the waiter sees the
/// change, so no wake-up is lost. Thread waiters also clear `signalled` (an AcqRel
/// swap) before that barrier, and a signaller that sees sleepers wakes them only if its
/// own swap sets the flag. A signaller that skips, its swap finding the flag set, is
/// in the flag's modification order: a waiter's later clear reads from it or from a
/// later signaller (acquiring what it published), and a signaller after the clear
/// finds the flag clear and wakes. (Relaxed swaps leaning on the barriers alone lost a
/// wake-up in the loom models.)
///
/// The barriers are SeqCst fences, except where `membarrier(2)` is available
/// (`sync::asymmetric`): there the signaller, which runs once per publish and per
/// consumed batch, makes only a compiler fence, and a waiting *thread* pays instead, a
/// membarrier (microseconds) on its way to sleep, which it does rarely while events
/// flow. (A SeqCst fence per publish waits for the publish's stores to leave the store
/// buffer while consumers read those lines: multicast 1P–3C ran ~1.6× faster with no
/// barrier at all, which can lose wake-ups, and ~1.2× with the membarrier pair;
/// docs/benchmarks.md.) Async waiters register far
/// more often (the bus's processors, on every empty ring), so the first async
/// registration switches the notifier to fences on both sides for good: it announces
/// itself, marks the switch, and makes one membarrier, so that a signaller that read
/// the mode before the mark had its change visible by then; later registrations find
/// the switch made and fence. Under loom both sides fence: the models check the
/// symmetric protocol, which the asymmetric pair orders the same way.
#[derive(Debug)]
pub struct Notifier {
    sleepers: AtomicUsize,
    /// Set by the notify that woke the sleeping threads, cleared by each thread before
    /// its final check of the condition: the signals in between (a producer publishing
    /// while its consumers wake up) skip the lock and the futex call.
    signalled: AtomicBool,
    /// `membarrier` is there: signallers in [`LIGHT`] mode make a compiler fence only.
    asymmetric: bool,
    /// [`LIGHT`], [`SWITCHING`] or [`FENCED`] (only ever increases).
    mode: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
    async_waiters: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
}

/// Signallers make a compiler fence; waiters a membarrier.
const LIGHT: usize = 0;
/// An async waiter is making the membarrier that ends [`LIGHT`] mode: signallers fence,
/// waiters still make membarriers.
const SWITCHING: usize = 1;
/// Both sides make SeqCst fences.
const FENCED: usize = 2;

impl Default for Notifier {
    fn default() -> Self {
        Self {
            sleepers: AtomicUsize::new(0),
            signalled: AtomicBool::new(false),
            asymmetric: asymmetric::available(),
            mode: AtomicUsize::new(LIGHT),
            lock: Mutex::new(()),
            cond: Condvar::new(),
            async_waiters: AtomicUsize::new(0),
            wakers: Mutex::new(Vec::new()),
        }
    }
}

impl Notifier {
    /// Wakes every thread and task waiting on this notifier. Call after the change
    /// (publish, or consumer progress) is stored.
    #[inline]
    pub fn notify(&self) {
        if self.asymmetric && self.mode.load(Ordering::Relaxed) == LIGHT {
            // Paired with the waiters' membarrier (type docs).
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        if self.sleepers.load(Ordering::Relaxed) > 0 && !self.signalled.swap(true, Ordering::AcqRel)
        {
            let _guard = lock(&self.lock);
            self.cond.notify_all();
        }
        if self.async_waiters.load(Ordering::Relaxed) > 0 {
            let wakers = {
                let mut wakers = lock(&self.wakers);
                self.async_waiters.store(0, Ordering::Relaxed);
                std::mem::take(&mut *wakers)
            };
            for waker in wakers {
                waker.wake();
            }
        }
    }

    /// Whether signallers may still make compiler fences only, so that a waiter must
    /// make the membarrier (not yet [`FENCED`]).
    #[inline]
    fn waiters_pay(&self) -> bool {
        self.asymmetric && self.mode.load(Ordering::Acquire) != FENCED
    }

    /// A waiter's barrier between announcing itself and its final check: a membarrier
    /// while signallers may still make compiler fences, a fence once they all fence.
    #[inline]
    fn waiter_barrier(&self) {
        if self.waiters_pay() {
            asymmetric::heavy();
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// Blocks the thread until `ready()` holds (or `timeout` passes; `None` = forever).
    pub fn wait_until(&self, mut ready: impl FnMut() -> bool, timeout: Option<Duration>) -> bool {
        if ready() {
            return true;
        }
        let mut guard = lock(&self.lock);
        loop {
            self.signalled.swap(false, Ordering::AcqRel);
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            self.waiter_barrier();
            if ready() {
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
                return true;
            }
            guard = match timeout {
                None => self.cond.wait(guard).unwrap_or_else(|p| p.into_inner()),
                #[cfg(not(loom))]
                Some(t) => {
                    let (g, result) = self
                        .cond
                        .wait_timeout(guard, t)
                        .unwrap_or_else(|p| p.into_inner());
                    if result.timed_out() {
                        self.sleepers.fetch_sub(1, Ordering::Relaxed);
                        return ready();
                    }
                    g
                }
                #[cfg(loom)]
                Some(_) => self.cond.wait(guard).unwrap_or_else(|p| p.into_inner()),
            };
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Registers `waker` to be woken by the next [`notify`](Self::notify). Check the
    /// condition again afterwards: a change made before registration wakes no one.
    pub fn register(&self, waker: &Waker) {
        {
            let mut wakers = lock(&self.wakers);
            if !wakers.iter().any(|w| w.will_wake(waker)) {
                wakers.push(waker.clone());
            }
            self.async_waiters.fetch_add(1, Ordering::Relaxed);
        }
        if self.waiters_pay() {
            // Once per notifier (or per racing registration): from the mark on,
            // signallers fence; one that read `LIGHT` before it had made its change
            // visible by the time the membarrier returns.
            let _ =
                self.mode
                    .compare_exchange(LIGHT, SWITCHING, Ordering::Relaxed, Ordering::Relaxed);
            asymmetric::heavy();
            self.mode.store(FENCED, Ordering::Release);
        } else {
            fence(Ordering::SeqCst);
        }
    }
}

impl WaitStrategy {
    /// One short wait: a few spins for [`BusySpin`](Self::BusySpin), a yield otherwise.
    #[inline]
    pub(super) fn pause(&self) {
        match self {
            Self::BusySpin => (0..PAUSE_SPINS).for_each(|_| spin_loop()),
            Self::Yielding | Self::Blocking => yield_now(),
        }
    }

    /// Waits on a consumer thread until `ready()` holds.
    pub fn wait_until(&self, notifier: &Notifier, mut ready: impl FnMut() -> bool) {
        match self {
            Self::BusySpin => {
                while !ready() {
                    spin_loop();
                }
            }
            Self::Yielding => {
                while !ready() {
                    yield_now();
                }
            }
            Self::Blocking => {
                // A countdown, not `0..YIELD_TRIES`: under loom the range is empty,
                // which clippy rejects.
                let mut tries = YIELD_TRIES;
                while tries > 0 {
                    if ready() {
                        return;
                    }
                    yield_now();
                    tries -= 1;
                }
                notifier.wait_until(ready, None);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{FENCED, LIGHT, Notifier, Ordering, WaitStrategy};

    #[test]
    fn the_first_async_registration_switches_signallers_to_fences() {
        let notifier = Notifier::default();
        assert_eq!(notifier.mode.load(Ordering::Relaxed), LIGHT);
        // A thread that waited (and timed out) leaves the signallers on compiler fences.
        let waited = notifier.wait_until(|| false, Some(std::time::Duration::from_millis(1)));
        assert!(!waited);
        assert_eq!(notifier.mode.load(Ordering::Relaxed), LIGHT);
        notifier.register(std::task::Waker::noop());
        // Without membarrier the mode stays, and signallers fence anyway.
        let expected = if notifier.asymmetric { FENCED } else { LIGHT };
        assert_eq!(notifier.mode.load(Ordering::Relaxed), expected);
    }

    #[test]
    fn the_default_strategy_is_the_one_the_constructors_use() {
        let (_producer, single) = super::super::single_producer::<u64>(8);
        let (_producer, multi) = super::super::multi_producer::<u64>(8);
        assert_eq!(single.wait_strategy(), WaitStrategy::default());
        assert_eq!(multi.wait_strategy(), WaitStrategy::default());
    }
}
