//! End to end over a real socket: 10,000 records in NDJSON, JSON and CSV
//! (one request gzipped) from two tenants, 5% invalid, some re-sent with the
//! same identity. Every valid record must appear exactly once, in its own
//! tenant's reports only, with exact totals; every invalid one is rejected by
//! index with its code.

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use spendstream_http::Role;
use std::collections::BTreeMap;
use std::time::Duration;

const CURRENCIES: [(&str, u32); 5] = [("USD", 2), ("EUR", 2), ("JPY", 0), ("BHD", 3), ("CLF", 4)];

/// The kinds of invalid record and the code each must be rejected with.
const INVALID: [(&str, &str); 8] = [
    ("currency", "invalid_currency"),
    ("precision", "amount_precision"),
    ("pan", "pan_detected"),
    ("missing", "missing_field"),
    ("date", "invalid_date"),
    ("mcc", "invalid_mcc"),
    ("nan", "invalid_amount"),
    ("overflow", "amount_overflow"),
];

#[derive(Clone, Debug)]
struct Rec {
    fields: BTreeMap<String, String>,
    /// `Some(code)` for a record that must be rejected.
    invalid: Option<&'static str>,
}

fn amount_text(rng: &mut StdRng, exp: u32) -> (String, i64) {
    let minor: i64 = rng.random_range(-5_000..2_000_000);
    let text = spendstream_schemas::format_minor(minor as i128, exp as u8);
    (text, minor)
}

fn valid(rng: &mut StdRng, tenant: &str, i: usize) -> (Rec, i64, &'static str) {
    let (currency, exp) = CURRENCIES[rng.random_range(0..CURRENCIES.len())];
    let (amount, minor) = amount_text(rng, exp);
    let mut f = BTreeMap::new();
    f.insert("source".into(), "feed".into());
    f.insert("external_id".into(), format!("{tenant}-{i}"));
    f.insert(
        "account_id".into(),
        format!("acct-{}", rng.random_range(0..50)),
    );
    f.insert(
        "transaction_date".into(),
        format!(
            "2026-{:02}-{:02}",
            rng.random_range(1..=12),
            rng.random_range(1..=28)
        ),
    );
    f.insert("amount".into(), amount);
    f.insert("currency".into(), currency.into());
    f.insert("merchant_name".into(), "SQ *COFFEE #12".into());
    f.insert("merchant_mcc".into(), "5814".into());
    f.insert(
        "status".into(),
        ["posted", "pending", "reversed", "declined"][rng.random_range(0..4)].into(),
    );
    (
        Rec {
            fields: f,
            invalid: None,
        },
        minor,
        currency,
    )
}

fn make_invalid(mut rec: Rec, kind: usize) -> Rec {
    let (what, code) = INVALID[kind % INVALID.len()];
    let f = &mut rec.fields;
    match what {
        "currency" => {
            f.insert("currency".into(), "ZZZ".into());
        }
        "precision" => {
            f.insert("currency".into(), "USD".into());
            f.insert("amount".into(), "1.999".into());
        }
        "pan" => {
            f.insert("account_id".into(), "4111-1111-1111-1111".into());
        }
        "missing" => {
            f.remove("external_id");
        }
        "date" => {
            f.insert("transaction_date".into(), "2026-02-30".into());
        }
        "mcc" => {
            f.insert("merchant_mcc".into(), "58x4".into());
        }
        "nan" => {
            f.insert("amount".into(), "NaN".into());
        }
        _ => {
            f.insert("currency".into(), "JPY".into());
            f.insert("amount".into(), "9223372036854775808".into());
        }
    }
    rec.invalid = Some(code);
    rec
}

fn as_json(rec: &Rec) -> Value {
    Value::Object(
        rec.fields
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
    )
}

fn ndjson(recs: &[Rec]) -> Vec<u8> {
    recs.iter()
        .map(|r| format!("{}\n", as_json(r)))
        .collect::<String>()
        .into_bytes()
}

fn json_array(recs: &[Rec]) -> Vec<u8> {
    serde_json::to_vec(&recs.iter().map(as_json).collect::<Vec<_>>()).unwrap()
}

fn csv(recs: &[Rec]) -> Vec<u8> {
    let cols = [
        "source",
        "external_id",
        "account_id",
        "transaction_date",
        "amount",
        "currency",
        "merchant_name",
        "merchant_mcc",
        "status",
    ];
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(cols).unwrap();
    for r in recs {
        w.write_record(
            cols.iter()
                .map(|c| r.fields.get(*c).cloned().unwrap_or_default()),
        )
        .unwrap();
    }
    w.into_inner().unwrap()
}

