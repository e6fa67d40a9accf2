//! The lake table against a real directory: creation, transactional appends,
//! reads through DataFusion, compaction.

use chrono::Utc;
use datafusion::prelude::SessionContext;
use spendstream_lake::{AppTxn, Lake, WriteOutcome};
use spendstream_schemas::{Category, EnrichedRecord, ExpenseRecord, expense_id, to_record_batch};
use std::time::Duration;

fn record(tenant: &str, ext: &str, amount: &str, date: &str, offset: i64) -> EnrichedRecord {
    let raw = format!(
        r#"{{"source":"s","external_id":"{ext}","account_id":"a","transaction_date":"{date}","amount":"{amount}","currency":"EUR"}}"#
    );
    let now = Utc::now();
    EnrichedRecord {
        expense_id: expense_id(tenant, "s", ext),
        tenant_id: tenant.into(),
        version: offset,
        record: ExpenseRecord::from_json(&raw).unwrap(),
        category: Category::Other,
        merchant_normalized: None,
        batch_id: "b".into(),
        ingested_at: now,
        processed_at: now,
        log_partition: 0,
        log_offset: offset,
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_commit_txns_and_are_readable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("lake").display());
    let lake = Lake::open(&url).await.unwrap();
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
    let other = Lake::open(&url).await.unwrap();
    assert_eq!(other.txn_version("g-0").await.unwrap(), Some(2));
    other
        .commit_once(&txn("g-0", 3), |_| {
            to_record_batch(&[record("t1", "d", "0.25", "2026-01-09", 3)])
        })
        .await
        .unwrap();
    assert_eq!(lake.txn_version("g-0").await.unwrap(), Some(3));
    assert_eq!(sum_and_count(&lake, "t1").await, (3, 400));

    let stats = lake.compact(Duration::from_secs(0)).await.unwrap();
    assert!(stats.files_removed >= 2, "{stats:?}");
    assert_eq!(sum_and_count(&lake, "t1").await, (3, 400));
}

/// Retrying a commit whose call failed after the commit file was written
/// (a post-commit hook, a lost response) finds it in the table and writes
/// nothing: the check and the write are one step, repeated on every try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_retried_after_it_was_written_is_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("lake").display());
    let lake = Lake::open(&url).await.unwrap();
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
    let other = Lake::open(&url).await.unwrap();
    other
        .commit_once(&txn("g-0", 2), |held| {
            assert_eq!(held.get("g-0"), Some(&1), "the first commit is not visible");
            to_record_batch(&[record("t1", "c", "4.00", "2026-01-07", 2)])
        })
        .await
        .unwrap();
    // The retry of the first batch: nothing left to write.
    let retry = lake
        .commit_once(&txn("g-0", 1), |_| {
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_generations_increase_with_each_log_that_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("lake").display());
    let lake = Lake::open(&url).await.unwrap();
    let other = Lake::open(&url).await.unwrap();
    let (a, b) = tokio::join!(lake.log_generation("log-a"), other.log_generation("log-a"));
    assert_eq!((a.unwrap(), b.unwrap()), (1, 1));
    assert_eq!(lake.log_generation("log-a").await.unwrap(), 1);
    assert_eq!(other.log_generation("log-b").await.unwrap(), 2);
    assert_eq!(lake.log_generation("log-b").await.unwrap(), 2);
    // Back to the first log: it must outrank what log-b wrote.
    assert_eq!(lake.log_generation("log-a").await.unwrap(), 3);
    assert_eq!(sum_and_count(&lake, "t1").await, (0, 0));
}
