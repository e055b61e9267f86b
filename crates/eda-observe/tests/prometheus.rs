//! The Prometheus exporter serves what the bus records, and `promtool` accepts it.

use std::sync::Arc;
use std::time::Duration;

use eda_core::{Context, Envelope, Event, HandlerError};
use eda_dispatch::{Bus, RetryPolicy, SubscribeOptions};
use eda_observe::{BacklogSampler, Matcher, PrometheusExporter};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Job {
    n: u32,
}
impl Event for Job {
    const TYPE: &'static str = "observe.job";
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Parked;
impl Event for Parked {
    const TYPE: &'static str = "observe.parked";
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    body.to_owned()
}

/// The value of the sample `line_start` (metric name and labels), if present.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_serves_the_bus_metrics_and_promtool_accepts_them() {
    let address = free_port();
    let prometheus = PrometheusExporter::new()
        .listen(address)
        .global_label("service", "observe-test")
        .buckets(Matcher::Full("app_batch".into()), &[1.0, 10.0])
        .install()
        .unwrap();
    assert_eq!(prometheus.address(), Some(address));
    // The application's own metrics share the recorder: a histogram with buckets of its
    // own, one without (a summary), a gauge.
    metrics::describe_histogram!("app_batch", "Items per batch.");
    metrics::describe_histogram!("app_latency", "Seconds per request.");
    metrics::describe_gauge!("app_queue_depth", "Requests waiting.");
    metrics::histogram!("app_batch").record(5.0);
    metrics::histogram!("app_latency").record(0.5);
    metrics::gauge!("app_queue_depth").set(7.0);

    let bus = Bus::builder().build();
    // n % 4: 0 ok, 1 fails once then succeeds, 2 always fails (dead letter), 3 panics once.
    let _jobs = bus
        .subscribe_with(
            SubscribeOptions::new().name("workers").retry(
                RetryPolicy::attempts(2)
                    .backoff(Duration::from_millis(1), Duration::from_millis(1)),
            ),
            |event: Arc<Envelope<Job>>, ctx: Context| async move {
                match (event.payload.n % 4, ctx.attempt()) {
                    (0, _) => Ok(()),
                    (1, 1) => Err(HandlerError::msg("first attempt fails")),
                    (1, _) => Ok(()),
                    (2, _) => Err(HandlerError::msg("always fails")),
                    (_, 1) => panic!("first attempt panics"),
                    _ => Ok(()),
                }
            },
        )
        .unwrap();
    // A group that never finishes: its backlog (one in flight, the rest waiting) grows.
    let _parked = bus
        .subscribe_with(
            SubscribeOptions::new()
                .name("parked")
                .no_timeout()
                .queue_capacity(64),
            |_event: Arc<Envelope<Parked>>, _ctx: Context| async move {
                std::future::pending::<()>().await;
                Ok(())
            },
        )
        .unwrap();
    let _sampler = BacklogSampler::spawn(bus.clone(), Duration::from_millis(20));
    for n in 0..40 {
        bus.publish(Job { n }).await.unwrap();
    }
    for _ in 0..11 {
        bus.publish(Parked).await.unwrap();
    }
    eda_testkit::wait_until("every job settled", async || {
        let stats = bus.stats();
        stats.delivered + stats.dead_lettered >= 40
    })
    .await;

    let mut text = String::new();
    eda_testkit::wait_until("the backlog gauge of the parked group", async || {
        text = scrape(address).await;
        sample(
            &text,
            r#"eda_backlog{service="observe-test",topic="observe.parked",group="parked"}"#,
        ) == Some(11.0)
    })
    .await;
    let value =
        |line: &str| sample(&text, line).unwrap_or_else(|| panic!("no `{line}` in\n{text}"));
    assert_eq!(
        value(
            r#"eda_events_published_total{service="observe-test",topic="observe.job",type="observe.job"}"#
        ),
        40.0
    );
    let handled = |outcome: &str| {
        value(&format!(
            r#"eda_events_handled_total{{service="observe-test",group="workers",outcome="{outcome}"}}"#
        ))
    };
    // ack: 10 first-time successes + 10 second attempts of n%4==1 + 10 of n%4==3.
    assert_eq!(handled("ack"), 30.0);
    assert_eq!(handled("nack"), 10.0 + 20.0);
    assert_eq!(handled("panic"), 10.0);
    assert_eq!(handled("dead_letter"), 10.0);
    assert_eq!(
        value(r#"eda_retries_total{service="observe-test",group="workers"}"#),
        30.0
    );
    assert_eq!(
        value(r#"eda_dead_letters_total{service="observe-test",group="workers",reason="failed"}"#),
        10.0
    );
    // Every attempt (ack, nack, panic) is in the histogram.
    assert_eq!(
        value(r#"eda_handle_duration_seconds_count{service="observe-test",group="workers"}"#),
        70.0
    );
    assert_eq!(
        value(r#"eda_end_to_end_seconds_count{service="observe-test",group="workers"}"#),
        30.0
    );
    assert!(
        text.contains("# HELP eda_handle_duration_seconds"),
        "{text}"
    );
    assert!(text.contains(r#"eda_handle_duration_seconds_bucket{service="observe-test",group="workers",le="0.00001"}"#), "{text}");
    assert_eq!(
        value(r#"app_batch_bucket{service="observe-test",le="1"}"#),
        0.0
    );
    assert_eq!(
        value(r#"app_batch_bucket{service="observe-test",le="10"}"#),
        1.0
    );
    // A summary's quantiles are estimates (relative error well under 1 %).
    let median = value(r#"app_latency{service="observe-test",quantile="0.5"}"#);
    assert!((median - 0.5).abs() < 0.005, "{median}");
    assert_eq!(value(r#"app_queue_depth{service="observe-test"}"#), 7.0);

    // promtool, the reference linter of the exposition format.
    let Some(promtool) = promtool() else {
        eda_testkit::backend::skip(
            "the_exporter_serves_the_bus_metrics_and_promtool_accepts_them (promtool part)",
            "promtool is not installed (Debian package `prometheus`)",
        );
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn promtool() -> Option<&'static str> {
    std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some("promtool")
}

#[tokio::test]
async fn bucket_bounds_that_are_not_increasing_are_refused() {
    for bounds in [&[][..], &[1.0, 1.0], &[2.0, 1.0], &[1.0, f64::NAN]] {
        let refused = PrometheusExporter::new()
            .buckets(Matcher::Full("app_sizes".into()), bounds)
            .install();
        assert!(
            matches!(
                refused,
                Err(eda_observe::PrometheusError::InvalidBuckets { .. })
            ),
            "{bounds:?} was accepted"
        );
    }
}