/// Expected report by currency: identity → latest (currency, minor, status).
type Model = BTreeMap<String, (&'static str, i64, String)>;

async fn send(
    base: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
    gzip: bool,
    recs: &[Rec],
) -> usize {
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("{base}/v1/expenses"))
        .bearer_auth(token)
        .header("content-type", content_type);
    let body = if gzip {
        req = req.header("content-encoding", "gzip");
        common::gzip(&body)
    } else {
        body
    };
    let resp = req.body(body).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let expected: Vec<(usize, &str)> = recs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.invalid.map(|c| (i, c)))
        .collect();
    let got: Vec<(usize, String)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap() as usize,
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "rejected: {got:?}");
    for ((gi, gc), (ei, ec)) in got.iter().zip(&expected) {
        assert_eq!((gi, gc.as_str()), (ei, *ec));
    }
    let accepted = body["accepted"].as_u64().unwrap() as usize;
    assert_eq!(accepted, recs.len() - expected.len());
    accepted
}

crate::per_backend!(
    ten_thousand_records_two_tenants_three_formats,
    dead_letters_are_listed_and_replayed,
);

async fn ten_thousand_records_two_tenants_three_formats(backend: common::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let settings = backend.settings(dir.path());
    let clickhouse = settings.clickhouse_url.clone().unwrap();
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    let mut rng = StdRng::seed_from_u64(7);

    let mut models: BTreeMap<&str, Model> = BTreeMap::new();
    // Six requests: (tenant, format, gzip, size, re-send share).
    let plan: [(&str, &str, bool, usize, bool); 6] = [
        ("acme", "ndjson", true, 2500, false),
        ("acme", "json", false, 2000, false),
        ("globex", "csv", false, 2000, false),
        ("globex", "ndjson", false, 2000, false),
        ("acme", "json", false, 800, true),
        ("globex", "csv", true, 700, true),
    ];
    let mut next_id: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total_accepted = 0;
    let mut total_sent = 0;
    for (tenant, format, gzip, size, resend) in plan {
        let model = models.entry(tenant).or_default();
        let mut recs = Vec::with_capacity(size);
        for k in 0..size {
            // Re-sends reuse an identity already sent, with a new amount.
            let i = if resend && !model.is_empty() {
                rng.random_range(0..*next_id.get(tenant).unwrap())
            } else {
                let n = next_id.entry(tenant).or_insert(0);
                *n += 1;
                *n - 1
            };
            let (rec, minor, currency) = valid(&mut rng, tenant, i);
            if k % 20 == 7 {
                // 5% invalid.
                recs.push(make_invalid(rec, k / 20));
            } else {
                model.insert(
                    rec.fields["external_id"].clone(),
                    (currency, minor, rec.fields["status"].clone()),
                );
                recs.push(rec);
            }
        }
        let (ct, body) = match format {
            "ndjson" => ("application/x-ndjson", ndjson(&recs)),
            "json" => ("application/json", json_array(&recs)),
            _ => ("text/csv", csv(&recs)),
        };
        let token = common::token(tenant, &[Role::Ingest]);
        total_accepted += send(&base, &token, ct, body, gzip, &recs).await;
        total_sent += size;
    }
    assert_eq!(total_sent, 10_000);
    common::wait_processed(&running, total_accepted as u64).await;

    for (tenant, model) in &models {
        let token = common::token(tenant, &[Role::Read]);
        // These records name no other (docs/lifecycle.md): a declined one
        // never counts, a reversal takes its (absolute) amount back.
        let mut expected: BTreeMap<(Option<String>, String), (i64, i128)> = BTreeMap::new();
        for (currency, minor, status) in model.values() {
            let counted = match status.as_str() {
                "declined" => continue,
                "reversed" => -i128::from(*minor).abs(),
                _ => i128::from(*minor),
            };
            let e = expected
                .entry((Some(currency.to_string()), currency.to_string()))
                .or_default();
            e.0 += 1;
            e.1 += counted;
        }
        // A report waits up to a second for the reports' state to read the
        // newest commit, then answers at the version the state holds: on a
        // busy machine (the S3 lake, tests beside it) the first answer after
        // the processors wrote may be a version behind. Look until it is
        // the newest.
        let mut poll = common::Deadline::new(Duration::from_secs(30), Duration::from_millis(200));
        let got = loop {
            let got = common::report(&base, &token, "group_by=currency&status=all").await;
            let got_simple: BTreeMap<_, _> =
                got.iter().map(|(k, v)| (k.clone(), (v.0, v.1))).collect();
            if got_simple == expected || poll.expired() {
                assert_eq!(got_simple, expected, "tenant {tenant}");
                break got;
            }
            poll.tick(format!(
                "tenant {tenant}'s report to reach the newest version"
            ))
            .await;
        };
        // The tenant's SQL view of its latest versions says the same.
        let by_sql = common::sql(
            &base,
            &token,
            "SELECT currency, COUNT(*), CAST(SUM(counted_amount_minor) AS DECIMAL(38, 0)) FROM expenses_counted GROUP BY currency",
        )
        .await;
        let by_sql: BTreeMap<_, _> = by_sql["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let currency = r[0].as_str().unwrap().to_string();
                let total: i128 = r[2].as_str().unwrap().parse().unwrap();
                (
                    (Some(currency.clone()), currency),
                    (r[1].as_i64().unwrap(), total),
                )
            })
            .collect();
        assert_eq!(by_sql, expected, "tenant {tenant} over SQL");
        // Decimal strings carry each currency's exponent exactly.
        for ((_, currency), (_, minor, text)) in &got {
            let exp = spendstream_schemas::Currency::from_code(currency)
                .unwrap()
                .exponent();
            assert_eq!(text, &spendstream_schemas::format_minor(*minor, exp));
        }

        // Status filter: only the latest version's status counts.
        let mut posted: BTreeMap<String, i64> = BTreeMap::new();
        for (currency, _, status) in model.values() {
            if status == "posted" {
                *posted.entry(currency.to_string()).or_default() += 1;
            }
        }
        let got = common::report(&base, &token, "group_by=currency&status=posted").await;
        let got_counts: BTreeMap<String, i64> =
            got.iter().map(|((_, c), v)| (c.clone(), v.0)).collect();
        assert_eq!(got_counts, posted, "tenant {tenant} posted");

        // Another grouping sees the same total count.
        let by_category = common::report(&base, &token, "group_by=category&status=all").await;
        let n: i64 = by_category.values().map(|v| v.0).sum();
        let counted = model.values().filter(|(_, _, s)| s != "declined").count();
        assert_eq!(n as usize, counted);

        // ClickHouse, the second sink, holds the same latest versions.
        common::assert_clickhouse_matches_lake(&base, &clickhouse, tenant, "all").await;
        common::assert_clickhouse_matches_lake(&base, &clickhouse, tenant, "posted").await;
    }

    // A tenant with no data sees nothing, whatever the others sent.
    let stranger = common::token("initech", &[Role::Read]);
    assert!(
        common::report(&base, &stranger, "group_by=currency&status=all")
            .await
            .is_empty()
    );

    // Processors saw exactly the accepted records: nothing dead-lettered.
    let stats = running.stats.clone().unwrap();
    assert_eq!(
        stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Everything is processed and committed: no partition lags.
    let partitions = running.log.as_ref().unwrap().partitions();
    common::wait_for_lag(&base, partitions, |sum| sum == 0.0, "lag never came to 0").await;
    common::assert_documented(&base).await;
    running.shutdown().await.unwrap();
}

