//! Operations endpoints shared by every service: `/healthz` (alive),
//! `/readyz` (dependencies answer), `/metrics` (Prometheus text), and the
//! per-request metrics middleware.

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use spendstream_schemas::metrics as metrics_schema;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// How long one readiness check may take.
const READY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A readiness check: `Ok` when the dependency answers.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone, Default)]
struct OpsState {
    checks: Vec<(&'static str, ReadyCheck)>,
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix(metrics_schema::COUNT_SUFFIX.into()),
                        metrics_schema::COUNT_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (tests that build
            // several servers in one process): then that one keeps counting.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The operations routes with the given readiness checks.
pub fn router(checks: Vec<(&'static str, ReadyCheck)>) -> axum::Router {
    // Install the recorder now: metrics recorded before the first scrape
    // would otherwise be lost.
    let _ = prometheus();
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { checks })
}

/// The operations routes' part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, readyz, metrics_text))]
pub struct OpsApi;

#[utoipa::path(
    get,
    path = "/healthz",
    summary = "Liveness",
    responses(
        (status = 200, description = "Alive."),
    ),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Text exposition format."),
    ),
)]
pub async fn metrics_text() -> String {
    prometheus().render()
}

#[utoipa::path(
    get,
    path = "/readyz",
    summary = "Readiness of the log and the lake",
    responses(
        (status = 200, description = "Ready."),
        (status = 503, description = "A dependency does not answer."),
    ),
)]
async fn readyz(State(state): State<OpsState>) -> Response {
    let mut ok = true;
    let mut report = serde_json::Map::new();
    for (name, check) in &state.checks {
        // A dependency that hangs is not ready, and must not hang /readyz.
        let result = tokio::time::timeout(READY_CHECK_TIMEOUT, check())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {READY_CHECK_TIMEOUT:?}")));
        ok &= result.is_ok();
        report.insert(
            (*name).to_string(),
            match result {
                Ok(()) => json!("ok"),
                Err(e) => json!(e),
            },
        );
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if ok { "ready" } else { "not_ready" }, "checks": report})),
    )
        .into_response()
}

/// Middleware: request count and latency per route template and status.
pub async fn track_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!(crate::metrics::REQUESTS_TOTAL.name, &labels).increment(1);
    metrics::histogram!(crate::metrics::REQUEST_DURATION_SECONDS.name, &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
