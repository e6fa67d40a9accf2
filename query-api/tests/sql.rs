//! Tenant-scoped SQL against a real lake holding three tenants: every query
//! sees only the caller's rows, and a corpus of hostile statements each ends
//! in a clean 4xx within the limits.

mod support;

use serde_json::Value;
use spendstream_lake::Lake;
use spendstream_query_api::sql::{SqlResult, answer};
use spendstream_schemas::{Category, EnrichedRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fixtures::limits;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
/// Expenses per tenant; every fifth has a second version.
const PER_TENANT: usize = 40;

fn record(tenant: &str, i: usize, version: i64) -> EnrichedRecord {
    let fields = format!(
        r#""transaction_date":"2026-0{}-0{}","amount":"{}.{:02}","currency":"EUR","merchant_name":"shop {tenant}""#,
        1 + i % 3,
        1 + i % 9,
        i + version as usize,
        i % 100
    );
    support::fixtures::enriched(
        tenant,
        &format!("{tenant}-{i}"),
        version,
        &fields,
        Category::Other,
        None,
    )
}

async fn lake() -> (tempfile::TempDir, Arc<Lake>) {
    let mut rows = Vec::new();
    for tenant in TENANTS {
        for i in 0..PER_TENANT {
            rows.push(record(tenant, i, 1));
            if i % 5 == 0 {
                rows.push(record(tenant, i, 2));
            }
        }
    }
    let (dir, lake) = support::fixtures::lake_with(&rows).await;
    (dir, Arc::new(lake))
}

fn column(result: &SqlResult, i: usize) -> Vec<&Value> {
    result.rows.iter().map(|r| &r[i]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_sees_only_the_callers_rows() {
    let (_dir, lake) = lake().await;
    let limits = limits();
    let run = |sql: &'static str| {
        let (lake, limits) = (&lake, &limits);
        async move {
            answer(lake, "acme", sql, limits)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };

    let tenants = run("SELECT DISTINCT tenant_id FROM expenses").await;
    assert_eq!(column(&tenants, 0), [&Value::from("acme")]);
    let versions = run("SELECT COUNT(*) FROM expenses").await;
    assert_eq!(
        versions.rows[0][0],
        Value::from(PER_TENANT + PER_TENANT / 5)
    );
    let latest = run("SELECT COUNT(*), COUNT(DISTINCT expense_id) FROM expenses_latest").await;
    assert_eq!(
        latest.rows[0],
        [Value::from(PER_TENANT), Value::from(PER_TENANT)]
    );
    // The latest view holds version 2 where there is one.
    let v2 = run("SELECT COUNT(*) FROM expenses_latest WHERE version = 2").await;
    assert_eq!(v2.rows[0][0], Value::from(PER_TENANT / 5));

    // Ways around the views find nothing of the others.
    for sql in [
        "SELECT * FROM expenses WHERE tenant_id <> 'acme'",
        "SELECT * FROM expenses WHERE tenant_id = 'globex' OR 1 = 1 AND tenant_id <> 'acme'",
        "SELECT a.* FROM expenses a JOIN expenses_latest b ON a.expense_id = b.expense_id WHERE a.tenant_id = 'initech'",
        "SELECT * FROM (SELECT * FROM expenses UNION ALL SELECT * FROM expenses_latest) WHERE merchant_name LIKE '%globex%'",
        "WITH x AS (SELECT * FROM expenses) SELECT * FROM x WHERE account_id = 'a-globex'",
        "SELECT * FROM expenses WHERE expense_id IN (SELECT expense_id FROM expenses WHERE tenant_id = 'initech')",
        "SELECT * FROM information_schema.tables WHERE table_name NOT IN ('expenses', 'expenses_counted', 'expenses_latest') AND table_schema = 'public'",
    ] {
        let result = run(sql).await;
        assert!(result.rows.is_empty(), "{sql} returned {:?}", result.rows);
    }
    let tables = run(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .await;
    assert_eq!(
        column(&tables, 0),
        [
            &Value::from("expenses"),
            &Value::from("expenses_counted"),
            &Value::from("expenses_latest")
        ]
    );

    // Money comes back exact, as decimal text.
    let total = run("SELECT CAST(SUM(amount_minor) AS DECIMAL(38, 0)) FROM expenses_latest").await;
    assert!(total.rows[0][0].is_string(), "{:?}", total.rows);
    assert_eq!(total.columns[0].r#type, "Decimal128(38, 0)");
}

/// At least 50 statements meant to escape, break or exhaust: each gets a
/// 4xx with a code, within the limits, and the process carries on. (A
/// query cancelled at its time limit must also stop working: the test
/// binary's runtime waits for what is still running when the test ends,
/// which made this test take minutes while Cartesian products were
/// allowed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_statements_end_in_a_clean_4xx() {
    let (dir, lake) = lake().await;
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "a,b\n1,2\n").unwrap();
    let secret = secret.display().to_string();
    let corpus = support::hostile::corpus(&secret);
    assert!(corpus.len() >= 50, "{}", corpus.len());

    let limits = limits();
    for sql in &corpus {
        let started = Instant::now();
        let outcome = answer(&lake, "acme", sql, &limits).await;
        let took = started.elapsed();
        let error = match outcome {
            Ok(result) => panic!("`{}` was answered: {:?}", short(sql), result.rows.first()),
            Err(e) => e,
        };
        assert!(
            error.status().is_client_error(),
            "`{}` gave {} {}: {error}",
            short(sql),
            error.status(),
            error.code()
        );
        assert!(
            took < limits.timeout + Duration::from_secs(2),
            "`{}` took {took:?}",
            short(sql)
        );
    }
    assert!(!std::path::Path::new("/tmp/spendstream-exfiltrated.csv").exists());
    // Still serving.
    let ok = answer(
        &lake,
        "acme",
        "SELECT COUNT(*) FROM expenses_latest",
        &limits,
    )
    .await
    .unwrap();
    assert_eq!(ok.rows[0][0], Value::from(PER_TENANT));
}

fn short(sql: &str) -> String {
    sql.chars().take(80).collect()
}
