//! Waiting for a sequence: wait strategies for consumer threads, and the [`Notifier`]
//! that lets producers (and consumers, for space) wake only those actually waiting.

use std::task::Waker;
use std::time::Duration;

use super::sync::{
    AtomicBool, AtomicUsize, Condvar, Mutex, Ordering, fence, lock, spin_loop, yield_now,
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
    /// flow it rarely parks, so publishers rarely pay for a wake-up. It does not spin:
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
/// The hot path of the signalling side is a fence and one load when nobody waits. A
/// waiter announces itself (count + fence) *before* its final check of the condition,
/// and the signaller makes its change visible (fence) *before* reading the count: by
/// the two SeqCst fences, either the signaller sees the waiter or the waiter sees the
/// change, so no wake-up is lost. Thread waiters also clear `signalled` (an AcqRel
/// swap) before that fence, and a signaller that sees sleepers wakes them only if its
/// own swap sets the flag. A signaller that skips, its swap finding the flag set, is
/// in the flag's modification order: a waiter's later clear reads from it or from a
/// later signaller (acquiring what it published), and a signaller after the clear
/// finds the flag clear and wakes. (Relaxed swaps leaning on the fences alone lost a
/// wake-up in the loom models.)
#[derive(Debug, Default)]
pub struct Notifier {
    sleepers: AtomicUsize,
    /// Set by the notify that woke the sleeping threads, cleared by each thread before
    /// its final check of the condition: the signals in between (a producer publishing
    /// while its consumers wake up) skip the lock and the futex call.
    signalled: AtomicBool,
    lock: Mutex<()>,
    cond: Condvar,
    async_waiters: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
}

impl Notifier {
    /// Wakes every thread and task waiting on this notifier. Call after the change
    /// (publish, or consumer progress) is stored.
    #[inline]
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
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

    /// Blocks the thread until `ready()` holds (or `timeout` passes; `None` = forever).
    pub fn wait_until(&self, mut ready: impl FnMut() -> bool, timeout: Option<Duration>) -> bool {
        if ready() {
            return true;
        }
        let mut guard = lock(&self.lock);
        loop {
            self.signalled.swap(false, Ordering::AcqRel);
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
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
        fence(Ordering::SeqCst);
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
                for _ in 0..YIELD_TRIES {
                    if ready() {
                        return;
                    }
                    yield_now();
                }
                notifier.wait_until(ready, None);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::WaitStrategy;

    #[test]
    fn the_default_strategy_is_the_one_the_constructors_use() {
        let (_producer, single) = super::super::single_producer::<u64>(8);
        let (_producer, multi) = super::super::multi_producer::<u64>(8);
        assert_eq!(single.wait_strategy(), WaitStrategy::default());
        assert_eq!(multi.wait_strategy(), WaitStrategy::default());
    }
}
