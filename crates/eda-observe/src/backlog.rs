//! Samples the bus's backlog into the `eda_backlog` gauge.

use std::time::Duration;

use eda_core::observe::BACKLOG;
use eda_dispatch::Bus;
use tokio::task::JoinHandle;

/// A task that sets `eda_backlog{topic, group}` from
/// [`Bus::backlog`](eda_dispatch::Bus::backlog) every `interval` (stores are asked
/// too, so keep the interval in seconds). Stops when dropped.
///
/// The gauge is sampled rather than updated on every event: a stalled group is exactly
/// the one whose processor does not run, and its backlog must still grow on the graph.
#[must_use = "the sampler stops when dropped"]
pub struct BacklogSampler {
    task: JoinHandle<()>,
}

impl BacklogSampler {
    /// Starts sampling on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(bus: Bus, interval: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sample(&bus).await;
            }
        });
        Self { task }
    }
}

/// Sets the gauge once for every group (what the sampler does on each tick).
pub(crate) async fn sample(bus: &Bus) {
    for backlog in bus.backlog().await {
        if let Some(pending) = backlog.pending {
            metrics::gauge!(BACKLOG, "topic" => backlog.topic, "group" => backlog.group)
                .set(pending as f64);
        }
    }
}

impl Drop for BacklogSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
