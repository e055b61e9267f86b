//! The synchronization primitives the ring uses, swapped for loom's under `--cfg loom`
//! so that the loom models explore every interleaving (the shim tokio uses too).

/// loom has no compiler fence; without `membarrier` (always, under loom) it is never
/// the only barrier, so a SeqCst fence stands in.
#[cfg(loom)]
pub(crate) use loom::sync::atomic::fence as compiler_fence;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicUsize, Ordering, compiler_fence, fence,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// Reference counting is not part of the ring's memory-ordering argument (sequences,
/// availability flags, slots and locks are), and loom's `Arc` lacks `Arc<[T]>` and
/// `self: &Arc<Self>`: both builds use std's.
pub(crate) use std::sync::Arc;

/// A hint inside a busy-wait loop (under loom: a yield, so the model can progress).
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Asks the CPU to bring `ptr`'s cache line closer, without reading it (no access in
/// the memory model: nothing is dereferenced). A no-op off x86-64; not under loom,
/// whose cells have no address to give.
#[cfg(not(loom))]
#[inline]
#[allow(unused_variables)]
pub(crate) fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86-64 CPU has (it is in the
    // target's baseline), and a prefetch never faults or dereferences its address, so
    // any pointer is fine.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
}

/// Gives the rest of the time slice away.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Asymmetric barriers (as in Linux's RCU and folly's `asymmetricHeavyBarrier`): a
/// frequent side that makes only a compiler fence, paired with a rare side whose
/// [`heavy`](asymmetric::heavy) barrier runs a full barrier on every running thread of
/// the process (`membarrier(2)`, `MEMBARRIER_CMD_PRIVATE_EXPEDITED`). The pair orders
/// like two SeqCst fences: each thread's accesses before the point where the heavy
/// barrier interrupts it are visible to the heavy side when it returns, and its accesses
/// after that point see everything the heavy side did before it. Where `membarrier` is
/// missing (other systems, old kernels, a seccomp filter) and under loom,
/// [`available`](asymmetric::available) is false and both sides fence.
#[cfg(all(target_os = "linux", not(loom)))]
pub(crate) mod asymmetric {
    use std::sync::OnceLock;

    use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};

    /// Whether this process may pair compiler fences with [`heavy`]: asked and
    /// registered once (`MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`), by the first ring
    /// the process makes. Registering waits for an RCU grace period when the process
    /// already has several threads (7.8 ms measured here with two), once.
    pub(crate) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            let query = membarrier_query();
            query.contains_command(MembarrierCommand::PrivateExpedited)
                && query.contains_command(MembarrierCommand::RegisterPrivateExpedited)
                && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
        })
    }

    /// A full barrier on this thread and on every thread of the process that is
    /// running (an interrupt to each of their CPUs); one not running passes through the
    /// scheduler's barrier before it runs again. Costs microseconds: for the rare side.
    pub(crate) fn heavy() {
        if membarrier(MembarrierCommand::PrivateExpedited).is_err() {
            // Not after a successful registration; `GLOBAL` is a slower barrier of the
            // same guarantee, for every thread of the system.
            let _ = membarrier(MembarrierCommand::Global);
        }
    }
}

/// Without `membarrier` (see above): both sides fence.
#[cfg(not(all(target_os = "linux", not(loom))))]
pub(crate) mod asymmetric {
    pub(crate) fn available() -> bool {
        false
    }

    pub(crate) fn heavy() {
        super::fence(super::Ordering::SeqCst);
    }
}

/// Locks, ignoring poison: every critical section in the ring leaves its data consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `UnsafeCell` with loom's closure API, so both builds share one code path.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
