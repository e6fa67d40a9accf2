//! The HTTP servers' metrics (see `spendstream_schemas::metrics`).

use spendstream_schemas::metrics::Metric;

pub const REQUESTS_TOTAL: Metric = Metric::counter(
    "spendstream_http_requests_total",
    &["method", "route", "status"],
    "HTTP requests answered, by method, route template and status.",
);
pub const REQUEST_DURATION_SECONDS: Metric = Metric::histogram(
    "spendstream_http_request_duration_seconds",
    &["method", "route", "status"],
    "Time from a request's head to its answer's head, by method, route template and status.",
);
pub const CONNECTIONS_REFUSED_TOTAL: Metric = Metric::counter(
    "spendstream_http_connections_refused_total",
    &[],
    "Connections closed on arrival because --max-connections were open.",
);

pub const QUOTA_EXCEEDED_TOTAL: Metric = Metric::counter(
    "spendstream_http_quota_exceeded_total",
    &["api"],
    "Requests refused with 429 quota_exceeded (their tenant was over its rate limit), by API (ingest, query).",
);

/// The metrics this crate declares.
pub const ALL: &[Metric] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    CONNECTIONS_REFUSED_TOTAL,
    QUOTA_EXCEEDED_TOTAL,
];
