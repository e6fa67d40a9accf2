//! The lake table on a real directory and on a real S3 API (moto, started
//! by scripts/test): creation, transactional appends, concurrent writers,
//! reads through DataFusion, checkpoints, compaction and vacuum. Every test
//! runs on both, as `<name>::file` and `<name>::s3`.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::prelude::SessionContext;
use object_store::ObjectStoreExt as _;
use spendstream_lake::testing::{TestBucket, record, rows_and_distinct};
use spendstream_lake::{AppTxn, Lake, LakeOptions, WriteOutcome};
use spendstream_schemas::to_record_batch;
use std::time::{Duration, Instant};

/// Where a test's table lives.
enum Target {
    File(tempfile::TempDir),
    S3(TestBucket),
}

impl Target {
    async fn file() -> Self {
        Self::File(tempfile::tempdir().unwrap())
    }

    async fn s3() -> Self {
        Self::S3(TestBucket::create().await)
    }

    fn url(&self) -> String {
        match self {
            Self::File(dir) => format!("file://{}", dir.path().join("lake").display()),
            Self::S3(bucket) => bucket.url("lake"),
        }
    }

    fn options(&self) -> LakeOptions {
        match self {
            Self::File(_) => LakeOptions::default(),
            Self::S3(bucket) => bucket.options(),
        }
    }

    async fn open(&self) -> Lake {
        self.open_with(self.options()).await
    }

    async fn open_with(&self, options: LakeOptions) -> Lake {
        Lake::open_with(&self.url(), options).await.unwrap()
    }

    /// The table's Parquet data files (checkpoints left out), sorted.
    async fn data_files(&self) -> Vec<String> {
        self.files()
            .await
            .into_iter()
            .filter(|f| f.ends_with(".parquet") && !f.starts_with("_delta_log"))
            .collect()
    }

    /// Every file of the table, relative to its root, sorted.
    async fn files(&self) -> Vec<String> {
        match self {
            Self::File(dir) => {
                let root = dir.path().join("lake");
                let mut out = Vec::new();
                let mut stack = vec![root.clone()];
                while let Some(d) = stack.pop() {
                    for entry in std::fs::read_dir(d).unwrap() {
                        let path = entry.unwrap().path();
                        if path.is_dir() {
                            stack.push(path);
                        } else {
                            out.push(path.strip_prefix(&root).unwrap().display().to_string());
                        }
                    }
                }
                out.sort();
                out
            }
            Self::S3(bucket) => bucket
                .keys("lake")
                .await
                .into_iter()
                .map(|k| k.trim_start_matches("lake/").to_string())
                .collect(),
        }
    }

    /// Writes `bytes` at `path` under the table root, behind the table's
    /// back (what a writer that crashed before committing leaves).
    async fn put(&self, path: &str, bytes: Vec<u8>) {
        match self {
            Self::File(dir) => {
                let path = dir.path().join("lake").join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            Self::S3(bucket) => {
                bucket
                    .store()
                    .put(
                        &object_store::path::Path::from(format!("lake/{path}")),
                        bytes.into(),
                    )
                    .await
                    .unwrap();
            }
        }
    }
}

/// Runs each named `async fn(Target)` on a directory and on S3, as
/// `<name>::file` and `<name>::s3`.
macro_rules! on_file_and_s3 {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn file() {
                super::$name(super::Target::file().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                super::$name(super::Target::s3().await).await;
            }
        }
    )*};
}

on_file_and_s3!(
    appends_commit_txns_and_are_readable,
    a_commit_retried_after_it_was_written_is_not_written_twice,
    log_generations_increase_with_each_log_that_takes_over,
    concurrent_writers_lose_no_update,
    checkpoints_are_written_every_n_commits,
    checkpoints_are_written_when_writers_take_turns,
    readers_refresh_at_most_every_read_refresh,
    a_writers_own_appends_are_readable_at_once,
    compaction_during_writes_changes_no_total,
    vacuum_removes_only_what_no_commit_needs,
);

