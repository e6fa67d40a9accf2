//! The query service's metrics (see `spendstream_schemas::metrics`).

use spendstream_schemas::metrics::Metric;
use std::time::Instant;

pub const QUERY_DURATION_SECONDS: Metric = Metric::histogram(
    "spendstream_query_duration_seconds",
    &["interface", "kind", "outcome"],
    "Time to answer a query, by interface (http, pg), kind (report, sql) and outcome (ok, error).",
);
pub const REPORT_CACHE_HITS_TOTAL: Metric = Metric::counter(
    "spendstream_query_report_cache_hits_total",
    &[],
    "Reports answered from the report cache.",
);
pub const REPORT_STATE_ENTRIES: Metric = Metric::gauge(
    "spendstream_query_report_state_entries",
    &[],
    "Entries (expenses and superseded versions) the reports' current state holds (0: off or dropped).",
);

/// The metrics this crate declares.
pub const ALL: &[Metric] = &[
    QUERY_DURATION_SECONDS,
    REPORT_CACHE_HITS_TOTAL,
    REPORT_STATE_ENTRIES,
];

/// Records one query's time since `started`.
pub fn query_done(interface: &'static str, kind: &'static str, ok: bool, started: Instant) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!(
        QUERY_DURATION_SECONDS.name,
        "interface" => interface,
        "kind" => kind,
        "outcome" => outcome
    )
    .record(started.elapsed().as_secs_f64());
}
