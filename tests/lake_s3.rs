//! The pipeline with the lake on a real S3 API (moto, started by
//! scripts/test): a crash between a writer's Parquet upload and its commit,
//! compaction and vacuum while records arrive, the store frozen for 20 s,
//! backup and restore into a new prefix, and credentials kept out of every
//! line the binary prints. (Two processor processes sharing one S3 table:
//! `tests/kafka.rs`; the end-to-end scenario on S3: `tests/e2e.rs`.)

mod common;

use common::{Deadline, TestLake};
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use spendstream_http::Role;
use spendstream_lake::testing::{Moto, SECRET_KEY, TestBucket};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// `spendstream up` on `dir` with the lake on `lake` (see [`common::spawn`]).
fn spawn(dir: &Path, lake: &TestLake, failpoint: Option<&str>) -> common::Server {
    let args: Vec<String> = [
        "up",
        "--data-dir",
        &dir.display().to_string(),
        "--lake",
        &lake.url(),
        "--batch-max-records",
        "700",
        "--batch-max-wait-ms",
        "50",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    common::spawn_with(&args, |cmd| {
        cmd.envs(lake.env());
        match failpoint {
            Some(f) => cmd.env("SPENDSTREAM_FAILPOINT", f),
            None => cmd.env_remove("SPENDSTREAM_FAILPOINT"),
        };
    })
    .0
}

/// In-process settings with the lake on `lake` (and no ClickHouse: these
/// tests are about the lake).
fn settings_on(dir: &Path, lake: &TestLake) -> spendstream::Settings {
    let mut settings = common::settings(dir);
    settings.clickhouse_url = None;
    lake.apply(&mut settings);
    settings
}

fn bucket(lake: &TestLake) -> &TestBucket {
    match lake {
        TestLake::S3(bucket) => bucket,
        TestLake::Local(_) => unreachable!("these tests run on S3"),
    }
}

/// Data files under the table's prefix, and those its current state reads.
async fn data_files(lake: &TestLake) -> (BTreeSet<String>, BTreeSet<String>) {
    let stored: BTreeSet<String> = bucket(lake)
        .keys("lake")
        .await
        .into_iter()
        .filter(|k| k.ends_with(".parquet") && !k.contains("_delta_log"))
        .map(|k| k.trim_start_matches("lake/").to_string())
        .collect();
    let read: BTreeSet<String> = lake
        .open()
        .await
        .files()
        .await
        .unwrap()
        .into_iter()
        .collect();
    (stored, read)
}

/// The process dies after uploading a batch's Parquet files and before
/// writing the commit that references them. The uploads are orphans: no
/// report counts them, the restarted processors write the batch again
/// (once), and a full vacuum deletes the orphans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_upload_and_commit_leaves_harmless_orphans_that_vacuum_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let lake = TestLake::s3().await;
    let mut server = spawn(dir.path(), &lake, Some("before_lake_commit"));
    common::wait_healthy(&mut server).await;
    // One request: the failpoint may end the process before a second one.
    let model = common::ingest(&server.base, 0, 2_000).await;
    let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(20));
    while server.child.try_wait().unwrap().is_none() {
        poll.tick("the failpoint never fired").await;
    }
    let (stored, read) = data_files(&lake).await;
    let orphans: BTreeSet<&String> = stored.difference(&read).collect();
    assert!(!orphans.is_empty(), "the crash left no upload behind");
    assert!(read.is_empty(), "a row was committed before the crash");

    let mut server = spawn(dir.path(), &lake, None);
    common::wait_healthy(&mut server).await;
    let rows = common::settle_exactly_in(&server.base, &lake, &model).await;
    assert_eq!(rows, model.len() as i64);
    drop(server);

    let url = lake.url();
    let full_vacuum = [
        "lake",
        "vacuum",
        "--lake",
        &url,
        "--full",
        "--retain",
        "0s",
        "--allow-short-retention",
    ];
    let dry = run_cli_async(&lake, &[&full_vacuum[..], &["--dry-run"]].concat()).await;
    for orphan in &orphans {
        assert!(
            dry.contains(orphan.as_str()),
            "{orphan} not listed in:\n{dry}"
        );
    }

    // Without the override a short retention is refused.
    let refused = common::command()
        .args(["lake", "vacuum", "--lake", &url, "--retain", "10m"])
        .envs(lake.env())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-short-retention"));

    run_cli_async(&lake, &full_vacuum).await;
    let (stored, read) = data_files(&lake).await;
    assert_eq!(stored, read, "orphans are left after a full vacuum");
    assert_eq!(common::lake_rows_in(&lake).await, (rows, rows));
}

