//! The processors' metrics (see `spendstream_schemas::metrics`).

use spendstream_schemas::metrics::Metric;

pub const RECORDS_TOTAL: Metric = Metric::counter(
    "spendstream_processor_records_total",
    &["outcome"],
    "Log entries the processors handled, by outcome (written, dead_lettered, replay_skipped, abandoned_on_revoke).",
);
pub const DEAD_LETTERS_TOTAL: Metric = Metric::counter(
    "spendstream_processor_dead_letters_total",
    &[],
    "Dead letters stored (records no sink may hold, with their reasons).",
);
pub const BATCH_SECONDS: Metric = Metric::histogram(
    "spendstream_processor_batch_seconds",
    &[],
    "Time to handle one batch: validate, every sink, the offset commit.",
);
pub const BATCH_RECORDS: Metric = Metric::histogram(
    "spendstream_processor_batch_records",
    &[],
    "Log entries per processor batch.",
);
pub const LAG_RECORDS: Metric = Metric::gauge(
    "spendstream_processor_lag_records",
    &["group", "partition"],
    "Entries of a log partition after the group's committed offset as this processor knows it (every 5 s; with several processors the lowest per partition is its owner's).",
);
pub const SINK_WRITE_SECONDS: Metric = Metric::histogram(
    "spendstream_sink_write_seconds",
    &["sink"],
    "Time for a sink to take one batch, retries included.",
);
pub const FX_UNCONVERTED_TOTAL: Metric = Metric::counter(
    "spendstream_processor_fx_unconverted_total",
    &["currency", "reason"],
    "Records written without a base-currency amount, by their currency and why (missing_rate, overflow): load the rates (docs/fx.md).",
);

/// The metrics this crate declares.
pub const ALL: &[Metric] = &[
    RECORDS_TOTAL,
    DEAD_LETTERS_TOTAL,
    BATCH_SECONDS,
    BATCH_RECORDS,
    LAG_RECORDS,
    SINK_WRITE_SECONDS,
    FX_UNCONVERTED_TOTAL,
];
