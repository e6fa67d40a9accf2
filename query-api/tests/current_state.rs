//! Property: a report answered from the in-memory current state is exactly
//! the report the SQL path computes over the lake (the same rows, totals,
//! order and pages, the lifecycle rules applied by both), and `expenses_latest` read as the lake minus the
//! state's superseded versions holds exactly the rows the max-version join
//! finds, whatever the data, the request and the way the table grew:
//! several commits read incrementally, a compaction's rewrite read again, a
//! state too small to hold the table.

mod support;

use proptest::prelude::*;
use serde_json::Value;
use spendstream_lake::{AppTxn, Lake, LakeOptions};
use spendstream_query_api::current::CurrentState;
use spendstream_schemas::{Category, EnrichedRecord, to_record_batch};
use std::sync::Arc;
use std::time::Duration;
use support::fixtures::{QueryApp, enriched};

const TENANTS: [&str; 2] = ["acme", "globex"];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];
const STATUSES: [&str; 4] = ["posted", "pending", "reversed", "declined"];
const CATEGORIES: [Category; 3] = [Category::Restaurants, Category::Airlines, Category::Other];
const GROUPS: [&str; 8] = [
    "category", "merchant", "account", "employee", "currency", "day", "week", "month",
];

/// One row version.
#[derive(Debug, Clone)]
struct Row {
    tenant: usize,
    expense: usize,
    version: i64,
    minor: i64,
    currency: usize,
    status: usize,
    category: usize,
    day: u32,
    /// Employee and merchant variants (some absent).
    who: usize,
}

fn row() -> impl Strategy<Value = Row> {
    (
        (0..TENANTS.len(), 0..16usize, 1..4i64, -50_000..5_000_000i64),
        (
            0..CURRENCIES.len(),
            0..STATUSES.len(),
            0..CATEGORIES.len(),
            0..400u32,
            0..4usize,
        ),
    )
        .prop_map(
            |((tenant, expense, version, minor), (currency, status, category, day, who))| Row {
                tenant,
                expense,
                version,
                minor,
                currency,
                status,
                category,
                day,
                who,
            },
        )
}

