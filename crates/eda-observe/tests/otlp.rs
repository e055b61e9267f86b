//! `OtlpTracing` sends `eda.publish` and `eda.handle` over OTLP/HTTP: a receiver in the
//! test (no collector runs on this machine) decodes the requests with the reference
//! protobuf types of `opentelemetry-proto` and checks one trace, handle under publish.
#![cfg(feature = "otlp")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_core::{Context, Envelope, Event};
use eda_dispatch::Bus;
use eda_observe::{BusBuilderExt as _, OtlpTracing};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Shipped {
    parcel: u32,
}
impl Event for Shipped {
    const TYPE: &'static str = "otlp.shipped";
}

#[derive(Default)]
struct Received {
    /// (service.name, span)
    spans: Vec<(String, Span)>,
    paths: Vec<String>,
}

/// Serves `POST /v1/traces` (HTTP/1.1, protobuf bodies) and keeps what arrives.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).await.unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let request = ExportTraceServiceRequest::decode(body.as_slice())
                        .expect("an OTLP protobuf body");
                    {
                        let mut store = store.lock().unwrap();
                        store.paths.push(path);
                        for resource in request.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|kv| kv.key == "service.name")
                                .and_then(|kv| kv.value.as_ref())
                                .map(|v| format!("{:?}", v.value))
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    store.spans.push((service.clone(), span));
                                }
                            }
                        }
                    }
                    reader
                        .get_mut()
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                        )
                        .await
                        .unwrap();
                }
            });
        }
    });
    (address, received)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{:?}", v.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_as_one_trace() {
    let (address, received) = receiver().await;
    let otlp = OtlpTracing::new()
        .endpoint(format!("http://{address}/"))
        .service_name("otlp-test")
        .timeout(Duration::from_secs(5))
        .install()
        .unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otlp.layer()))
        .unwrap();

    let bus = Bus::builder().opentelemetry().build();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(move |e: Arc<Envelope<Shipped>>, _c: Context| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.payload.parcel);
                Ok(())
            }
        })
        .unwrap();
    let id = bus.publish(Shipped { parcel: 7 }).await.unwrap();
    assert_eq!(rx.recv().await, Some(7));
    bus.shutdown(Duration::from_secs(5)).await;
    // Blocking: the batch goes out on the exporter's thread.
    tokio::task::spawn_blocking(move || otlp.shutdown())
        .await
        .unwrap()
        .unwrap();

    let received = received.lock().unwrap();
    assert!(
        received.paths.iter().all(|p| p == "/v1/traces"),
        "{:?}",
        received.paths
    );
    let event_id = id.to_string();
    let ours: Vec<&(String, Span)> = received
        .spans
        .iter()
        .filter(|(_, s)| attribute(s, "event_id").is_some_and(|v| v.contains(&event_id)))
        .collect();
    let publish = ours
        .iter()
        .find(|(_, s)| s.name == "eda.publish")
        .unwrap_or_else(|| panic!("no eda.publish among {:?}", received.spans));
    let handle = ours
        .iter()
        .find(|(_, s)| s.name == "eda.handle")
        .unwrap_or_else(|| panic!("no eda.handle among {:?}", received.spans));
    assert!(
        publish.0.contains("otlp-test"),
        "service name: {}",
        publish.0
    );
    assert_eq!(handle.1.trace_id, publish.1.trace_id, "one trace");
    assert_eq!(
        handle.1.parent_span_id, publish.1.span_id,
        "handle under publish"
    );
    assert_eq!(handle.1.trace_id.len(), 16);
}
