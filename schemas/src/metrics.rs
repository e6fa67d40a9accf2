//! How every crate declares its metrics: a name, a kind, its labels and a
//! description, in one list per crate (`<crate>/src/metrics.rs`). The lists
//! give `/metrics` its `# HELP` lines and `docs/metrics.md` its table (a
//! test holds the two to each other), and the errors counter by stage every
//! place that retries or drops counts in (Vector's instrumentation spec).

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As Prometheus' `# TYPE` line names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric's declaration.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Metric {
    const fn new(
        name: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            labels,
            help,
        }
    }

    pub const fn counter(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self::new(name, Kind::Counter, labels, help)
    }

    pub const fn gauge(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self::new(name, Kind::Gauge, labels, help)
    }

    pub const fn histogram(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self::new(name, Kind::Histogram, labels, help)
    }

    /// Gives the installed recorder this metric's description.
    pub fn describe(&self) {
        match self.kind {
            Kind::Counter => metrics::describe_counter!(self.name, self.help),
            Kind::Gauge => metrics::describe_gauge!(self.name, self.help),
            Kind::Histogram => metrics::describe_histogram!(self.name, self.help),
        }
    }
}

/// Histograms whose names end in this count things (records, rows), and
/// get buckets for counts instead of seconds.
pub const COUNT_SUFFIX: &str = "_records";

/// Buckets of the count histograms.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 50_000.0,
];

pub const ERRORS_TOTAL: Metric = Metric::counter(
    "spendstream_errors_total",
    &["stage", "error_type"],
    "Failures of a step that is retried or whose work is dropped, by stage \
     (log_append, idempotency, log_read, log_commit, sink_lake, sink_clickhouse, \
     dead_letters, compaction, log_retention, report_state, revocations, jwks, batches, fx_rates) \
     and error type.",
);

/// The metrics this crate declares.
pub const ALL: &[Metric] = &[ERRORS_TOTAL];

/// Counts one failure of `stage`; `error_type` is a short, fixed word
/// (an error's `kind()`), never a message.
pub fn error(stage: &'static str, error_type: &'static str) {
    metrics::counter!(ERRORS_TOTAL.name, "stage" => stage, "error_type" => error_type).increment(1);
}
