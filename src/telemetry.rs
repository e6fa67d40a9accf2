//! Logs and traces: log lines to stderr (JSON when not on a terminal), and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set,
//! every span over OTLP/HTTP in batches, with W3C trace context taken from
//! requests and carried through the log (`spendstream_schemas::trace`).

use crate::cli::LogFormat;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Longest the last export of spans may take at exit.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What must be flushed before the process exits.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued, for at most [`FLUSH_TIMEOUT`]: an
    /// unreachable collector must not hold the exit past the grace period
    /// an orchestrator allows.
    pub async fn shutdown(self) {
        if let Some(provider) = self.traces {
            // Blocks until the batch task has exported: off the runtime's
            // worker threads, which that task needs.
            let flush = tokio::task::spawn_blocking(move || provider.shutdown());
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
        }
    }
}

/// Whether the environment asks for traces.
pub fn traces_wanted() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Installs the global subscriber; `service` names this process in traces
/// unless `OTEL_SERVICE_NAME` does. Call within the tokio runtime.
pub fn init(format: LogFormat, service: &str) -> anyhow::Result<Telemetry> {
    // Log lines and traces are filtered apart: quiet logs keep the spans.
    let filter = |env: &str| {
        EnvFilter::try_from_env(env).unwrap_or_else(|_| EnvFilter::new(
            "info,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn,delta_kernel=warn,datafusion=warn",
        ))
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = if json {
        lines.json().flatten_event(true).boxed()
    } else {
        lines.boxed()
    }
    .with_filter(filter("SPENDSTREAM_LOG_LEVEL"));
    let traces = if traces_wanted() {
        Some(tracer_provider(service)?)
    } else {
        None
    };
    let otel = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("spendstream"))
            .with_filter(filter("SPENDSTREAM_TRACE_LEVEL"))
    });
    tracing_subscriber::registry().with(lines).with(otel).init();
    Ok(Telemetry { traces })
}

fn tracer_provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    use anyhow::Context as _;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("cannot export traces to OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(provider)
}
