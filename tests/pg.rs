//! The Postgres wire endpoint with real clients: `psql` (Debian's
//! postgresql-client) and psycopg (PyPI), both installed by scripts/test.
//! Logins are bearer tokens; each connection sees its tenant's views and the
//! catalogs BI tools read, nothing else; the hostile corpus ends in clean
//! errors within the limits in both protocols.

mod common;
#[path = "../query-api/tests/support/hostile.rs"]
mod hostile;

use serde_json::{Value, json};
use spendstream::Running;
use spendstream_http::Role;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The time limit of the servers here: short, so the corpus runs quickly.
const TIMEOUT: Duration = Duration::from_secs(5);

async fn start(dir: &Path, tls: Option<(PathBuf, PathBuf)>) -> Running {
    let mut settings = common::settings_without_clickhouse(dir);
    settings.pg_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    settings.tls = tls;
    settings.sql_limits.timeout = TIMEOUT;
    // Small enough that the corpus' self-join of 300 rows breaks it.
    settings.sql_limits.max_result_bytes = 4 << 20;
    spendstream::start(settings).await.unwrap()
}

/// A server on `dir` whose lake holds 300 records of tenant `acme`: its
/// HTTP base URL, Postgres address and the model of what was sent.
async fn start_with_300_acme_records(
    dir: &Path,
) -> (
    Running,
    String,
    SocketAddr,
    std::collections::BTreeMap<String, i64>,
) {
    let running = start(dir, None).await;
    let base = format!("http://{}", running.addr);
    let pg = running.pg_addr.unwrap();
    let model = common::ingest(&base, 0, 300).await;
    common::wait_for_totals(&base, &model).await;
    (running, base, pg, model)
}

/// A login: user, password (a token), database, sslmode.
struct Login<'a> {
    user: &'a str,
    token: &'a str,
    database: &'a str,
    sslmode: &'a str,
}

impl<'a> Login<'a> {
    fn new(user: &'a str, token: &'a str) -> Self {
        Self {
            user,
            token,
            database: "spendstream",
            sslmode: "disable",
        }
    }

    fn dsn(&self, pg: SocketAddr) -> String {
        format!(
            "host={} port={} user={} dbname={} sslmode={} connect_timeout=10",
            pg.ip(),
            pg.port(),
            self.user,
            self.database,
            self.sslmode
        )
    }
}

