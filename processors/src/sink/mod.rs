//! Sinks: where processed records go. Every sink is idempotent under replay
//! and says, per log partition, up to which offset it holds the log; the
//! processor commits an offset only when every sink has written the batch.
//! A new sink is a folder here (`config.rs`, `sink.rs`,
//! `integration_tests.rs`) and one line where the processor's sinks are
//! built.

pub mod clickhouse;
pub mod dead_letter;
pub mod lake;

use crate::Result;
use async_trait::async_trait;
use spendstream_log::Partition;
use spendstream_schemas::EnrichedRecordOf;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A row as processors hand it to sinks: its text borrowed from the log
/// entry it came from where the entry holds it as it is.
pub type Row<'a> = EnrichedRecordOf<Cow<'a, str>>;

/// One processor batch as every sink sees it.
#[derive(Debug, Clone, Copy)]
pub struct SinkBatch<'a> {
    /// The valid records of the batch, enriched. Some may be held already
    /// (a replay): the sink leaves those out.
    pub rows: &'a [Row<'a>],
    /// The highest offset handled per partition, dead letters included:
    /// what the sink must record as held once it has the rows.
    pub last: &'a BTreeMap<Partition, i64>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows written now (replays left out).
    pub rows: usize,
}

/// A destination of processed records.
#[async_trait]
pub trait Sink: Send + Sync {
    /// A short name for logs, metrics and `/readyz`.
    fn name(&self) -> &'static str;

    /// The `stage` label of its failures in `spendstream_errors_total`:
    /// `sink_<name>`.
    fn stage(&self) -> &'static str;

    /// The highest offset of each of `partitions` whose records this sink
    /// holds (absent: none). Used only to skip work: it may be behind what
    /// another processor wrote since (the lake answers from what its
    /// writer knows), never ahead of what is stored.
    async fn committed(&self, partitions: &[Partition]) -> Result<BTreeMap<Partition, i64>>;

    /// Why this sink cannot hold `row` (a value outside what its storage
    /// represents), if it cannot. Asked before anything is written, so the
    /// dead letter is stored before the sink records the offset as held.
    fn refuses(&self, _row: &Row<'_>) -> Option<String> {
        None
    }

    /// Writes the rows of `batch` it does not hold yet (none it refuses:
    /// the processor leaves those out) and records `batch.last` as held, so
    /// that retrying after any error writes nothing twice in effect.
    async fn write(&self, batch: SinkBatch<'_>) -> Result<Written>;

    /// `Ok` when the sink answers now.
    async fn ready(&self) -> Result<()>;
}