fn txn(app_id: &str, version: i64) -> Vec<AppTxn> {
    vec![AppTxn {
        app_id: app_id.into(),
        version,
    }]
}

async fn sum_and_count(lake: &Lake, tenant: &str) -> (i64, i64) {
    let ctx = SessionContext::new();
    ctx.register_table("expenses", lake.table_provider(&ctx).await.unwrap())
        .unwrap();
    let df = ctx
        .sql(&format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS s, COUNT(DISTINCT month) AS m FROM expenses WHERE tenant_id = '{tenant}'"
        ))
        .await
        .unwrap();
    let batches = df.collect().await.unwrap();
    let b = &batches[0];
    let col = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    (col(0), col(1))
}

async fn appends_commit_txns_and_are_readable(target: Target) {
    let lake = target.open().await;
    assert_eq!(sum_and_count(&lake, "t1").await, (0, 0));
    assert_eq!(lake.txn_version("g-0").await.unwrap(), None);

    let rows = [
        record("t1", "a", "1.50", "2026-01-05", 0),
        record("t1", "b", "2.25", "2026-02-05", 1),
        record("t2", "c", "100", "2026-02-05", 2),
    ];
    let out = lake
        .commit_once(&txn("g-0", 2), |_| to_record_batch(&rows))
        .await
        .unwrap();
    assert!(matches!(out, WriteOutcome::Committed { rows: 3, .. }));
    assert_eq!(lake.txn_version("g-0").await.unwrap(), Some(2));
    assert_eq!(sum_and_count(&lake, "t1").await, (2, 375));
    assert_eq!(sum_and_count(&lake, "t2").await, (1, 10000));

    // A second handle (another process, say) sees the same state.
    let other = target.open().await;
    assert_eq!(other.txn_version("g-0").await.unwrap(), Some(2));
    other
        .commit_once(&txn("g-0", 3), |_| {
            to_record_batch(&[record("t1", "d", "0.25", "2026-01-09", 3)])
        })
        .await
        .unwrap();
    assert_eq!(lake.txn_version("g-0").await.unwrap(), Some(3));
    assert_eq!(sum_and_count(&lake, "t1").await, (3, 400));

    let stats = lake.compact().await.unwrap();
    assert!(stats.files_removed >= 2, "{stats:?}");
    assert_eq!(sum_and_count(&lake, "t1").await, (3, 400));
}