/// A server on `dir` whose reports show 300 records of tenant `acme`
/// (one day in each of nine months of 2026); its address and the model.
async fn start_with_300_acme_records(
    dir: &std::path::Path,
) -> (spendstream::Running, String, BTreeMap<String, i64>) {
    let running = common::start(dir).await;
    let base = format!("http://{}", running.addr);
    let model = common::ingest(&base, 0, 300).await;
    common::wait_for_totals(&base, &model).await;
    (running, base, model)
}

/// Reports by day, week and month are time series with a zero row for each
/// period without spend; `top=N` keeps the first N groups; the pages after
/// the first come from the answer the first page computed, on its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_as_time_series_top_groups_and_cached_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (running, base, model) = start_with_300_acme_records(dir.path()).await;
    let client = reqwest::Client::new();
    let read = common::token("acme", &[Role::Read]);
    let total: i128 = model.values().map(|v| i128::from(*v)).sum();

    // By day: every day from the first spend (2026-01-11) to the last
    // (2026-09-11), zero where nothing was spent.
    let by_day = common::report(&base, &read, "group_by=day&status=all").await;
    assert_eq!(by_day.len(), 244);
    let days: Vec<chrono::NaiveDate> = by_day
        .keys()
        .map(|(g, _)| g.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(days.windows(2).all(|w| w[0].succ_opt() == Some(w[1])));
    assert_eq!(by_day.values().filter(|v| v.0 > 0).count(), 9);
    assert_eq!(by_day.values().map(|v| v.1).sum::<i128>(), total);
    assert_eq!(by_day[&(Some("2026-01-12".into()), "USD".into())].2, "0.00");

    // By week (labelled by Monday) over a range wider than the data, with a
    // currency the filter names but nobody spent.
    let by_week = common::report(
        &base,
        &read,
        "group_by=week&status=all&from=2025-12-29&to=2026-02-01&currency=USD,EUR",
    )
    .await;
    let january: Vec<i64> = (0..300)
        .filter(|i| i % 9 == 0)
        .map(|i| model[&format!("x{i}")])
        .collect();
    let weeks: Vec<_> = by_week
        .iter()
        .map(|((g, c), v)| (g.clone().unwrap(), c.clone(), v.0, v.1))
        .collect();
    let mut want = Vec::new();
    for monday in [
        "2025-12-29",
        "2026-01-05",
        "2026-01-12",
        "2026-01-19",
        "2026-01-26",
    ] {
        for currency in ["EUR", "USD"] {
            let (n, sum) = if monday == "2026-01-05" && currency == "USD" {
                (
                    january.len() as i64,
                    january.iter().map(|v| i128::from(*v)).sum(),
                )
            } else {
                (0, 0)
            };
            want.push((monday.to_string(), currency.to_string(), n, sum));
        }
    }
    assert_eq!(weeks, want);

    // A time series is ordered by period.
    let months = common::get_json(
        &client,
        format!("{base}/v1/reports/spend?group_by=month&status=all"),
        &read,
    )
    .await;
    let order: Vec<&str> = months["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06", "2026-07", "2026-08",
            "2026-09"
        ]
    );

    // Top merchants: another tenant's spend at four merchants, in two
    // currencies at one of them.
    let globex = common::token("globex", &[Role::Read]);
    let mut body = String::new();
    for (i, (merchant, minor, currency)) in [
        ("Alpha", 9_000, "USD"),
        ("Beta", 7_000, "USD"),
        ("Alpha", 5_000, "EUR"),
        ("Gamma", 3_000, "USD"),
        ("Delta", 1_000, "USD"),
    ]
    .into_iter()
    .enumerate()
    {
        body.push_str(&format!(
            r#"{{"source":"s","external_id":"m{i}","account_id":"a","transaction_date":"2026-03-0{}","amount_minor":{minor},"currency":"{currency}","merchant_name":"{merchant}"}}"#,
            i + 1
        ));
        body.push('\n');
    }
    let sent = client
        .post(format!("{base}/v1/expenses"))
        .bearer_auth(common::token("globex", &[Role::Ingest]))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let mut poll = common::Deadline::new(Duration::from_secs(60), Duration::from_millis(100));
    loop {
        let seen = common::report(&base, &globex, "group_by=currency&status=all").await;
        if seen.values().map(|v| v.0).sum::<i64>() == 5 {
            break;
        }
        poll.tick("globex's five records").await;
    }
    let top = |query: &'static str| {
        let (client, base, globex) = (client.clone(), base.clone(), globex.clone());
        async move {
            client
                .get(format!("{base}/v1/reports/spend?{query}"))
                .bearer_auth(&globex)
                .send()
                .await
                .unwrap()
        }
    };
    let two: Value = top("group_by=merchant&top=2").await.json().await.unwrap();
    let rows: Vec<(&str, &str)> = two["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap(),
                r["currency"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("Alpha", "USD"), ("Beta", "USD"), ("Alpha", "EUR")]);
    assert!(two["next_cursor"].is_null());
    for (bad, code) in [
        ("group_by=merchant&top=0", "invalid_query"),
        ("group_by=merchant&top=1001", "invalid_query"),
        ("group_by=merchant&top=2&limit=5", "invalid_query"),
        ("group_by=month&top=2", "invalid_query"),
        (
            "group_by=day&from=1900-01-01&to=2100-01-01",
            "range_too_large",
        ),
        ("group_by=day&from=%2B10000-01-01", "invalid_query"),
        ("group_by=week&from=0001-01-01", "invalid_query"),
    ] {
        let refused = top(bad).await;
        assert_eq!(refused.status(), 400, "{bad}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], code, "{bad}: {body}");
    }

    // Pages after the first read the answer the first page computed, so
    // they stay on its snapshot when the table moves meanwhile.
    let page = |cursor: Option<String>| {
        let (client, base, read) = (client.clone(), base.clone(), read.clone());
        async move {
            let mut url = format!("{base}/v1/reports/spend?group_by=day&status=all&limit=100");
            if let Some(c) = cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            common::get_json(&client, url, &read).await
        }
    };
    let first = page(None).await;
    let second = page(first["next_cursor"].as_str().map(str::to_string)).await;
    let changed = common::ingest_bumped(&base, 0, 300, 1).await;
    common::wait_for_totals(&base, &changed).await;
    let third = page(second["next_cursor"].as_str().map(str::to_string)).await;
    assert!(third["next_cursor"].is_null());
    let paged: i128 = [&first, &second, &third]
        .iter()
        .flat_map(|p| p["rows"].as_array().unwrap().iter())
        .map(|r| r["amount_minor"].to_string().parse::<i128>().unwrap())
        .sum();
    assert_eq!(paged, total, "pages mixed two snapshots");
    let now: i128 = common::report(&base, &read, "group_by=day&status=all")
        .await
        .values()
        .map(|v| v.1)
        .sum();
    assert_eq!(now, total + 300);
    running.shutdown().await.unwrap();
}

