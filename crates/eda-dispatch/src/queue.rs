//! The one seam between `publish` and async subscribers: a bounded multi-producer,
//! multi-consumer queue per subscription group. The members of a group pop from the
//! same queue, so they share its events. The engine work (a Disruptor-style ring with
//! balancers) replaces this module without touching the public API.

use std::sync::Arc;

use eda_core::RawEvent;
use tokio::time::Instant;

/// What a group queue carries.
pub(crate) enum Item<M> {
    /// An event to handle.
    Event(Arc<M>),
    /// A record that could not be turned into `M`: dead-lettered by the runner, in order.
    Undecodable { raw: Arc<RawEvent>, reason: String },
}

pub(crate) enum PushError<T> {
    Full(T),
    Closed,
}

pub(crate) struct Queue<T> {
    tx: async_channel::Sender<T>,
    rx: async_channel::Receiver<T>,
}

impl<T: Send> Queue<T> {
    pub(crate) fn bounded(capacity: usize) -> Self {
        let (tx, rx) = async_channel::bounded(capacity.max(1));
        Self { tx, rx }
    }

    pub(crate) fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        self.tx.try_send(item).map_err(|e| match e {
            async_channel::TrySendError::Full(item) => PushError::Full(item),
            async_channel::TrySendError::Closed(_) => PushError::Closed,
        })
    }

    /// Waits for room until `deadline`; `Full` when it passed.
    pub(crate) async fn push_until(&self, item: T, deadline: Instant) -> Result<(), PushError<()>> {
        match tokio::time::timeout_at(deadline, self.tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(PushError::Closed),
            Err(_) => Err(PushError::Full(())),
        }
    }

    pub(crate) fn try_pop(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// The next item; `None` once the queue is closed and empty.
    pub(crate) async fn pop(&self) -> Option<T> {
        self.rx.recv().await.ok()
    }

    pub(crate) fn close(&self) {
        self.tx.close();
    }

    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }
}
