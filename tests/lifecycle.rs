//! The transaction lifecycle through the real pipeline (embedded log, lake,
//! ClickHouse): the same purchases sent in several orders of arrival, one
//! request per record so that each order is the log's, give the reports the
//! rules of `docs/lifecycle.md` say, and ClickHouse's `expenses_counted`
//! says the same. (The property test in `query-api/src/current.rs` checks
//! every order against the rules without the pipeline.)

mod common;

use common::Deadline;
use spendstream_http::Role;
use std::time::Duration;

/// (external id, status, related, amount in cents).
type Rec = (&'static str, &'static str, Option<&'static str>, i64);

/// One of each case: an authorisation settled under a new id, one released
/// by a reversal, a charge partly reversed, a declined authorisation, an
/// open authorisation, a reversal whose charge never came (signed negative,
/// as some importers send them).
const RECORDS: [Rec; 10] = [
    ("auth-1", "pending", None, 5_000),
    ("txn-1", "posted", Some("auth-1"), 5_200),
    ("auth-2", "pending", None, 7_000),
    ("rev-2", "reversed", Some("auth-2"), 7_000),
    ("txn-3", "posted", None, 3_000),
    ("rev-3", "reversed", Some("txn-3"), 1_000),
    ("auth-4", "pending", None, 900),
    ("dec-4", "declined", Some("auth-4"), 900),
    ("auth-5", "pending", None, 400),
    ("rev-6", "reversed", Some("gone-6"), -250),
];

/// What the rules count: txn-1 5,200; txn-3 3,000 less rev-3 1,000;
/// auth-5 400; rev-6 takes 250 back.
const COUNTED: (i64, i128) = (5, 5_200 + 3_000 - 1_000 + 400 - 250);

fn body(r: &Rec) -> String {
    let related =
        r.2.map(|x| format!(r#","related_external_id":"{x}""#))
            .unwrap_or_default();
    format!(
        r#"{{"source":"card","external_id":"{}","account_id":"a","status":"{}","transaction_date":"2026-03-02","amount_minor":{},"currency":"USD"{related}}}"#,
        r.0, r.1, r.3
    ) + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_order_of_arrival_gives_the_reports_the_rules_say() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = common::clickhouse_url();
    let settings = spendstream::Settings {
        clickhouse_url: Some(clickhouse.clone()),
        ..common::settings(dir.path())
    };
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    // In order, reversed, and two interleavings that put each follower
    // before what it names.
    let orders: [Vec<usize>; 4] = [
        (0..10).collect(),
        (0..10).rev().collect(),
        vec![1, 3, 5, 7, 9, 0, 2, 4, 6, 8],
        vec![7, 1, 9, 3, 5, 8, 0, 6, 2, 4],
    ];
    for (n, order) in orders.iter().enumerate() {
        let tenant = format!("order{n}");
        let token = common::token(&tenant, &[Role::Ingest]);
        for &i in order {
            let r = client
                .post(format!("{base}/v1/expenses"))
                .bearer_auth(&token)
                .header("content-type", "application/x-ndjson")
                .body(body(&RECORDS[i]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        }
    }
    for n in 0..orders.len() {
        let tenant = format!("order{n}");
        let read = common::token(&tenant, &[Role::Read]);
        let mut poll = Deadline::new(Duration::from_secs(120), Duration::from_millis(100));
        loop {
            let got: Vec<(i64, i128)> =
                common::report(&base, &read, "group_by=currency&status=all")
                    .await
                    .values()
                    .map(|v| (v.0, v.1))
                    .collect();
            if got == vec![COUNTED] {
                break;
            }
            poll.tick(format_args!("order {n}: reports {got:?}, want {COUNTED:?}"))
                .await;
        }
        // Only the open authorisation is pending; nothing declined counts.
        let pending = common::report(&base, &read, "group_by=currency&status=pending").await;
        let pending: Vec<(i64, i128)> = pending.values().map(|v| (v.0, v.1)).collect();
        assert_eq!(pending, vec![(1, 400)], "order {n}");
        assert!(
            common::report(&base, &read, "group_by=currency&status=declined")
                .await
                .is_empty()
        );
        // The SQL view says the same.
        let sql = common::sql(
            &base,
            &read,
            "SELECT COUNT(*), CAST(SUM(counted_amount_minor) AS BIGINT) FROM expenses_counted",
        )
        .await;
        assert_eq!(sql["rows"][0][0], COUNTED.0, "order {n}: {sql}");
        assert_eq!(sql["rows"][0][1], COUNTED.1 as i64, "order {n}: {sql}");
        // And ClickHouse's expenses_counted.
        common::assert_clickhouse_matches_lake(&base, &clickhouse, &tenant, "all").await;
        common::assert_clickhouse_matches_lake(&base, &clickhouse, &tenant, "pending").await;
    }
    running.shutdown().await.unwrap();
}
