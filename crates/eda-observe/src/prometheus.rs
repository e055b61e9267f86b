//! A Prometheus recorder with eda's buckets, on `metrics-exporter-prometheus`.

use std::net::SocketAddr;
use std::sync::Arc;

use eda_core::observe::STORE_APPEND_BATCH;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::local::Local;

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
    /// The listener could not be opened (e.g. the address is taken).
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address of [`PrometheusExporter::listen`].
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Bucket bounds given to [`PrometheusExporter::buckets`] are empty, not strictly
    /// increasing, or not numbers.
    #[error(
        "bucket bounds for {matcher} must be a non-empty, strictly increasing list of numbers: {bounds:?}"
    )]
    InvalidBuckets {
        /// The histograms they were for.
        matcher: String,
        /// The bounds as given.
        bounds: Vec<f64>,
    },
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
    buckets: Vec<(Matcher, Arc<[f64]>)>,
    global_labels: indexmap::IndexMap<String, String>,
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
        Self {
            builder: PrometheusBuilder::new(),
            buckets: vec![
                (
                    Matcher::Full(STORE_APPEND_BATCH.into()),
                    Arc::from(BATCH_BUCKETS),
                ),
                (
                    Matcher::Suffix("_seconds".into()),
                    Arc::from(DURATION_BUCKETS),
                ),
            ],
            global_labels: indexmap::IndexMap::new(),
            listen: None,
        }
    }

    /// Also serves the metrics over HTTP on `address` (`GET /metrics`, or any path).
    pub fn listen(mut self, address: SocketAddr) -> Self {
        self.listen = Some(address);
        self
    }

    /// Adds a label to every metric (service name, instance, ...).
    pub fn global_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        self.builder = self.builder.add_global_label(name.clone(), value.clone());
        self.global_labels.insert(name, value);
        self
    }

    /// Bucket bounds for your own histograms whose names `matcher` matches (checked
    /// before eda's: `*_seconds` get [`DURATION_BUCKETS`]). Histograms with bounds are
    /// counted into their buckets as they are recorded; the others are summaries.
    /// [`install`](Self::install) refuses bounds that are empty or not strictly
    /// increasing ([`PrometheusError::InvalidBuckets`]).
    pub fn buckets(mut self, matcher: Matcher, bounds: &[f64]) -> Self {
        self.buckets.insert(0, (matcher, Arc::from(bounds)));
        self
    }

    /// Other settings of the underlying builder (quantiles of summaries, idle timeouts,
    /// ...), which keeps the gauges and the histograms without bucket bounds. Counters
    /// and bucketed histograms are kept by eda (a row per recording thread, summed when
    /// rendered): builder settings do not apply to them.
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
        if let Some((matcher, bounds)) = self
            .buckets
            .iter()
            .find(|(_, bounds)| bounds.is_empty() || !bounds.is_sorted_by(|a, b| a < b))
        {
            return Err(PrometheusError::InvalidBuckets {
                matcher: format!("{matcher:?}"),
                bounds: bounds.to_vec(),
            });
        }
        let listener = match self.listen {
            Some(address) => {
                Some(bind(address).map_err(|source| PrometheusError::Listen { address, source })?)
            }
            None => None,
        };
        let recorder = EdaRecorder {
            inner: self.builder.build_recorder(),
            local: Arc::new(Local::new(self.buckets, self.global_labels)),
        };
        let prometheus = Prometheus {
            handle: recorder.inner.handle(),
            local: recorder.local.clone(),
            address: listener.as_ref().and_then(|l| l.local_addr().ok()),
        };
        metrics::set_global_recorder(recorder).map_err(|_| PrometheusError::AlreadyInstalled)?;
        // Summaries are kept over a window; the upkeep rolls it.
        let upkeep = prometheus.handle.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        if let Some(listener) = listener {
            runtime.spawn(serve(listener, prometheus.clone()));
        }
        crate::describe();
        Ok(prometheus)
    }
}

fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Answers every HTTP/1 request on `listener` with the rendered metrics.
async fn serve(listener: tokio::net::TcpListener, prometheus: Prometheus) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::header::{CONTENT_TYPE, HeaderValue};

    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, mostly: wait rather than spin.
                tracing::warn!(%error, "the Prometheus listener could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let mut response =
                    hyper::Response::new(Full::new(Bytes::from(prometheus.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a /metrics connection ended with an error");
            }
        });
    }
}

/// `metrics-exporter-prometheus`'s recorder for gauges and summaries; counters and
/// histograms with bucket bounds are kept per thread (see `local.rs` for why).
struct EdaRecorder {
    inner: PrometheusRecorder,
    local: Arc<Local>,
}

impl Recorder for EdaRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.local.describe(key.as_str(), description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if self.local.bounds_for(key.as_str()).is_some() {
            self.local.describe(key.as_str(), description);
        } else {
            self.inner.describe_histogram(key, unit, description);
        }
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.local.counter(key))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match self.local.histogram(key) {
            Some(histogram) => Histogram::from_arc(histogram),
            None => self.inner.register_histogram(key, metadata),
        }
    }
}

/// The installed recorder: render its text exposition wherever you serve it.
#[derive(Clone)]
pub struct Prometheus {
    handle: PrometheusHandle,
    local: Arc<Local>,
    address: Option<SocketAddr>,
}

impl Prometheus {
    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        self.local.render(&mut text);
        text
    }

    /// Where the metrics are served, when [`listen`](PrometheusExporter::listen) was
    /// set (with the port the system chose, if it was 0).
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// The underlying `metrics-exporter-prometheus` handle: gauges and summaries
    /// (counters and histograms with bucket bounds are not in its `render`; use
    /// [`render`](Self::render)).
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }
}
