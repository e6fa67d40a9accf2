//! The report mix through the HTTP API against DuckDB answering the same
//! questions, with the same latest-version rule, on the same active Parquet
//! files of the lake, measured in the same run.
//!
//! `SPENDSTREAM_BENCH_PYTHON=.test-services/venv/bin/python cargo run --release --example reports_vs_duckdb -- [records] [repeats]`
//! (the Python needs `pip install duckdb`; scripts/test's virtualenv has it
//! after `.test-services/venv/bin/pip install duckdb`).
//!
//! `records` (default 1,000,000) go through the API for four tenants (the
//! largest holds 45%), then 10% of them again with a new amount (a second
//! version). The processors write them, the lake is compacted once (what
//! the periodic maintenance does), and each report is timed `repeats` times
//! (default 5) for the largest tenant with the report cache off: every
//! request is the first after a change, computed from the table. DuckDB
//! (2 threads) runs the same questions on the table's active files. The
//! answers are compared (counts and sums per currency) before any figure
//! is printed.

#[path = "common.rs"]
mod common;
use common::percentile;
use serde_json::{Value, json};
use spendstream::Roles;
use std::collections::BTreeMap;
use std::time::Instant;

const TENANTS: [(&str, usize); 4] = [("big", 45), ("t2", 25), ("t3", 20), ("t4", 10)];

/// Record `i`, whose amount is bumped by `bump` cents in a later version.
fn line(i: usize, bump: usize) -> String {
    format!(
        r#"{{"source":"bench","external_id":"b-{i}","account_id":"card_tok_{}","status":"{}","transaction_date":"2026-{:02}-{:02}","amount":"{}.{:02}","currency":"{}","merchant_name":"SQ *COFFEE #{}","merchant_mcc":"{}","employee_id":"emp-{}"}}"#,
        i % 500,
        ["posted", "posted", "posted", "pending", "reversed"][i % 5],
        1 + i % 12,
        1 + i % 28,
        i % 997,
        (i + bump) % 100,
        ["USD", "EUR", "GBP"][i % 3],
        i % 300,
        ["5814", "4511", "7011", "5411", "5541"][i % 5],
        i % 40
    )
}

/// Posts `ids` for `tenant` as NDJSON bodies of 5,000 from 4 clients.
async fn send(base: &str, tenant: &str, ids: Vec<usize>, bump: usize) -> anyhow::Result<usize> {
    let token = common::token_for(tenant, spendstream_http::Role::Ingest)?;
    let bodies: Vec<String> = ids
        .chunks(5_000)
        .map(|c| c.iter().map(|i| line(*i, bump) + "\n").collect())
        .collect();
    let accepted = common::post_bodies(&format!("{base}/v1/expenses"), &token, bodies, 4).await?;
    Ok(accepted as usize)
}

/// Per currency: (count, sum of minor units).
type Totals = BTreeMap<String, (i64, i128)>;

/// One question: the API request and DuckDB's SQL over `latest`.
struct Question {
    name: &'static str,
    report: Option<&'static str>,
    sql: Option<&'static str>,
    duckdb: &'static str,
}

