//! Spans to an OpenTelemetry collector over OTLP (HTTP, protobuf).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// Sends the spans of this process (`eda.publish`, `eda.handle` and the application's
/// own) to an OpenTelemetry collector over OTLP/HTTP with protobuf bodies, in batches
/// from a background thread.
///
/// [`install`](Self::install) sets the global tracer provider and, unless
/// [`keep_propagator`](Self::keep_propagator), the W3C trace-context propagator that
/// [`OtelPropagation`](crate::OtelPropagation) uses. Add [`OtlpGuard::layer`] to your
/// `tracing` subscriber, and call [`OtlpGuard::shutdown`] before exiting so the last
/// batch is sent.
///
/// Without [`endpoint`](Self::endpoint), the standard variables apply
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`, default
/// `http://localhost:4318`); plain HTTP only (no TLS stack is compiled in).
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use eda_dispatch::Bus;
/// use eda_observe::{BusBuilderExt as _, OtlpTracing};
/// use tracing_subscriber::layer::SubscriberExt as _;
///
/// let otlp = OtlpTracing::new()
///     .endpoint("http://127.0.0.1:4318")
///     .service_name("orders")
///     .install()?;
/// tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otlp.layer()))?;
/// let bus = Bus::builder().opentelemetry().build();
/// // ... run the service ...
/// bus.shutdown(std::time::Duration::from_secs(5)).await;
/// otlp.shutdown()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct OtlpTracing {
    endpoint: Option<String>,
    service: Option<String>,
    timeout: Option<Duration>,
    keep_propagator: bool,
}

/// What can go wrong setting up or flushing the OTLP exporter.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The exporter could not be built (e.g. an invalid endpoint).
    #[error("building the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Flushing or shutting the pipeline down failed (e.g. the collector is down).
    #[error("shutting the OTLP exporter down: {0}")]
    Shutdown(#[from] opentelemetry_sdk::error::OTelSdkError),
}

impl OtlpTracing {
    /// The defaults: endpoint from the environment, service name `eda`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The collector's base URL (`/v1/traces` is appended), e.g. `http://collector:4318`.
    pub fn endpoint(mut self, base: impl Into<String>) -> Self {
        self.endpoint = Some(base.into());
        self
    }

    /// The `service.name` resource attribute (default: `OTEL_SERVICE_NAME`, else `eda`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// How long one export may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Leaves the global propagator alone (when the application installs its own, e.g.
    /// a composite with baggage or B3).
    pub fn keep_propagator(mut self) -> Self {
        self.keep_propagator = true;
        self
    }

    /// Builds the exporter and installs the global tracer provider.
    pub fn install(self) -> Result<OtlpGuard, OtlpError> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        if let Some(base) = &self.endpoint {
            exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
        }
        if let Some(timeout) = self.timeout {
            exporter = exporter.with_timeout(timeout);
        }
        let exporter = exporter.build()?;
        let service = self
            .service
            .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
            .unwrap_or_else(|| "eda".to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        if !self.keep_propagator {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        }
        Ok(OtlpGuard { provider })
    }
}

/// The installed OTLP pipeline.
#[derive(Debug)]
pub struct OtlpGuard {
    provider: SdkTracerProvider,
}

impl OtlpGuard {
    /// The `tracing` layer that turns spans into OpenTelemetry spans for this exporter.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("eda"))
    }

    /// The tracer provider (to build more tracers or layers).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Sends what is still batched.
    pub fn flush(&self) -> Result<(), OtlpError> {
        Ok(self.provider.force_flush()?)
    }

    /// Sends what is still batched and stops the exporter.
    pub fn shutdown(self) -> Result<(), OtlpError> {
        Ok(self.provider.shutdown()?)
    }
}