/// `psql -X -A -t` with `args`, the token as the password.
async fn psql(pg: SocketAddr, login: &Login<'_>, args: &[&str]) -> Output {
    let psql = std::env::var("SPENDSTREAM_TEST_PSQL").unwrap_or_else(|_| "psql".into());
    let mut command = Command::new(psql);
    command
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &login.dsn(pg),
        ])
        .args(args)
        .env("PGPASSWORD", login.token)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || {
        command
            .output()
            .expect("psql runs (scripts/test installs postgresql-client)")
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

/// Runs `statements` on one psycopg connection; one result each.
async fn psycopg(pg: SocketAddr, login: &Login<'_>, statements: Vec<Value>) -> Vec<Value> {
    let python = std::env::var("SPENDSTREAM_TEST_PYTHON")
        .expect("SPENDSTREAM_TEST_PYTHON is not set: run the tests with scripts/test, which installs psycopg");
    let plan = json!({ "dsn": login.dsn(pg), "statements": statements });
    let mut command = Command::new(python);
    command
        .arg(common::manifest_dir().join("tests/pg_client.py"))
        .env("PGPASSWORD", login.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), plan.to_string().as_bytes())
            .unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "psycopg: {}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn statement(sql: &str, simple: bool) -> Value {
    json!({ "sql": sql, "simple": simple })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_logs_in_with_a_token_lists_the_views_and_reads_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _, pg, model) = start_with_300_acme_records(dir.path()).await;
    let sum: i64 = model.values().sum();
    let read = common::token("acme", &[Role::Read]);
    let acme = Login::new("acme", &read);

    let out = psql(
        pg,
        &acme,
        &[
            "-c",
            "SELECT COUNT(*), CAST(SUM(amount_minor) AS BIGINT) FROM expenses_latest",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("300|{sum}"));

    // The user is the tenant, however it is asked for.
    let who = psql(
        pg,
        &acme,
        &["-c", "SELECT current_user AS u, session_user AS s"],
    )
    .await;
    assert!(who.status.success(), "{}", text(&who.stderr));
    assert_eq!(text(&who.stdout), "acme|acme");

    // psql's own catalog queries: the two views and nothing else.
    let listed = psql(pg, &acme, &["-c", "\\d"]).await;
    assert!(listed.status.success(), "\\d: {}", text(&listed.stderr));
    let names: Vec<String> = text(&listed.stdout)
        .lines()
        .map(|l| l.split('|').nth(1).unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        names,
        ["expenses", "expenses_counted", "expenses_latest"],
        "{}",
        text(&listed.stdout)
    );
    let described = psql(pg, &acme, &["-c", "\\d expenses_latest"]).await;
    assert!(described.status.success(), "{}", text(&described.stderr));
    for column in [
        "expense_id",
        "tenant_id",
        "amount_minor",
        "currency",
        "version",
    ] {
        assert!(text(&described.stdout).contains(column), "{column} missing");
    }
    for meta in ["\\dv", "\\dn", "\\l", "\\conninfo"] {
        let out = psql(pg, &acme, &["-c", meta]).await;
        assert!(out.status.success(), "{meta}: {}", text(&out.stderr));
    }
    // The lake table under the views has no name here, in any catalog.
    let probe = psql(
        pg,
        &acme,
        &[
            "-c",
            "SELECT COUNT(*) FROM pg_catalog.pg_class WHERE relname NOT IN ('expenses', 'expenses_counted', 'expenses_latest') AND relnamespace IN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'public')",
            "-c",
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        ],
    )
    .await;
    assert!(probe.status.success(), "{}", text(&probe.stderr));
    assert_eq!(
        text(&probe.stdout),
        "0\nexpenses\nexpenses_counted\nexpenses_latest"
    );

    // Another tenant's token reads its own (empty) views.
    let globex_read = common::token("globex", &[Role::Read]);
    let globex = psql(
        pg,
        &Login::new("globex", &globex_read),
        &["-c", "SELECT COUNT(*) FROM expenses"],
    )
    .await;
    assert!(globex.status.success(), "{}", text(&globex.stderr));
    assert_eq!(text(&globex.stdout), "0");

    // Refused logins end before any query, with the reason.
    let ingest_only = common::token("acme", &[Role::Ingest]);
    let mut wrong_database = Login::new("acme", &read);
    wrong_database.database = "postgres";
    for (login, reason) in [
        (
            Login::new("acme", "not-a-token"),
            "not a valid Spendstream token",
        ),
        (
            Login::new("globex", &read),
            "the user must be the token's tenant",
        ),
        (wrong_database, "the database must be spendstream"),
        (Login::new("acme", &ingest_only), "lacks the read role"),
    ] {
        let out = psql(pg, &login, &["-c", "SELECT 1"]).await;
        assert!(!out.status.success(), "{reason}: logged in");
        assert!(
            text(&out.stderr).contains(reason),
            "{reason}: {}",
            text(&out.stderr)
        );
    }
    // A connection ends when its token expires.
    let short = spendstream::secret::mint(
        &common::keys(),
        "acme",
        &[Role::Read],
        Duration::from_secs(3),
    );
    let expired = psycopg(
        pg,
        &Login::new("acme", &short),
        vec![json!({"sql": "SELECT 1", "until_rows": [], "within": 30})],
    )
    .await;
    assert_eq!(expired[0]["ok"], false, "{}", expired[0]);
    assert!(
        expired[0]["message"].as_str().unwrap().contains("expired"),
        "{}",
        expired[0]
    );
    running.shutdown().await.unwrap();
}