fn questions() -> Vec<Question> {
    let q = |name, report, sql, duckdb| Question {
        name,
        report,
        sql,
        duckdb,
    };
    vec![
        q(
            "report by category",
            Some("group_by=category"),
            None,
            "SELECT category, currency, count(*), sum(amount_minor::HUGEINT) FROM latest WHERE status IN ('posted', 'pending') GROUP BY ALL",
        ),
        q(
            "report by merchant",
            Some("group_by=merchant"),
            None,
            "SELECT COALESCE(merchant_normalized, merchant_name), currency, count(*), sum(amount_minor::HUGEINT) FROM latest WHERE status IN ('posted', 'pending') GROUP BY ALL",
        ),
        q(
            "report by month",
            Some("group_by=month"),
            None,
            "SELECT strftime(transaction_date, '%Y-%m'), currency, count(*), sum(amount_minor::HUGEINT) FROM latest WHERE status IN ('posted', 'pending') GROUP BY ALL",
        ),
        q(
            "report by currency",
            Some("group_by=currency"),
            None,
            "SELECT currency, currency, count(*), sum(amount_minor::HUGEINT) FROM latest WHERE status IN ('posted', 'pending') GROUP BY ALL",
        ),
        q(
            "SQL: totals by currency",
            None,
            Some(
                "SELECT currency, currency AS c, COUNT(*) AS n, CAST(SUM(amount_minor) AS DECIMAL(38, 0)) AS total FROM expenses_latest WHERE status IN ('posted', 'pending') GROUP BY currency",
            ),
            "SELECT currency, currency, count(*), sum(amount_minor::HUGEINT) FROM latest WHERE status IN ('posted', 'pending') GROUP BY ALL",
        ),
        // The category report's question as SQL on the view, and written out
        // by hand with the same latest-version join.
        q(
            "SQL: by category on expenses_latest",
            None,
            Some(
                "SELECT category, currency, COUNT(*) AS n, CAST(SUM(amount_minor) AS DECIMAL(38, 0)) AS total FROM expenses_latest WHERE status IN ('posted', 'pending') GROUP BY category, currency",
            ),
            "SELECT category, currency, count(*), sum(amount_minor::HUGEINT) FROM latest WHERE status IN ('posted', 'pending') GROUP BY ALL",
        ),
        q(
            "SQL: by category, max-version join",
            None,
            Some(
                "SELECT e.category, e.currency, COUNT(*) AS n, CAST(SUM(e.amount_minor) AS DECIMAL(38, 0)) AS total FROM expenses e JOIN (SELECT expense_id, MAX(version) AS v FROM expenses GROUP BY expense_id) m ON e.expense_id = m.expense_id AND e.version = m.v WHERE e.status IN ('posted', 'pending') GROUP BY e.category, e.currency",
            ),
            "SELECT category, currency, count(*), sum(amount_minor::HUGEINT) FROM latest WHERE status IN ('posted', 'pending') GROUP BY ALL",
        ),
        q(
            "SQL: spend by employee and month",
            None,
            Some(
                "SELECT employee_id, currency, COUNT(*) AS n, CAST(SUM(amount_minor) AS DECIMAL(38, 0)) AS total FROM expenses_latest WHERE status IN ('posted', 'pending') GROUP BY employee_id, currency, date_trunc('month', transaction_date)",
            ),
            "SELECT employee_id, currency, count(*), sum(amount_minor::HUGEINT) FROM latest WHERE status IN ('posted', 'pending') GROUP BY employee_id, currency, date_trunc('month', transaction_date)",
        ),
    ]
}

fn add(totals: &mut Totals, currency: &str, count: i64, sum: i128) {
    let t = totals.entry(currency.to_string()).or_default();
    t.0 += count;
    t.1 += sum;
}