/// Reports carry an ETag of the table version, the tenant, the request and
/// the format; asked again with it, they answer 304 until the table moves.
/// SQL answers (POST) carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_304_while_the_table_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (running, base, model) = start_with_300_acme_records(dir.path()).await;
    let client = reqwest::Client::new();
    let read = common::token("acme", &[Role::Read]);

    let report = format!("{base}/v1/reports/spend?group_by=currency&status=all");
    let get = |tag: Option<&str>| {
        let mut req = client.get(&report).bearer_auth(&read);
        if let Some(tag) = tag {
            req = req.header("if-none-match", tag);
        }
        req.send()
    };
    let sql = |tag: Option<&str>| {
        let mut req = client
            .post(format!("{base}/v1/sql"))
            .bearer_auth(&read)
            .json(&json!({"sql": "SELECT COUNT(*) FROM expenses_latest"}));
        if let Some(tag) = tag {
            req = req.header("if-none-match", tag);
        }
        req.send()
    };
    let etag = |r: &reqwest::Response| r.headers()["etag"].to_str().unwrap().to_string();
    let first = get(None).await.unwrap();
    assert_eq!(first.status(), 200);
    let tag = etag(&first);
    let again = get(Some(&tag)).await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(etag(&again), tag);
    assert_eq!(again.headers()["vary"], "accept");
    assert!(again.bytes().await.unwrap().is_empty());
    let other = get(Some("W/\"0-0000000000000000\"")).await.unwrap();
    assert_eq!(other.status(), 200);
    // The same report as CSV is another answer, with its own tag.
    let csv = client
        .get(&report)
        .bearer_auth(&read)
        .header("accept", "text/csv")
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert_ne!(etag(&csv), tag);
    // SQL is a POST whose text may read the clock: never 304, no tag.
    let answered = sql(Some(&tag)).await.unwrap();
    assert_eq!(answered.status(), 200);
    assert!(answered.headers().get("etag").is_none());

    // Reports as CSV and Arrow, the next page's cursor in a header.
    let json_rows = get(None).await.unwrap().json::<Value>().await.unwrap()["rows"]
        .as_array()
        .unwrap()
        .len();
    // By month: nine rows, so a page of one has a next page.
    let by_month = format!("{base}/v1/reports/spend?group_by=month&status=all&limit=1");
    let csv = client
        .get(&by_month)
        .bearer_auth(&read)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    let cursor = csv.headers()["spendstream-next-cursor"]
        .to_str()
        .unwrap()
        .to_string();
    let text = csv.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("group,currency,count,amount,amount_minor")
    );
    assert_eq!(lines.count(), 1);
    let second = client
        .get(format!("{by_month}&cursor={cursor}"))
        .bearer_auth(&read)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    assert_ne!(second.text().await.unwrap(), text);
    let arrow = client
        .get(&report)
        .bearer_auth(&read)
        .header("accept", "application/vnd.apache.arrow.stream")
        .send()
        .await
        .unwrap();
    assert_eq!(arrow.status(), 200);
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
        std::io::Cursor::new(arrow.bytes().await.unwrap()),
        None,
    )
    .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, json_rows);
    let refused = client
        .get(&report)
        .bearer_auth(&read)
        .header("accept", "image/png")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 406);

    // Filters apply to the latest version of each expense.
    let count = |query: &'static str| {
        let (base, read) = (base.clone(), read.clone());
        async move {
            common::report(&base, &read, query)
                .await
                .values()
                .map(|v| v.0)
                .sum::<i64>()
        }
    };
    let big = model.values().filter(|v| **v >= 50_000).count() as i64;
    assert_eq!(count("group_by=month&status=all&currency=USD").await, 300);
    assert_eq!(count("group_by=month&status=all&currency=EUR,GBP").await, 0);
    assert_eq!(count("group_by=month&status=all&account=a").await, 300);
    assert_eq!(count("group_by=month&status=all&account=it's").await, 0);
    assert_eq!(count("group_by=month&status=all&employee=e-1").await, 0);
    assert_eq!(
        count("group_by=month&status=all&category=other,fuel").await,
        300
    );
    assert_eq!(
        count("group_by=month&status=all&min_amount_minor=50000").await,
        big
    );
    assert_eq!(
        count("group_by=month&status=all&max_amount_minor=49999").await,
        300 - big
    );
    for bad in [
        "currency=XYZ",
        "category=nope",
        "min_amount_minor=5&max_amount_minor=4",
        "min_amount_minor=ten",
    ] {
        let r = client
            .get(format!("{base}/v1/reports/spend?group_by=month&{bad}"))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // Another tenant asking the same gets its own tag.
    let tag = etag(&get(None).await.unwrap());
    let globex = client
        .get(&report)
        .bearer_auth(common::token("globex", &[Role::Read]))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(globex.status(), 200);

    // The table moves: the old tag no longer matches.
    let mut all = model;
    all.extend(common::ingest(&base, 300, 100).await);
    common::wait_for_totals(&base, &all).await;
    let after = get(Some(&tag)).await.unwrap();
    assert_eq!(after.status(), 200);
    assert_ne!(etag(&after), tag);
    common::assert_documented(&base).await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_check_roles_and_parameters_and_ops_endpoints_answer() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path()).await;
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<String>| {
        let mut req = client.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let read = common::token("acme", &[Role::Read]);
    let ingest_only = common::token("acme", &[Role::Ingest]);

    let r = get("/v1/reports/spend?group_by=category", None)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = get("/v1/reports/spend?group_by=category", Some(ingest_only))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for bad in [
        "group_by=colour",
        "group_by=category&from=2026-13-01",
        "group_by=category&status=settled",
        "group_by=category&limit=0",
        "group_by=category&cursor=xyz",
        "group_by=month&from=2026-05-01&to=2026-04-01",
    ] {
        let r = get(&format!("/v1/reports/spend?{bad}"), Some(read.clone()))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().starts_with("invalid_"),
            "{body}"
        );
        assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    }
    let r = get("/v1/reports/spend?group_by=month", Some(read.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["rows"], json!([]));

    // SQL: roles, refusals and errors with codes.
    let sql = |token: Option<&str>, body: Value| {
        let mut req = client.post(format!("{base}/v1/sql")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let select = json!({"sql": "SELECT COUNT(*) AS n FROM expenses_latest"});
    assert_eq!(sql(None, select.clone()).await.unwrap().status(), 401);
    let ingest_only = common::token("acme", &[Role::Ingest]);
    assert_eq!(
        sql(Some(&ingest_only), select.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    let r = sql(Some(&read), select).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["columns"], json!([{"name": "n", "type": "Int64"}]));
    assert_eq!(body["rows"], json!([[0]]));
    for (body, code) in [
        (
            json!({"sql": "DROP TABLE expenses"}),
            "statement_not_allowed",
        ),
        (json!({"sql": "SELECT * FROM '/etc/passwd'"}), "invalid_sql"),
        (json!({"sql": "SELECT nope FROM expenses"}), "invalid_sql"),
        (json!({"query": "SELECT 1"}), "invalid_body"),
    ] {
        let r = sql(Some(&read), body.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], code, "{body}");
    }

    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    let ready: Value = get("/readyz", None).await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["log"], "ok");
    assert_eq!(ready["checks"]["lake"], "ok");
    let metrics = get("/metrics", None).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("spendstream_http_requests_total"),
        "{metrics}"
    );
    let r = get("/nope", None).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let schema: Value = get("/v1/schemas/expense.v1.json", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(schema["additionalProperties"], false);
    common::assert_documented(&base).await;
    running.shutdown().await.unwrap();
}

/// Records an older edge let through reach the dead-letter store with their
/// original bytes, in either envelope version; operators list and replay
/// them through the API.
async fn dead_letters_are_listed_and_replayed(backend: common::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let running = backend.start(dir.path()).await;
    let base = format!("http://{}", running.addr);
    let log = running.log.as_ref().unwrap();
    // What an older edge might have written: valid envelope, invalid record.
    let writer = spendstream_schemas::EnvelopeWriter::new("acme", "b1", "r1", 0);
    let bad = r#"{"source":"old-edge","external_id":"x1","account_id":"a","transaction_date":"2026-01-01","amount":"1.001","currency":"USD"}"#;
    log.producer()
        .append(vec![
            spendstream_log::Record {
                key: spendstream_schemas::identity_key("acme", "old-edge", "x1").into_bytes(),
                value: writer.write(bad),
                headers: Default::default(),
            },
            spendstream_log::Record {
                key: b"junk".to_vec(),
                value: b"not an envelope".to_vec(),
                headers: Default::default(),
            },
            spendstream_log::Record {
                key: spendstream_schemas::identity_key("acme", "other-rules", "x2").into_bytes(),
                value: packed_under_other_rules(),
                headers: Default::default(),
            },
        ])
        .await
        .unwrap();
    common::wait_processed(&running, 3).await;

    let client = reqwest::Client::new();
    let admin = common::token("acme", &[Role::Admin]);
    let list = |token: String| {
        client
            .get(format!("{base}/v1/dead-letters"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        list(common::token("acme", &[Role::Read]))
            .await
            .unwrap()
            .status(),
        403
    );
    let body: Value = list(admin.clone()).await.unwrap().json().await.unwrap();
    let letters = body["dead_letters"].as_array().unwrap();
    // The unreadable envelope has no tenant: no tenant can see it.
    assert_eq!(letters.len(), 2, "{body}");
    // The records may be in any order: each is found by its external id.
    let of = |letters: &[Value], external_id: &str| -> Vec<Value> {
        letters
            .iter()
            .filter(|l| l["record"]["external_id"] == external_id)
            .cloned()
            .collect()
    };
    let json_letter = &of(letters, "x1")[0];
    assert_eq!(json_letter["error"], "amount_precision");
    // A packed record shows as the JSON an importer would send.
    let packed_letter = &of(letters, "x2")[0];
    assert_eq!(packed_letter["error"], "pan_detected");
    assert_eq!(packed_letter["record"]["amount_minor"], 1250);
    let id = json_letter["id"].as_i64().unwrap();
    let packed_id = packed_letter["id"].as_i64().unwrap();
    let packed_partition = packed_letter["log_position"]["partition"].clone();

    let replay = |tenant: &str| {
        client
            .post(format!("{base}/v1/dead-letters/{id}/replay"))
            .bearer_auth(common::token(tenant, &[Role::Admin]))
            .send()
    };
    assert_eq!(replay("globex").await.unwrap().status(), 404);
    let r = replay("acme").await.unwrap();
    assert_eq!(r.status(), 202);
    let pos: Value = r.json().await.unwrap();
    assert_eq!(replay("acme").await.unwrap().status(), 409);
    let r = client
        .post(format!("{base}/v1/dead-letters/{packed_id}/replay"))
        .bearer_auth(admin.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let packed_pos: Value = r.json().await.unwrap();
    // Replayed under the record's own key: beside its other versions.
    assert_eq!(packed_pos["partition"], packed_partition);
    // Processed again with today's rules: still invalid, so a new letter at
    // each replayed position.
    common::wait_processed(&running, 5).await;
    let body: Value = list(admin).await.unwrap().json().await.unwrap();
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 4, "{body}");
    for (external_id, pos, error) in [
        ("x1", &pos, "amount_precision"),
        ("x2", &packed_pos, "pan_detected"),
    ] {
        let [first, again] = &of(letters, external_id)[..] else {
            panic!("two letters of {external_id}: {body}");
        };
        assert_eq!(first["replayed"]["offset"], pos["offset"]);
        assert_eq!(again["log_position"]["offset"], pos["offset"]);
        assert_eq!(again["log_position"]["partition"], pos["partition"]);
        assert_eq!(again["error"], error);
    }
    common::assert_documented(&base).await;
    running.shutdown().await.unwrap();
}

/// A packed record (envelope version 2) from an edge of other rules,
/// holding what today's rules refuse: a card number in its memo.
fn packed_under_other_rules() -> Vec<u8> {
    let raw = r#"{"source":"other-rules","external_id":"x2","account_id":"a","transaction_date":"2026-01-01","amount":"12.50","currency":"USD"}"#;
    let mut record = spendstream_schemas::ExpenseRecord::from_json(raw).unwrap();
    record.memo = Some("card 4111 1111 1111 1111".into());
    let rules = spendstream_schemas::RULES_VERSION + 1;
    spendstream_schemas::PackedWriter::with_rules(rules, "acme", "b2", "r2", 0).write(&record)
}

/// The OpenAPI document lists exactly the router's paths (read from the
/// router itself), every documented method is routed and every other one
/// is 405; the statuses the servers answered across the tests are checked
/// against it by `common::assert_documented`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path()).await;
    let base = format!("http://{}", running.addr);
    let doc: Value = serde_json::from_str(spendstream::app::openapi_json()).unwrap();
    let documented: std::collections::BTreeSet<String> =
        doc["paths"].as_object().unwrap().keys().cloned().collect();

    // axum has no route listing, but its Debug output names every path.
    let router = spendstream::app::router(
        spendstream::Roles::ALL,
        &common::keys(),
        running.log.as_ref(),
        running.lake.as_ref(),
        spendstream::app::RouteOptions {
            idempotency: running.state.as_ref().map(|s| s.idempotency.clone()),
            revocations: running.state.as_ref().map(|s| s.revocations.clone()),
            fx: running.state.as_ref().map(|s| s.fx.clone()),
            batches: running.state.as_ref().map(|s| s.batches.clone()),
            ..Default::default()
        },
        Vec::new(),
    );
    let debug = format!("{router:?}");
    // The routes proper; the fallback router's catch-all paths come after.
    let routes = debug
        .split_once("fallback_router")
        .map_or(debug.as_str(), |(routes, _)| routes);
    let routed: std::collections::BTreeSet<String> = routes
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/') && !s.contains("__private__"))
        .map(str::to_string)
        .collect();
    assert!(routed.len() >= 8, "no paths read from the router: {debug}");
    assert_eq!(routed, documented, "router paths vs OpenAPI paths");
    // Its ingest state holds the log: shutdown waits for that to go.
    drop(router);

    let client = reqwest::Client::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let url = format!(
                "{base}{}",
                path.replace("{id}", "1")
                    .replace("{batch_id}", "00000000-0000-4000-8000-000000000000")
            );
            let resp = client
                .request(method.to_uppercase().parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && body["message"] != "no such route",
                "{method} {path}: {status}"
            );
        }
    }
    common::assert_documented(&base).await;
    running.shutdown().await.unwrap();
}

