//! Property: whatever the data of several tenants and whatever report or
//! SQL one of them asks, the answer holds that tenant's rows only, and the
//! reports' totals are exactly its latest versions.

mod support;

use proptest::prelude::*;
use serde_json::json;
use spendstream_schemas::{Category, EnrichedRecord};
use std::collections::{BTreeMap, HashMap};
use support::fixtures::{QueryApp, enriched, lake_with};

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];
const STATUSES: [&str; 4] = ["posted", "pending", "reversed", "declined"];
const CATEGORIES: [Category; 3] = [Category::Restaurants, Category::Airlines, Category::Other];

/// One row version: tenant, expense, version, amount, currency, status,
/// category, day of 2026.
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
}

fn row() -> impl Strategy<Value = Row> {
    (
        0..TENANTS.len(),
        0..12usize,
        1..4i64,
        -50_000..5_000_000i64,
        0..CURRENCIES.len(),
        0..STATUSES.len(),
        0..CATEGORIES.len(),
        0..120u32,
    )
        .prop_map(
            |(tenant, expense, version, minor, currency, status, category, day)| Row {
                tenant,
                expense,
                version,
                minor,
                currency,
                status,
                category,
                day,
            },
        )
}

impl Row {
    fn record(&self) -> EnrichedRecord {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()
            + chrono::Days::new(u64::from(self.day));
        let fields = format!(
            r#""transaction_date":"{date}","amount_minor":{},"currency":"{}","status":"{}","merchant_name":"m{}""#,
            self.minor,
            CURRENCIES[self.currency],
            STATUSES[self.status],
            self.expense % 4
        );
        enriched(
            TENANTS[self.tenant],
            &format!("e{}", self.expense),
            self.version,
            &fields,
            CATEGORIES[self.category],
            None,
        )
    }
}

/// A report or SQL request and what its answer must show.
#[derive(Debug, Clone)]
enum Ask {
    Report {
        group_by: &'static str,
        statuses: Vec<usize>,
    },
    Sql(&'static str),
}

const GROUPS: [&str; 8] = [
    "category", "merchant", "account", "employee", "currency", "day", "week", "month",
];

/// Statements whose first column is a tenant id.
const SQL: [&str; 8] = [
    "SELECT tenant_id FROM expenses",
    "SELECT DISTINCT tenant_id FROM expenses_latest",
    "SELECT tenant_id, COUNT(*) FROM expenses GROUP BY tenant_id",
    "SELECT tenant_id FROM expenses WHERE tenant_id <> 'acme' OR tenant_id = 'globex'",
    "SELECT a.tenant_id FROM expenses a JOIN expenses_latest b ON a.expense_id = b.expense_id",
    "SELECT tenant_id FROM expenses UNION ALL SELECT tenant_id FROM expenses_latest",
    "SELECT tenant_id FROM expenses WHERE expense_id IN (SELECT expense_id FROM expenses_latest WHERE amount_minor > 0)",
    "SELECT t FROM (SELECT tenant_id AS t, ROW_NUMBER() OVER (ORDER BY expense_id) AS n FROM expenses) WHERE n < 1000",
];

fn ask() -> impl Strategy<Value = Ask> {
    prop_oneof![
        (
            0..GROUPS.len(),
            proptest::collection::btree_set(0..STATUSES.len(), 1..=STATUSES.len())
        )
            .prop_map(|(g, statuses)| Ask::Report {
                group_by: GROUPS[g],
                statuses: statuses.into_iter().collect(),
            }),
        (0..SQL.len()).prop_map(|i| Ask::Sql(SQL[i])),
    ]
}

/// Per currency: (count, sum of minor units) of `tenant`'s latest versions
/// whose status is in `statuses`, as the lifecycle rules count them (these
/// rows name no other: a declined one never counts, a reversal counts minus
/// its absolute amount).
fn expected(rows: &[Row], tenant: usize, statuses: &[usize]) -> BTreeMap<String, (i64, i128)> {
    let mut latest: HashMap<usize, &Row> = HashMap::new();
    for row in rows.iter().filter(|r| r.tenant == tenant) {
        let slot = latest.entry(row.expense).or_insert(row);
        if row.version > slot.version {
            *slot = row;
        }
    }
    let mut out = BTreeMap::new();
    for row in latest.values().filter(|r| statuses.contains(&r.status)) {
        let counted = match STATUSES[row.status] {
            "declined" => continue,
            "reversed" => -i128::from(row.minor).abs(),
            _ => i128::from(row.minor),
        };
        let total: &mut (i64, i128) = out.entry(CURRENCIES[row.currency].to_string()).or_default();
        total.0 += 1;
        total.1 += counted;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn answers_hold_only_the_callers_rows(
        rows in proptest::collection::vec(row(), 0..60),
        tenant in 0..TENANTS.len(),
        asks in proptest::collection::vec(ask(), 1..6),
    ) {
        // One version per (tenant, expense, version).
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<Row> = rows
            .into_iter()
            .filter(|r| seen.insert((r.tenant, r.expense, r.version)))
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let records: Vec<EnrichedRecord> = rows.iter().map(Row::record).collect();
            let (_dir, lake) = lake_with(&records).await;
            let app = QueryApp::new(lake, TENANTS[tenant], 1_000);
            for ask in &asks {
                match ask {
                    Ask::Report { group_by, statuses } => {
                        let status = statuses.iter().map(|s| STATUSES[*s]).collect::<Vec<_>>().join(",");
                        let body = app
                            .report(&format!("group_by={group_by}&status={status}&limit=1000"))
                            .await;
                        assert!(body["next_cursor"].is_null(), "{body}");
                        let mut totals: BTreeMap<String, (i64, i128)> = BTreeMap::new();
                        for r in body["rows"].as_array().unwrap() {
                            let total = totals.entry(r["currency"].as_str().unwrap().to_string()).or_default();
                            total.0 += r["count"].as_i64().unwrap();
                            total.1 += r["amount_minor"].to_string().parse::<i128>().unwrap();
                        }
                        // Zero rows of a time series count nothing.
                        totals.retain(|_, t| t.0 != 0);
                        assert_eq!(totals, expected(&rows, tenant, statuses), "{ask:?}: {body}");
                    }
                    Ask::Sql(sql) => {
                        let body = app.sql(sql).await;
                        let answered = body["rows"].as_array().unwrap();
                        for r in answered {
                            assert_eq!(r[0], json!(TENANTS[tenant]), "{sql}: {body}");
                        }
                        if *sql == SQL[0] {
                            // Not vacuous: every version of the caller's is there.
                            let own = rows.iter().filter(|r| r.tenant == tenant).count();
                            assert_eq!(answered.len(), own, "{sql}: {body}");
                        }
                    }
                }
            }
        });
    }
}
