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

/// SIGTERM while importers keep sending: the process stops accepting,
/// answers what is in flight, commits the processors' batch and exits 0
/// within its grace period; after a restart every record it acknowledged
/// is counted once, and nothing had to be replayed (the batch in hand was
/// committed, not abandoned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_within_the_grace_period_and_loses_no_acknowledged_record() {
    use std::sync::{Arc, Mutex};
    const GRACE: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = common::clickhouse_url();
    let mut args = vec![
        "up".to_string(),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--clickhouse".into(),
        clickhouse.clone(),
        "--migrate".into(),
        "--shutdown-grace-secs".into(),
        GRACE.as_secs().to_string(),
    ];
    args.extend(["--batch-max-records", "700", "--batch-max-wait-ms", "50"].map(String::from));
    let mut server = common::spawn(&args, None);
    common::wait_healthy(&mut server).await;

    // Four importers, each sending 250-record requests until the server is
    // gone; a record counts once its request was answered 202.
    let acknowledged = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut importers = tokio::task::JoinSet::new();
    for importer in 0..4usize {
        let (base, acknowledged, refused) =
            (server.base.clone(), acknowledged.clone(), refused.clone());
        importers.spawn(async move {
            let client = reqwest::Client::new();
            for request in 0.. {
                let (body, part) = common::acme_records(importer * 1_000_000 + request * 250, 250);
                let sent = client
                    .post(format!("{base}/v1/expenses"))
                    .bearer_auth(common::token("acme", &[spendstream_http::Role::Ingest]))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => acknowledged.lock().unwrap().extend(part),
                    Ok(_) => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // The listener is closed: this importer is done.
                    Err(_) => return,
                }
            }
        });
    }
    let written = "spendstream_processor_records_total{outcome=\"written\"}";
    let mut poll = common::Deadline::new(Duration::from_secs(120), Duration::from_millis(20));
    while common::counter(&server.base, written).await < 2_000.0
        || acknowledged.lock().unwrap().len() < 5_000
    {
        poll.tick("the load never got going").await;
    }

    common::sigterm(&server.child);
    let (status, took) = common::wait_exit(&mut server.child, GRACE * 2).await;
    assert!(status.success(), "exited with {status} after SIGTERM");
    assert!(
        took <= GRACE + Duration::from_secs(2),
        "took {took:?} to stop, the grace period is {GRACE:?}"
    );
    let mut poll = common::Deadline::new(Duration::from_secs(30), Duration::from_millis(20));
    while !importers.is_empty() {
        if let Some(done) = importers.try_join_next() {
            done.unwrap();
        } else {
            poll.tick("the importers did not notice the server stopped")
                .await;
        }
    }

    // Requests in flight at the signal were answered 202, not refused.
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        refused, 0,
        "{refused} requests were answered other than 202"
    );
    let model = acknowledged.lock().unwrap().clone();
    let mut server = common::spawn(&args, None);
    common::wait_healthy(&mut server).await;
    let rows = common::settle_exactly(&server.base, dir.path(), &model).await;
    assert_eq!(rows, model.len() as i64);
    let replayed = common::counter(
        &server.base,
        "spendstream_processor_records_total{outcome=\"replay_skipped\"}",
    )
    .await;
    assert_eq!(
        replayed, 0.0,
        "the stop left a batch the sinks held uncommitted"
    );
    common::assert_clickhouse_matches_lake(&server.base, &clickhouse, "acme", "all").await;
}