/// The process dies after the lake committed a batch and before the log
/// offsets were committed: the restarted processors read the batch again,
/// find it in the lake's transactions and skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_lake_commit_and_the_offset_commit_is_skipped_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let lake = TestLake::s3().await;
    let mut server = spawn(dir.path(), &lake, Some("after_sinks"));
    common::wait_healthy(&mut server).await;
    // One request: the failpoint may end the process before a second one.
    let model = common::ingest(&server.base, 0, 2_000).await;
    let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(20));
    while server.child.try_wait().unwrap().is_none() {
        poll.tick("the failpoint never fired").await;
    }
    let mut server = spawn(dir.path(), &lake, None);
    common::wait_healthy(&mut server).await;
    let rows = common::settle_exactly_in(&server.base, &lake, &model).await;
    assert_eq!(rows, model.len() as i64);
    let skipped = common::counter(
        &server.base,
        "spendstream_processor_records_total{outcome=\"replay_skipped\"}",
    )
    .await;
    assert!(skipped > 0.0, "no replay was detected: {skipped}");
}

/// Compaction (the leader's periodic one, and operators' `spendstream lake
/// compact` at the same time) and vacuum run while records arrive and
/// reports are read: every report stays exact and no row is lost or
/// doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_vacuum_during_load_change_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let lake = TestLake::s3().await;
    let mut settings = settings_on(dir.path(), &lake);
    settings.compact_interval = Duration::from_secs(1);
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    let url = lake.url();

    // Lite vacuum deletes files compaction replaced more than 3 s ago: far
    // less than a real deployment keeps, still more than a report's state
    // lives (one refresh period), so every report below must keep answering.
    let vacuum = [
        "lake",
        "vacuum",
        "--lake",
        &url,
        "--retain",
        "3s",
        "--allow-short-retention",
    ];
    let deleted = |out: String| -> usize {
        out.strip_prefix("Deleted ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected vacuum output: {out}"))
    };
    let mut model = BTreeMap::new();
    let mut vacuumed = 0;
    for wave in 0..5 {
        // Re-sends of the previous wave's records make new versions too.
        model.extend(common::ingest_bumped(&base, wave * 1_000, 2_000, wave as i64).await);
        let out = run_cli_async(&lake, &["lake", "compact", "--lake", &url]).await;
        assert!(out.starts_with("Compacted "), "{out}");
        vacuumed += deleted(run_cli_async(&lake, &vacuum).await);
        common::wait_for_totals(&base, &model).await;
    }
    let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(500));
    while vacuumed == 0 {
        vacuumed += deleted(run_cli_async(&lake, &vacuum).await);
        poll.tick("vacuum never deleted a replaced file").await;
    }
    let rows = common::settle_exactly_in(&base, &lake, &model).await;
    assert!(rows >= model.len() as i64);

    // The periodic maintenance ran (it took the lease), and a last
    // compaction leaves one file per partition.
    let table = running.lake.clone().unwrap();
    assert!(
        table
            .txn_version("spendstream.maintenance.owner")
            .await
            .unwrap()
            .is_some(),
        "the periodic maintenance never took the lease"
    );
    run_cli_async(&lake, &["lake", "compact", "--lake", &url]).await;
    let files = table.files().await.unwrap();
    let partitions: BTreeSet<&str> = files
        .iter()
        .map(|f| f.rsplit_once('/').map_or("", |(dir, _)| dir))
        .collect();
    assert_eq!(files.len(), partitions.len(), "{files:?}");
    common::settle_exactly_in(&base, &lake, &model).await;
    running.shutdown().await.unwrap();
}

/// Runs `spendstream <args>` with `lake`'s environment (off the runtime's
/// threads); returns stdout, or panics with stderr.
async fn run_cli_async(lake: &TestLake, args: &[&str]) -> String {
    let env = lake.env();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = common::command().args(&args).envs(env).output().unwrap();
        assert!(
            out.status.success(),
            "spendstream {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// The store freezes for 20 s (SIGSTOP: connections hang, nothing answers)
/// while records keep arriving; the edge keeps accepting them into the
/// log, and once the store is back the processors catch up by themselves
/// with every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_frozen_for_20_s_loses_nothing_and_processors_resume() {
    let moto = Moto::start().await;
    let lake = TestLake::S3(TestBucket::create_at(&moto.endpoint).await);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_on(dir.path(), &lake);
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);

    let mut model = common::ingest(&base, 0, 2_000).await;
    common::wait_for_totals(&base, &model).await;
    moto.pause();
    let outage = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut next = 2_000;
    while tokio::time::Instant::now() < outage {
        model.extend(common::ingest(&base, next, 500).await);
        next += 500;
        tokio::time::sleep_until(outage.min(tokio::time::Instant::now() + Duration::from_secs(2)))
            .await;
    }
    moto.resume();
    model.extend(common::ingest(&base, next, 500).await);
    let rows = common::settle_exactly_in(&base, &lake, &model).await;
    assert_eq!(rows, model.len() as i64);
    running.shutdown().await.unwrap();
}

