//! Amounts in the tenant's base currency through the real pipeline
//! (embedded log, state, lake, ClickHouse): rates loaded over HTTP, each
//! record converted at its date's rate (a weekend at Friday's), a currency
//! without a rate left empty and counted, reports in the base currency and
//! ranked by base amount, and ClickHouse holding the same base amounts.

mod common;

use serde_json::Value;
use spendstream_http::Role;

const RATES: &str = "Date,USD,JPY,BHD,GBP,\n\
                     2026-03-02,1.0812,160.25,0.40765,0.8561,\n\
                     2026-02-27,1.0790,159.80,N/A,0.8549,\n";

async fn put_rates(base: &str, token: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(format!("{base}/v1/admin/fx-rates"))
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

fn record(id: &str, date: &str, minor: i64, currency: &str, merchant: &str) -> String {
    format!(
        r#"{{"source":"card","external_id":"{id}","account_id":"a","transaction_date":"{date}","amount_minor":{minor},"currency":"{currency}","merchant_name":"{merchant}"}}"#
    ) + "\n"
}

/// Posts NDJSON as tenant `fxco`; the answer's accepted count.
async fn post(base: &str, body: String) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/expenses"))
        .bearer_auth(common::token("fxco", &[Role::Ingest]))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

async fn report_json(base: &str, token: &str, query: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/reports/spend?{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_get_exact_base_amounts_and_reports_rank_and_total_by_them() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = common::clickhouse_url();
    let settings = spendstream::Settings {
        clickhouse_url: Some(clickhouse.clone()),
        ..common::settings(dir.path())
    };
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    let admin = common::token("fxco", &[Role::Admin]);
    let read = common::token("fxco", &[Role::Read]);

    // A bad file is refused whole, naming its line; only admins load.
    let (code, err) = put_rates(&base, &admin, "Date,USD\n2026-03-02,1.08\n2026-03-03,-1\n").await;
    assert_eq!(code, 422, "{err}");
    assert_eq!(err["error"], "invalid_rates", "{err}");
    assert!(
        err["message"].as_str().unwrap().starts_with("line 3:"),
        "{err}"
    );
    let (code, _) = put_rates(&base, &read, RATES).await;
    assert_eq!(code, 403);
    let huge = format!("Date,USD\n{}", "9".repeat(spendstream::fx::MAX_RATES_BYTES));
    let (code, err) = put_rates(&base, &admin, &huge).await;
    assert_eq!(
        (code, &err["error"]),
        (413, &Value::from("payload_too_large")),
        "{err}"
    );
    let (code, loaded) = put_rates(&base, &admin, RATES).await;
    assert_eq!(code, 200, "{loaded}");
    assert_eq!(loaded["days_loaded"], 2, "{loaded}");
    assert_eq!(loaded["scope"], "fxco");
    let held = common::get_json(
        &reqwest::Client::new(),
        format!("{base}/v1/admin/fx-rates"),
        &admin,
    )
    .await;
    assert_eq!(
        held,
        serde_json::json!({
            "tenant": {
                "days_held": 2, "first_day": "2026-02-27", "last_day": "2026-03-02",
                "currencies": ["BHD", "GBP", "JPY", "USD"]
            },
            "every_tenant": null
        })
    );

    let body = [
        record("eur", "2026-03-02", 10_000, "EUR", "Euro shop"),
        // Saturday: Friday's rate.
        record("eur-sat", "2026-02-28", 10_000, "EUR", "Euro shop"),
        record("jpy", "2026-03-02", 1_000, "JPY", "Tokyo"),
        record("bhd", "2026-03-02", 1_000, "BHD", "Manama"),
        record("usd", "2026-03-02", 5_000, "USD", "Home"),
        // No CHF rate: no base amount, and the reports say so.
        record("chf", "2026-03-02", 1_000, "CHF", "Zurich"),
    ]
    .concat();
    let answer = post(&base, body).await;
    assert_eq!(answer["accepted"], 6, "{answer}");
    common::wait_processed(&running, 6).await;

    // Hand-computed (see schemas/src/fx.rs): 100.00 EUR × 1.0812 = 108.12;
    // at Friday's 1.0790, 107.90; ¥1,000 × 1.0812 ÷ 160.25 = 6.7469… → 6.75;
    // 1.000 BHD × 1.0812 ÷ 0.40765 = 2.6522… → 2.65.
    let want = [
        ("bhd", Some(265), "2.652275236109", "2026-03-02"),
        ("chf", None, "", ""),
        ("eur", Some(10_812), "1.0812", "2026-03-02"),
        ("eur-sat", Some(10_790), "1.079", "2026-02-27"),
        ("jpy", Some(675), "0.006746957878", "2026-03-02"),
        ("usd", Some(5_000), "1", "2026-03-02"),
    ];
    let rows = common::sql(
        &base,
        &read,
        "SELECT external_id, base_amount_minor, base_currency, fx_rate, CAST(fx_rate_date AS VARCHAR) \
         FROM expenses ORDER BY external_id",
    )
    .await;
    let rows = rows["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (row, (id, minor, rate, day)) in rows.iter().zip(want) {
        assert_eq!(row[0], id);
        match minor {
            Some(minor) => {
                assert_eq!(row[1], minor, "{row}");
                assert_eq!(row[2], "USD", "{row}");
                assert_eq!(row[3], rate, "{row}");
                assert_eq!(row[4], day, "{row}");
            }
            None => assert!(
                (1..=4).all(|i| row[i].is_null()),
                "all four null together: {row}"
            ),
        }
    }

    // Ranked by base amount: ¥1,000 (6.75 USD) below $50.00, though 1,000
    // major units are more than 50; the row without a rate last.
    let ranked = report_json(&base, &read, "group_by=merchant").await;
    let order: Vec<(&str, Value)> = ranked["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["group"].as_str().unwrap(), r["base_amount_minor"].clone()))
        .collect();
    assert_eq!(
        order,
        [
            ("Euro Shop", Value::from(21_602)),
            ("Home", Value::from(5_000)),
            ("Tokyo", Value::from(675)),
            ("Manama", Value::from(265)),
            ("Zurich", Value::Null),
        ],
        "{ranked}"
    );

    // In the base currency: one total per group, the unconverted counted.
    let in_base = report_json(&base, &read, "group_by=account&currency=base").await;
    assert_eq!(
        in_base["rows"],
        serde_json::json!([{
            "group": "a", "currency": "USD", "count": 5, "amount": "275.42",
            "amount_minor": 27_542, "unconverted": 1
        }]),
        "{in_base}"
    );
    // The lake's SQL path says the same as the reports' state.
    let sql = common::sql(
        &base,
        &read,
        "SELECT CAST(SUM(counted_base_amount_minor) AS BIGINT), COUNT(base_amount_minor) FROM expenses_counted",
    )
    .await;
    assert_eq!(sql["rows"][0], serde_json::json!([27_542, 5]), "{sql}");

    // Rates loaded later apply to records processed after (the earlier CHF
    // record stays without: conversion happens once, when processed).
    let (code, loaded) = put_rates(&base, &admin, "Date,CHF\n2026-03-02,0.94\n").await;
    assert_eq!(code, 200, "{loaded}");
    assert_eq!(loaded["days_held"], 2, "{loaded}");
    let answer = post(&base, record("chf-2", "2026-03-02", 1_000, "CHF", "Zurich")).await;
    assert_eq!(answer["accepted"], 1, "{answer}");
    common::wait_processed(&running, 7).await;
    // 10.00 CHF × 1.0812 ÷ 0.94 = 11.5021… → 11.50.
    let in_base = report_json(&base, &read, "group_by=account&currency=base").await;
    assert_eq!(
        in_base["rows"][0]["amount_minor"],
        27_542 + 1_150,
        "{in_base}"
    );
    assert_eq!(in_base["rows"][0]["unconverted"], 1, "{in_base}");

    // ClickHouse holds the same base amounts.
    let mut poll = common::Deadline::new(
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(200),
    );
    loop {
        let got = common::clickhouse_rows(
            &clickhouse,
            "SELECT sum(counted_base_amount_minor) AS total, count(base_amount_minor) AS n \
             FROM expenses_counted WHERE tenant_id = 'fxco'",
        )
        .await;
        let total = got.first().map(|r| common::clickhouse_int(&r["total"]));
        let n = got.first().map(|r| common::clickhouse_int(&r["n"]));
        if (total, n) == (Some(27_542 + 1_150), Some(6)) {
            break;
        }
        poll.tick(format_args!("ClickHouse has {got:?}")).await;
    }
    running.shutdown().await.unwrap();
}

/// `spendstream fx load` (the operator, every tenant): a bad file is
/// refused naming its line, a good one loads into the state `up` reads,
/// and a tenant with another base currency converts with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_loads_rates_for_every_tenant_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let load = |file: &str, text: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        common::command()
            .args(["fx", "load"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let bad = load(
        "bad.csv",
        "Date,USD,JPY\n2026-03-02,1.0812,160.25\n2026-03-03,1.08,x\n",
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("line 3:") && stderr.contains("`x`"),
        "{stderr}"
    );
    let good = load("rates.csv", RATES);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        stdout.starts_with(
            "Loaded 2 days of rates for every tenant: 2 days held, 2026-02-27 to 2026-03-02"
        ),
        "{stdout}"
    );

    let gbp = spendstream_schemas::Currency::from_code("GBP").unwrap();
    let settings = spendstream::Settings {
        base_currencies: spendstream_processors::transform::fx::BaseCurrencies {
            tenants: [("fxco".to_string(), gbp)].into(),
            ..Default::default()
        },
        ..common::settings_without_clickhouse(dir.path())
    };
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    let held = common::get_json(
        &reqwest::Client::new(),
        format!("{base}/v1/admin/fx-rates"),
        &common::token("fxco", &[Role::Admin]),
    )
    .await;
    assert_eq!(held["tenant"], Value::Null, "{held}");
    assert_eq!(held["every_tenant"]["days_held"], 2, "{held}");
    post(
        &base,
        record("eur", "2026-03-02", 10_000, "EUR", "Euro shop"),
    )
    .await;
    common::wait_processed(&running, 1).await;
    // 100.00 EUR × 0.8561 = £85.61.
    let read = common::token("fxco", &[Role::Read]);
    let in_base = report_json(&base, &read, "group_by=account&currency=base").await;
    assert_eq!(in_base["rows"][0]["currency"], "GBP", "{in_base}");
    assert_eq!(in_base["rows"][0]["amount_minor"], 8_561, "{in_base}");
    assert_eq!(in_base["rows"][0]["unconverted"], 0, "{in_base}");
    running.shutdown().await.unwrap();
}
