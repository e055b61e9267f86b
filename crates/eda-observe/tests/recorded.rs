//! What the bus records for synchronous subscribers, and that `observability(false)`
//! records nothing. Each test renders its own Prometheus recorder, installed for its
//! thread only (a current-thread runtime, so every handle registers on it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use eda_core::{Context, Envelope, Event, HandlerError};
use eda_dispatch::{Bus, SubscribeOptions};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Step {
    n: u32,
}
impl Event for Step {
    const TYPE: &'static str = "recorded.step";
}

/// The value of the sample `line_start` (metric name and labels), if present.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn local_recorder() -> (
    metrics_exporter_prometheus::PrometheusRecorder,
    PrometheusHandle,
) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

#[tokio::test(flavor = "current_thread")]
async fn synchronous_subscribers_record_outcomes_durations_and_end_to_end() {
    let (recorder, prometheus) = local_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let bus = Bus::new();
    // n % 3: 0 succeeds, 1 fails, 2 panics.
    let _sub = bus
        .subscribe_sync_with(
            SubscribeOptions::new().name("inline"),
            |e: &Envelope<Step>, _c: &Context| match e.payload.n % 3 {
                0 => Ok(()),
                1 => Err(HandlerError::msg("refused")),
                _ => panic!("sync handler panics"),
            },
        )
        .unwrap();
    for n in 0..9 {
        let result = bus.try_publish(Step { n });
        assert_eq!(result.is_ok(), n % 3 == 0, "{n}: {result:?}");
    }
    let text = prometheus.render();
    let value =
        |line: &str| sample(&text, line).unwrap_or_else(|| panic!("no `{line}` in\n{text}"));
    let handled = |outcome: &str| {
        value(&format!(
            r#"eda_events_handled_total{{group="inline",outcome="{outcome}"}}"#
        ))
    };
    assert_eq!(handled("ack"), 3.0);
    assert_eq!(handled("nack"), 3.0);
    assert_eq!(handled("panic"), 3.0);
    assert_eq!(
        value(r#"eda_handle_duration_seconds_count{group="inline"}"#),
        9.0
    );
    assert_eq!(
        value(r#"eda_end_to_end_seconds_count{group="inline"}"#),
        3.0
    );
    assert_eq!(
        value(r#"eda_events_published_total{topic="recorded.step",type="recorded.step"}"#),
        9.0
    );
}

#[tokio::test(flavor = "current_thread")]
async fn observability_off_records_nothing_and_still_delivers() {
    let (recorder, prometheus) = local_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let bus = Bus::builder().observability(false).build();
    let seen = Arc::new(AtomicU32::new(0));
    let _sync = bus
        .subscribe_sync_with(SubscribeOptions::new().name("quiet-sync"), {
            let seen = seen.clone();
            move |_e: &Envelope<Step>, _c: &Context| {
                seen.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .unwrap();
    let _async = bus
        .subscribe_with(SubscribeOptions::new().name("quiet-async"), {
            let seen = seen.clone();
            move |_e: Arc<Envelope<Step>>, _c: Context| {
                seen.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            }
        })
        .unwrap();
    for n in 0..5 {
        bus.publish(Step { n }).await.unwrap();
    }
    eda_testkit::wait_until("both subscribers saw every event", async || {
        seen.load(Ordering::Relaxed) == 10
    })
    .await;
    let text = prometheus.render();
    assert!(
        !text.contains("eda_"),
        "recorded with observability off:\n{text}"
    );

    // The same bus with observability on records into the same recorder: the check
    // above can fail.
    let on = Bus::new();
    let _loud = on
        .subscribe_sync_with(
            SubscribeOptions::new().name("loud"),
            |_e: &Envelope<Step>, _c: &Context| Ok(()),
        )
        .unwrap();
    on.publish(Step { n: 0 }).await.unwrap();
    let text = prometheus.render();
    assert_eq!(
        sample(
            &text,
            r#"eda_events_handled_total{group="loud",outcome="ack"}"#
        ),
        Some(1.0),
        "{text}"
    );
}