/// The runbook's backup (`docs/runbooks/lake-backup-restore.md`) done on a
/// live table: note the newest commit, copy every data file, then the log up
/// to that commit, last. A query service on the copy answers every report
/// as the original did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_copied_log_last_restores_into_a_new_prefix_with_equal_reports() {
    let dir = tempfile::tempdir().unwrap();
    let lake = TestLake::s3().await;
    let settings = settings_on(dir.path(), &lake);
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    let mut model = common::ingest(&base, 0, 3_000).await;
    model.extend(common::ingest_bumped(&base, 0, 1_000, 7).await);
    common::wait_for_totals(&base, &model).await;
    running.lake.clone().unwrap().compact().await.unwrap();

    let store = bucket(&lake).store();
    copy_table(store.as_ref(), "lake", "restored").await;

    let token = common::token("acme", &[Role::Read]);
    let queries = [
        "group_by=currency&status=all",
        "group_by=category&status=all",
        "group_by=currency&status=posted",
    ];
    let mut original = Vec::new();
    for q in queries {
        original.push(common::report(&base, &token, q).await);
    }

    // The same copy while processors commit: the copy is a consistent
    // table (every file its log names is there, no row twice), at some
    // commit at or after the quiet one.
    let (static_rows, _) = common::lake_rows_in(&lake).await;
    let more = tokio::spawn({
        let base = base.clone();
        async move { common::ingest(&base, 10_000, 3_000).await }
    });
    copy_table(store.as_ref(), "lake", "restored-live").await;
    more.await.unwrap();
    let live_copy =
        spendstream_lake::Lake::open_existing(&bucket(&lake).url("restored-live"), lake.options())
            .await
            .unwrap();
    let copied: BTreeSet<String> = bucket(&lake)
        .keys("restored-live")
        .await
        .into_iter()
        .collect();
    for file in live_copy.files().await.unwrap() {
        assert!(
            copied.contains(&format!("restored-live/{file}")),
            "the copy's log names {file}, which was not copied"
        );
    }
    let (rows, distinct) = spendstream_lake::testing::rows_and_distinct(&live_copy).await;
    assert_eq!(rows, distinct);
    assert!(rows >= static_rows, "{rows} < {static_rows}");
    running.shutdown().await.unwrap();

    let restore_dir = tempfile::tempdir().unwrap();
    let mut settings = settings_on(restore_dir.path(), &lake);
    settings.roles = spendstream::Roles::QUERY;
    settings.lake_url = bucket(&lake).url("restored");
    settings.lake_options = lake.options();
    let restored = spendstream::start(settings).await.unwrap();
    let restored_base = format!("http://{}", restored.addr);
    for (q, want) in queries.iter().zip(&original) {
        assert!(!want.is_empty());
        assert_eq!(
            &common::report(&restored_base, &token, q).await,
            want,
            "{q}"
        );
    }
    restored.shutdown().await.unwrap();
}

/// The runbook's copy of the table at `from` to `to`: the newest commit
/// first noted, then data files, then the log up to that commit.
async fn copy_table(store: &dyn object_store::ObjectStore, from: &str, to: &str) {
    use futures::TryStreamExt as _;
    let log = ObjectPath::from(format!("{from}/_delta_log"));
    let newest_commit = store
        .list(Some(&log))
        .try_filter_map(|m| async move {
            let name = m.location.filename().unwrap_or_default().to_string();
            Ok(name
                .strip_suffix(".json")
                .and_then(|v| v.parse::<u64>().ok()))
        })
        .try_fold(0, |a, b| async move { Ok(a.max(b)) })
        .await
        .unwrap();
    let all: Vec<ObjectPath> = store
        .list(Some(&ObjectPath::from(from)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    let (log_files, data): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|p| p.as_ref().contains("/_delta_log/"));
    let rename = |p: &ObjectPath| ObjectPath::from(format!("{to}{}", &p.as_ref()[from.len()..]));
    for path in &data {
        store.copy(path, &rename(path)).await.unwrap();
    }
    // Commits and checkpoints up to the noted commit, nothing newer, and not
    // `_last_checkpoint` (it may name a newer checkpoint; readers list).
    let log_files = log_files.into_iter().filter(|p| {
        let name = p.filename().unwrap_or_default();
        name.split('.')
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v <= newest_commit)
    });
    for path in log_files {
        store.copy(&path, &rename(&path)).await.unwrap();
    }
}

/// With debug logs, a lake that cannot be opened and one that works: the
/// secret key never appears in anything the binary prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_logs_or_errors() {
    let lake = TestLake::s3().await;
    spendstream_lake::Lake::open_with(&lake.url(), lake.options())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (url, works) in [
        (lake.url(), true),
        ("s3://no-such-bucket-spendstream/lake".to_string(), false),
        (format!("s3://key:{SECRET_KEY}@bucket/lake"), false),
    ] {
        let out = common::command()
            .args(["lake", "compact", "--lake", &url])
            .args(["--data-dir", &dir.path().display().to_string()])
            .envs(lake.env())
            .env("SPENDSTREAM_LOG_LEVEL", "trace")
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !printed.contains(SECRET_KEY),
            "{url} printed the secret:\n{printed}"
        );
        assert_eq!(out.status.success(), works, "{url}:\n{printed}");
    }
}
