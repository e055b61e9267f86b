//! A Prometheus recorder with eda's buckets, on `metrics-exporter-prometheus`.

use std::net::SocketAddr;

use eda_core::observe::STORE_APPEND_BATCH;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds (seconds) of every `*_seconds` histogram: 10 µs to 30 s, so an
/// in-process handler and a slow store round trip both land in a bucket of their own.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket bounds of `eda_store_append_batch_size`.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// Installing the exporter failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrometheusError {
    /// Another recorder is installed already (there is one per process).
    #[error("a metrics recorder is already installed")]
    AlreadyInstalled,
    /// `install` was called outside a tokio runtime.
    #[error("the Prometheus exporter needs a tokio runtime: call `install` inside one")]
    NoRuntime,
    /// The exporter could not be built (e.g. the listen address is taken).
    #[error("cannot build the Prometheus exporter: {0}")]
    Build(String),
}

/// Builds and installs the process's Prometheus recorder.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use eda_observe::PrometheusExporter;
///
/// // No listener: render `/metrics` in your own HTTP route with `prometheus.render()`.
/// let prometheus = PrometheusExporter::new().global_label("service", "shop").install()?;
/// metrics::counter!(eda_observe::names::EVENTS_PUBLISHED, "topic" => "t", "type" => "e")
///     .increment(1);
/// // Global labels come first.
/// assert!(prometheus.render().contains(r#"eda_events_published_total{service="shop",topic="t",type="e"} 1"#));
/// # Ok(()) }
/// ```
#[must_use]
pub struct PrometheusExporter {
    builder: PrometheusBuilder,
    listen: Option<SocketAddr>,
}

impl Default for PrometheusExporter {
    fn default() -> Self {
        Self::new()
    }
}

impl PrometheusExporter {
    /// A recorder with eda's histogram buckets and no listener.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(STORE_APPEND_BATCH.into()), BATCH_BUCKETS)
            })
            .expect("the bucket lists are not empty");
        Self {
            builder,
            listen: None,
        }
    }

    /// Also serves `GET /metrics` (any path, in fact) over HTTP on `address`.
    pub fn listen(mut self, address: SocketAddr) -> Self {
        self.listen = Some(address);
        self
    }

    /// Adds a label to every metric (service name, instance, ...).
    pub fn global_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.builder = self.builder.add_global_label(name, value);
        self
    }

    /// Other settings of the underlying builder (buckets of your own metrics, idle
    /// timeouts, ...).
    pub fn with_builder(mut self, f: impl FnOnce(PrometheusBuilder) -> PrometheusBuilder) -> Self {
        self.builder = f(self.builder);
        self
    }

    /// Installs the recorder as the process's global one, describes eda's metrics, and
    /// starts the listener (if any) and the recorder's upkeep on the current runtime.
    /// Install it before building the bus: the bus registers its metrics as it goes.
    pub fn install(self) -> Result<Prometheus, PrometheusError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| PrometheusError::NoRuntime)?;
        let _entered = runtime.enter();
        let (recorder, exporter) = match self.listen {
            Some(address) => {
                let (recorder, exporter) = self
                    .builder
                    .with_http_listener(address)
                    .build()
                    .map_err(|e| PrometheusError::Build(e.to_string()))?;
                (recorder, Some(exporter))
            }
            None => (self.builder.build_recorder(), None),
        };
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|_| PrometheusError::AlreadyInstalled)?;
        if let Some(exporter) = exporter {
            runtime.spawn(async move {
                if let Err(e) = exporter.await {
                    tracing::error!(error = ?e, "the Prometheus listener stopped");
                }
            });
        } else {
            // Histograms are summarised over a window; the upkeep rolls it.
            let upkeep = handle.clone();
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
        }
        crate::describe();
        Ok(Prometheus {
            handle,
            address: self.listen,
        })
    }
}

/// The installed recorder: render its text exposition wherever you serve it.
#[derive(Clone)]
pub struct Prometheus {
    handle: PrometheusHandle,
    address: Option<SocketAddr>,
}

impl Prometheus {
    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Where `/metrics` is served, when [`listen`](PrometheusExporter::listen) was set.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// The underlying handle.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }
}
