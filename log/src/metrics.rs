//! The log backends' metrics (see `spendstream_schemas::metrics`).

use spendstream_schemas::metrics::Metric;

pub const KAFKA_REBALANCES_TOTAL: Metric = Metric::counter(
    "spendstream_kafka_rebalances_total",
    &["kind"],
    "Kafka consumer-group rebalances this member took part in, by kind (assign, revoke).",
);
pub const KAFKA_QUEUE_FULL_TOTAL: Metric = Metric::counter(
    "spendstream_kafka_queue_full_total",
    &[],
    "Appends refused because librdkafka's producer queue was full (answered 503).",
);

/// The metrics this crate declares.
pub const ALL: &[Metric] = &[KAFKA_REBALANCES_TOTAL, KAFKA_QUEUE_FULL_TOTAL];
