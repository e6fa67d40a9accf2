//! The expense table on object storage: a Delta Lake table (delta-rs)
//! partitioned by tenant and month, in a local directory
//! (`file://./data/lake` by default) or under an S3 prefix
//! (`s3://bucket/prefix`), both through object_store.
//!
//! delta-rs stays behind this small API because its interface moves between
//! releases. Writers commit each batch with Delta application transactions
//! (one per log partition), which is what makes processor replays idempotent:
//! [`Lake::commit_once`] is the only way to write, and it checks the table's
//! transaction versions and writes in one step, on every try. Commits are
//! conditional writes of the next log file, so several processes can write
//! one table (see `docs/lake.md`).

mod error;
mod files;
mod location;
mod maintenance;
pub mod metrics;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use files::DataFileRef;
pub use location::{Location, redact};
pub use maintenance::{CompactStats, VacuumStats};

use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use delta_kernel::expressions::Scalar;
use deltalake::arrow::array::{Array as _, RecordBatch, StringArray, UInt32Array};
use deltalake::arrow::compute::take_record_batch;
use deltalake::arrow::datatypes::Schema;
use deltalake::arrow::error::ArrowError;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableBuilder, TableProperty};
use indexmap::IndexMap;
use spendstream_schemas::enriched::{PARTITION_COLUMNS, arrow_schema};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};
use url::Url;

/// The application transaction counting log generations.
const GENERATION_COUNTER: &str = "spendstream.log_generations";
/// Prefix of the application transaction holding one log's generation.
const GENERATION_PREFIX: &str = "spendstream.log_generation.";

/// Columns that hold a different value in nearly every row: written
/// without a dictionary, and read as plain text (`Lake::read_columns`).
const UNIQUE_COLUMNS: [&str; 5] = [
    "expense_id",
    "external_id",
    "version",
    "log_offset",
    "posted_at",
];

/// How data files are encoded: Snappy pages, as delta-rs writes by
/// default, but no dictionary for [`UNIQUE_COLUMNS`]: there a dictionary
/// saves nothing and costs the writer a hash of every value before it gives
/// up at the page limit (measured: the dictionaries' interning was 4% of a
/// processor's CPU). The expense ids are stored uncompressed: random hex,
/// half of a file's bytes, of which Snappy saved a tenth (pyarrow on a
/// bench file); without it Snappy fell from 8.5% to 3.5% of a
/// processor's CPU samples and the files grew 6%.
pub(crate) fn writer_properties() -> deltalake::parquet::file::properties::WriterProperties {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::properties::WriterProperties;
    use deltalake::parquet::schema::types::ColumnPath;
    UNIQUE_COLUMNS
        .iter()
        .fold(
            WriterProperties::builder()
                // `<name> version <x>`: parquet-java ignores string statistics
                // of a writer it cannot parse this way.
                .set_created_by(format!("spendstream version {}", env!("CARGO_PKG_VERSION")))
                .set_compression(Compression::SNAPPY),
            |builder, column| {
                builder.set_column_dictionary_enabled(ColumnPath::from(*column), false)
            },
        )
        .set_column_compression(ColumnPath::from("expense_id"), Compression::UNCOMPRESSED)
        .build()
}

/// The rows of an append: one batch, or several (the lake sink's, one per
/// partition, so that none is copied apart). A partition's rows in two
/// batches may go to one file or to two.
pub trait Batches {
    /// The batches, in order.
    fn into_batches(self) -> Vec<RecordBatch>;
}

impl Batches for RecordBatch {
    fn into_batches(self) -> Vec<RecordBatch> {
        vec![self]
    }
}

impl Batches for Vec<RecordBatch> {
    fn into_batches(self) -> Vec<RecordBatch> {
        self
    }
}

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

/// How a table handle behaves.
#[derive(Clone)]
pub struct LakeOptions {
    /// object_store settings applied on top of the `AWS_*` environment
    /// (S3 only), e.g. `aws_endpoint`, `aws_allow_http`, `aws_timeout`.
    /// Never printed: they may hold keys.
    pub storage: BTreeMap<String, String>,
    /// How long readers ([`Lake::table_provider`], [`Lake::version`]) may
    /// serve the state they last loaded before looking for new commits
    /// (one LIST of the log). Writers always look.
    pub read_refresh: Duration,
    /// Commits between two checkpoints of a table this handle creates, so
    /// opening it never replays more than this many JSON commits.
    pub checkpoint_interval: u32,
}

