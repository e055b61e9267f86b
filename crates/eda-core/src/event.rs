//! The [`Event`] trait: a serde payload with a stable type name.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed event: a serde payload with a stable, dotted type name.
///
/// The type name is the CloudEvents `type` attribute and, unless the bus maps it
/// elsewhere, the name of the event's topic. Keep it stable: renaming it orphans stored
/// events and subscribers in other processes.
///
/// ```
/// use eda_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct OrderCreated { order_id: u64, customer: String }
///
/// impl Event for OrderCreated {
///     const TYPE: &'static str = "order.created";
///     // Optional: route by customer so one customer's events stay in order.
///     fn partition_key(&self) -> Option<String> { Some(self.customer.clone()) }
/// }
/// assert_eq!(OrderCreated::TYPE, "order.created");
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvents `type`, e.g. `"order.created"`.
    const TYPE: &'static str;

    /// Schema version of the payload, recorded with binary-encoded data so stored events
    /// stay decodable when the type evolves. Bump it on incompatible changes.
    const VERSION: u32 = 1;

    /// The routing key (`partitionkey`) of this event, if it has one.
    /// Events with the same key are kept in order by keyed dispatch and partitioned stores.
    fn partition_key(&self) -> Option<String> {
        None
    }
}
