//! One trace from publisher to handler: `eda.handle` is a child of `eda.publish`, which is
//! a child of the publisher's own span — in process, and through every store (two buses
//! on one store: the only link between them is what the store carried).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use eda_core::{Context, Envelope, Event, EventStore};
use eda_dispatch::Bus;
use eda_observe::BusBuilderExt as _;
use opentelemetry::trace::{SpanId, TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context as OtelContext, KeyValue, baggage::BaggageExt as _};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::sync::mpsc;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Traced {
    case: String,
}
impl Event for Traced {
    const TYPE: &'static str = "observe.traced";
}

/// The process's tracing pipeline: spans go to an in-memory exporter; the propagator
/// carries W3C trace context and baggage.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("eda-observe-test")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]),
        );
        exporter
    })
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Publishes one event on `publisher` inside a span of the test's own, and checks the
/// spans the handler on `consumer` ran in.
async fn one_trace(case: &str, publisher: Bus, consumer: Bus) {
    let exporter = exporter();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = consumer
        .subscribe(move |event: Arc<Envelope<Traced>>, _ctx: Context| {
            let tx = tx.clone();
            async move {
                let cx = tracing::Span::current().context();
                let tenant = cx.baggage().get("tenant").map(|v| v.to_string());
                let _ = tx.send((
                    event.payload.case.clone(),
                    cx.span().span_context().clone(),
                    tenant,
                ));
                Ok(())
            }
        })
        .unwrap();

    let request = tracing::info_span!("test.request", case);
    let baggage = OtelContext::current().with_baggage(vec![KeyValue::new("tenant", "acme")]);
    let _ = request.set_parent(baggage);
    let id = publisher
        .publish(Traced {
            case: case.to_owned(),
        })
        .instrument(request.clone())
        .await
        .unwrap();
    let request_cx = request.context().span().span_context().clone();
    drop(request);

    let (got, handle_cx, tenant) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{case}: the handler did not run"))
        .unwrap();
    assert_eq!(got, case);
    assert_eq!(
        tenant.as_deref(),
        Some("acme"),
        "{case}: baggage travels with the event"
    );
    assert_eq!(
        handle_cx.trace_id(),
        request_cx.trace_id(),
        "{case}: one trace"
    );

    let id = id.to_string();
    let mut spans = Vec::new();
    eda_testkit::wait_until("the publish and handle spans", async || {
        spans = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| attribute(s, "event_id").as_deref() == Some(id.as_str()))
            .collect();
        spans.iter().any(|s| s.name == "eda.handle")
    })
    .await;
    let publish = spans
        .iter()
        .find(|s| s.name == "eda.publish")
        .unwrap_or_else(|| panic!("{case}: no eda.publish span"));
    let handle = spans.iter().find(|s| s.name == "eda.handle").unwrap();
    assert_eq!(publish.span_context.trace_id(), request_cx.trace_id());
    assert_eq!(
        publish.parent_span_id,
        request_cx.span_id(),
        "{case}: publish under the request"
    );
    assert_eq!(handle.span_context.trace_id(), request_cx.trace_id());
    assert_eq!(
        handle.parent_span_id,
        publish.span_context.span_id(),
        "{case}: handle is a child of publish"
    );
    assert_ne!(handle.parent_span_id, SpanId::INVALID);
    assert_eq!(
        handle.span_context, handle_cx,
        "{case}: the handler ran inside eda.handle"
    );
    assert_eq!(attribute(handle, "attempt").as_deref(), Some("1"));
    assert_eq!(
        attribute(handle, "event_type").as_deref(),
        Some(Traced::TYPE)
    );
    assert_eq!(
        attribute(publish, "event_type").as_deref(),
        Some(Traced::TYPE)
    );
}

fn unique_topic() -> String {
    format!("observe.traced.{:08x}", fastrand::u32(..))
}

fn durable_bus(topic: &str, store: impl EventStore) -> Bus {
    Bus::builder()
        .route::<Traced>(topic)
        .durable_topic(topic, store)
        .opentelemetry()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_handle_spans_are_children_of_publish_spans() {
    let bus = Bus::builder().opentelemetry().build();
    one_trace("in-process", bus.clone(), bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_crosses_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let topic = unique_topic();
    let publisher = durable_bus(
        &topic,
        eda_store_sqlite::SqliteStore::open(&path).await.unwrap(),
    );
    let consumer = durable_bus(
        &topic,
        eda_store_sqlite::SqliteStore::open(&path).await.unwrap(),
    );
    one_trace("sqlite", publisher, consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_crosses_redis() {
    let url = eda_testkit::backend::redis_url();
    if eda_testkit::backend::require("the_trace_crosses_redis", &url)
        .await
        .is_none()
    {
        return;
    }
    let topic = unique_topic();
    let connect = async || {
        eda_store_redis::RedisStreamStore::connect(url.clone())
            .await
            .unwrap()
    };
    let publisher = durable_bus(&topic, connect().await);
    let consumer = durable_bus(&topic, connect().await);
    one_trace("redis", publisher, consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_crosses_kafka() {
    let brokers = eda_testkit::backend::kafka_brokers();
    if eda_testkit::backend::require("the_trace_crosses_kafka", &brokers)
        .await
        .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic();
    let connect = async || {
        let coordination = eda_store_sqlite::SqliteStore::open(dir.path().join("coordination.db"))
            .await
            .unwrap();
        eda_store_kafka::KafkaStore::builder([brokers.clone()], Arc::new(coordination))
            .partitions(2)
            .connect()
            .await
            .unwrap()
    };
    let publisher = durable_bus(&topic, connect().await);
    let consumer = durable_bus(&topic, connect().await);
    one_trace("kafka", publisher, consumer).await;
}
