//! What a group hands to a member.

use std::sync::Arc;

use eda_core::{EventInfo, RawEvent};

/// One event for one member.
pub(crate) enum Item<M> {
    /// An event to handle.
    Event(Arc<M>),
    /// A record that could not be turned into `M`: dead-lettered by the member, in order.
    Undecodable { raw: Arc<RawEvent>, reason: String },
}

impl<M: EventInfo> Item<M> {
    /// The routing key, for keyed dispatch.
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Item::Event(e) => e.metadata().partition_key.as_deref(),
            Item::Undecodable { raw, .. } => raw.metadata.partition_key.as_deref(),
        }
    }
}
