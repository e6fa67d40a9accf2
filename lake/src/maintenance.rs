//! Keeping the table small and fast to read while it is written: compaction
//! (small files of each tenant × month partition rewritten into files sorted
//! by `expense_id, version`), vacuum, and the lease that elects one process
//! to do them.
//!
//! Compaction does not use delta-rs's OPTIMIZE: its commits ignore each
//! other (delta-rs 1.1 does not count removals without `dataChange` as
//! conflicts), so two compactions of one partition racing would both land
//! and every row they rewrote would be in the table twice. Each compaction
//! commit here carries an application transaction named after its
//! partition, so of two racing compactions of one partition the later
//! commit conflicts and changes nothing (its files are orphans a full
//! vacuum removes). Appends never conflict with it. Safety does not depend
//! on the lease; the lease only saves the work.

use crate::{Lake, Result, commit_txns, read_versions};
use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray};
use deltalake::arrow::compute::{
    CastOptions, SortColumn, cast_with_options, concat_batches, lexsort_to_indices,
    take_record_batch,
};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use object_store::path::Path;
use spendstream_schemas::enriched::arrow_schema;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The application transaction holding the maintenance leader's id.
const LEASE_OWNER: &str = "spendstream.maintenance.owner";
/// The application transaction holding when the lease ends (ms since 1970).
const LEASE_UNTIL: &str = "spendstream.maintenance.until";
/// Prefix of the application transaction each compaction of a partition
/// commits (then `<tenant>/<month>`).
const COMPACTION_PREFIX: &str = "spendstream.compaction.";

/// Files at least this big are left as they are.
const SMALL_FILE_BYTES: i64 = 32 << 20;
/// Most bytes of small files rewritten into one sorted file: they are
/// read and sorted in memory.
const BIN_BYTES: i64 = 64 << 20;

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactStats {
    /// Partitions rewritten.
    pub partitions: u64,
    pub files_added: u64,
    pub files_removed: u64,
    /// Partitions left alone because another compaction of the same
    /// partition committed first; the next run looks at them again.
    pub conflicts: u64,
}

/// What a vacuum did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VacuumStats {
    pub dry_run: bool,
    /// The files deleted (or to delete).
    pub files: Vec<String>,
}

/// A data file: its path relative to the table root (as the log names it
/// and as the store keys it) and its size.
struct DataFile {
    path: String,
    location: Path,
    size: i64,
}

