//! The runner of a subscription on a durable topic: consumes `(topic, group, name)` from
//! the store and hands each delivery to the member's lifecycle (one attempt per
//! delivery; the store's redeliveries are the retries).

use std::sync::Arc;
use std::time::Duration;

use eda_core::{CancellationToken, ConsumeOptions, Envelope, Event, EventStore, Handler};
use futures_util::StreamExt as _;

use crate::runner::Member;

pub(crate) struct Runner<E: Event, H> {
    pub(crate) member: Arc<Member<Envelope<E>, H>>,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) options: ConsumeOptions,
    /// The subscription was dropped (or the shutdown deadline passed).
    pub(crate) stop: CancellationToken,
    /// Shutdown began: take no more deliveries.
    pub(crate) intake: CancellationToken,
    pub(crate) source: Arc<str>,
}

pub(crate) async fn run<E: Event, H: Handler<Envelope<E>>>(r: Runner<E, H>) {
    let mut deliveries = loop {
        match r
            .store
            .subscribe(&r.topic, &r.group, &r.consumer, r.options.clone())
            .await
        {
            Ok(stream) => break stream,
            Err(e) => {
                tracing::warn!(topic = %r.topic, group = %r.group, error = %e, "cannot subscribe to the store; retrying");
                tokio::select! {
                    _ = r.stop.cancelled() => return,
                    _ = r.intake.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        let next = tokio::select! {
            biased;
            _ = r.stop.cancelled() => break,
            _ = r.intake.cancelled() => break,
            next = deliveries.next() => next,
        };
        match next {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(topic = %r.topic, error = %e, "store error while consuming; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(Ok(delivery)) => {
                let decoded = match &delivery.record {
                    Ok(raw) => raw.decode::<E>().map_err(|e| e.to_string()),
                    Err(u) => Err(u.error.clone()),
                };
                r.member
                    .handle_delivery(delivery, decoded, &*r.store, &r.source)
                    .await;
            }
        }
    }
}