/// Metabase's connection and sync queries (as sent by Metabase 0.55 through
/// the PostgreSQL JDBC driver).
const METABASE: [&str; 8] = [
    "SET extra_float_digits = 2",
    "SET application_name = 'Metabase v0.55.1'",
    "SHOW TRANSACTION ISOLATION LEVEL",
    r#"SELECT nspname AS "TABLE_SCHEM", current_database() AS "TABLE_CATALOG" FROM pg_catalog.pg_namespace WHERE nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_' OR nspname = (pg_catalog.current_schemas(true))[1]) AND (nspname !~ '^pg_toast_temp_' OR nspname = replace((pg_catalog.current_schemas(true))[1], 'pg_temp_', 'pg_toast_temp_')) ORDER BY "TABLE_SCHEM""#,
    r#"with table_privileges as (select NULL as role, t.schemaname as schema, t.objectname as table, pg_catalog.has_any_column_privilege(current_user, '"' || replace(t.schemaname, '"', '""') || '"' || '.' || '"' || replace(t.objectname, '"', '""') || '"', 'select') as select from (select schemaname, tablename as objectname from pg_catalog.pg_tables union select schemaname, viewname as objectname from pg_catalog.pg_views union select schemaname, matviewname as objectname from pg_catalog.pg_matviews) t where t.schemaname !~ '^pg_' and t.schemaname <> 'information_schema' and pg_catalog.has_schema_privilege(current_user, t.schemaname, 'usage')) select t.* from table_privileges t"#,
    r#"SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS "type", "d"."description" AS "description" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = '0') WHERE ("n"."nspname" !~ '^pg_') AND ("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND ("n"."nspname" IN ('public')) ORDER BY "type" ASC, "schema" ASC, "name" ASC"#,
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "show timezone",
];

