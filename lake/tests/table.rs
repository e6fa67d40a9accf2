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

    let batch = to_record_batch(&[
        record("t1", "a", "1.50", "2026-01-05", 0),
        record("t1", "b", "2.25", "2026-02-05", 1),
        record("t2", "c", "100", "2026-02-05", 2),
    ])
    .unwrap();
    let out = lake
        .append(
            batch,
            vec![AppTxn {
                app_id: "g-0".into(),
                version: 2,
            }],
        )
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
        .append(
            to_record_batch(&[record("t1", "d", "0.25", "2026-01-09", 3)]).unwrap(),
            vec![AppTxn {
                app_id: "g-0".into(),
                version: 3,
            }],
        )
        .await
        .unwrap();
    assert_eq!(lake.txn_version("g-0").await.unwrap(), Some(3));
    assert_eq!(sum_and_count(&lake, "t1").await, (3, 400));

    let stats = lake.compact(Duration::from_secs(0)).await.unwrap();
    assert!(stats.files_removed >= 2, "{stats:?}");
    assert_eq!(sum_and_count(&lake, "t1").await, (3, 400));
}