/// Times `question` through HTTP `repeats` times; its answer's totals.
async fn through_api(
    client: &reqwest::Client,
    base: &str,
    question: &Question,
    repeats: usize,
) -> anyhow::Result<(Vec<f64>, Totals)> {
    let token = common::token_for("big", spendstream_http::Role::Read)?;
    let mut timings = Vec::new();
    let mut totals = Totals::new();
    for _ in 0..repeats {
        totals.clear();
        let started = Instant::now();
        let body: Value = match (question.report, question.sql) {
            (Some(report), _) => {
                client
                    .get(format!("{base}/v1/reports/spend?{report}&limit=1000"))
                    .bearer_auth(&token)
                    .send()
                    .await?
                    .json()
                    .await?
            }
            (None, Some(sql)) => {
                client
                    .post(format!("{base}/v1/sql"))
                    .bearer_auth(&token)
                    .json(&json!({ "sql": sql }))
                    .send()
                    .await?
                    .json()
                    .await?
            }
            (None, None) => anyhow::bail!("{}: nothing to ask", question.name),
        };
        timings.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(body.get("error").is_none(), "{}: {body}", question.name);
        if question.report.is_some() {
            anyhow::ensure!(
                body["next_cursor"].is_null(),
                "{}: more than a page",
                question.name
            );
            for r in body["rows"].as_array().into_iter().flatten() {
                add(
                    &mut totals,
                    r["currency"].as_str().unwrap_or_default(),
                    r["count"].as_i64().unwrap_or_default(),
                    r["amount_minor"].to_string().parse()?,
                );
            }
        } else {
            for r in body["rows"].as_array().into_iter().flatten() {
                add(
                    &mut totals,
                    r[1].as_str().unwrap_or_default(),
                    r[2].as_i64().unwrap_or_default(),
                    r[3].as_str().unwrap_or_default().parse()?,
                );
            }
        }
    }
    Ok((timings, totals))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::numeric_args()?;
    let records = args.first().copied().unwrap_or(1_000_000);
    let repeats = args.get(1).copied().unwrap_or(5).max(1);
    let python = std::env::var("SPENDSTREAM_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir()?;
    let mut settings = common::settings(
        Roles::ALL,
        format!("embedded://{}", dir.path().join("log").display()),
        dir.path(),
        50_000,
    )?;
    // Every request computes its answer: the first after a change.
    settings.report_cache_rows = 0;
    // The reports' in-memory state holds every expense and superseded
    // version, with room to grow (what an operator sets
    // --report-state-rows to for a table this size).
    settings.report_state_rows = settings.report_state_rows.max(records * 3 / 2);
    let running = spendstream::start(settings).await?;
    let base = format!("http://{}", running.addr);
    let stats = running.stats.clone().expect("processors run");
    let lake = running.lake.clone().expect("a lake");

    let started = Instant::now();
    let mut sent = 0;
    let mut offset = 0;
    for (tenant, share) in TENANTS {
        let n = records * share / 100;
        let ids: Vec<usize> = (offset..offset + n).collect();
        sent += send(&base, tenant, ids.clone(), 0).await?;
        // A tenth again, with a new amount: second versions.
        let updates: Vec<usize> = ids.into_iter().step_by(10).collect();
        sent += send(&base, tenant, updates, 37).await?;
        offset += n;
    }
    common::wait_written(&stats, sent as u64).await?;
    let ingest_s = started.elapsed().as_secs_f64();
    let compacted = lake.compact().await?;
    let files: Vec<String> = lake
        .files()
        .await?
        .into_iter()
        .map(|f| {
            let root = lake.url().to_file_path().expect("a local lake");
            root.join(f).display().to_string()
        })
        .collect();
    let big_files = files
        .iter()
        .filter(|f| f.contains("tenant_id=big/"))
        .count();
    println!(
        "{sent} records ({records} expenses, 10% updated) for {} tenants in {ingest_s:.1} s; compaction: {compacted:?}; {} active files, {big_files} of tenant `big`.",
        TENANTS.len(),
        files.len()
    );

    let client = reqwest::Client::new();
    let mut api = Vec::new();
    for question in questions() {
        // A refusal (a limit broken) is a figure too: printed in its row.
        api.push(through_api(&client, &base, &question, repeats).await);
    }
    let plan = json!({
        "files": files.iter().filter(|f| f.contains("tenant_id=big/")).collect::<Vec<_>>(),
        "tenant": "big",
        "repeats": repeats,
        "queries": questions().iter().map(|q| (q.name, q.duckdb)).collect::<BTreeMap<_, _>>(),
    });
    let duck = common::duckdb(&python, &plan)?;

    println!(
        "\n| question | API p50 ms | API p95 ms | DuckDB p50 ms | DuckDB p95 ms | API / DuckDB (p50) | goal |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (question, answer) in questions().iter().zip(&api) {
        let d = &duck[question.name];
        let d_ms: Vec<f64> = d["ms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        let mut d_totals = Totals::new();
        for r in d["rows"].as_array().into_iter().flatten() {
            add(
                &mut d_totals,
                r[1].as_str().unwrap_or_default(),
                r[2].as_str().unwrap_or_default().parse()?,
                r[3].as_str().unwrap_or_default().parse()?,
            );
        }
        let goal = if question.report.is_some() {
            "≤ 0.5"
        } else {
            "≤ 1.5"
        };
        let (timings, totals) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                println!(
                    "| {} | refused: {e} | | {:.0} | {:.0} | — | {goal} |",
                    question.name,
                    percentile(&d_ms, 0.5),
                    percentile(&d_ms, 0.95)
                );
                continue;
            }
        };
        anyhow::ensure!(
            *totals == d_totals,
            "{}: the API answered {totals:?}, DuckDB {d_totals:?}",
            question.name
        );
        let goal = if question.report.is_some() {
            "≤ 0.5"
        } else {
            "≤ 1.5"
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {goal} |",
            question.name,
            percentile(timings, 0.5),
            percentile(timings, 0.95),
            percentile(&d_ms, 0.5),
            percentile(&d_ms, 0.95),
            percentile(timings, 0.5) / percentile(&d_ms, 0.5),
        );
    }
    // What a user sees right after new data: each time, 1,000 records of
    // `big` change (a commit of the processors), then the report runs. Its
    // answer may have to read the commit's files first.
    let report = questions().remove(0);
    let mut after_commit = Vec::new();
    for round in 0..repeats {
        let ids: Vec<usize> = (0..1_000).map(|i| i * 97).collect();
        sent += send(&base, "big", ids, 41 + round).await?;
        common::wait_written(&stats, sent as u64).await?;
        let (timings, _) = through_api(&client, &base, &report, 1).await?;
        after_commit.extend(timings);
    }
    println!(
        "\n{}, the first request after a commit of 1,000 changed records: p50 {:.0} ms, p95 {:.0} ms ({repeats} rounds).",
        report.name,
        percentile(&after_commit, 0.5),
        percentile(&after_commit, 0.95)
    );
    running.shutdown().await?;
    Ok(())
}
