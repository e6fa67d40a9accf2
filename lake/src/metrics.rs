//! The lake's metrics (see `spendstream_schemas::metrics`).

use spendstream_schemas::metrics::Metric;

pub const COMMITS_TOTAL: Metric = Metric::counter(
    "spendstream_lake_commits_total",
    &["operation"],
    "Commits this process made to the lake table, by operation (write, compact).",
);
pub const COMMITTED_ROWS_TOTAL: Metric = Metric::counter(
    "spendstream_lake_committed_rows_total",
    &[],
    "Rows the processors' write commits added to the lake table.",
);
pub const COMPACTED_FILES_TOTAL: Metric = Metric::counter(
    "spendstream_lake_compacted_files_total",
    &["change"],
    "Data files compaction replaced (removed) and wrote (added).",
);
pub const COMPACTION_CONFLICTS_TOTAL: Metric = Metric::counter(
    "spendstream_lake_compaction_conflicts_total",
    &[],
    "Partitions a compaction left alone because another compaction committed first.",
);
pub const VACUUMED_FILES_TOTAL: Metric = Metric::counter(
    "spendstream_lake_vacuumed_files_total",
    &[],
    "Files vacuum deleted (replaced by compaction, or never committed).",
);

/// The metrics this crate declares.
pub const ALL: &[Metric] = &[
    COMMITS_TOTAL,
    COMMITTED_ROWS_TOTAL,
    COMPACTED_FILES_TOTAL,
    COMPACTION_CONFLICTS_TOTAL,
    VACUUMED_FILES_TOTAL,
];