/// Spans an in-process OTLP/HTTP receiver was sent: (service, span).
type Received =
    std::sync::Arc<std::sync::Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>;

/// An OTLP/HTTP (protobuf) trace receiver on a port of its own; its URL
/// and what it received.
async fn otlp_receiver() -> (String, Received) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let received = Received::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let mut store = store.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            store.push((service.clone(), span));
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// One trace from the importer's `traceparent`, through the edge (an
/// `ingest` process) and the log, to the processors (a `process` process
/// on the same data): the processor's span is a child of the edge's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_edge_and_the_processors() {
    let (endpoint, received) = otlp_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let traced = |cmd: &mut std::process::Command| {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_SERVICE_NAME");
    };
    let args = |role: &str| vec![role.to_string(), "--data-dir".into(), data_dir.clone()];
    let (ingest, _) = common::spawn_with(&args("ingest"), traced);
    let (_process, _) = common::spawn_with(&args("process"), traced);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (body, _) = common::acme_records(0, 10);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/expenses", ingest.base))
        .bearer_auth(common::token("acme", &[Role::Ingest]))
        .header("content-type", "application/x-ndjson")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut poll = common::Deadline::new(Duration::from_secs(60), Duration::from_millis(100));
    loop {
        let spans: Vec<_> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace_id)
            .map(|(service, s)| {
                (
                    service.clone(),
                    s.name.clone(),
                    hex(&s.span_id),
                    hex(&s.parent_span_id),
                )
            })
            .collect();
        let edge = spans.iter().find(|(service, name, _, parent)| {
            service.contains("spendstream-ingest") && name == "request" && parent == caller_span
        });
        let processor = spans.iter().find(|(service, name, _, _)| {
            service.contains("spendstream-process") && name == "process_records"
        });
        if let (Some(edge), Some(processor)) = (edge, processor) {
            // The processor's span hangs under a span of the edge's.
            assert!(
                spans
                    .iter()
                    .any(|(service, _, id, _)| service.contains("spendstream-ingest")
                        && *id == processor.3),
                "the processor's span has no parent on the edge: {spans:?}"
            );
            assert_eq!(edge.3, caller_span);
            return;
        }
        poll.tick(format!("no trace from edge to processor yet: {spans:?}"))
            .await;
    }
}

