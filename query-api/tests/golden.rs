//! Golden answers: reports and SQL over a small, known lake, through the
//! HTTP routes, compared with the snapshots in `tests/snapshots/` (insta;
//! `INSTA_UPDATE=always cargo test -p spendstream-query-api --test golden`
//! rewrites them after a deliberate change; review the diff).
//!
//! The lake: tenant `acme` with expenses in EUR, USD and JPY over three
//! months with gaps, in several categories and merchants, every status, and
//! second versions that move an amount, a category, a date and a status;
//! tenant `globex`, whose rows must never show.

mod support;

use serde_json::Value;
use spendstream_schemas::{Category, EnrichedRecord};
use support::fixtures::{QueryApp, enriched, lake_with};

fn rows() -> Vec<EnrichedRecord> {
    use Category::*;
    let r =
        |tenant: &str, id: &str, version: i64, fields: &str, category, merchant: Option<&str>| {
            enriched(tenant, id, version, fields, category, merchant)
        };
    vec![
        r(
            "acme",
            "t1",
            1,
            r#""transaction_date":"2026-01-05","amount":"42.10","currency":"EUR","merchant_name":"BLUE BOTTLE #42""#,
            Restaurants,
            Some("Blue Bottle"),
        ),
        r(
            "acme",
            "t2",
            1,
            r#""transaction_date":"2026-01-05","amount":"17.90","currency":"EUR","merchant_name":"BLUE BOTTLE #7""#,
            Restaurants,
            Some("Blue Bottle"),
        ),
        r(
            "acme",
            "t3",
            1,
            r#""transaction_date":"2026-01-07","amount":"612.00","currency":"USD","merchant_name":"UNITED 0162","employee_id":"e-1""#,
            Airlines,
            Some("United Airlines"),
        ),
        // Corrected: a larger amount.
        r(
            "acme",
            "t3",
            2,
            r#""transaction_date":"2026-01-07","amount":"640.00","currency":"USD","merchant_name":"UNITED 0162","employee_id":"e-1""#,
            Airlines,
            Some("United Airlines"),
        ),
        r(
            "acme",
            "t4",
            1,
            r#""transaction_date":"2026-01-20","amount":"15000","currency":"JPY","merchant_name":"HOTEL GRACERY""#,
            Lodging,
            Some("Hotel Gracery"),
        ),
        // Recategorised and moved to February.
        r(
            "acme",
            "t5",
            1,
            r#""transaction_date":"2026-01-31","amount":"9.99","currency":"USD","merchant_name":"GITHUB""#,
            Other,
            None,
        ),
        r(
            "acme",
            "t5",
            2,
            r#""transaction_date":"2026-02-01","amount":"9.99","currency":"USD","merchant_name":"GITHUB""#,
            Software,
            Some("GitHub"),
        ),
        r(
            "acme",
            "t6",
            1,
            r#""transaction_date":"2026-02-14","amount":"88.00","currency":"EUR","merchant_name":"BLUE BOTTLE #42","status":"pending""#,
            Restaurants,
            Some("Blue Bottle"),
        ),
        // Declined later: no longer counts by default.
        r(
            "acme",
            "t7",
            1,
            r#""transaction_date":"2026-02-14","amount":"120.00","currency":"EUR","merchant_name":"HILTON""#,
            Lodging,
            Some("Hilton"),
        ),
        r(
            "acme",
            "t7",
            2,
            r#""transaction_date":"2026-02-14","amount":"120.00","currency":"EUR","merchant_name":"HILTON","status":"declined""#,
            Lodging,
            Some("Hilton"),
        ),
        r(
            "acme",
            "t8",
            1,
            r#""transaction_date":"2026-03-30","amount":"-42.10","currency":"EUR","merchant_name":"BLUE BOTTLE #42","status":"reversed""#,
            Restaurants,
            Some("Blue Bottle"),
        ),
        r(
            "acme",
            "t9",
            1,
            r#""transaction_date":"2026-03-31","amount":"2500","currency":"JPY","merchant_name":"SUICA","employee_id":"e-2""#,
            Transport,
            None,
        ),
        r(
            "globex",
            "g1",
            1,
            r#""transaction_date":"2026-01-05","amount":"999999.99","currency":"EUR","merchant_name":"BLUE BOTTLE #42""#,
            Restaurants,
            Some("Blue Bottle"),
        ),
        r(
            "globex",
            "g2",
            1,
            r#""transaction_date":"2026-02-10","amount":"5.00","currency":"GBP","merchant_name":"SECRET CO""#,
            Other,
            Some("Secret Co"),
        ),
    ]
}

struct Api {
    app: QueryApp,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new() -> Self {
        let (dir, lake) = lake_with(&rows()).await;
        Self {
            app: QueryApp::new(lake, "acme", 10_000),
            _dir: dir,
        }
    }

    async fn report(&self, query: &str) -> Value {
        self.app.report(query).await
    }

    async fn sql(&self, sql: &str) -> Value {
        self.app.sql(sql).await
    }
}

/// Each report of the mix, by its query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports() {
    let api = Api::new().await;
    let mut answers = serde_json::Map::new();
    for query in [
        "group_by=category",
        "group_by=category&status=all",
        "group_by=merchant",
        "group_by=merchant&top=1",
        "group_by=account",
        "group_by=employee",
        "group_by=currency",
        "group_by=currency&status=reversed,declined",
        "group_by=day&from=2026-01-04&to=2026-01-08",
        "group_by=week&from=2026-01-01&to=2026-02-28&currency=EUR",
        "group_by=month",
        "group_by=month&status=all&category=restaurants,lodging",
        "group_by=category&from=2026-02-01&to=2026-02-28",
        "group_by=merchant&min_amount_minor=1000&max_amount_minor=50000",
        "group_by=currency&employee=e-1",
    ] {
        answers.insert(query.to_string(), api.report(query).await);
    }
    insta::assert_json_snapshot!(answers);
}

/// SQL answers: the views, aggregates, window functions, catalogs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql() {
    let api = Api::new().await;
    let mut answers = serde_json::Map::new();
    for sql in [
        "SELECT COUNT(*) AS versions, COUNT(DISTINCT expense_id) AS expenses FROM expenses",
        "SELECT external_id, version, status, amount_minor, currency FROM expenses_latest ORDER BY external_id",
        "SELECT currency, CAST(SUM(amount_minor) AS DECIMAL(38, 0)) AS total FROM expenses_latest WHERE status IN ('posted', 'pending') GROUP BY currency ORDER BY currency",
        "SELECT COALESCE(merchant_normalized, merchant_name) AS merchant, COUNT(*) AS n FROM expenses_latest GROUP BY 1 ORDER BY 2 DESC, 1",
        "SELECT external_id, version, amount_minor, LAG(amount_minor) OVER (PARTITION BY external_id ORDER BY version) AS before FROM expenses WHERE external_id IN ('t3', 't5') ORDER BY 1, 2",
        "SELECT category, MIN(transaction_date) AS first, MAX(transaction_date) AS last FROM expenses_latest GROUP BY category ORDER BY category",
        "SELECT DISTINCT tenant_id FROM expenses",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    ] {
        answers.insert(sql.to_string(), api.sql(sql).await);
    }
    insta::assert_json_snapshot!(answers);
}