impl Default for LakeOptions {
    fn default() -> Self {
        Self {
            storage: BTreeMap::new(),
            read_refresh: Duration::from_millis(250),
            checkpoint_interval: 100,
        }
    }
}

impl std::fmt::Debug for LakeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeOptions")
            .field("storage", &self.storage.keys().collect::<Vec<_>>())
            .field("read_refresh", &self.read_refresh)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .finish()
    }
}

/// The loaded table state and when it was loaded.
struct Loaded {
    table: DeltaTable,
    at: Instant,
    /// The writer's appends past `table` (the readers' is always empty).
    ahead: Ahead,
}

impl Loaded {
    fn new(table: DeltaTable) -> Self {
        Self {
            table,
            at: Instant::now(),
            ahead: Ahead::default(),
        }
    }

    /// Takes `table` as the newest state this writer knows: nothing ahead
    /// of it, and the application transactions read from it again (another
    /// writer's commits may be in it).
    fn set(&mut self, table: DeltaTable) {
        *self = Self::new(table);
    }
}

/// What a writer knows past its loaded table state, so an append need not
/// load the table after each commit: delta-rs's commit brings its state up
/// to date by replaying every active file's log entry again, which made a
/// commit cost about 60 ms more per thousand files in the table (measured:
/// 60 ms at first, 321 ms at 4,700 files), until compaction.
#[derive(Default)]
struct Ahead {
    /// The table version after this writer's own appends made since the
    /// state was loaded; `None`: none.
    version: Option<u64>,
    /// Application transaction versions as of that version: read from the
    /// loaded state, or written since.
    txns: HashMap<String, i64>,
}

