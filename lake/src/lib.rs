//! The expense table on object storage: a Delta Lake table (delta-rs)
//! partitioned by tenant and month, under `file://./data/lake` by default.
//!
//! delta-rs stays behind this small API because its interface moves between
//! releases. Writers commit each batch with Delta application transactions
//! (one per log partition), which is what makes processor replays idempotent:
//! [`Lake::commit_once`] is the only way to write, and it checks the table's
//! transaction versions and writes in one step, on every try.

mod error;

pub use error::{Error, Result};

use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use deltalake::arrow::array::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use spendstream_schemas::enriched::{PARTITION_COLUMNS, arrow_schema};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use url::Url;

/// The application transaction counting log generations.
const GENERATION_COUNTER: &str = "spendstream.log_generations";
/// Prefix of the application transaction holding one log's generation.
const GENERATION_PREFIX: &str = "spendstream.log_generation.";

/// One application transaction: "everything of `app_id` up to `version` is in
/// the table".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTxn {
    pub app_id: String,
    pub version: i64,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed as this table version.
    Committed { table_version: u64, rows: usize },
    /// The table already held every transaction (an earlier try, or another
    /// writer, committed them): nothing was written.
    AlreadyCommitted,
    /// Nothing to write.
    Empty,
}

/// Compaction results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactStats {
    pub files_added: u64,
    pub files_removed: u64,
}

/// The lake table.
pub struct Lake {
    url: Url,
    table: Mutex<DeltaTable>,
    /// Test hook: commits still to fail after they were written.
    #[cfg(feature = "testing")]
    fail_after_commit: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// Checks a lake URL without touching anything: `file://<dir>`.
pub fn check_url(url: &str) -> Result<()> {
    local_dir(url).map(|_| ())
}

fn local_dir(url: &str) -> Result<&std::path::Path> {
    match url.strip_prefix("file://") {
        Some("") => Err(Error::UnsupportedUrl(url.to_string())),
        Some(path) => Ok(std::path::Path::new(path)),
        None => Err(Error::UnsupportedUrl(url.to_string())),
    }
}

/// Turns `file://./data/lake` or `file:///abs` into an absolute URL,
/// creating the directory.
fn table_url(url: &str) -> Result<Url> {
    let path = local_dir(url)?;
    std::fs::create_dir_all(path)?;
    let abs = std::fs::canonicalize(path)?;
    Url::from_directory_path(&abs).map_err(|()| Error::UnsupportedUrl(url.to_string()))
}

impl Lake {
    /// Opens the table at `url`, creating it (schema and partitioning from
    /// `spendstream-schemas`) if it does not exist yet.
    pub async fn open(url: &str) -> Result<Self> {
        let table_url = table_url(url)?;
        let mut table = DeltaTableBuilder::from_url(table_url.clone())?.build()?;
        // Loading a table that is not there makes delta-rs log an ERROR;
        // on a fresh local lake go straight to creating it.
        let fresh = table_url
            .to_file_path()
            .is_ok_and(|dir| !dir.join("_delta_log").exists());
        let missing = fresh
            || match table.load().await {
                Ok(()) => false,
                Err(deltalake::DeltaTableError::NotATable(_)) => true,
                Err(e) => return Err(e.into()),
            };
        if missing {
            let schema: StructType = arrow_schema().as_ref().try_into_kernel()?;
            table = table
                .create()
                .with_table_name("expenses")
                .with_comment("Spendstream enriched expense records (contract v1)")
                .with_columns(schema.fields().cloned())
                .with_partition_columns(PARTITION_COLUMNS)
                .with_save_mode(SaveMode::Ignore)
                .await?;
        }
        let existing: Vec<String> = table
            .snapshot()?
            .schema()
            .fields()
            .map(|f| f.name().to_string())
            .collect();
        if let Some(missing) = arrow_schema()
            .fields()
            .iter()
            .find(|f| !existing.iter().any(|e| e == f.name()))
        {
            return Err(Error::SchemaMismatch(missing.name().clone()));
        }
        Ok(Self {
            url: table_url,
            table: Mutex::new(table),
            #[cfg(feature = "testing")]
            fail_after_commit: Default::default(),
        })
    }

    /// Test hook: the next `n` commits fail right after their commit file
    /// was written, as a delta-rs post-commit hook (a checkpoint, log
    /// cleanup) or a lost object-store response can make them fail.
    #[cfg(feature = "testing")]
    pub fn fail_after_next_commits(&self, n: u32) {
        self.fail_after_commit
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    #[cfg(feature = "testing")]
    fn injected_failure(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let left = self.fail_after_commit.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_after_commit.store(left - 1, Ordering::SeqCst);
            return Err(Error::Injected);
        }
        Ok(())
    }

