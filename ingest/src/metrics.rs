//! The ingest edge's metrics (see `spendstream_schemas::metrics`).

use spendstream_schemas::metrics::Metric;

pub const RECORDS_TOTAL: Metric = Metric::counter(
    "spendstream_ingest_records_total",
    &["outcome", "code"],
    "Records of ingest requests, by outcome (accepted, rejected) and, for rejected ones, error code.",
);
pub const BODY_BYTES_TOTAL: Metric = Metric::counter(
    "spendstream_ingest_body_bytes_total",
    &[],
    "Request body bytes read by ingest, after decompression.",
);
pub const IDEMPOTENT_REPLAYS_TOTAL: Metric = Metric::counter(
    "spendstream_ingest_idempotent_replays_total",
    &[],
    "Requests answered with the stored answer of an earlier request with the same Idempotency-Key.",
);
pub const LOG_APPEND_SECONDS: Metric = Metric::histogram(
    "spendstream_log_append_seconds",
    &[],
    "Time for the log to write one append (a group of requests' records), from the start of its write; its preparation before it (partitioning, compression) is not included unless it failed.",
);
pub const LOG_APPEND_RECORDS: Metric = Metric::histogram(
    "spendstream_log_append_records",
    &[],
    "Records per log append.",
);

/// The metrics this crate declares.
pub const ALL: &[Metric] = &[
    RECORDS_TOTAL,
    BODY_BYTES_TOTAL,
    IDEMPOTENT_REPLAYS_TOTAL,
    LOG_APPEND_SECONDS,
    LOG_APPEND_RECORDS,
];