/// The lake table.
pub struct Lake {
    url: Url,
    options: LakeOptions,
    /// Writers' state, held through a whole check-and-write.
    state: Mutex<Loaded>,
    /// Readers' state, apart from the writers' so a report never waits
    /// for a commit (an upload to S3 may take seconds).
    reader: std::sync::Mutex<Loaded>,
    /// Set when the writer appended past the state it could hand the
    /// readers: their next read loads the table.
    readers_behind: std::sync::atomic::AtomicBool,
    /// Held while the readers' state is refreshed: one refresh at a time.
    refreshing: Mutex<()>,
    /// Test hook: commits still to fail after they were written.
    #[cfg(feature = "testing")]
    fail_after_commit: std::sync::atomic::AtomicU32,
    /// Test hook: compactions wait here between reading and committing.
    #[cfg(feature = "testing")]
    compaction_barrier: Mutex<Option<Arc<tokio::sync::Barrier>>>,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// Checks a lake URL without touching anything: `file://<dir>` or
/// `s3://bucket/prefix`.
pub fn check_url(url: &str) -> Result<()> {
    Location::parse(url).map(|_| ())
}

/// Adds to a table made by an older release the nullable columns the
/// contract gained since (`docs/runbooks/migrations.md`); a column the
/// table lacks that is not nullable is a table this release cannot write.
/// Two processes upgrading at once: the one whose commit loses reloads and
/// finds the columns there.
async fn add_new_columns(
    mut table: DeltaTable,
    load: &dyn Fn() -> Result<DeltaTable>,
) -> Result<DeltaTable> {
    for attempt in 0..3 {
        let existing: Vec<String> = table
            .snapshot()?
            .schema()
            .fields()
            .map(|f| f.name().to_string())
            .collect();
        let missing: Vec<_> = arrow_schema()
            .fields()
            .iter()
            .filter(|f| !existing.iter().any(|e| e == f.name()))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(table);
        }
        if let Some(required) = missing.iter().find(|f| !f.is_nullable()) {
            return Err(Error::SchemaMismatch(required.name().clone()));
        }
        let names: Vec<_> = missing.iter().map(|f| f.name().clone()).collect();
        let fields: StructType = (&Schema::new(missing)).try_into_kernel()?;
        match table
            .clone()
            .add_columns()
            .with_fields(fields.fields().cloned().collect::<Vec<_>>())
            .await
        {
            Ok(added) => {
                tracing::info!(columns = ?names, "Added the contract's new columns to the lake table.");
                return Ok(added);
            }
            Err(e) if attempt < 2 => {
                tracing::debug!(error = %e, "Adding columns lost to another commit; reloading.");
                table = load()?;
                table.load().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last attempt returns")
}

impl Lake {
    /// Opens the table at `url` with the default options, creating it
    /// (schema and partitioning from `spendstream-schemas`) if it does not
    /// exist yet.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, LakeOptions::default()).await
    }

    /// [`Lake::open`] with `options`.
    pub async fn open_with(url: &str, options: LakeOptions) -> Result<Self> {
        Self::load(url, options, true).await
    }

    /// Opens the table at `url`, refusing to create one (maintenance
    /// commands: a mistyped URL must not leave an empty table behind).
    pub async fn open_existing(url: &str, options: LakeOptions) -> Result<Self> {
        Self::load(url, options, false).await
    }

    async fn load(url: &str, options: LakeOptions, create: bool) -> Result<Self> {
        let location = Location::parse(url)?;
        if !create && location.is_fresh_local() {
            return Err(Error::NoTable(location::redact(url)));
        }
        let table_url = location.table_url()?;
        let builder = || -> Result<DeltaTable> {
            Ok(DeltaTableBuilder::from_url(table_url.clone())?
                .with_storage_options(options.storage.clone().into_iter().collect())
                .build()?)
        };
        let mut table = builder()?;
        // Loading a table that is not there makes delta-rs log an ERROR;
        // on a fresh local lake go straight to creating it.
        let missing = location.is_fresh_local()
            || match table.load().await {
                Ok(()) => false,
                Err(deltalake::DeltaTableError::NotATable(_)) => true,
                Err(e) => return Err(e.into()),
            };
        if missing && !create {
            return Err(Error::NoTable(location::redact(url)));
        }
        if missing {
            let schema: StructType = arrow_schema().as_ref().try_into_kernel()?;
            let created = table
                .create()
                .with_table_name("expenses")
                .with_comment("Spendstream enriched expense records (contract v1)")
                .with_columns(schema.fields().cloned())
                .with_partition_columns(PARTITION_COLUMNS)
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(options.checkpoint_interval.max(1).to_string()),
                )
                .with_save_mode(SaveMode::Ignore)
                .await;
            table = match created {
                Ok(table) => table,
                // Another process created it first: use theirs.
                Err(e) => {
                    let mut theirs = builder()?;
                    theirs.load().await.map_err(|_| e)?;
                    theirs
                }
            };
        }
        let table = add_new_columns(table, &builder).await?;
        Ok(Self {
            url: table_url,
            options,
            reader: std::sync::Mutex::new(Loaded::new(table.clone())),
            readers_behind: Default::default(),
            state: Mutex::new(Loaded::new(table)),
            refreshing: Mutex::new(()),
            #[cfg(feature = "testing")]
            fail_after_commit: Default::default(),
            #[cfg(feature = "testing")]
            compaction_barrier: Mutex::new(None),
        })
    }

    /// The table with every commit made so far loaded (writers and
    /// maintenance: they must see other writers' commits).
    async fn newest(&self) -> Result<MutexGuard<'_, Loaded>> {
        let mut loaded = self.state.lock().await;
        self.refresh(&mut loaded).await?;
        Ok(loaded)
    }

    /// Loads every commit made so far into the writer's `loaded` state.
    async fn refresh(&self, loaded: &mut Loaded) -> Result<()> {
        let mut table = loaded.table.clone();
        table.update_state().await?;
        self.publish(&table);
        loaded.set(table);
        Ok(())
    }

    /// Hands a state a writer loaded or committed to the readers, when it
    /// is newer than theirs: what this process wrote is readable at once.
    fn publish(&self, table: &DeltaTable) {
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if table.version() > reader.table.version() {
            *reader = Loaded::new(table.clone());
        }
    }

    /// The table as readers see it: refreshed incrementally (the commits
    /// after the one held) when the state is older than `read_refresh`, so
    /// a burst of queries costs one LIST of the log. Never waits for a
    /// writer.
    async fn for_reading(&self) -> Result<DeltaTable> {
        if let Some(table) = self.cached_for_reading(self.options.read_refresh) {
            return Ok(table);
        }
        self.refresh_for_reading(self.options.read_refresh).await
    }