impl Row {
    fn record(&self) -> EnrichedRecord {
        let date = chrono::NaiveDate::from_ymd_opt(2025, 11, 1).unwrap()
            + chrono::Days::new(u64::from(self.day));
        let employee = match self.who {
            0 => String::new(),
            w => format!(r#","employee_id":"emp{w}""#),
        };
        let merchant = match self.who {
            3 => String::new(),
            w => format!(r#","merchant_name":"m{w}""#),
        };
        // Some rows name another expense (docs/lifecycle.md): pending ones
        // are superseded, reversals of pending ones released.
        let related = match self.day % 5 {
            0 => format!(r#","related_external_id":"e{}""#, (self.expense + 1) % 16),
            1 => format!(r#","related_external_id":"e{}""#, (self.expense + 15) % 16),
            _ => String::new(),
        };
        let fields = format!(
            r#""transaction_date":"{date}","amount_minor":{},"currency":"{}","status":"{}"{employee}{merchant}{related}"#,
            self.minor, CURRENCIES[self.currency], STATUSES[self.status],
        );
        let normalized = (self.who == 1).then_some("Normalized");
        let mut record = enriched(
            TENANTS[self.tenant],
            &format!("e{}", self.expense),
            self.version,
            &fields,
            CATEGORIES[self.category],
            normalized,
        );
        // Base amounts in USD (docs/fx.md): USD as is, EUR at 1.08, JPY
        // without a rate (and some EUR rows without either).
        let base = match (CURRENCIES[self.currency], self.day % 7) {
            ("USD", _) => Some(self.minor),
            ("EUR", d) if d != 3 => Some(self.minor * 108 / 100),
            _ => None,
        };
        record.base = base.map(|minor| spendstream_schemas::BaseAmount {
            minor,
            currency: "USD".into(),
            rate: "1.08".into(),
            rate_date: date,
        });
        record
    }
}

/// A report query string.
fn query() -> impl Strategy<Value = String> {
    (
        (
            0..GROUPS.len(),
            proptest::collection::btree_set(0..STATUSES.len(), 1..=STATUSES.len()),
            proptest::option::of((0..400u32, 0..200u32)),
            proptest::option::of(0..CATEGORIES.len()),
            // One past the currencies: `currency=base`.
            proptest::option::of(0..=CURRENCIES.len()),
        ),
        (
            proptest::option::of((-60_000..6_000_000i64, 0..3_000_000i64)),
            proptest::option::of(0..4usize),
            proptest::option::of(1..5usize),
            1..30usize,
        ),
    )
        .prop_map(
            |((group, statuses, range, category, currency), (amounts, employee, top, limit))| {
                let group = GROUPS[group];
                let statuses: Vec<&str> = statuses.into_iter().map(|s| STATUSES[s]).collect();
                let mut q = format!("group_by={group}&status={}", statuses.join(","));
                if let Some((start, days)) = range {
                    let from = chrono::NaiveDate::from_ymd_opt(2025, 11, 1).unwrap()
                        + chrono::Days::new(u64::from(start));
                    q += &format!(
                        "&from={from}&to={}",
                        from + chrono::Days::new(u64::from(days))
                    );
                }
                if let Some(c) = category {
                    q += &format!("&category={}", CATEGORIES[c].as_str());
                }
                match currency {
                    Some(c) if c == CURRENCIES.len() => q += "&currency=base",
                    Some(c) => q += &format!("&currency={}", CURRENCIES[c]),
                    None => {}
                }
                if let Some((min, span)) = amounts {
                    q += &format!("&min_amount_minor={min}&max_amount_minor={}", min + span);
                }
                if let Some(e) = employee {
                    q += &format!("&employee=emp{e}");
                }
                match top {
                    Some(n) if !matches!(group, "day" | "week" | "month") => {
                        q += &format!("&top={n}");
                    }
                    _ => q += &format!("&limit={limit}"),
                }
                q
            },
        )
}

/// Statements over the views with one ordered answer.
const SQL: [&str; 4] = [
    "SELECT currency, COUNT(*) AS n, CAST(SUM(counted_amount_minor) AS DECIMAL(38, 0)) AS total FROM expenses_counted GROUP BY 1 ORDER BY 1",
    "SELECT expense_id, version, amount_minor, status, category FROM expenses_latest ORDER BY expense_id",
    "SELECT category, currency, COUNT(*) AS n, CAST(SUM(amount_minor) AS DECIMAL(38, 0)) AS total FROM expenses_latest GROUP BY 1, 2 ORDER BY 1, 2",
    "SELECT l.expense_id, COUNT(*) AS versions FROM expenses_latest l JOIN expenses e ON l.expense_id = e.expense_id GROUP BY 1 ORDER BY 1",
];

/// Every page of the report `query`.
async fn pages(app: &QueryApp, query: &str) -> Vec<Value> {
    let mut out = vec![app.report(query).await];
    while let Some(cursor) = out.last().and_then(|p| p["next_cursor"].as_str()) {
        let next = app.report(&format!("{query}&cursor={cursor}")).await;
        out.push(next);
    }
    out
}

async fn open(url: &str) -> Lake {
    let options = LakeOptions {
        read_refresh: Duration::ZERO,
        ..LakeOptions::default()
    };
    Lake::open_with(url, options).await.unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn answers_from_memory_equal_answers_from_the_lake(
        rows in proptest::collection::vec(row(), 1..80),
        commits in 1..4usize,
        tenant in 0..TENANTS.len(),
        queries in proptest::collection::vec(query(), 1..5),
    ) {
        // One version per (tenant, expense, version), as the lake holds.
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<Row> = rows
            .into_iter()
            .filter(|r| seen.insert((r.tenant, r.expense, r.version)))
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("file://{}", dir.path().join("lake").display());
            let writer = open(&url).await;
            let tenant = TENANTS[tenant];
            // No answer cache: every request computes.
            let lake_path = QueryApp::with_state_rows(open(&url).await, tenant, 0, 0);
            let state = Arc::new(CurrentState::new(1_000));
            let memory = QueryApp::with_state(open(&url).await, tenant, 0, Some(state.clone()));
            // Too small for the table: falls back to the lake.
            let small = QueryApp::with_state_rows(open(&url).await, tenant, 0, 5);
            let chunk = rows.len().div_ceil(commits);
            for (i, part) in rows.chunks(chunk).enumerate() {
                let records: Vec<EnrichedRecord> = part.iter().map(Row::record).collect();
                writer
                    .commit_once(
                        &[AppTxn { app_id: "g-0".into(), version: i as i64 }],
                        |_| to_record_batch(&records),
                    )
                    .await
                    .unwrap();
                for q in &queries {
                    let expected = pages(&lake_path, q).await;
                    assert_eq!(pages(&memory, q).await, expected, "{q} after commit {i}");
                    assert_eq!(pages(&small, q).await, expected, "{q} after commit {i}");
                }
                for sql in SQL {
                    let expected = lake_path.sql(sql).await;
                    assert_eq!(memory.sql(sql).await, expected, "{sql} after commit {i}");
                }
            }
            // Not vacuous: one row per expense of the caller.
            let expenses: std::collections::HashSet<usize> = rows
                .iter()
                .filter(|r| TENANTS[r.tenant] == tenant)
                .map(|r| r.expense)
                .collect();
            let latest = memory.sql(SQL[1]).await;
            assert_eq!(latest["rows"].as_array().unwrap().len(), expenses.len());
            // Not the lake compared with itself: the state answered every
            // report and every SQL session (the reader's state is never
            // more than a second behind, and nothing else writes).
            let (reports, sessions) = state.served();
            assert!(reports > 0 && sessions > 0, "{reports} reports, {sessions} sessions");
            // A compaction rewrites rows the state already holds.
            writer.compact().await.unwrap();
            for q in &queries {
                let expected = pages(&lake_path, q).await;
                assert_eq!(pages(&memory, q).await, expected, "{q} after compaction");
            }
            for sql in SQL {
                let expected = lake_path.sql(sql).await;
                assert_eq!(memory.sql(sql).await, expected, "{sql} after compaction");
            }
        });
    }
}

/// Rows another writer deletes (or a restore drops) leave the state too:
/// it reads the table again rather than keep what the lake no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_deleted_by_another_writer_leave_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("lake").display());
    let writer = open(&url).await;
    let rows: Vec<EnrichedRecord> = (0..6)
        .map(|i| {
            Row {
                tenant: 0,
                expense: i,
                version: 1 + (i as i64 % 2),
                minor: 1_000 * (i as i64 + 1),
                currency: 0,
                status: 0,
                category: i % 3,
                day: 10,
                who: 1,
            }
            .record()
        })
        .collect();
    writer
        .commit_once(
            &[AppTxn {
                app_id: "g-0".into(),
                version: 0,
            }],
            |_| to_record_batch(&rows),
        )
        .await
        .unwrap();
    let state = Arc::new(CurrentState::new(1_000));
    let memory = QueryApp::with_state(open(&url).await, TENANTS[0], 0, Some(state.clone()));
    let lake_path = QueryApp::with_state_rows(open(&url).await, TENANTS[0], 0, 0);
    let q = "group_by=category&status=all";
    assert_eq!(memory.report(q).await, lake_path.report(q).await);

    let table = deltalake::open_table(url::Url::parse(&url).unwrap())
        .await
        .unwrap();
    table
        .delete()
        .with_predicate("external_id = 'e2' OR external_id = 'e3'")
        .await
        .unwrap();
    let after = lake_path.report(q).await;
    assert_eq!(memory.report(q).await, after);
    for sql in SQL {
        assert_eq!(memory.sql(sql).await, lake_path.sql(sql).await, "{sql}");
    }
    let ids = memory.sql(SQL[1]).await;
    assert_eq!(ids["rows"].as_array().unwrap().len(), 4, "{ids}");
    let (reports, sessions) = state.served();
    assert!(
        reports >= 2 && sessions > 0,
        "{reports} reports, {sessions} sessions"
    );
}