impl Lake {
    /// Rewrites the small files of every partition that has more than one
    /// into files of at most 64 MiB of input, each sorted by `expense_id,
    /// version`: one commit per partition that removes exactly the files it
    /// read, so ingest and queries carry on and no report changes.
    pub async fn compact(&self) -> Result<CompactStats> {
        let table = self.newest().await?.table.clone();
        let mut small: BTreeMap<(String, String), Vec<DataFile>> = BTreeMap::new();
        for file in table.snapshot()?.log_data().iter() {
            if file.size() >= SMALL_FILE_BYTES {
                continue;
            }
            // Rows hidden by a deletion vector would come back in the
            // rewrite; Spendstream never writes them, others might.
            if file.deletion_vector_descriptor().is_some() {
                continue;
            }
            let values = file.partition_values_map();
            let value = |c: &str| values.get(c).cloned().flatten().unwrap_or_default();
            small
                .entry((value("tenant_id"), value("month")))
                .or_default()
                .push(DataFile {
                    path: file.path().into_owned(),
                    location: file.object_store_path(),
                    size: file.size(),
                });
        }
        let mut stats = CompactStats::default();
        for ((tenant, month), files) in small {
            let bins = bins(files);
            if bins.is_empty() {
                continue;
            }
            match compact_partition(self, &table, &tenant, &month, &bins).await {
                Ok((added, removed)) => {
                    use crate::metrics::{COMMITS_TOTAL, COMPACTED_FILES_TOTAL};
                    metrics::counter!(COMMITS_TOTAL.name, "operation" => "compact").increment(1);
                    metrics::counter!(COMPACTED_FILES_TOTAL.name, "change" => "added")
                        .increment(added);
                    metrics::counter!(COMPACTED_FILES_TOTAL.name, "change" => "removed")
                        .increment(removed);
                    stats.partitions += 1;
                    stats.files_added += added;
                    stats.files_removed += removed;
                }
                Err(e) if e.is_commit_conflict() => {
                    tracing::info!(
                        error = %spendstream_schemas::error::Chain(&e),
                        tenant, month,
                        "Compacting a partition conflicted with another compaction; the next run retries."
                    );
                    metrics::counter!(crate::metrics::COMPACTION_CONFLICTS_TOTAL.name).increment(1);
                    stats.conflicts += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }

    /// Deletes files the table no longer needs: those removed (by
    /// compaction) more than `retain` ago, and with `full` also files no
    /// commit ever referenced (uploads of writers that crashed before
    /// committing) older than `retain`. `retain` must outlast the longest
    /// query and the longest upload-then-commit; callers enforce a minimum.
    pub async fn vacuum(&self, retain: Duration, full: bool, dry_run: bool) -> Result<VacuumStats> {
        let table = self.newest().await?.table.clone();
        let retain = chrono::Duration::from_std(retain).unwrap_or(chrono::Duration::days(7));
        let (_table, metrics) = table
            .vacuum()
            .with_retention_period(retain)
            .with_enforce_retention_duration(false)
            .with_mode(if full {
                VacuumMode::Full
            } else {
                VacuumMode::Lite
            })
            .with_dry_run(dry_run)
            .await?;
        if !metrics.dry_run {
            ::metrics::counter!(crate::metrics::VACUUMED_FILES_TOTAL.name)
                .increment(metrics.files_deleted.len() as u64);
        }
        Ok(VacuumStats {
            dry_run: metrics.dry_run,
            files: metrics.files_deleted,
        })
    }

    /// Takes or renews the maintenance lease for `owner` until `lease` from
    /// now, unless another owner holds an unexpired one. Kept as two
    /// application transactions committed together, so of two processes
    /// racing for it one wins and the other's commit conflicts. Clock skew
    /// between processes can at worst elect two leaders for a while, which
    /// only wastes work (see the module docs).
    pub async fn try_lead(&self, owner: i64, lease: Duration) -> Result<bool> {
        let mut loaded = self.newest().await?;
        let held = read_versions(&loaded.table, [LEASE_OWNER, LEASE_UNTIL].into_iter()).await?;
        let now = now_ms();
        if let (Some(holder), Some(until)) = (held[0], held[1])
            && holder != owner
            && until > now
        {
            return Ok(false);
        }
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        match commit_txns(
            &loaded.table,
            vec![
                Transaction::new(LEASE_OWNER, owner),
                Transaction::new(LEASE_UNTIL, until),
            ],
        )
        .await
        {
            Ok(table) => {
                loaded.set(table);
                Ok(true)
            }
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "Another process took the maintenance lease.");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Groups a partition's small files into bins of at most [`BIN_BYTES`],
/// smallest first; a bin of one file would be a copy, so it is left out.
fn bins(mut files: Vec<DataFile>) -> Vec<Vec<DataFile>> {
    files.sort_by_key(|f| f.size);
    let mut bins: Vec<Vec<DataFile>> = Vec::new();
    let mut bytes = 0;
    for file in files {
        match bins.last_mut() {
            Some(bin) if bytes + file.size <= BIN_BYTES => {
                bytes += file.size;
                bin.push(file);
            }
            _ => {
                bytes = file.size;
                bins.push(vec![file]);
            }
        }
    }
    bins.retain(|bin| bin.len() > 1);
    bins
}

/// Rewrites each bin of one partition into one sorted file and commits the
/// swap with the partition's compaction transaction. Returns the files
/// added and removed.
async fn compact_partition(
    #[cfg_attr(not(feature = "testing"), allow(unused_variables))] lake: &Lake,
    table: &DeltaTable,
    tenant: &str,
    month: &str,
    bins: &[Vec<DataFile>],
) -> Result<(u64, u64)> {
    let store = table.object_store();
    let mut writer =
        RecordBatchWriter::for_table(table)?.with_writer_properties(crate::writer_properties());
    let mut actions = Vec::new();
    for bin in bins {
        let mut batches = Vec::new();
        for file in bin {
            // Small files (under SMALL_FILE_BYTES): read whole.
            let bytes = crate::files::read_whole(store.as_ref(), &file.location).await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .map_err(deltalake::DeltaTableError::from)?;
            for batch in reader {
                batches.push(conform(&batch?, tenant, month)?);
            }
            actions.push(Action::Remove(remove(table, &file.path)?));
        }
        writer.write(sorted(&batches)?).await?;
        for mut add in writer.flush().await? {
            add.data_change = false;
            actions.push(Action::Add(add));
        }
    }
    let removed = bins.iter().map(|b| b.len() as u64).sum::<u64>();
    let added = actions.len() as u64 - removed;
    #[cfg(feature = "testing")]
    if let Some(barrier) = lake.compaction_barrier.lock().await.clone() {
        barrier.wait().await;
    }
    let txn = Transaction::new(format!("{COMPACTION_PREFIX}{tenant}/{month}"), now_ms());
    CommitBuilder::from(CommitProperties::default().with_application_transactions(vec![txn]))
        .with_actions(actions)
        .build(
            Some(table.snapshot()?),
            table.log_store(),
            DeltaOperation::Optimize {
                predicate: Some(format!("tenant_id = '{tenant}' AND month = '{month}'")),
                target_size: BIN_BYTES,
            },
        )
        .await?;
    Ok((added, removed))
}

/// The remove action of the file at `path` (no data change: the rows move
/// to the new files).
fn remove(table: &DeltaTable, path: &str) -> Result<deltalake::kernel::Remove> {
    table
        .snapshot()?
        .log_data()
        .iter()
        .find(|f| f.path() == path)
        .map(|f| f.remove_action(false))
        .ok_or_else(|| {
            deltalake::DeltaTableError::Generic(format!("{path} left the table while compacting"))
                .into()
        })
}

/// A batch read from a data file in the table's schema: columns by name,
/// cast to the contract's types, the partition values (not stored in data
/// files) filled in.
fn conform(batch: &RecordBatch, tenant: &str, month: &str) -> Result<RecordBatch> {
    let schema = arrow_schema();
    // A column this version does not know (a newer writer's) would be
    // dropped by the rewrite: leave such tables alone.
    if let Some(unknown) = batch
        .schema()
        .fields()
        .iter()
        .find(|f| schema.field_with_name(f.name()).is_err())
    {
        return Err(crate::Error::UnknownColumn(unknown.name().clone()));
    }
    let rows = batch.num_rows();
    // A value that does not convert is an error, never a null.
    let strict = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column: ArrayRef = match field.name().as_str() {
            "tenant_id" => Arc::new(StringArray::from(vec![tenant; rows])),
            "month" => Arc::new(StringArray::from(vec![month; rows])),
            name => crate::files::column_or_nulls(batch, field)
                .ok_or_else(|| crate::Error::SchemaMismatch(name.to_string()))?,
        };
        columns.push(cast_with_options(&column, field.data_type(), &strict)?);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `batches` as one batch sorted by `expense_id, version`.
fn sorted(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let all = concat_batches(&arrow_schema(), batches)?;
    let by = |name: &str| -> Result<SortColumn> {
        Ok(SortColumn {
            values: all
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| crate::Error::SchemaMismatch(name.to_string()))?,
            options: None,
        })
    };
    let indices = lexsort_to_indices(&[by("expense_id")?, by("version")?], None)?;
    Ok(take_record_batch(&all, &indices)?)
}