/// Grafana's PostgreSQL data source: its health check, the table list and
/// the column list of its query editor.
const GRAFANA: [&str; 3] = [
    "SELECT 1",
    r#"SELECT CASE WHEN quote_ident(table_schema) IN (SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1), array_upper(string_to_array(current_setting('search_path'),','),1)) as i, string_to_array(current_setting('search_path'),',') s) THEN quote_ident(table_name) ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS "table" FROM information_schema.tables WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog', '_timescaledb_cache', '_timescaledb_catalog', '_timescaledb_internal', '_timescaledb_config', 'timescaledb_information', 'timescaledb_experimental') ORDER BY 1"#,
    r#"SELECT quote_ident(column_name) AS "column", data_type AS "type" FROM information_schema.columns WHERE quote_ident(table_schema) = 'public' AND quote_ident(table_name) = 'expenses'"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_runs_bi_catalog_queries_and_parameters_and_the_hostile_corpus_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (running, base, pg, model) = start_with_300_acme_records(dir.path()).await;
    let read = common::token("acme", &[Role::Read]);
    let acme = Login::new("acme", &read);

    // Bound parameters (extended protocol), and the BI tools' queries in
    // both protocols.
    let big = model.values().filter(|v| **v >= 50_000).count();
    let mut statements = vec![json!({
        "sql": "SELECT COUNT(*) FROM expenses_latest WHERE amount_minor >= %s",
        "params": [50_000],
    })];
    for sql in METABASE.iter().chain(&GRAFANA) {
        statements.push(statement(sql, false));
        statements.push(statement(sql, true));
    }
    let results = psycopg(pg, &acme, statements.clone()).await;
    assert_eq!(results[0]["rows"], json!([[big]]), "{}", results[0]);
    for (asked, result) in statements.iter().zip(&results).skip(1) {
        assert_eq!(result["ok"], true, "{}: {result}", asked["sql"]);
    }
    let tables = &results[results.len() - 3]["rows"];
    assert_eq!(
        tables,
        &json!([
            ["public.expenses"],
            ["public.expenses_counted"],
            ["public.expenses_latest"]
        ]),
        "Grafana's table list"
    );
    let columns = &results[results.len() - 1]["rows"];
    assert!(
        columns
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c[0] == "amount_minor"),
        "{columns}"
    );

    // A long-lived connection sees what was ingested after it connected.
    let count = "SELECT COUNT(*) FROM expenses_latest";
    let connected = dir.path().join("connected");
    let waiting = psycopg(
        pg,
        &acme,
        vec![
            json!({"sql": count, "then_touch": connected}),
            json!({"sql": count, "until_rows": [[600]], "within": 60}),
        ],
    );
    let more = async {
        let mut poll = common::Deadline::new(Duration::from_secs(30), Duration::from_millis(50));
        while !connected.exists() {
            poll.tick("psycopg's first answer").await;
        }
        common::ingest(&base, 300, 300).await;
    };
    let (seen, ()) = tokio::join!(waiting, more);
    assert_eq!(seen[0]["rows"], json!([[300]]), "{}", seen[0]);
    assert_eq!(seen[1]["rows"], json!([[600]]), "{}", seen[1]);

    // The hostile corpus: each statement ends in an error with a SQLSTATE
    // of the client's class (never XX, internal) within the time limit,
    // and leaves the connection usable; the last statement proves it.
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "a,b\n1,2\n").unwrap();
    let corpus = hostile::corpus(&secret.display().to_string());
    let mut statements: Vec<Value> = corpus
        .iter()
        .flat_map(|sql| [statement(sql, false), statement(sql, true)])
        .collect();
    statements.push(statement("SELECT COUNT(*) FROM expenses_latest", false));
    let results = psycopg(pg, &acme, statements.clone()).await;
    let (last, results) = results.split_last().unwrap();
    assert_eq!(last["rows"], json!([[600]]), "{last}");
    let mut wrong = Vec::new();
    for (asked, result) in statements.iter().zip(results) {
        let sql = asked["sql"].as_str().unwrap();
        let shown: String = sql.chars().take(80).collect();
        let protocol = if asked["simple"] == true {
            "simple"
        } else {
            "extended"
        };
        // Parse and execute each get the time limit (extended protocol), and
        // the 2-core machine runs other tests meanwhile.
        if result["seconds"].as_f64().unwrap()
            >= (2 * TIMEOUT + Duration::from_secs(3)).as_secs_f64()
        {
            wrong.push(format!("{protocol} `{shown}` took {}", result["seconds"]));
        }
        if hostile::HARMLESS_OVER_THE_WIRE.contains(&sql) || result["client"] == true {
            continue;
        }
        let state = result["sqlstate"].as_str().unwrap_or_default();
        if result["ok"] != false {
            let rows: String = result["rows"].to_string().chars().take(200).collect();
            wrong.push(format!("{protocol} `{shown}` was answered: {rows}"));
        } else if state.is_empty() || state.starts_with("XX") {
            wrong.push(format!(
                "{protocol} `{shown}` failed as {state}: {}",
                result["message"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(!Path::new("/tmp/spendstream-exfiltrated.csv").exists());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_log_in_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), None).await;
    let pg = running.pg_addr.unwrap();
    // Connected, then silent: closed at the login time limit (its slot
    // back), not held.
    let mut silent = tokio::net::TcpStream::connect(pg).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        spendstream_pg::LOGIN_TIMEOUT * 3,
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await
    .expect("the server closes a connection that does not log in");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= spendstream_pg::LOGIN_TIMEOUT - Duration::from_secs(1));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_only_tls_connections_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    common::self_signed(&cert, &key, "localhost");
    let running = start(dir.path(), Some((cert, key))).await;
    let pg = running.pg_addr.unwrap();
    let read = common::token("acme", &[Role::Read]);

    let mut tls = Login::new("acme", &read);
    tls.sslmode = "require";
    let out = psql(
        pg,
        &tls,
        &["-c", "SELECT COUNT(*) FROM expenses", "-c", "\\conninfo"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with('0'), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("SSL connection"),
        "{}",
        text(&out.stdout)
    );

    let plain = psql(pg, &Login::new("acme", &read), &["-c", "SELECT 1"]).await;
    assert!(!plain.status.success());
    assert!(
        text(&plain.stderr).contains("requires TLS"),
        "{}",
        text(&plain.stderr)
    );
    running.shutdown().await.unwrap();
}
