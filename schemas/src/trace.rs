//! W3C trace context across the log: an HTTP request's `traceparent` (or
//! the edge's own span) is written into each log record's headers, and the
//! processors' spans continue it, so one trace shows a record from the edge
//! to the sinks. Everything here is a no-op unless traces are exported
//! (the binary installs the propagator and the OpenTelemetry layer only
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set).

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header (and log-record header) carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The current span's context as a `traceparent` value, when traces are
/// exported.
pub fn current_traceparent() -> Option<String> {
    struct One(Option<String>);
    impl Injector for One {
        fn set(&mut self, key: &str, value: String) {
            if key == TRACEPARENT {
                self.0 = Some(value);
            }
        }
    }
    let context = tracing::Span::current().context();
    let mut carrier = One(None);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.0
}

/// Makes `span` a child of the remote span `traceparent` names, when it is
/// a valid one and traces are exported.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    struct One<'a>(Option<&'a str>);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.filter(|_| key == TRACEPARENT)
        }
        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT]
        }
    }
    if traceparent.is_none() {
        return;
    }
    let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&One(traceparent)));
    if context.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer: nothing to continue.
        let _ = span.set_parent(context);
    }
}
