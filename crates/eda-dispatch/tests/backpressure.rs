//! A stalled subscriber never makes memory grow: its queue is bounded, `try_publish`
//! reports it full at once, and `publish` gives up after the dispatch timeout.
//! Its own test binary, because it installs a counting global allocator.

mod common;

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use cap::Cap;
use common::order;
use eda_core::{Context, Envelope};
use eda_dispatch::{Bus, PublishError, SubscribeOptions};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

#[tokio::test(start_paused = true)]
async fn stalled_subscriber_keeps_memory_bounded() {
    let bus = Bus::builder()
        .queue_capacity(1024)
        .dispatch_timeout(Duration::from_secs(5))
        .build();
    let (stall_tx, stall_rx) = tokio::sync::watch::channel(false);
    let sub = bus
        .subscribe_with(
            SubscribeOptions::new().name("stalled").no_timeout(),
            move |_e: Arc<Envelope<common::OrderCreated>>, _c: Context| {
                let mut release = stall_rx.clone();
                async move {
                    let _ = release.wait_for(|go| *go).await;
                    Ok(())
                }
            },
        )
        .unwrap();

    // Fill the queue (plus the one event the stalled handler holds).
    let mut accepted = 0u64;
    while bus.try_publish(order(accepted)).is_ok() {
        accepted += 1;
        if accepted == 1 {
            // Let the subscriber take the first event and stall on it.
            tokio::task::yield_now().await;
        }
        assert!(accepted <= 2000, "queue does not look bounded");
    }
    assert_eq!(sub.queue_len(), 1024);
    let baseline = ALLOCATOR.allocated();

    let mut full = 0u64;
    for i in 0..1_000_000u64 {
        match bus.try_publish(order(i)) {
            Err(PublishError::Full { subscription, .. }) => {
                assert_eq!(subscription, "stalled");
                full += 1;
            }
            other => panic!("expected Full, got {other:?}"),
        }
    }
    let after = ALLOCATOR.allocated();
    assert_eq!(full, 1_000_000);
    assert_eq!(sub.queue_len(), 1024, "queue length stays at its bound");
    // 1,000,000 refused events leave nothing behind: allow 64 KiB of noise
    // (an unbounded queue would hold ~100 MB here).
    assert!(
        after.saturating_sub(baseline) < 64 * 1024,
        "memory grew by {} bytes",
        after.saturating_sub(baseline)
    );

    // publish waits the dispatch timeout (on tokio's paused clock), then fails typed.
    let start = tokio::time::Instant::now();
    let err = bus.publish(order(7)).await.unwrap_err();
    assert!(
        matches!(err, PublishError::Timeout { waited, ref subscription, .. }
            if waited == Duration::from_secs(5) && subscription == "stalled"),
        "{err:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    // Release the subscriber: everything accepted is handled, nothing more.
    stall_tx.send(true).unwrap();
    let report = bus.shutdown(Duration::from_secs(60)).await;
    assert!(report.drained);
    assert_eq!(report.stats.deliveries, accepted);
    assert_eq!(report.stats.delivered, accepted);
    assert_eq!(
        report.stats.published, accepted,
        "refused publishes are not counted"
    );
}
