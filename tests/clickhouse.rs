//! ClickHouse going away under load: a server of the test's own
//! (scripts/clickhouse-server) is killed for 30 s while records keep coming.
//! Nothing is lost, `/readyz` says ClickHouse is down meanwhile, the backlog
//! drains once it is back, and the process's memory stays bounded (the
//! processors hold one batch and wait; the log holds the rest).

mod common;

use common::Deadline;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A ClickHouse server on `dir` and `ports`; killed when dropped.
struct ClickHouse {
    child: Child,
}

impl ClickHouse {
    fn start(dir: &Path, (http, tcp): (u16, u16)) -> Self {
        let script = common::manifest_dir().join("scripts/clickhouse-server");
        let child = Command::new(script)
            .arg(dir)
            .arg(http.to_string())
            .arg(tcp.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child }
    }

    async fn wait_up(&mut self, url: &str) {
        let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(100));
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/?query=SELECT%201")).await
                && r.status() == 200
            {
                return;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "ClickHouse exited at start-up"
            );
            poll.tick("ClickHouse did not start").await;
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running ClickHouse of the test's own under `dir`, its ports (to start
/// it again on them), its URL, the URL of its database `database`, and the
/// arguments of `spendstream up` writing that database, with `extra`.
async fn own_clickhouse(
    dir: &Path,
    database: &str,
    extra: &[&str],
) -> (ClickHouse, (u16, u16), String, String, Vec<String>) {
    let ports = (free_port(), free_port());
    let server_url = format!("http://127.0.0.1:{}", ports.0);
    let mut clickhouse = ClickHouse::start(&dir.join("clickhouse"), ports);
    clickhouse.wait_up(&server_url).await;
    let database = format!("{server_url}/{database}");
    let mut args: Vec<String> = ["up", "--data-dir"].map(String::from).to_vec();
    args.push(dir.join("data").display().to_string());
    args.extend([
        "--clickhouse".to_string(),
        database.clone(),
        "--migrate".into(),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    (clickhouse, ports, server_url, database, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_30_seconds_loses_nothing_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (clickhouse, ports, server_url, database, args) =
        own_clickhouse(dir.path(), "outage", &["--batch-max-records", "2000"]).await;
    let mut server = common::spawn(&args, None);
    common::wait_healthy(&mut server).await;
    let pid = server.child.id();
    let mut model = common::ingest(&server.base, 0, 10_000).await;
    common::wait_for_totals(&server.base, &model).await;
    common::assert_clickhouse_matches_lake(&server.base, &database, "acme", "all").await;
    let before = common::peak_rss(pid);

    // ClickHouse goes away; imports go on.
    drop(clickhouse);
    let mut poll = Deadline::new(Duration::from_secs(30), Duration::from_millis(100));
    loop {
        let status = reqwest::get(format!("{}/readyz", server.base))
            .await
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        poll.tick("/readyz never noticed ClickHouse was gone").await;
    }
    let outage = tokio::time::Instant::now();
    let written = "spendstream_processor_records_total{outcome=\"written\"}";
    let written_before = common::counter(&server.base, written).await;
    let mut start = 10_000;
    // A steady load (2,000 records a second: pacing, not waiting for
    // anything) for the 30 s of the outage.
    let mut pace = tokio::time::interval(Duration::from_secs(1));
    while outage.elapsed() < Duration::from_secs(30) {
        pace.tick().await;
        model.extend(common::ingest(&server.base, start, 2_000).await);
        start += 2_000;
    }
    assert!(start >= 20_000, "too little was ingested during the outage");
    let grown = common::peak_rss(pid).saturating_sub(before);
    // The processors held one batch (2,000 records, written to the lake,
    // waiting for ClickHouse) and took no other: the backlog is in the log.
    let written_during = common::counter(&server.base, written).await - written_before;
    assert!(
        written_during <= 2_000.0,
        "{written_during} records went through the processors while ClickHouse was down"
    );
    // The backlog shows as consumer lag on every partition,
    // and is gone once ClickHouse is back.
    let queued = (start - 10_000 - 2_000) as f64;
    common::wait_for_lag(
        &server.base,
        spendstream_log::embedded::DEFAULT_PARTITIONS,
        |sum| sum >= queued,
        "the backlog is not in the lag",
    )
    .await;

    // Back on the same data: the backlog drains into both sinks.
    let mut clickhouse = ClickHouse::start(&dir.path().join("clickhouse"), ports);
    clickhouse.wait_up(&server_url).await;
    common::wait_for_totals(&server.base, &model).await;
    common::wait_for_lag(
        &server.base,
        spendstream_log::embedded::DEFAULT_PARTITIONS,
        |sum| sum == 0.0,
        "the lag never came to 0",
    )
    .await;
    common::assert_clickhouse_matches_lake(&server.base, &database, "acme", "all").await;
    common::assert_no_duplicate_rows(&dir.path().join("data")).await;
    assert!(
        grown < 256 << 20,
        "the process grew by {} MiB while ClickHouse was down ({} records queued)",
        grown >> 20,
        start - 10_000
    );
    let body: serde_json::Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["checks"]["clickhouse"], "ok", "{body}");
}

/// SIGTERM while ClickHouse is down and the processors hold a batch it
/// cannot take: the process still exits 0 within its grace period, without
/// committing that batch, and after a restart (ClickHouse back) every
/// acknowledged record is in both sinks once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_clickhouse_down_exits_within_the_grace_period_and_loses_nothing() {
    const GRACE: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let grace = GRACE.as_secs().to_string();
    let (clickhouse, ports, server_url, database, args) =
        own_clickhouse(dir.path(), "stopping", &["--shutdown-grace-secs", &grace]).await;
    let mut server = common::spawn(&args, None);
    common::wait_healthy(&mut server).await;
    let mut model = common::ingest(&server.base, 0, 2_000).await;
    common::wait_for_totals(&server.base, &model).await;
    // Reports read the lake, which is written before ClickHouse: wait for
    // ClickHouse to hold the batch too before taking it away.
    common::assert_clickhouse_matches_lake(&server.base, &database, "acme", "all").await;
    let written = "spendstream_processor_records_total{outcome=\"written\"}";
    let mut poll = Deadline::new(Duration::from_secs(30), Duration::from_millis(50));
    while common::counter(&server.base, written).await < 2_000.0 {
        poll.tick("the first batch was never committed").await;
    }

    drop(clickhouse);
    model.extend(common::ingest(&server.base, 2_000, 3_000).await);
    // The processors took the new batch and are retrying ClickHouse.
    let errors = "spendstream_errors_total{stage=\"sink_clickhouse\"";
    let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(50));
    while common::counter(&server.base, errors).await < 1.0 {
        poll.tick("the processors never retried ClickHouse").await;
    }
    assert_eq!(common::counter(&server.base, written).await, 2_000.0);

    common::sigterm(&server.child);
    let (status, took) = common::wait_exit(&mut server.child, GRACE * 4).await;
    assert!(status.success(), "exited with {status} after SIGTERM");
    assert!(
        took <= GRACE + Duration::from_secs(2),
        "took {took:?} to stop, the grace period is {GRACE:?}"
    );

    let mut clickhouse = ClickHouse::start(&dir.path().join("clickhouse"), ports);
    clickhouse.wait_up(&server_url).await;
    let mut server = common::spawn(&args, None);
    common::wait_healthy(&mut server).await;
    let rows = common::settle_exactly(&server.base, &dir.path().join("data"), &model).await;
    assert_eq!(rows, model.len() as i64);
    common::assert_clickhouse_matches_lake(&server.base, &database, "acme", "all").await;
}

/// Every statement Spendstream sends ClickHouse, and every query of
/// docs/clickhouse.md, in a fresh database with some rows.
fn statements_to_check() -> Vec<String> {
    let mut all = vec![spendstream_schemas::clickhouse::create_migrations_table()];
    for migration in spendstream_schemas::clickhouse::migrations() {
        all.extend(migration.statements);
    }
    all.extend(spendstream_processors::sink::clickhouse::sink::example_queries());
    let columns = "expense_id, tenant_id, month, version, source, external_id, account_id, status, \
                   transaction_date, amount_minor, currency, merchant_normalized, category, batch_id, \
                   ingested_at, processed_at, log_partition, log_offset";
    all.push(format!(
        "INSERT INTO expenses ({columns}) VALUES \
         ('e1', 'acme', '2026-01', 1, 'visa', 'tx-1', 'card_1', 'pending', '2026-01-05', 1200, 'USD', 'Blue Bottle', 'restaurants', 'b', now(), now(), 0, 1), \
         ('e1', 'acme', '2026-02', 2, 'visa', 'tx-1', 'card_1', 'posted', '2026-02-05', 1250, 'USD', 'Blue Bottle', 'restaurants', 'b', now(), now(), 0, 2), \
         ('e2', 'globex', '2026-01', 3, 'visa', 'tx-2', 'card_2', 'posted', '2026-01-07', 900, 'JPY', NULL, 'other', 'b', now(), now(), 1, 3)"
    ));
    let doc = include_str!("../docs/clickhouse.md");
    let section = doc
        .split("## Queries for BI tools")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/clickhouse.md has no BI query section");
    let queries: Vec<String> = section
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().trim().to_string())
        .collect();
    assert!(queries.len() >= 5, "too few BI queries found: {queries:?}");
    all.extend(queries);
    all.push("SELECT count() FROM expenses_latest".into());
    all.push("SELECT sum(expenses) FROM daily_spend".into());
    all
}