/// docs/api.md's table of routes and roles is what the server enforces:
/// a route needing a role answers 401 without a token, 403 to a token with
/// every other role, and lets a token with only that role through; a route
/// needing none answers without a token. The table lists exactly the
/// OpenAPI document's operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_exactly_the_role_this_table_names() {
    let doc = include_str!("../docs/api.md");
    let table = doc
        .split_once("<!-- routes and roles: checked by tests/e2e.rs -->\n")
        .and_then(|(_, rest)| rest.split_once("\n\n"))
        .expect("docs/api.md has no routes table")
        .0;
    // A role cell is `none`, one role, or roles joined by "or" (any one
    // of them will do).
    let rows: Vec<(String, String, Vec<Role>)> = table
        .lines()
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(|c| c.trim().trim_matches('`')).collect();
            let (method, path) = cells[1].split_once(' ').unwrap();
            let roles = match cells[2] {
                "none" => Vec::new(),
                roles => roles
                    .split(" or ")
                    .map(|r| r.trim_matches('`').parse::<Role>().unwrap())
                    .collect(),
            };
            (method.to_string(), path.to_string(), roles)
        })
        .collect();
    let openapi: Value = serde_json::from_str(spendstream::app::openapi_json()).unwrap();
    let mut documented: Vec<(String, String)> = openapi["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    documented.sort();
    let mut listed: Vec<(String, String)> = rows
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    listed.sort();
    assert_eq!(
        listed, documented,
        "the table and the OpenAPI document list other routes"
    );

    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path()).await;
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let all = [Role::Ingest, Role::Read, Role::Admin];
    let call = |method: &str, path: &str, token: Option<String>| {
        let url = format!(
            "{base}{}",
            path.replace("{id}", "1")
                .replace("{batch_id}", "00000000-0000-4000-8000-000000000000")
        );
        let mut request = client.request(method.parse().unwrap(), url);
        if method == "POST" {
            request = if path == "/v1/sql" {
                request.json(&json!({"sql": "SELECT 1"}))
            } else {
                request
                    .header("content-type", "application/x-ndjson")
                    .body("")
            };
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for (method, path, roles) in &rows {
        let bare = call(method, path, None).await;
        if roles.is_empty() {
            assert!(
                bare != 401 && bare != 403,
                "{method} {path} needs no role but answered {bare}"
            );
            continue;
        }
        assert_eq!(bare, 401, "{method} {path} without a token");
        let others: Vec<Role> = all.iter().copied().filter(|r| !roles.contains(r)).collect();
        let status = call(method, path, Some(common::token("acme", &others))).await;
        assert_eq!(status, 403, "{method} {path} with every role but {roles:?}");
        for role in roles {
            let status = call(method, path, Some(common::token("acme", &[*role]))).await;
            assert!(
                status != 401 && status != 403,
                "{method} {path} with the {} role answered {status}",
                role.as_str()
            );
        }
    }
    running.shutdown().await.unwrap();
}
