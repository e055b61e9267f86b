//! Observability for [eda](https://docs.rs/eda): metrics, backlog gauges, Prometheus and
//! OpenTelemetry.
//!
//! The engine and the stores record through the [`metrics`] facade and open `tracing`
//! spans on their own; this crate makes that useful:
//!
//! * [`describe`] gives every eda metric its help text and unit;
//! * [`PrometheusExporter`] (feature `prometheus`) installs a recorder with buckets for
//!   µs-to-seconds latencies and serves `/metrics`, or renders it into your own route;
//! * [`BacklogSampler`] copies [`Bus::backlog`](eda_dispatch::Bus::backlog) into the
//!   `eda_backlog{topic, group}` gauge (ring lag in process, consumer lag in stores);
//! * [`OtelPropagation`] (feature `opentelemetry`) writes the publishing span's context
//!   into each event and makes each `eda.handle` span its child — across tasks, and
//!   across processes through any store, since the context travels in the event;
//! * [`OtlpTracing`] (feature `otlp`) sends the spans to an OpenTelemetry collector.
//!
//! Metric names and labels are in [`names`] and `docs/observability.md`.
//!
//! ```no_run
//! # #[cfg(all(feature = "prometheus", feature = "opentelemetry"))]
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use eda_dispatch::Bus;
//! use eda_observe::{BacklogSampler, BusBuilderExt as _, PrometheusExporter};
//!
//! // The recorder first: the bus registers its metrics as it creates topics and groups.
//! let prometheus = PrometheusExporter::new()
//!     .listen("127.0.0.1:9464".parse()?)
//!     .install()?;
//! let bus = Bus::builder().opentelemetry().build();
//! let _sampler = BacklogSampler::spawn(bus.clone(), Duration::from_secs(5));
//! println!("metrics at http://{}/metrics", prometheus.address().unwrap());
//! # Ok(()) }
//! # #[cfg(not(all(feature = "prometheus", feature = "opentelemetry")))] fn main() {}
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backlog;
mod describe;
#[cfg(feature = "prometheus")]
mod local;
#[cfg(feature = "opentelemetry")]
mod otel;
#[cfg(feature = "otlp")]
mod otlp;
#[cfg(feature = "prometheus")]
mod prometheus;

pub use backlog::BacklogSampler;
pub use describe::describe;
/// The names of the metrics eda records (re-exported from `eda-core`).
pub use eda_core::observe as names;
#[cfg(feature = "prometheus")]
pub use metrics_exporter_prometheus::Matcher;
#[cfg(feature = "opentelemetry")]
pub use otel::{BusBuilderExt, OtelPropagation};
#[cfg(feature = "otlp")]
pub use otlp::{OtlpError, OtlpGuard, OtlpTracing};
#[cfg(feature = "prometheus")]
pub use prometheus::{DURATION_BUCKETS, Prometheus, PrometheusError, PrometheusExporter};