/// What runs on 18.16 also runs on current ClickHouse (chdb), and the
/// documented BI queries run on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_runs_on_clickhouse_18_16_and_on_current_clickhouse() {
    let statements = statements_to_check();
    // 18.16: the test server, a fresh database.
    let url = common::clickhouse_url();
    let (server, database) = url.rsplit_once('/').unwrap();
    let client = reqwest::Client::new();
    let run = |sql: String, database: Option<&str>| {
        let target = match database {
            Some(db) => format!("{server}/?database={db}"),
            None => format!("{server}/"),
        };
        client.post(target).body(sql).send()
    };
    let created = run(format!("CREATE DATABASE {database}"), None)
        .await
        .unwrap();
    assert_eq!(created.status(), 200, "{}", created.text().await.unwrap());
    for statement in &statements {
        let resp = run(statement.clone(), Some(database)).await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(
            status, 200,
            "ClickHouse 18.16 refused:\n{statement}\n{text}"
        );
    }
    let latest = run("SELECT count() FROM expenses_latest".into(), Some(database))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        latest.trim(),
        "2",
        "the newest version of each of the two expenses"
    );

    // Current ClickHouse, through chdb.
    let python = std::env::var("SPENDSTREAM_TEST_CHDB_PYTHON").expect(
        "SPENDSTREAM_TEST_CHDB_PYTHON is not set: run the tests with scripts/test, which installs chdb",
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&statements).unwrap()).unwrap();
    let script = common::manifest_dir().join("scripts/check-current-clickhouse.py");
    let out = Command::new(python)
        .arg(script)
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `process` with ClickHouse refuses a database whose migrations are
/// behind, with one line; `spendstream migrate --dry-run` lists them and
/// changes nothing; `spendstream migrate` applies them; then it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_behind_on_migrations_is_refused_until_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::clickhouse_url();
    let mut settings = common::settings(dir.path());
    settings.clickhouse_url = Some(url.clone());
    settings.migrate = false;
    let error = match spendstream::start(settings.clone()).await {
        Ok(_) => panic!("started on a database without migrations"),
        Err(e) => format!("{e:#}"),
    };
    let all: Vec<String> = spendstream_schemas::clickhouse::migrations()
        .iter()
        .map(|m| m.version.to_string())
        .collect();
    assert!(
        error.contains(&format!("migrations {} are not applied", all.join(", "))),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");

    let migrate = |extra: &[&str]| {
        common::command()
            .args(["migrate", "--clickhouse", &url])
            .args(extra)
            .output()
            .unwrap()
    };
    let dry = migrate(&["--dry-run"]);
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{dry_out}");
    assert!(dry_out.contains("Would apply migration 1"), "{dry_out}");
    assert!(
        spendstream::start(settings.clone()).await.is_err(),
        "the dry run changed something"
    );
    let applied = migrate(&[]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let again = migrate(&[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("up to date"));
    spendstream::start(settings)
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}

/// A record the contract allows but ClickHouse 18.16 cannot hold (dated
/// after 2105) is in the lake, and a `sink_refused` dead letter of the
/// ClickHouse sink, listed with the reason; the rest of its batch is in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_clickhouse_cannot_hold_is_a_dead_letter_with_the_reason() {
    use spendstream_http::Role;
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(dir.path());
    let clickhouse = settings.clickhouse_url.clone().unwrap();
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    let body = [
        r#"{"source":"s","external_id":"far","account_id":"a","transaction_date":"2150-01-01","amount_minor":700,"currency":"USD"}"#,
        r#"{"source":"s","external_id":"near","account_id":"a","transaction_date":"2026-01-01","amount_minor":300,"currency":"USD"}"#,
    ]
    .join("\n");
    let resp = common::post_ndjson(&reqwest::Client::new(), &base, body).await;
    assert_eq!(resp.status(), 202);
    let client = reqwest::Client::new();
    let admin = common::token("acme", &[Role::Admin]);
    let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(100));
    let letters = loop {
        let body = common::get_json(&client, format!("{base}/v1/dead-letters"), &admin).await;
        let letters = body["dead_letters"].as_array().unwrap().clone();
        if !letters.is_empty() {
            break letters;
        }
        poll.tick("no dead letter from the ClickHouse sink").await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["error"], "sink_refused");
    let message = letters[0]["message"].as_str().unwrap();
    assert!(
        message.contains("clickhouse") && message.contains("2105-12-31"),
        "{message}"
    );
    assert_eq!(letters[0]["record"]["external_id"], "far");
    // The lake has both; ClickHouse the one it can hold.
    let model =
        std::collections::BTreeMap::from([("far".to_string(), 700), ("near".to_string(), 300)]);
    common::wait_for_totals(&base, &model).await;
    // The sinks of one batch are written one after the other: the lake's
    // rows can be read before ClickHouse has its own.
    let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(100));
    let rows = loop {
        let rows =
            common::clickhouse_rows(&clickhouse, "SELECT external_id FROM expenses_latest").await;
        if !rows.is_empty() {
            break rows;
        }
        poll.tick("ClickHouse has no row yet").await;
    };
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["external_id"], "near");
    running.shutdown().await.unwrap();
}