    #[cfg(not(feature = "testing"))]
    fn injected_failure(&self) -> Result<()> {
        Ok(())
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The last version committed for `app_id`, read from the newest table
    /// state (other writers may have committed since this handle last looked).
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>> {
        Ok(self.txn_versions(&[app_id.to_string()]).await?[0])
    }

    /// [`Lake::txn_version`] for several app ids with one state refresh.
    pub async fn txn_versions(&self, app_ids: &[String]) -> Result<Vec<Option<i64>>> {
        let mut table = self.table.lock().await;
        table.update_state().await?;
        read_versions(&table, app_ids.iter().map(String::as_str)).await
    }

    /// Appends exactly once: refreshes the table, reads the stored version
    /// of every transaction in `txns`, and commits those it does not hold
    /// yet with the rows `rows` builds from the stored versions (the caller
    /// leaves out rows at or below them). With every transaction already
    /// held, writes nothing. Each call does all of this afresh under one
    /// lock, so retrying after any error can never commit a batch twice,
    /// even when the error came after the commit file was written or
    /// another writer committed meanwhile.
    pub async fn commit_once<F>(&self, txns: &[AppTxn], rows: F) -> Result<WriteOutcome>
    where
        F: FnOnce(
            &HashMap<String, i64>,
        ) -> std::result::Result<RecordBatch, deltalake::arrow::error::ArrowError>,
    {
        if txns.is_empty() {
            return Ok(WriteOutcome::Empty);
        }
        let mut table = self.table.lock().await;
        table.update_state().await?;
        let stored = read_versions(&table, txns.iter().map(|t| t.app_id.as_str())).await?;
        let held: HashMap<String, i64> = txns
            .iter()
            .zip(&stored)
            .filter_map(|(t, v)| v.map(|v| (t.app_id.clone(), v)))
            .collect();
        let new: Vec<Transaction> = txns
            .iter()
            .filter(|t| held.get(&t.app_id).is_none_or(|v| *v < t.version))
            .map(|t| Transaction::new(t.app_id.clone(), t.version))
            .collect();
        if new.is_empty() {
            return Ok(WriteOutcome::AlreadyCommitted);
        }
        let batch = rows(&held)?;
        let n = batch.num_rows();
        let written = table
            .clone()
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_partition_columns(PARTITION_COLUMNS)
            .with_commit_properties(CommitProperties::default().with_application_transactions(new))
            .await?;
        self.injected_failure()?;
        let table_version = written.version().unwrap_or_default();
        *table = written;
        Ok(WriteOutcome::Committed {
            table_version,
            rows: n,
        })
    }

    /// The generation the log `log_id` writes under (see
    /// `spendstream_schemas::record_version`): its own when it is the
    /// newest log that wrote to this table, else a new one above every
    /// generation given so far. Kept as two application transactions (the
    /// counter and the log's own), committed together, so two processes
    /// racing get one answer: the loser's commit conflicts and it reads
    /// again.
    pub async fn log_generation(&self, log_id: &str) -> Result<u32> {
        let own = format!("{GENERATION_PREFIX}{log_id}");
        let ids = [own.clone(), GENERATION_COUNTER.to_string()];
        let mut conflicts = 0;
        loop {
            let mut table = self.table.lock().await;
            table.update_state().await?;
            let held = read_versions(&table, ids.iter().map(String::as_str)).await?;
            let newest = held[1].unwrap_or(0);
            if let Some(generation) = held[0]
                && generation == newest
            {
                return u32::try_from(generation).map_err(|_| Error::GenerationsExhausted);
            }
            let next = newest + 1;
            if next > i64::from(spendstream_schemas::enriched::MAX_GENERATION) {
                return Err(Error::GenerationsExhausted);
            }
            let empty = spendstream_schemas::to_record_batch(&[])?;
            let written = table
                .clone()
                .write(vec![empty])
                .with_save_mode(SaveMode::Append)
                .with_partition_columns(PARTITION_COLUMNS)
                .with_commit_properties(CommitProperties::default().with_application_transactions(
                    vec![
                        Transaction::new(own.clone(), next),
                        Transaction::new(GENERATION_COUNTER, next),
                    ],
                ))
                .await;
            match written {
                Ok(written) => {
                    *table = written;
                    return u32::try_from(next).map_err(|_| Error::GenerationsExhausted);
                }
                // Another process numbered a log meanwhile: read again.
                Err(e) if conflicts < 20 => {
                    conflicts += 1;
                    tracing::debug!(error = %e, "Numbering a log generation raced; reading again.");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A DataFusion table provider over the newest committed state.
    pub async fn table_provider(&self, ctx: &SessionContext) -> Result<Arc<dyn TableProvider>> {
        let table = {
            let mut table = self.table.lock().await;
            table.update_state().await?;
            table.clone()
        };
        table.update_datafusion_session(&ctx.state())?;
        Ok(table
            .table_provider()
            .await
            .map_err(deltalake::DeltaTableError::from)?)
    }

    /// Rewrites small files into larger ones (OPTIMIZE), then removes files
    /// no version younger than `retention` needs (VACUUM).
    pub async fn compact(&self, retention: Duration) -> Result<CompactStats> {
        let table = {
            let mut table = self.table.lock().await;
            table.update_state().await?;
            table.clone()
        };
        let (table, metrics) = table.optimize().await?;
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
        let (_table, _vacuum) = table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await?;
        Ok(CompactStats {
            files_added: metrics.num_files_added,
            files_removed: metrics.num_files_removed,
        })
    }

    /// Current table version.
    pub async fn version(&self) -> Option<u64> {
        self.table.lock().await.version()
    }
}

/// The stored version of each app id in `table`'s loaded state.
async fn read_versions<'a>(
    table: &DeltaTable,
    app_ids: impl Iterator<Item = &'a str>,
) -> Result<Vec<Option<i64>>> {
    let log_store = table.log_store();
    let snapshot = table.snapshot()?;
    let mut out = Vec::new();
    for app_id in app_ids {
        out.push(
            snapshot
                .transaction_version(log_store.as_ref(), app_id)
                .await?,
        );
    }
    Ok(out)
}
