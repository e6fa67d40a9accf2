//! Crash tests against the real binary, writing the lake and ClickHouse: the
//! process is killed while the processors are mid-batch (SIGKILL), or aborts
//! between the sinks' writes and the offset commit, or between ClickHouse's
//! insert and its offsets; after a restart every accepted record is in the
//! reports exactly once, and ClickHouse's latest versions equal the lake's.

mod common;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Starts `spendstream up` on `dir` with ClickHouse at `clickhouse` (see
/// [`common::spawn`]).
fn spawn(dir: &Path, clickhouse: &str, failpoint: Option<&str>) -> common::Server {
    let mut args = vec![
        "up".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--clickhouse".into(),
        clickhouse.to_string(),
        "--migrate".into(),
    ];
    args.extend(
        ["--batch-max-records", "700", "--batch-max-wait-ms", "50"]
            .iter()
            .map(|a| a.to_string()),
    );
    common::spawn(&args, failpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_counts_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = common::clickhouse_url();
    let mut server = spawn(dir.path(), &clickhouse, None);
    common::wait_healthy(&mut server).await;
    let model = common::ingest(&server.base, 0, 30_000).await;

    // Kill while the processors are partway through: some written, not all.
    let mut poll = common::Deadline::new(Duration::from_secs(120), Duration::from_millis(5));
    loop {
        let written = common::counter(
            &server.base,
            "spendstream_processor_records_total{outcome=\"written\"}",
        )
        .await;
        if written > 0.0 && written < model.len() as f64 {
            break;
        }
        assert!(
            written < model.len() as f64,
            "processing finished before the kill; make the load larger"
        );
        poll.tick("processing never started").await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();

    let mut server = spawn(dir.path(), &clickhouse, None);
    common::wait_healthy(&mut server).await;
    common::wait_for_totals(&server.base, &model).await;
    // Still exact once everything settled, with more records arriving.
    let more = common::ingest(&server.base, 30_000, 2_000).await;
    let mut all = model;
    all.extend(more);
    let rows = common::settle_exactly(&server.base, dir.path(), &all).await;
    assert_eq!(rows, all.len() as i64);
    common::assert_clickhouse_matches_lake(&server.base, &clickhouse, "acme", "all").await;
}

/// Aborts at `failpoint` with the first batch, restarts, and checks that
/// every record is in the lake once and ClickHouse's latest versions equal
/// the lake's. Returns the restarted server and its data directory.
async fn abort_and_replay(failpoint: &str) -> (common::Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = common::clickhouse_url();
    let mut server = spawn(dir.path(), &clickhouse, Some(failpoint));
    common::wait_healthy(&mut server).await;
    let model = common::ingest(&server.base, 0, 4_000).await;
    // The first batch aborts the process before its offsets commit.
    let mut poll = common::Deadline::new(Duration::from_secs(60), Duration::from_millis(20));
    while server.child.try_wait().unwrap().is_none() {
        poll.tick("the failpoint never fired").await;
    }

    let mut server = spawn(dir.path(), &clickhouse, None);
    common::wait_healthy(&mut server).await;
    let rows = common::settle_exactly(&server.base, dir.path(), &model).await;
    assert_eq!(rows, model.len() as i64);
    common::assert_clickhouse_matches_lake(&server.base, &clickhouse, "acme", "all").await;
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_between_the_sinks_and_the_offset_commit_is_replayed_without_duplicates() {
    let (server, _dir) = abort_and_replay("after_sinks").await;
    // The batch the sinks already held was detected and skipped.
    let skipped = common::counter(
        &server.base,
        "spendstream_processor_records_total{outcome=\"replay_skipped\"}",
    )
    .await;
    assert!(skipped > 0.0, "no replay was detected: {skipped}");
    let body: Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["clickhouse"], "ok", "{body}");
}

/// ClickHouse has the rows but not its offsets: the replay inserts them
/// again as the same versions, which fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_between_the_clickhouse_insert_and_its_offsets_counts_once() {
    abort_and_replay("after_clickhouse_insert").await;
}
