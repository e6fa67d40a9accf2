//! Lakes of known records for the query tests.

#![allow(dead_code)]

use chrono::Utc;
use spendstream_lake::{AppTxn, Lake};
use spendstream_query_api::sql::SqlLimits;
use spendstream_schemas::{Category, EnrichedRecord, ExpenseRecord, expense_id, to_record_batch};
use std::time::Duration;

/// The `version` of the expense `external_id` of `tenant` (source `s`) whose
/// other fields are the record-contract JSON members in `fields` (e.g.
/// `"transaction_date":"2026-01-02","amount":"1.00","currency":"EUR"`).
pub fn enriched(
    tenant: &str,
    external_id: &str,
    version: i64,
    fields: &str,
    category: Category,
    merchant_normalized: Option<&str>,
) -> EnrichedRecord {
    let raw = format!(
        r#"{{"source":"s","external_id":"{external_id}","account_id":"a-{tenant}",{fields}}}"#
    );
    let now = Utc::now();
    EnrichedRecord {
        expense_id: expense_id(tenant, "s", external_id),
        tenant_id: tenant.into(),
        version,
        record: ExpenseRecord::from_json(&raw).unwrap_or_else(|e| panic!("{raw}: {e:?}")),
        category,
        merchant_normalized: merchant_normalized.map(str::to_string),
        batch_id: "b".into(),
        ingested_at: now,
        processed_at: now,
        log_partition: 0,
        log_offset: version,
    }
}

/// A lake in a new directory holding `rows` in one commit.
pub async fn lake_with(rows: &[EnrichedRecord]) -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&format!("file://{}", dir.path().join("lake").display()))
        .await
        .unwrap();
    lake.commit_once(
        &[AppTxn {
            app_id: "g-0".into(),
            version: 0,
        }],
        |_| to_record_batch(rows),
    )
    .await
    .unwrap();
    (dir, lake)
}

/// Small limits, so the hostile corpus breaks them quickly.
pub fn limits() -> SqlLimits {
    SqlLimits {
        timeout: Duration::from_secs(5),
        memory_bytes: 16 << 20,
        max_rows: 1_000,
        max_result_bytes: 4 << 20,
        max_sql_bytes: 16 << 10,
    }
}
