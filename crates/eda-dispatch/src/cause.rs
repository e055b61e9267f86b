//! The event being handled on the current task, so that events published from a
//! handler inherit its correlation id and trace context and record it as their cause.

use std::sync::Arc;

use eda_core::{Cause, EventInfo};

tokio::task_local! {
    pub(crate) static CURRENT_EVENT: Arc<dyn EventInfo>;
}

/// The cause of an event published now: the event whose handler is running on this
/// task (or, for synchronous handlers, on this thread), if any.
pub fn current_cause() -> Option<Cause> {
    CURRENT_EVENT
        .try_with(|e| Cause::of(e.id(), e.metadata()))
        .ok()
}
