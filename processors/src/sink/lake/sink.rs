//! Writes enriched records to the lake with one application transaction per
//! log partition, after dropping what an earlier run already wrote.

use crate::Result;
use crate::transform::dedupe::app_id;
use spendstream_lake::{AppTxn, Lake, WriteOutcome};
use spendstream_log::Partition;
use spendstream_schemas::{EnrichedRecord, to_record_batch};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The lake sink of one consumer group.
#[derive(Clone)]
pub struct LakeSink {
    lake: Arc<Lake>,
    group: String,
}

impl LakeSink {
    pub fn new(lake: Arc<Lake>, group: impl Into<String>) -> Self {
        Self {
            lake,
            group: group.into(),
        }
    }

    /// The versions the lake holds for these log partitions, read fresh
    /// from the table: another member of the group may have written since.
    pub async fn committed(&self, partitions: &[Partition]) -> Result<BTreeMap<Partition, i64>> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let ids: Vec<String> = partitions.iter().map(|p| app_id(&self.group, *p)).collect();
        let versions = self.lake.txn_versions(&ids).await?;
        Ok(partitions
            .iter()
            .zip(versions)
            .filter_map(|(p, v)| v.map(|v| (*p, v)))
            .collect())
    }

    /// Appends `records` in one commit that also records `last` (the highest
    /// offset handled per partition, dead letters included) as the partitions'
    /// transaction versions.
    pub async fn write(
        &self,
        records: &[EnrichedRecord],
        last: &BTreeMap<Partition, i64>,
    ) -> Result<WriteOutcome> {
        let batch = to_record_batch(records)?;
        let txns = last
            .iter()
            .map(|(p, o)| AppTxn {
                app_id: app_id(&self.group, *p),
                version: *o,
            })
            .collect();
        Ok(self.lake.append(batch, txns).await?)
    }
}
