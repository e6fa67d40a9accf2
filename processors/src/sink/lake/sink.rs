//! Writes enriched records to the lake with one application transaction per
//! log partition. The check of what the lake holds and the write are one
//! step inside the lake, repeated on every retry.

use crate::Result;
use crate::sink::{Row, Sink, SinkBatch, Written};
use crate::transform::replay::app_id;
use async_trait::async_trait;
use spendstream_lake::{AppTxn, Lake, WriteOutcome};
use spendstream_log::Partition;
use spendstream_schemas::to_record_batch;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The lake sink of one consumer group on one log.
#[derive(Clone)]
pub struct LakeSink {
    lake: Arc<Lake>,
    group: String,
    log_id: String,
}

impl LakeSink {
    pub fn new(lake: Arc<Lake>, group: impl Into<String>, log_id: impl Into<String>) -> Self {
        Self {
            lake,
            group: group.into(),
            log_id: log_id.into(),
        }
    }

    /// The generation this sink's log writes under (see
    /// `Lake::log_generation`).
    pub async fn log_generation(&self) -> Result<u32> {
        Ok(self.lake.log_generation(&self.log_id).await?)
    }

    fn app_id(&self, partition: Partition) -> String {
        app_id(&self.group, &self.log_id, partition)
    }

    /// The versions the lake holds for these log partitions, as this
    /// process's writer knows them (without loading the table: that costs
    /// a replay of every file's log entry). Another member of the group may
    /// have written since; then a batch is not skipped here, and the
    /// commit, which finds that out, leaves out what that member wrote.
    async fn held(&self, partitions: &[Partition]) -> Result<BTreeMap<Partition, i64>> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let ids: Vec<String> = partitions.iter().map(|p| self.app_id(*p)).collect();
        let versions = self.lake.known_txn_versions(&ids).await?;
        Ok(partitions
            .iter()
            .zip(versions)
            .filter_map(|(p, v)| v.map(|v| (*p, v)))
            .collect())
    }

    /// Commits `records` with `last` (the highest offset handled per
    /// partition, dead letters included) as the partitions' transaction
    /// versions, leaving out whatever the lake already holds.
    async fn commit(
        &self,
        records: &[Row<'_>],
        last: &BTreeMap<Partition, i64>,
    ) -> Result<WriteOutcome> {
        let txns: Vec<AppTxn> = last
            .iter()
            .map(|(p, o)| AppTxn {
                app_id: self.app_id(*p),
                version: *o,
            })
            .collect();
        let outcome = self
            .lake
            .commit_once(&txns, |held| {
                // By partition, not by app id: no id to format per row.
                let held: BTreeMap<i32, i64> = last
                    .keys()
                    .filter_map(|p| Some((*p as i32, *held.get(&self.app_id(*p))?)))
                    .collect();
                let is_new =
                    |r: &Row<'_>| held.get(&r.log_partition).is_none_or(|v| r.log_offset > *v);
                if held.is_empty() || records.iter().all(is_new) {
                    return to_record_batch(records);
                }
                // A retry after part of the batch landed: copy what is left.
                let fresh: Vec<Row<'_>> = records.iter().filter(|r| is_new(r)).cloned().collect();
                to_record_batch(&fresh)
            })
            .await?;
        Ok(outcome)
    }
}

#[async_trait]
impl Sink for LakeSink {
    fn name(&self) -> &'static str {
        "lake"
    }

    fn stage(&self) -> &'static str {
        "sink_lake"
    }

    async fn committed(&self, partitions: &[Partition]) -> Result<BTreeMap<Partition, i64>> {
        self.held(partitions).await
    }

    async fn write(&self, batch: SinkBatch<'_>) -> Result<Written> {
        let rows = match self.commit(batch.rows, batch.last).await? {
            WriteOutcome::Committed { rows, .. } => rows,
            WriteOutcome::AlreadyCommitted | WriteOutcome::Empty => 0,
        };
        Ok(Written { rows })
    }

    async fn ready(&self) -> Result<()> {
        self.lake.txn_version("readyz").await?;
        Ok(())
    }
}