/// Retrying a commit whose call failed after the commit file was written
/// (a post-commit hook, a lost response) finds it in the table and writes
/// nothing: the check and the write are one step, repeated on every try.
async fn a_commit_retried_after_it_was_written_is_not_written_twice(target: Target) {
    let lake = target.open().await;
    let rows = [
        record("t1", "a", "1.00", "2026-01-05", 0),
        record("t1", "b", "2.00", "2026-01-06", 1),
    ];
    lake.fail_after_next_commits(1);
    let first = lake
        .commit_once(&txn("g-0", 1), |_| to_record_batch(&rows))
        .await;
    assert!(first.is_err(), "the injected failure did not fire");
    // Another writer (a second handle) now commits the next offsets.
    let other = target.open().await;
    other
        .commit_once(&txn("g-0", 2), |held| {
            assert_eq!(held.get("g-0"), Some(&1), "the first commit is not visible");
            to_record_batch(&[record("t1", "c", "4.00", "2026-01-07", 2)])
        })
        .await
        .unwrap();
    // The retry of the first batch: nothing left to write.
    let retry = lake
        .commit_once(&txn("g-0", 1), |_| -> Result<RecordBatch, ArrowError> {
            panic!("rows were built for a batch the table holds")
        })
        .await
        .unwrap();
    assert_eq!(retry, WriteOutcome::AlreadyCommitted);
    assert_eq!(sum_and_count(&lake, "t1").await, (3, 700));

    // A batch spanning a held and a new partition writes only the new one's
    // rows, and only its transaction.
    let out = lake
        .commit_once(
            &[
                AppTxn {
                    app_id: "g-0".into(),
                    version: 2,
                },
                AppTxn {
                    app_id: "g-1".into(),
                    version: 0,
                },
            ],
            |held| {
                assert_eq!(held.get("g-0"), Some(&2));
                assert_eq!(held.get("g-1"), None);
                to_record_batch(&[record("t1", "d", "8.00", "2026-01-08", 0)])
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(out, WriteOutcome::Committed { rows: 1, .. }),
        "{out:?}"
    );
    assert_eq!(lake.txn_version("g-1").await.unwrap(), Some(0));
    assert_eq!(sum_and_count(&lake, "t1").await, (4, 1500));
}

/// Each log gets a generation above every earlier one; a log that writes
/// again after another one did gets a new, higher one; racing processes of
/// one log agree.
async fn log_generations_increase_with_each_log_that_takes_over(target: Target) {
    let lake = target.open().await;
    let other = target.open().await;
    let (a, b) = tokio::join!(lake.log_generation("log-a"), other.log_generation("log-a"));
    assert_eq!((a.unwrap(), b.unwrap()), (1, 1));
    assert_eq!(lake.log_generation("log-a").await.unwrap(), 1);
    assert_eq!(other.log_generation("log-b").await.unwrap(), 2);
    assert_eq!(lake.log_generation("log-b").await.unwrap(), 2);
    // Back to the first log: it must outrank what log-b wrote.
    assert_eq!(lake.log_generation("log-a").await.unwrap(), 3);
    assert_eq!(sum_and_count(&lake, "t1").await, (0, 0));
}

/// Commits one 1.00 EUR record as offset `offset` of `app_id`, retrying a
/// race lost to another writer as a processor does.
async fn commit_one(lake: &Lake, app_id: &str, ext: &str, date: &str, offset: i64) {
    for attempt in 0.. {
        let out = lake
            .commit_once(&txn(app_id, offset), |_| {
                to_record_batch(&[record("t1", ext, "1.00", date, offset)])
            })
            .await;
        match out {
            Ok(_) => return,
            Err(e) if e.is_transient() && attempt < 50 => {}
            Err(e) => panic!("commit of {app_id}@{offset} failed: {e:?}"),
        }
    }
}

/// Several handles (processes, as far as the table can tell) commit at
/// once, each for its own log partition. Every commit lands: the commit
/// file is a conditional write, and a writer that loses a version to
/// another re-reads and takes the next one, never overwriting it.
async fn concurrent_writers_lose_no_update(target: Target) {
    const WRITERS: usize = 3;
    const BATCHES: i64 = 6;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let lake = target.open().await;
        tasks.spawn(async move {
            for b in 0..BATCHES {
                commit_one(
                    &lake,
                    &format!("g-{w}"),
                    &format!("{w}-{b}"),
                    "2026-03-01",
                    b,
                )
                .await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let lake = target.open().await;
    for w in 0..WRITERS {
        assert_eq!(
            lake.txn_version(&format!("g-{w}")).await.unwrap(),
            Some(BATCHES - 1),
            "writer {w}'s last commit is missing"
        );
    }
    let n = WRITERS as i64 * BATCHES;
    assert_eq!(sum_and_count(&lake, "t1").await, (n, n * 100));
    assert_eq!(rows_and_distinct(&lake).await, (n, n));
}

/// A table created with a checkpoint interval of 5 has a checkpoint at its
/// tenth version (9) after 12 commits, so a new reader starts from it instead of
/// replaying every JSON commit.
async fn checkpoints_are_written_every_n_commits(target: Target) {
    let options = LakeOptions {
        checkpoint_interval: 5,
        ..target.options()
    };
    let lake = target.open_with(options).await;
    for offset in 0..12 {
        commit_one(&lake, "g-0", &format!("e{offset}"), "2026-01-02", offset).await;
    }
    let files = target.files().await;
    assert!(
        files.iter().any(|f| f == "_delta_log/_last_checkpoint"),
        "no _last_checkpoint in {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("_delta_log/00000000000000000009.checkpoint")),
        "no checkpoint at version 9 in {files:?}"
    );
    let reader = target.open().await;
    assert_eq!(reader.version().await.unwrap(), 12);
    assert_eq!(sum_and_count(&reader, "t1").await, (12, 1200));
}

/// Two handles take turns, so each append finds the other's commit first
/// and loads the table: the commits due a checkpoint still get one.
async fn checkpoints_are_written_when_writers_take_turns(target: Target) {
    let options = LakeOptions {
        checkpoint_interval: 5,
        ..target.options()
    };
    let writers = [
        target.open_with(options.clone()).await,
        target.open_with(options).await,
    ];
    for offset in 0..12 {
        let lake = &writers[offset as usize % 2];
        commit_one(lake, "g-0", &format!("e{offset}"), "2026-01-02", offset).await;
    }
    let files = target.files().await;
    for version in [4, 9] {
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(&format!("_delta_log/{version:020}.checkpoint"))),
            "no checkpoint at version {version} in {files:?}"
        );
    }
    let reader = target.open().await;
    assert_eq!(sum_and_count(&reader, "t1").await, (12, 1200));
}

/// Readers serve the state they loaded for `read_refresh`, then look for
/// new commits once; writers always look.
async fn readers_refresh_at_most_every_read_refresh(target: Target) {
    let slow = target
        .open_with(LakeOptions {
            read_refresh: Duration::from_secs(3600),
            ..target.options()
        })
        .await;
    let quick = target
        .open_with(LakeOptions {
            read_refresh: Duration::from_millis(200),
            ..target.options()
        })
        .await;
    let before = slow.version().await.unwrap();
    assert_eq!(quick.version().await.unwrap(), before);
    let writer = target.open().await;
    commit_one(&writer, "g-0", "a", "2026-01-02", 0).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while quick.version().await.unwrap() == before {
        assert!(
            Instant::now() < deadline,
            "the quick reader never saw the commit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sum_and_count(&quick, "t1").await, (1, 100));
    // The slow reader still serves what it loaded...
    assert_eq!(slow.version().await.unwrap(), before);
    assert_eq!(sum_and_count(&slow, "t1").await, (0, 0));
    // ...until the handle writes or reads a transaction version.
    assert_eq!(slow.txn_version("g-0").await.unwrap(), Some(0));
    assert_eq!(slow.version().await.unwrap(), before + 1);
}

/// A handle's appends go past the table state it loaded (no state is
/// loaded after each commit), yet its own readers see each one at once,
/// however long they may otherwise serve a loaded state.
async fn a_writers_own_appends_are_readable_at_once(target: Target) {
    let lake = target
        .open_with(LakeOptions {
            read_refresh: Duration::from_secs(3600),
            ..target.options()
        })
        .await;
    let before = lake.version().await.unwrap();
    for offset in 0..3 {
        commit_one(&lake, "g-0", &format!("e{offset}"), "2026-01-02", offset).await;
        assert_eq!(lake.version().await.unwrap(), before + 1 + offset as u64);
        assert_eq!(
            sum_and_count(&lake, "t1").await,
            (offset + 1, (offset + 1) * 100)
        );
    }
    assert_eq!(
        lake.known_txn_versions(&["g-0".into(), "g-1".into()])
            .await
            .unwrap(),
        [Some(2), None]
    );
}

/// Two compactions race each other and a writer: both rewrite each
/// partition from the same snapshot before either commits (a barrier holds
/// them), so for each partition exactly one commit lands and the other
/// conflicts. The table ends with every row once.
async fn compaction_during_writes_changes_no_total(target: Target) {
    let lake = target.open().await;
    for offset in 0..8 {
        let date = if offset % 2 == 0 {
            "2026-01-02"
        } else {
            "2026-02-02"
        };
        commit_one(&lake, "g-0", &format!("e{offset}"), date, offset).await;
    }
    let writer = tokio::spawn(async move {
        for offset in 8..20 {
            let date = if offset % 2 == 0 {
                "2026-01-03"
            } else {
                "2026-02-03"
            };
            commit_one(&lake, "g-0", &format!("e{offset}"), date, offset).await;
        }
    });
    let (a, b) = (target.open().await, target.open().await);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    a.pause_compactions_at(Some(barrier.clone())).await;
    b.pause_compactions_at(Some(barrier)).await;
    let (sa, sb) = tokio::join!(a.compact(), b.compact());
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa.partitions + sb.partitions, 2, "{sa:?} {sb:?}");
    assert_eq!(sa.conflicts + sb.conflicts, 2, "{sa:?} {sb:?}");
    writer.await.unwrap();

    let reader = target.open().await;
    assert_eq!(sum_and_count(&reader, "t1").await, (20, 2000));
    assert_eq!(rows_and_distinct(&reader).await, (20, 20));
    // A last compaction, alone, leaves one file per partition.
    let last = reader.compact().await.unwrap();
    assert_eq!(last.conflicts, 0, "{last:?}");
    assert_eq!(reader.files().await.unwrap().len(), 2);
    assert_eq!(sum_and_count(&reader, "t1").await, (20, 2000));
    assert_eq!(rows_and_distinct(&reader).await, (20, 20));
}

/// A plain vacuum deletes the files compaction replaced; a full one also
/// deletes uploads no commit references (a writer killed between its upload
/// and its commit); neither touches a file the table reads.
async fn vacuum_removes_only_what_no_commit_needs(target: Target) {
    let lake = target.open().await;
    for offset in 0..3 {
        commit_one(&lake, "g-0", &format!("e{offset}"), "2026-01-02", offset).await;
    }
    let orphan = "tenant_id=t1/month=2026-01/part-00000-orphan-of-a-crash.parquet";
    target.put(orphan, b"never committed".to_vec()).await;
    let compacted = lake.compact().await.unwrap();
    assert_eq!(
        (compacted.files_removed, compacted.files_added),
        (3, 1),
        "{compacted:?}"
    );

    let dry = lake.vacuum(Duration::ZERO, false, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.files.len(), 3, "{dry:?}");
    assert_eq!(
        target
            .files()
            .await
            .iter()
            .filter(|f| f.ends_with(".parquet"))
            .count(),
        5
    );

    let lite = lake.vacuum(Duration::ZERO, false, false).await.unwrap();
    assert_eq!(lite.files.len(), 3, "{lite:?}");
    assert!(target.files().await.iter().any(|f| f == orphan));

    let full = lake.vacuum(Duration::ZERO, true, false).await.unwrap();
    assert!(
        full.files
            .iter()
            .any(|f| f.ends_with("orphan-of-a-crash.parquet")),
        "{full:?}"
    );
    let parquet = target.data_files().await;
    assert_eq!(parquet.len(), 1, "{parquet:?}");
    assert_eq!(sum_and_count(&lake, "t1").await, (3, 300));
    assert_eq!(rows_and_distinct(&target.open().await).await, (3, 3));
}

/// Compaction moves rows (its removes carry no data change); a delete by
/// another writer drops them. A reader that keeps the rows of the files it
/// read (the query service's current state) must tell the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_that_drop_rows_are_told_from_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("lake").display());
    let options = LakeOptions {
        read_refresh: Duration::ZERO,
        ..LakeOptions::default()
    };
    let lake = Lake::open_with(&url, options).await.unwrap();
    for i in 0..3 {
        commit_one(&lake, "g-0", &format!("e{i}"), "2026-01-02", i).await;
    }
    let written = lake.version().await.unwrap();
    assert_eq!(lake.compact().await.unwrap().files_removed, 3);
    let compacted = lake.version().await.unwrap();
    assert!(compacted > written);
    assert!(!lake.rows_removed_between(0, compacted).await.unwrap());

    // Another writer deletes a row (delta-rs here; Spark or a script alike).
    let table = deltalake::open_table(url::Url::parse(&url).unwrap())
        .await
        .unwrap();
    table
        .delete()
        .with_predicate("external_id = 'e1'")
        .await
        .unwrap();
    let deleted = lake.version().await.unwrap();
    assert!(deleted > compacted);
    assert!(lake.rows_removed_between(compacted, deleted).await.unwrap());
    assert!(lake.rows_removed_between(0, deleted).await.unwrap());
    assert!(!lake.rows_removed_between(written, compacted).await.unwrap());
}

/// A table made by a release before the FX columns: opening it adds them
/// (nullable), its old files read as nulls, new rows carry values, and
/// compaction rewrites old and new files together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_an_older_release_gets_the_new_columns() {
    use deltalake::kernel::StructType;
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("lake").display());
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    // The old table: every column up to `log_offset`.
    let full = spendstream_schemas::arrow_schema();
    let old_len = full.index_of("log_offset").unwrap() + 1;
    assert!(old_len < full.fields().len());
    let old = deltalake::arrow::datatypes::Schema::new(full.fields()[..old_len].to_vec());
    let kernel: StructType = (&old).try_into_kernel().unwrap();
    let table = deltalake::DeltaTableBuilder::from_url(url::Url::parse(&url).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .create()
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(["tenant_id", "month"])
        .await
        .unwrap();
    let batch = to_record_batch(&[record("t1", "old", "1.00", "2026-01-05", 0)]).unwrap();
    let batch = batch.project(&(0..old_len).collect::<Vec<_>>()).unwrap();
    let mut writer = deltalake::writer::RecordBatchWriter::for_table(&table).unwrap();
    deltalake::writer::DeltaWriter::write(&mut writer, batch)
        .await
        .unwrap();
    let mut table = table;
    deltalake::writer::DeltaWriter::flush_and_commit(&mut writer, &mut table)
        .await
        .unwrap();

    let options = LakeOptions {
        read_refresh: Duration::ZERO,
        ..LakeOptions::default()
    };
    let lake = Lake::open_with(&url, options.clone()).await.unwrap();
    // Opening again finds them there.
    Lake::open_with(&url, options).await.unwrap();
    let mut new = record("t1", "new", "2.00", "2026-01-06", 1);
    new.base = Some(spendstream_schemas::BaseAmount {
        minor: 216,
        currency: "USD".into(),
        rate: "1.08".into(),
        rate_date: "2026-01-06".parse().unwrap(),
    });
    lake.commit_once(&txn("g-0", 1), |_| {
        to_record_batch(std::slice::from_ref(&new))
    })
    .await
    .unwrap();
    assert_eq!(sum_and_count(&lake, "t1").await, (2, 300));

    assert_eq!(base_amounts(&lake).await, [None, Some(216)]);
    assert_eq!(lake.compact().await.unwrap().files_removed, 2);
    assert_eq!(base_amounts(&lake).await, [None, Some(216)]);
    assert_eq!(sum_and_count(&lake, "t1").await, (2, 300));
}

/// `base_amount_minor` of every row of `lake`, sorted.
async fn base_amounts(lake: &Lake) -> Vec<Option<i64>> {
    use deltalake::arrow::array::{Array, Int64Array};
    let (_, files) = lake.snapshot_files().await.unwrap();
    let mut values = Vec::new();
    for file in files {
        for b in lake
            .read_columns(&file, &["base_amount_minor"])
            .await
            .unwrap()
        {
            let column = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            values.extend((0..column.len()).map(|i| column.is_valid(i).then(|| column.value(i))));
        }
    }
    values.sort();
    values
}

/// `read_columns` hands text that repeats over as a dictionary (keys and
/// a few values, not the text of every row; all-null text too, as null
/// keys), and unique text and numbers as they are; the values are the
/// same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_text_is_read_as_the_files_dictionary() {
    use deltalake::arrow::array::{Array, ArrayAccessor, DictionaryArray, Int64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Int32Type};

    let target = Target::file().await;
    let lake = target.open().await;
    for i in 0..3 {
        commit_one(&lake, "g-0", &format!("e{i}"), "2026-01-02", i).await;
    }
    let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let (_, files) = lake.snapshot_files().await.unwrap();
    let mut rows = Vec::new();
    for file in &files {
        let columns = ["expense_id", "currency", "version", "related_external_id"];
        for b in lake.read_columns(file, &columns).await.unwrap() {
            let types: Vec<&DataType> = b.columns().iter().map(|c| c.data_type()).collect();
            assert_eq!(
                types,
                [&DataType::Utf8, &dictionary, &DataType::Int64, &dictionary]
            );
            let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let currencies = b
                .column(1)
                .as_any()
                .downcast_ref::<DictionaryArray<Int32Type>>()
                .unwrap()
                .downcast_dict::<StringArray>()
                .unwrap();
            let versions = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
            assert_eq!(b.column(3).null_count(), b.num_rows());
            for i in 0..b.num_rows() {
                rows.push((
                    ids.value(i).to_string(),
                    currencies.value(i).to_string(),
                    versions.value(i),
                ));
            }
        }
    }
    rows.sort_by_key(|r| r.2);
    let expected: Vec<(String, String, i64)> = (0..3)
        .map(|i| {
            let id = spendstream_schemas::expense_id("t1", "s", &format!("e{i}"));
            (id.to_string(), "EUR".to_string(), i)
        })
        .collect();
    assert_eq!(rows, expected);
}

