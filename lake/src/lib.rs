//! The expense table on object storage: a Delta Lake table (delta-rs)
//! partitioned by tenant and month, under `file://./data/lake` by default.
//!
//! delta-rs stays behind this small API because its interface moves between
//! releases. Writers commit each batch with Delta application transactions
//! (one per log partition), which is what makes processor replays idempotent.

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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use url::Url;

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
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// Turns `file://./data/lake` or `file:///abs` into an absolute URL.
fn table_url(url: &str) -> Result<Url> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = std::path::Path::new(path);
        std::fs::create_dir_all(path)?;
        let abs = std::fs::canonicalize(path)?;
        return Url::from_directory_path(&abs).map_err(|()| Error::UnsupportedUrl(url.to_string()));
    }
    Err(Error::UnsupportedUrl(url.to_string()))
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
        })
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
        let log_store = table.log_store();
        let snapshot = table.snapshot()?;
        let mut out = Vec::with_capacity(app_ids.len());
        for app_id in app_ids {
            out.push(
                snapshot
                    .transaction_version(log_store.as_ref(), app_id)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Appends `batch` in one commit carrying `txns`. The caller must have
    /// checked [`Lake::txn_version`] first: Delta does not refuse a version
    /// that is not higher than the last one.
    pub async fn append(&self, batch: RecordBatch, txns: Vec<AppTxn>) -> Result<WriteOutcome> {
        let rows = batch.num_rows();
        if rows == 0 && txns.is_empty() {
            return Ok(WriteOutcome::Empty);
        }
        let mut table = self.table.lock().await;
        let txns = txns
            .into_iter()
            .map(|t| Transaction::new(t.app_id, t.version))
            .collect();
        let written = table
            .clone()
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_partition_columns(PARTITION_COLUMNS)
            .with_commit_properties(CommitProperties::default().with_application_transactions(txns))
            .await?;
        let table_version = written.version().unwrap_or_default();
        *table = written;
        Ok(WriteOutcome::Committed {
            table_version,
            rows,
        })
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
