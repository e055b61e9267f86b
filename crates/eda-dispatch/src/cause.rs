//! The event being handled on the current task, so that events published from a
//! handler inherit its correlation id and trace context and record it as their cause.
//!
//! A task-local in effect: [`Scoped`] puts its event in a thread-local slot while it
//! polls its future (and while it drops it), and takes it back after; [`sync_scope`]
//! does the same around a synchronous call. tokio's `task_local!` does this too, with a
//! `RefCell` and a second thread-local access per poll; with a `Cell` the handling
//! side of the bus measured ~20 ns an event less (docs/benchmarks.md, "Bus
//! throughput").

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use eda_core::{Cause, EventInfo};

thread_local! {
    static CURRENT: Cell<Option<Arc<dyn EventInfo>>> = const { Cell::new(None) };
}

/// Puts the event of `slot` in the thread's slot until dropped, then puts it back in
/// `slot` and restores what the thread had (a scope inside another, or none).
struct Entered<'a> {
    slot: &'a mut Option<Arc<dyn EventInfo>>,
    /// What the thread had; `None` inside when it had nothing, and `None` outside when
    /// its slot was gone (a future dropped by a thread-local destructor at thread
    /// exit: it runs without a current event then).
    outer: Option<Option<Arc<dyn EventInfo>>>,
}

impl<'a> Entered<'a> {
    fn new(slot: &'a mut Option<Arc<dyn EventInfo>>) -> Self {
        let outer = CURRENT
            .try_with(|current| current.replace(slot.take()))
            .ok();
        Self { slot, outer }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Some(outer) = self.outer.take()
            && let Ok(event) = CURRENT.try_with(|current| current.replace(outer))
        {
            *self.slot = event;
        }
    }
}

/// Runs `f` with `event` as the current event (synchronous handlers).
pub(crate) fn sync_scope<R>(event: Arc<dyn EventInfo>, f: impl FnOnce() -> R) -> R {
    let mut slot = Some(event);
    let _entered = Entered::new(&mut slot);
    f()
}

pin_project_lite::pin_project! {
    /// A future polled (and dropped) with its event as the current one.
    pub(crate) struct Scoped<F> {
        event: Option<Arc<dyn EventInfo>>,
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.future.is_some() {
                // A handler future dropped before it finished (a timeout, a shutdown):
                // its own drop sees the event too.
                let _entered = Entered::new(this.event);
                this.future.set(None);
            }
        }
    }
}

/// `future`, polled with `event` as the current event.
pub(crate) fn scope<F: Future>(event: Arc<dyn EventInfo>, future: F) -> Scoped<F> {
    Scoped {
        event: Some(event),
        future: Some(future),
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let _entered = Entered::new(this.event);
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            // Like an `async` block polled after it finished.
            panic!("a scoped handler future polled after completion");
        };
        let poll = future.poll(cx);
        if poll.is_ready() {
            // Dropped in the scope, like a future dropped before it finished.
            this.future.set(None);
        }
        poll
    }
}

/// Calls `f` with the current event, if a handler is running on this task (or, for
/// synchronous handlers, on this thread).
pub(crate) fn with_current<R>(f: impl FnOnce(&dyn EventInfo) -> R) -> Option<R> {
    // Takes the event out while `f` runs (and puts it back, even if `f` panics). No
    // current event on a thread whose slot is gone (thread-local destructors).
    let mut none = None;
    let entered = Entered::new(&mut none);
    let event = entered.outer.as_ref()?.as_deref()?;
    Some(f(event))
}

/// The cause of an event published now: the event whose handler is running on this
/// task (or, for synchronous handlers, on this thread), if any.
pub fn current_cause() -> Option<Cause> {
    with_current(|e| Cause::of(e.id(), e.metadata()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use eda_core::Envelope;

    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Ping;
    impl eda_core::Event for Ping {
        const TYPE: &'static str = "test.ping";
    }

    fn event() -> Arc<dyn EventInfo> {
        Arc::new(Envelope::new(Ping))
    }

    #[test]
    fn a_scope_sets_the_current_event_only_while_its_future_runs() {
        let (outer, inner) = (event(), event());
        let (outer_id, inner_id) = (outer.id(), inner.id());
        let current = || with_current(|e| e.id());
        assert_eq!(current(), None);
        let seen = sync_scope(outer, || {
            let mut fut = std::pin::pin!(scope(inner, async move { current() }));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let seen = fut.as_mut().poll(&mut cx);
            (seen, current())
        });
        assert_eq!(seen, (Poll::Ready(Some(inner_id)), Some(outer_id)));
        assert_eq!(current(), None);
    }

    #[test]
    fn an_unfinished_future_is_dropped_in_its_scope_and_a_panic_restores_the_outer() {
        struct SeesOnDrop(Arc<std::sync::Mutex<Option<eda_core::EventId>>>);
        impl Drop for SeesOnDrop {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = with_current(|e| e.id());
            }
        }
        let seen = Arc::new(std::sync::Mutex::new(None));
        let e = event();
        let id = e.id();
        let guard = SeesOnDrop(seen.clone());
        let fut = scope(e, async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        let mut fut = Box::pin(fut);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(fut);
        assert_eq!(*seen.lock().unwrap(), Some(id));

        let panicked = std::panic::catch_unwind(|| sync_scope(event(), || panic!("in a handler")));
        assert!(panicked.is_err());
        assert_eq!(with_current(|e| e.id()), None);
    }
}