/// Per-row-unique columns are written without a dictionary (it only costs
/// the writer), the others keep theirs; the expense ids are not compressed,
/// the rest are: by the processors' appends and by compaction alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_columns_are_written_without_a_dictionary() {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};

    let target = Target::file().await;
    let Target::File(dir) = &target else {
        unreachable!()
    };
    let root = dir.path().join("lake");
    let lake = target.open().await;
    for i in 0..3 {
        commit_one(&lake, "g-0", &format!("e{i}"), "2026-01-02", i).await;
    }
    let encoded = async |compacted: bool| {
        let files = target.data_files().await;
        assert!(files.len() >= if compacted { 4 } else { 3 }, "{files:?}");
        files
            .iter()
            .flat_map(|path| {
                let file = std::fs::File::open(root.join(path)).unwrap();
                let reader = SerializedFileReader::new(file).unwrap();
                let group = reader.metadata().row_group(0).clone();
                group
                    .columns()
                    .iter()
                    .map(|c| {
                        (
                            c.column_path().string(),
                            c.dictionary_page_offset().is_some(),
                            c.compression() == Compression::UNCOMPRESSED,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    let check = |columns: std::collections::BTreeSet<(String, bool, bool)>| {
        for unique in ["expense_id", "external_id", "version", "log_offset"] {
            // (column, dictionary, uncompressed): one way in every file.
            let plain = unique == "expense_id";
            let seen: Vec<_> = columns.iter().filter(|c| c.0 == unique).collect();
            assert_eq!(seen, [&(unique.to_string(), false, plain)], "{unique}");
        }
        let category: Vec<_> = columns.iter().filter(|c| c.0 == "category").collect();
        assert_eq!(category, [&("category".to_string(), true, false)]);
    };
    check(encoded(false).await);
    let stats = lake.compact().await.unwrap();
    assert!(stats.files_added >= 1, "{stats:?}");
    check(encoded(true).await);
}
