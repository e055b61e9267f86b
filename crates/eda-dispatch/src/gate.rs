//! The gate that makes unsubscribing exact: once `Subscription` is dropped, no handler
//! attempt of it starts, and the drop waits for attempts that were starting on other
//! threads (never for its own thread, so a handler may drop its own subscription).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

static NEXT_GATE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Gates this thread is inside (nested when a sync handler publishes).
    static INSIDE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

#[derive(Debug)]
pub(crate) struct Gate {
    id: u64,
    closed: AtomicBool,
    entered: AtomicUsize,
}

pub(crate) struct GateGuard<'a> {
    gate: &'a Gate,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            id: NEXT_GATE.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
            entered: AtomicUsize::new(0),
        }
    }

    /// Enters the gate to start a handler attempt; `None` once closed.
    ///
    /// Keep the guard only while the attempt *starts* (its synchronous part and first poll).
    pub(crate) fn enter(&self) -> Option<GateGuard<'_>> {
        // SeqCst on both sides (Dekker): either `close` sees our increment and waits,
        // or we see `closed` and back out.
        self.entered.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.entered.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        INSIDE.with(|v| v.borrow_mut().push(self.id));
        Some(GateGuard { gate: self })
    }

    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the gate and waits until no attempt is starting on another thread.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let own = INSIDE.with(|v| v.borrow().iter().filter(|&&id| id == self.id).count());
        while self.entered.load(Ordering::SeqCst) > own {
            std::thread::yield_now();
        }
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        INSIDE.with(|v| {
            let mut v = v.borrow_mut();
            if let Some(pos) = v.iter().rposition(|&id| id == self.gate.id) {
                v.remove(pos);
            }
        });
        self.gate.entered.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closed_gate_refuses_entry() {
        let g = Gate::new();
        assert!(g.enter().is_some());
        g.close();
        assert!(g.enter().is_none());
        assert!(g.is_closed());
    }

    #[test]
    fn close_from_inside_does_not_deadlock() {
        let g = Gate::new();
        let guard = g.enter().unwrap();
        g.close();
        drop(guard);
    }

    #[test]
    fn close_waits_for_other_threads() {
        let g = Arc::new(Gate::new());
        let started = Arc::new(std::sync::Barrier::new(2));
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (g, started, done) = (g.clone(), started.clone(), done.clone());
            std::thread::spawn(move || {
                let guard = g.enter().unwrap();
                started.wait();
                std::thread::sleep(std::time::Duration::from_millis(50));
                done.store(true, Ordering::SeqCst);
                drop(guard);
            })
        };
        started.wait();
        g.close();
        assert!(
            done.load(Ordering::SeqCst),
            "close returned while an attempt was starting"
        );
        t.join().unwrap();
    }
}