    fn cached_for_reading(&self, max_age: Duration) -> Option<DeltaTable> {
        use std::sync::atomic::Ordering;
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        (reader.at.elapsed() < max_age && !self.readers_behind.load(Ordering::Acquire))
            .then(|| reader.table.clone())
    }

    /// Refreshes the readers' state unless another caller did so within
    /// `max_age` while this one waited for the refresh.
    async fn refresh_for_reading(&self, max_age: Duration) -> Result<DeltaTable> {
        let _one_at_a_time = self.refreshing.lock().await;
        if let Some(table) = self.cached_for_reading(max_age) {
            return Ok(table);
        }
        let mut table = self
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .table
            .clone();
        // Cleared first: an append made while this loads sets it again;
        // a failed load leaves the readers behind still.
        self.readers_behind
            .store(false, std::sync::atomic::Ordering::Release);
        if let Err(e) = table.update_state().await {
            self.readers_behind
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(e.into());
        }
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        // A writer may have published a newer state while this one loaded:
        // readers never go back to an older version.
        if table.version() >= reader.table.version() {
            *reader = Loaded::new(table.clone());
            Ok(table)
        } else {
            reader.at = Instant::now();
            Ok(reader.table.clone())
        }
    }

    /// Reads the table's log now (readiness checks: the store answers).
    pub async fn ping(&self) -> Result<()> {
        self.refresh_for_reading(Duration::ZERO).await.map(|_| ())
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

    /// Test hook: compactions of this handle wait at `barrier` after
    /// rewriting a partition and before committing it (`None`: no more).
    #[cfg(feature = "testing")]
    pub async fn pause_compactions_at(&self, barrier: Option<Arc<tokio::sync::Barrier>>) {
        *self.compaction_barrier.lock().await = barrier;
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The stored version of each of `app_ids` as this handle's writer
    /// knows them, without loading the table: exact unless another writer
    /// committed since (a group rebalanced); an append then finds that out
    /// before it commits, so this serves to skip work, never to decide it.
    pub async fn known_txn_versions(&self, app_ids: &[String]) -> Result<Vec<Option<i64>>> {
        let mut loaded = self.state.lock().await;
        let stored = stored_versions(&mut loaded, app_ids).await?;
        Ok(app_ids.iter().map(|id| stored.get(id).copied()).collect())
    }

    /// The last version committed for `app_id`, read from the newest table
    /// state (other writers may have committed since this handle last looked).
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>> {
        Ok(self.txn_versions(&[app_id.to_string()]).await?[0])
    }

    /// [`Lake::txn_version`] for several app ids with one state refresh.
    pub async fn txn_versions(&self, app_ids: &[String]) -> Result<Vec<Option<i64>>> {
        let loaded = self.newest().await?;
        read_versions(&loaded.table, app_ids.iter().map(String::as_str)).await
    }

    /// Appends exactly once: reads the stored version of every transaction
    /// in `txns`, and commits those it does not hold yet with the rows
    /// `rows` builds from the stored versions (the caller leaves out rows at
    /// or below them). With every transaction already held, writes nothing.
    /// The versions are the writer's state plus its own appends since (ADR
    /// 0019), loaded again when another writer has committed; the commit
    /// lands only on the version after that state, so it holds exactly what
    /// the rows were built against. Each call does all of this under one
    /// lock, so retrying after any error can never commit a batch twice,
    /// even when the error came after the commit file was written or
    /// another writer committed meanwhile.
    pub async fn commit_once<F, R>(&self, txns: &[AppTxn], rows: F) -> Result<WriteOutcome>
    where
        F: FnOnce(
            &HashMap<String, i64>,
        ) -> std::result::Result<R, deltalake::arrow::error::ArrowError>,
        R: Batches,
    {
        if txns.is_empty() {
            return Ok(WriteOutcome::Empty);
        }
        let mut loaded = self.state.lock().await;
        // One read of the version after the writer's newest: when another
        // writer committed it, load the table so the rows are built
        // against what it holds (a race after this is caught at the
        // commit).
        let mut ahead = appends_ahead(&loaded)?;
        if !ahead || committed_by_another(&loaded).await? {
            self.refresh(&mut loaded).await?;
            ahead = appends_ahead(&loaded)?;
        }
        let ids: Vec<String> = txns.iter().map(|t| t.app_id.clone()).collect();
        let held = stored_versions(&mut loaded, &ids).await?;
        let new: Vec<Transaction> = txns
            .iter()
            .filter(|t| held.get(&t.app_id).is_none_or(|v| *v < t.version))
            .map(|t| Transaction::new(t.app_id.clone(), t.version))
            .collect();
        if new.is_empty() {
            return Ok(WriteOutcome::AlreadyCommitted);
        }
        let batches = rows(&held)?.into_batches();
        let n = batches.iter().map(RecordBatch::num_rows).sum();
        let adds = write_files(&loaded.table, batches).await?;
        let mut committed = None;
        if ahead {
            committed = commit_ahead(&mut loaded, adds.clone(), new.clone()).await?;
            if committed.is_some() {
                self.readers_behind
                    .store(true, std::sync::atomic::Ordering::Release);
            } else {
                // Another writer committed since: the files hold only if
                // it left every transaction of this batch where it was.
                self.refresh(&mut loaded).await?;
                if stored_versions(&mut loaded, &ids).await? != held {
                    return Err(Error::Delta(deltalake::DeltaTableError::Generic(
                        "another writer committed this batch's transactions meanwhile".into(),
                    )));
                }
            }
        }
        let table_version = match committed {
            Some(version) => version,
            None => {
                let written = commit(&loaded.table, adds, new).await?;
                self.publish(&written);
                let version = written.version().unwrap_or_default();
                loaded.set(written);
                version
            }
        };
        ::metrics::counter!(metrics::COMMITS_TOTAL.name, "operation" => "write").increment(1);
        ::metrics::counter!(metrics::COMMITTED_ROWS_TOTAL.name).increment(n as u64);
        self.injected_failure()?;
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
            let mut loaded = self.newest().await?;
            let held = read_versions(&loaded.table, ids.iter().map(String::as_str)).await?;
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
            let written = commit_txns(
                &loaded.table,
                vec![
                    Transaction::new(own.clone(), next),
                    Transaction::new(GENERATION_COUNTER, next),
                ],
            )
            .await;
            match written {
                Ok(written) => {
                    loaded.set(written);
                    return u32::try_from(next).map_err(|_| Error::GenerationsExhausted);
                }
                // Another process numbered a log meanwhile: read again.
                Err(e) if conflicts < 20 => {
                    conflicts += 1;
                    tracing::debug!(error = %e, "Numbering a log generation raced; reading again.");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A DataFusion table provider over the committed state, at most
    /// `read_refresh` old.
    pub async fn table_provider(&self, ctx: &SessionContext) -> Result<Arc<dyn TableProvider>> {
        Ok(self.versioned_table_provider(ctx).await?.1)
    }

    /// [`Lake::table_provider`] and the table version it reads: what a
    /// cache or an `ETag` is keyed on.
    pub async fn versioned_table_provider(
        &self,
        ctx: &SessionContext,
    ) -> Result<(u64, Arc<dyn TableProvider>)> {
        let table = self.for_reading().await?;
        table.update_datafusion_session(&ctx.state())?;
        let version = table.version().unwrap_or_default();
        let provider = table
            .table_provider()
            .await
            .map_err(deltalake::DeltaTableError::from)?;
        Ok((version, provider))
    }

    /// The data files the newest table state reads, relative to the table
    /// root.
    pub async fn files(&self) -> Result<Vec<String>> {
        let loaded = self.newest().await?;
        Ok(loaded
            .table
            .snapshot()?
            .log_data()
            .iter()
            .map(|f| f.path().into_owned())
            .collect())
    }

    /// The table version readers see (at most `read_refresh` old).
    pub async fn version(&self) -> Result<u64> {
        Ok(self.for_reading().await?.version().unwrap_or_default())
    }
}

/// Commits no rows, only the application transactions `txns`: the lake's
/// own bookkeeping (log generations, the maintenance lease). A concurrent
/// commit of the same app ids makes it fail with a conflict.
async fn commit_txns(table: &DeltaTable, txns: Vec<Transaction>) -> Result<DeltaTable> {
    commit(table, Vec::new(), txns).await
}

/// Writes `batches` as data files of `table`, a file or more per partition
/// (tenant, month), and returns their `Add` actions, to commit.
///
/// Through delta-rs's `RecordBatchWriter` with the partitions already
/// apart, not its `write` operation: that plans the batch through
/// DataFusion, repartitions it and copies it into partitions twice, about a
/// tenth of the processors' CPU (profiled). The files and their statistics
/// come from the same delta-rs writer either way. Encoding is most of a
/// write, so the partitions are shared out to one writer task per core,
/// each about as many rows.
async fn write_files(table: &DeltaTable, batches: Vec<RecordBatch>) -> Result<Vec<Action>> {
    let mut parts = Vec::new();
    for batch in batches {
        parts.extend(by_partition(batch)?);
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut shares: Vec<(usize, Vec<Part>)> = (0..cores.min(parts.len()))
        .map(|_| (0, Vec::new()))
        .collect();
    // The largest first, each to the share with the fewest rows so far.
    parts.sort_by_key(|(_, rows)| std::cmp::Reverse(rows.num_rows()));
    for part in parts {
        if let Some(share) = shares.iter_mut().min_by_key(|(rows, _)| *rows) {
            share.0 += part.1.num_rows();
            share.1.push(part);
        }
    }
    // Dropping the set (the first failure returns, or the caller gives up)
    // aborts the other writers; a writer dropped mid-file cancels its
    // upload.
    let mut writers = tokio::task::JoinSet::new();
    for (_, parts) in shares {
        let mut writer =
            RecordBatchWriter::for_table(table)?.with_writer_properties(writer_properties());
        writers.spawn(async move {
            for (values, rows) in parts {
                writer
                    .write_partition(rows, &values, WriteMode::Default)
                    .await?;
            }
            Ok::<_, Error>(writer.flush().await?)
        });
    }
    let mut actions = Vec::new();
    while let Some(done) = writers.join_next().await {
        let adds = match done {
            Ok(adds) => adds?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(Error::Io(std::io::Error::other(e))),
        };
        actions.extend(adds.into_iter().map(Action::Add));
    }
    Ok(actions)
}

/// The operation an append commits as.
fn append_operation() -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(PARTITION_COLUMNS.map(String::from).to_vec()),
        predicate: None,
    }
}

/// Commits `adds` and the application transactions `txns` to `table`
/// through delta-rs (which resolves a race with another writer and writes
/// checkpoints), and returns the table at that commit.
async fn commit(
    table: &DeltaTable,
    adds: Vec<Action>,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let committed =
        CommitBuilder::from(CommitProperties::default().with_application_transactions(txns))
            .with_actions(adds)
            .build(
                Some(table.snapshot()?),
                table.log_store(),
                append_operation(),
            )
            .await?;
    let mut table = table.clone();
    table.state = Some(committed.snapshot());
    Ok(table)
}

/// The longest a writer appends past its loaded state without loading
/// the table, at most: delta-rs deletes commit files below a checkpoint
/// once they are older than the table's log retention, and a writer whose
/// newest known version is gone could put it again, below a checkpoint
/// that readers start from. Loading the state at least this often (and
/// within half the retention) keeps what it knows newer than anything
/// cleaned up.
const MAX_AHEAD: Duration = Duration::from_secs(3600);

/// Whether the writer's next append may go past its loaded state
/// ([`commit_ahead`]): on a store that puts a commit file only if absent,
/// with a state loaded recently (see [`MAX_AHEAD`]) whose protocol this
/// writer can write, and not for a commit that is due a checkpoint
/// (delta-rs writes those, and the state they need is loaded anyway).
fn appends_ahead(loaded: &Loaded) -> Result<bool> {
    use deltalake::table::config::TablePropertiesExt as _;
    let next = next_version(loaded)?;
    let snapshot = loaded.table.snapshot()?;
    let config = snapshot.table_config();
    let fresh_for = MAX_AHEAD.min(config.log_retention_duration() / 2);
    Ok(loaded.table.log_store().name() == "DefaultLogStore"
        && loaded.at.elapsed() < fresh_for
        && deltalake::kernel::transaction::PROTOCOL
            .can_write_to(snapshot)
            .is_ok()
        && !(next + 1).is_multiple_of(config.checkpoint_interval().get()))
}

/// The version after the last this writer knows of.
fn next_version(loaded: &Loaded) -> Result<u64> {
    Ok(match loaded.ahead.version {
        Some(version) => version,
        None => loaded.table.snapshot()?.version(),
    } + 1)
}

/// Whether another writer has committed the version after the last this
/// writer knows of.
async fn committed_by_another(loaded: &Loaded) -> Result<bool> {
    let next = next_version(loaded)?;
    Ok(loaded
        .table
        .log_store()
        .read_commit_entry(next)
        .await?
        .is_some())
}

/// The stored version of each of `app_ids` (those with one), as the writer
/// knows them: read once from the loaded state, then kept as its appends
/// write them.
async fn stored_versions(loaded: &mut Loaded, app_ids: &[String]) -> Result<HashMap<String, i64>> {
    let unknown: Vec<&str> = app_ids
        .iter()
        .map(String::as_str)
        .filter(|id| !loaded.ahead.txns.contains_key(*id))
        .collect();
    if !unknown.is_empty() {
        let read = read_versions(&loaded.table, unknown.iter().copied()).await?;
        // The loaded state is exact for ids this writer has not written
        // since it was loaded; "none" is kept as -1 (versions are >= 0).
        for (id, version) in unknown.into_iter().zip(read) {
            loaded
                .ahead
                .txns
                .insert(id.to_string(), version.unwrap_or(-1));
        }
    }
    Ok(app_ids
        .iter()
        .filter_map(|id| {
            let version = *loaded.ahead.txns.get(id)?;
            (version >= 0).then(|| (id.clone(), version))
        })
        .collect())
}

/// Commits `adds` and `txns` as the version after the last this writer
/// knows of, without loading the table: the store puts the commit file
/// only if no other writer put that version first, and then the writer's
/// state plus this commit is the table. Returns the version, or `None`
/// when another writer was first (nothing was committed).
async fn commit_ahead(
    loaded: &mut Loaded,
    adds: Vec<Action>,
    txns: Vec<Transaction>,
) -> Result<Option<u64>> {
    let version = next_version(loaded)?;
    let written: Vec<(String, i64)> = txns.iter().map(|t| (t.app_id.clone(), t.version)).collect();
    let data = deltalake::kernel::transaction::CommitData::new(
        adds,
        append_operation(),
        HashMap::new(),
        txns,
    );
    let bytes = data.get_bytes().map_err(deltalake::DeltaTableError::from)?;
    let log_store = loaded.table.log_store();
    match log_store
        .write_commit_entry(
            version,
            deltalake::logstore::CommitOrBytes::LogBytes(bytes),
            uuid::Uuid::new_v4(),
        )
        .await
    {
        Ok(()) => {
            loaded.ahead.version = Some(version);
            loaded.ahead.txns.extend(written);
            Ok(Some(version))
        }
        Err(deltalake::kernel::transaction::TransactionError::VersionAlreadyExists(_)) => Ok(None),
        Err(e) => Err(deltalake::DeltaTableError::from(e).into()),
    }
}

/// One partition's rows of a write and its partition values.
type Part = (IndexMap<String, Scalar>, RecordBatch);

/// The rows of `batch` by partition, each with its partition values, in
/// the order the partitions first appear: slices of the batch, without a
/// copy, when each partition's rows are together; otherwise one copy of the
/// batch, each partition's rows in their order (a counting sort by
/// partition: processors' batches mix months).
fn by_partition(batch: RecordBatch) -> Result<Vec<Part>> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| Error::SchemaMismatch(name.to_string()))
    };
    let [tenant, month] = PARTITION_COLUMNS.map(column);
    let keys = [tenant?, month?];
    // Not nullable; `write_partition` would file a null under the Hive
    // default partition.
    if keys.iter().any(|k| k.null_count() > 0) {
        return Err(Error::Arrow(ArrowError::InvalidArgumentError(
            "a row without a tenant_id or month".into(),
        )));
    }
    let key = |i: usize| keys.map(|k| k.value(i));
    // Each row's partition, numbered as they first appear.
    let n = batch.num_rows();
    let spendstream_schemas::Groups {
        group_of,
        first: first_row,
        sizes: counts,
        runs,
    } = spendstream_schemas::Groups::of((0..n).map(key));
    let values = |i: usize| -> IndexMap<String, Scalar> {
        PARTITION_COLUMNS
            .iter()
            .zip(key(i))
            .map(|(name, value)| ((*name).to_string(), Scalar::String(value.to_string())))
            .collect()
    };
    let values: Vec<IndexMap<String, Scalar>> = first_row.iter().map(|i| values(*i)).collect();
    if runs == first_row.len() {
        return Ok(values
            .into_iter()
            .zip(first_row.iter().zip(&counts))
            .map(|(values, (&start, &len))| (values, batch.slice(start, len)))
            .collect());
    }
    let mut starts: Vec<usize> = counts
        .iter()
        .scan(0, |next, count| {
            let start = *next;
            *next += count;
            Some(start)
        })
        .collect();
    let mut order = vec![0u32; n];
    for (row, group) in group_of.iter().enumerate() {
        let at = &mut starts[*group as usize];
        order[*at] = row as u32;
        *at += 1;
    }
    let sorted = take_record_batch(&batch, &UInt32Array::from(order))?;
    // The copy replaces the batch: not both held while the files are encoded.
    drop(batch);
    let mut start = 0;
    Ok(values
        .into_iter()
        .zip(&counts)
        .map(|(values, &len)| {
            let part = (values, sorted.slice(start, len));
            start += len;
            part
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::record as with_ext;

    fn record(tenant: &str, date: &str, offset: i64) -> spendstream_schemas::EnrichedRecord {
        with_ext(tenant, &format!("e{offset}"), "1", date, offset)
    }

    /// Each part as (tenant, month, log offsets in order).
    fn parts(batch: &RecordBatch) -> Vec<(String, String, Vec<i64>)> {
        by_partition(batch.clone())
            .unwrap()
            .into_iter()
            .map(|(values, rows)| {
                let offsets = rows
                    .column_by_name("log_offset")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<deltalake::arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec();
                let value = |name: &str| match &values[name] {
                    Scalar::String(s) => s.clone(),
                    other => panic!("{other:?}"),
                };
                (value("tenant_id"), value("month"), offsets)
            })
            .collect()
    }

    #[test]
    fn partitions_together_are_sliced_in_place() {
        let batch = spendstream_schemas::to_record_batch(&[
            record("a", "2026-01-03", 0),
            record("a", "2026-01-09", 1),
            record("b", "2026-01-02", 2),
            record("a", "2026-02-01", 3),
        ])
        .unwrap();
        assert_eq!(
            parts(&batch),
            vec![
                ("a".into(), "2026-01".into(), vec![0, 1]),
                ("b".into(), "2026-01".into(), vec![2]),
                ("a".into(), "2026-02".into(), vec![3]),
            ]
        );
        // Slices of the batch's own buffers, not copies.
        let values = |b: &RecordBatch| b.column(0).to_data().buffers()[1].as_ptr();
        for (_, rows) in by_partition(batch.clone()).unwrap() {
            assert_eq!(values(&rows), values(&batch));
        }
    }

    #[test]
    fn a_row_without_a_partition_value_is_refused() {
        let batch = spendstream_schemas::to_record_batch(&[
            record("a", "2026-01-03", 0),
            record("a", "2026-01-04", 1),
        ])
        .unwrap();
        let i = batch.schema().index_of("tenant_id").unwrap();
        let mut fields: Vec<deltalake::arrow::datatypes::Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[i] = fields[i].clone().with_nullable(true);
        let mut columns = batch.columns().to_vec();
        columns[i] = Arc::new(StringArray::from(vec![Some("a"), None]));
        let nulls = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        assert!(matches!(by_partition(nulls), Err(Error::Arrow(_))));
    }

    #[test]
    fn interleaved_partitions_are_sorted_apart_and_keep_every_row() {
        let batch = spendstream_schemas::to_record_batch(&[
            record("a", "2026-01-03", 0),
            record("b", "2026-01-02", 1),
            record("a", "2026-01-09", 2),
            record("a", "2026-02-01", 3),
            record("b", "2026-01-05", 4),
        ])
        .unwrap();
        // Partitions as they first appear, each one's rows in their order.
        assert_eq!(
            parts(&batch),
            vec![
                ("a".into(), "2026-01".into(), vec![0, 2]),
                ("b".into(), "2026-01".into(), vec![1, 4]),
                ("a".into(), "2026-02".into(), vec![3]),
            ]
        );
        assert!(
            by_partition(spendstream_schemas::to_record_batch::<String>(&[]).unwrap())
                .unwrap()
                .is_empty()
        );
    }
}
