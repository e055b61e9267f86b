//! OpenTelemetry context propagation through events.

use eda_core::{Interceptor, Metadata, PublishAttributes, TraceContext, TraceParent};
use eda_dispatch::BusBuilder;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Carries the OpenTelemetry context in events, through the globally installed
/// propagator (`opentelemetry::global::set_text_map_propagator`): W3C `traceparent` and
/// `tracestate` go to the CloudEvents distributed-tracing attributes; whatever else the
/// propagator writes (`baggage`, B3's `b3` or `x-b3-*`) goes to free headers, named
/// with their letters and digits only (`x-b3-traceid` → `xb3traceid`), as CloudEvents
/// extension names must be.
///
/// * On publish (as an [`Interceptor`], inside the engine's `eda.publish` span) it
///   injects the current span's context.
/// * On handle (as a [`TraceContext`]) it extracts the context and makes it the parent
///   of the attempt's `eda.handle` span.
///
/// Install both halves with [`BusBuilderExt::opentelemetry`]. The `tracing` subscriber
/// needs a `tracing_opentelemetry` layer for spans to become OpenTelemetry spans.
#[derive(Clone, Copy, Debug, Default)]
pub struct OtelPropagation;

impl Interceptor for OtelPropagation {
    fn on_publish(&self, attributes: &mut PublishAttributes<'_>) {
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            // No OpenTelemetry layer (or no span): keep the engine's trace context.
            return;
        }
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&cx, &mut MetadataInjector(attributes.metadata));
        });
    }
}

impl TraceContext for OtelPropagation {
    fn link(&self, span: &tracing::Span, metadata: &Metadata) {
        let carrier = MetadataExtractor::new(metadata);
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        if cx.span().span_context().is_valid() {
            // Fails only without an OpenTelemetry layer, where there is nothing to link.
            let _ = span.set_parent(cx);
        }
    }
}

/// Adds [`OtelPropagation`] to a bus.
pub trait BusBuilderExt {
    /// Propagates the OpenTelemetry context through every event of this bus.
    fn opentelemetry(self) -> Self;
}

impl BusBuilderExt for BusBuilder {
    fn opentelemetry(self) -> Self {
        self.interceptor(OtelPropagation)
            .trace_context(OtelPropagation)
    }
}

/// The header a propagator key maps to: its ASCII letters and digits, lowercased.
fn header_name(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

struct MetadataInjector<'a>(&'a mut Metadata);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => match value.parse::<TraceParent>() {
                Ok(tp) => self.0.traceparent = Some(tp),
                Err(e) => tracing::debug!(error = %e, "propagator wrote an invalid traceparent"),
            },
            "tracestate" => self.0.tracestate = (!value.is_empty()).then_some(value),
            other => {
                if let Err(e) = self.0.insert_header(header_name(other), value) {
                    tracing::debug!(key = other, error = %e, "cannot carry a propagation field");
                }
            }
        }
    }
}

struct MetadataExtractor<'a> {
    metadata: &'a Metadata,
    traceparent: Option<String>,
}

impl<'a> MetadataExtractor<'a> {
    fn new(metadata: &'a Metadata) -> Self {
        Self {
            metadata,
            traceparent: metadata.traceparent.map(|tp| tp.to_string()),
        }
    }
}

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.metadata.tracestate.as_deref(),
            other => self.metadata.header(&header_name(other)),
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.metadata.headers().map(|(k, _)| k).collect();
        if self.traceparent.is_some() {
            keys.push("traceparent");
        }
        if self.metadata.tracestate.is_some() {
            keys.push("tracestate");
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_keys_become_extension_names() {
        assert_eq!(header_name("x-b3-traceid"), "xb3traceid");
        assert_eq!(header_name("baggage"), "baggage");
        let mut metadata = Metadata::default();
        let mut injector = MetadataInjector(&mut metadata);
        injector.set(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        injector.set("tracestate", "rojo=00f067aa0ba902b7".into());
        injector.set("x-b3-sampled", "1".into());
        injector.set("baggage", "tenant=acme".into());
        let extractor = MetadataExtractor::new(&metadata);
        assert_eq!(
            extractor.get("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(extractor.get("tracestate"), Some("rojo=00f067aa0ba902b7"));
        assert_eq!(extractor.get("x-b3-sampled"), Some("1"));
        assert_eq!(extractor.get("baggage"), Some("tenant=acme"));
        assert_eq!(extractor.get("missing"), None);
        let mut keys = extractor.keys();
        keys.sort_unstable();
        assert_eq!(keys, ["baggage", "traceparent", "tracestate", "xb3sampled"]);
    }
}
