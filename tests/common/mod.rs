//! Helpers for the end-to-end tests: start Spendstream in-process on a real
//! socket, mint tokens, read whole reports, poll with deadlines.
#![allow(dead_code)]

use serde_json::Value;
use spendstream::{Running, Settings};
use spendstream_http::{JwtKeys, Role};
use spendstream_ingest::IngestConfig;
use spendstream_lake::testing::TestBucket;
use spendstream_lake::{Lake, LakeOptions};
use spendstream_log::kafka::testing::TestKafka;
use spendstream_processors::ProcessorConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

/// This package's directory as the test runner gives it (cargo and nextest
/// set `CARGO_MANIFEST_DIR` when they run a test), else as it was at build
/// time: a binary built in another checkout sharing the target directory
/// must read this checkout's files.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

pub fn keys() -> JwtKeys {
    JwtKeys::new(SECRET).unwrap()
}

pub fn token(tenant: &str, roles: &[Role]) -> String {
    spendstream::secret::mint(&keys(), tenant, roles, Duration::from_secs(3600))
}

/// A fresh database on the test ClickHouse (`SPENDSTREAM_TEST_CLICKHOUSE`,
/// started by scripts/test): its URL.
pub fn clickhouse_url() -> String {
    let server = std::env::var("SPENDSTREAM_TEST_CLICKHOUSE").expect(
        "SPENDSTREAM_TEST_CLICKHOUSE is not set: run the tests with scripts/test, which starts ClickHouse",
    );
    format!(
        "{}/spendstream_e2e_{}",
        server.trim_end_matches('/'),
        uuid::Uuid::new_v4().simple()
    )
}

/// Every role on the embedded log, the local lake and ClickHouse (a fresh
/// database, migrated at start-up).
pub fn settings(dir: &Path) -> Settings {
    Settings {
        clickhouse_url: Some(clickhouse_url()),
        migrate: true,
        ..settings_without_clickhouse(dir)
    }
}

/// [`settings`] without the ClickHouse sink.
pub fn settings_without_clickhouse(dir: &Path) -> Settings {
    Settings {
        ingest: IngestConfig {
            chunk_records: 500,
            ..IngestConfig::default()
        },
        processor: ProcessorConfig {
            group: "test-group".into(),
            max_batch_records: 5_000,
            max_batch_wait: Duration::from_millis(200),
        },
        compact_interval: Duration::ZERO,
        log_retention: Duration::ZERO,
        ..Settings::defaults(keys(), dir)
    }
}

pub async fn start(dir: &Path) -> Running {
    spendstream::start(settings(dir)).await.unwrap()
}

/// A GET with `token` whose answer is JSON.
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl, token: &str) -> Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Where a test's lake lives: under its data directory, or under a prefix
/// of a bucket of its own on the test S3 server (moto).
pub enum TestLake {
    Local(std::path::PathBuf),
    S3(TestBucket),
}

impl TestLake {
    /// `<dir>/lake`, where `Settings::defaults(dir)` puts it.
    pub fn local(dir: &Path) -> Self {
        Self::Local(dir.join("lake"))
    }

    /// `s3://<a new bucket>/lake`.
    pub async fn s3() -> Self {
        Self::S3(TestBucket::create().await)
    }

    pub fn url(&self) -> String {
        match self {
            Self::Local(dir) => format!("file://{}", dir.display()),
            Self::S3(bucket) => bucket.url("lake"),
        }
    }

    pub fn options(&self) -> LakeOptions {
        match self {
            Self::Local(_) => LakeOptions::default(),
            Self::S3(bucket) => bucket.options(),
        }
    }

    /// The environment a `spendstream` child needs to reach the lake.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Local(_) => Vec::new(),
            Self::S3(bucket) => bucket.env(),
        }
    }

    /// Points `settings` at this lake.
    pub fn apply(&self, settings: &mut Settings) {
        settings.lake_url = self.url();
        settings.lake_options = self.options();
    }

    /// Opens the table, which must exist (a test looking in the wrong
    /// place must not see an empty new table).
    pub async fn open(&self) -> Lake {
        Lake::open_existing(&self.url(), self.options())
            .await
            .unwrap()
    }
}

/// The log a test runs on. The Kafka one holds the mock cluster (or names
/// the external broker in `SPENDSTREAM_TEST_KAFKA`) and must outlive the app.
/// `EmbeddedS3Lake` is the embedded log with the lake on S3.
pub enum Backend {
    Embedded,
    Kafka(TestKafka),
    EmbeddedS3Lake(TestLake),
}

impl Backend {
    pub fn kafka() -> Self {
        Self::Kafka(TestKafka::start(4).unwrap())
    }

    pub async fn s3_lake() -> Self {
        Self::EmbeddedS3Lake(TestLake::s3().await)
    }

    /// `settings(dir)` on this backend.
    pub fn settings(&self, dir: &Path) -> Settings {
        let mut settings = settings(dir);
        match self {
            Self::Embedded => {}
            Self::Kafka(kafka) => settings.log_url = kafka.url(),
            Self::EmbeddedS3Lake(lake) => lake.apply(&mut settings),
        }
        settings
    }

    pub async fn start(&self, dir: &Path) -> Running {
        spendstream::start(self.settings(dir)).await.unwrap()
    }
}

/// Runs each named `async fn(Backend)` once per log backend, as
/// `<name>::embedded` and `<name>::kafka`, and on the embedded log with the
/// lake on S3, as `<name>::embedded_s3_lake`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::common::Backend::Embedded).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka() {
                super::$name($crate::common::Backend::kafka()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded_s3_lake() {
                super::$name($crate::common::Backend::s3_lake().await).await;
            }
        }
    )*};
}

/// Polling with a deadline, the one way these tests wait: look, and if the
/// condition does not hold yet, `tick` (which fails the test once the
/// deadline passed) before looking again.
pub struct Deadline {
    until: Instant,
    every: tokio::time::Interval,
}

impl Deadline {
    pub fn new(within: Duration, every: Duration) -> Self {
        let mut every = tokio::time::interval(every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            until: Instant::now() + within,
            every,
        }
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.until
    }

    /// Fails with `what` past the deadline; otherwise waits one interval.
    pub async fn tick(&mut self, what: impl std::fmt::Display) {
        assert!(!self.expired(), "gave up waiting: {what}");
        self.every.tick().await;
    }
}

/// Waits until the processors handled `n` records (written or dead-lettered).
pub async fn wait_processed(running: &Running, n: u64) {
    let stats = running.stats.clone().unwrap();
    let mut poll = Deadline::new(Duration::from_secs(120), Duration::from_millis(50));
    loop {
        let done =
            stats.written.load(Ordering::Relaxed) + stats.dead_lettered.load(Ordering::Relaxed);
        if done >= n {
            return;
        }
        poll.tick(format_args!("processors handled {done} of {n} records"))
            .await;
    }
}

/// Every row of a report, following cursors. Key: (group, currency) →
/// (count, amount_minor, amount text).
pub async fn report(
    base: &str,
    token: &str,
    query: &str,
) -> BTreeMap<(Option<String>, String), (i64, i128, String)> {
    let client = reqwest::Client::new();
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/reports/spend?{query}&limit=7");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = client.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let body: Value = resp.json().await.unwrap();
        for row in body["rows"].as_array().unwrap() {
            let key = (
                row["group"].as_str().map(str::to_string),
                row["currency"].as_str().unwrap().to_string(),
            );
            let minor: i128 = row["amount_minor"].to_string().parse().unwrap();
            let prev = out.insert(
                key,
                (
                    row["count"].as_i64().unwrap(),
                    minor,
                    row["amount"].as_str().unwrap().to_string(),
                ),
            );
            assert!(prev.is_none(), "a group appeared on two pages");
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// `POST /v1/sql` as `token`; the answer must be 200.
pub async fn sql(base: &str, token: &str, sql: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/sql"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{sql}: {}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// NDJSON of records `start..start + n` of tenant `acme` (USD), and the
/// model: external id → amount in minor units.
pub fn acme_records(start: usize, n: usize) -> (String, BTreeMap<String, i64>) {
    acme_records_bumped(start, n, 0)
}

/// [`acme_records`] with every amount raised by `bump` minor units: the same
/// identities sent again as new versions.
pub fn acme_records_bumped(start: usize, n: usize, bump: i64) -> (String, BTreeMap<String, i64>) {
    let mut body = String::new();
    let mut model = BTreeMap::new();
    for i in start..start + n {
        let minor = (i as i64 * 7919) % 100_000 + 1 + bump;
        body.push_str(&format!(
            r#"{{"source":"s","external_id":"x{i}","account_id":"a","transaction_date":"2026-0{}-11","amount_minor":{minor},"currency":"USD"}}"#,
            1 + i % 9
        ));
        body.push('\n');
        model.insert(format!("x{i}"), minor);
    }
    (body, model)
}

/// Posts an NDJSON body as tenant `acme`.
pub async fn post_ndjson(client: &reqwest::Client, base: &str, body: String) -> reqwest::Response {
    client
        .post(format!("{base}/v1/expenses"))
        .bearer_auth(token("acme", &[Role::Ingest]))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Sends `n` records (ids offset by `start`) in requests of 2,000; returns
/// the model: external id → amount in minor units (USD).
pub async fn ingest(base: &str, start: usize, n: usize) -> BTreeMap<String, i64> {
    ingest_bumped(base, start, n, 0).await
}

/// [`ingest`] of [`acme_records_bumped`].
pub async fn ingest_bumped(base: &str, start: usize, n: usize, bump: i64) -> BTreeMap<String, i64> {
    let client = reqwest::Client::new();
    let mut model = BTreeMap::new();
    for chunk_start in (start..start + n).step_by(2000) {
        let (body, part) =
            acme_records_bumped(chunk_start, (start + n - chunk_start).min(2000), bump);
        let resp = post_ndjson(&client, base, body).await;
        assert_eq!(resp.status(), 202);
        model.extend(part);
    }
    model
}

pub async fn wait_for_totals(base: &str, model: &BTreeMap<String, i64>) {
    let token = token("acme", &[Role::Read]);
    let want_count = model.len() as i64;
    let want_sum: i128 = model.values().map(|v| i128::from(*v)).sum();
    let mut poll = Deadline::new(Duration::from_secs(180), Duration::from_millis(200));
    loop {
        let report = report(base, &token, "group_by=currency&status=all").await;
        let (count, sum) = report
            .values()
            .fold((0, 0i128), |(c, s), v| (c + v.0, s + v.1));
        assert!(
            count <= want_count,
            "more rows than records: {count} > {want_count} (a duplicate)"
        );
        if (count, sum) == (want_count, want_sum) {
            return;
        }
        poll.tick(format_args!(
            "reports at {count} records / {sum}, want {want_count} / {want_sum}"
        ))
        .await;
    }
}

/// Waits until the reports match `model` exactly, then checks that the lake
/// itself (not only the reports, which take the latest version) holds no
/// row twice. Returns the lake's row count: more than the model when the
/// log holds several versions of one identity.
pub async fn settle_exactly(base: &str, dir: &Path, model: &BTreeMap<String, i64>) -> i64 {
    settle_exactly_in(base, &TestLake::local(dir), model).await
}

/// [`settle_exactly`] on `lake`.
pub async fn settle_exactly_in(base: &str, lake: &TestLake, model: &BTreeMap<String, i64>) -> i64 {
    wait_for_totals(base, model).await;
    assert_no_duplicate_rows_in(lake).await
}

/// Fails if the lake holds any `(expense_id, version)` twice; returns the
/// number of rows.
pub async fn assert_no_duplicate_rows(dir: &Path) -> i64 {
    assert_no_duplicate_rows_in(&TestLake::local(dir)).await
}

/// [`assert_no_duplicate_rows`] on `lake`.
pub async fn assert_no_duplicate_rows_in(lake: &TestLake) -> i64 {
    let (rows, distinct) = lake_rows_in(lake).await;
    assert_eq!(
        rows,
        distinct,
        "the lake holds {} rows more than distinct (expense_id, version) pairs",
        rows - distinct
    );
    rows
}

/// Rows in the lake and distinct `(expense_id, version)` pairs among them:
/// equal when no record was written twice.
pub async fn lake_rows(dir: &Path) -> (i64, i64) {
    lake_rows_in(&TestLake::local(dir)).await
}

/// [`lake_rows`] of `lake`.
pub async fn lake_rows_in(lake: &TestLake) -> (i64, i64) {
    spendstream_lake::testing::rows_and_distinct(&lake.open().await).await
}

/// A `spendstream` child process; killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `spendstream` binary with `args` (plus `--listen` on port 0
/// and no compaction) and reads the bound address from the line it prints,
/// so parallel tests never race for a port.
pub fn spawn(args: &[String], failpoint: Option<&str>) -> Server {
    spawn_with(args, |cmd| {
        match failpoint {
            Some(f) => cmd.env("SPENDSTREAM_FAILPOINT", f),
            None => cmd.env_remove("SPENDSTREAM_FAILPOINT"),
        };
    })
    .0
}

/// The `spendstream` command with the tests' JWT secret, quiet logs and
/// the Postgres endpoint on a port the system picks (parallel servers would
/// race for 5433).
pub fn command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spendstream"));
    cmd.env(
        "SPENDSTREAM_JWT_SECRET",
        std::str::from_utf8(SECRET).unwrap(),
    )
    .env("SPENDSTREAM_LOG_LEVEL", "warn")
    .env("SPENDSTREAM_PG_LISTEN", "127.0.0.1:0")
    .env_remove("SPENDSTREAM_FAILPOINT");
    cmd
}

/// [`spawn`] with the command adjusted by `configure`; also returns every
/// line the server printed on stdout up to and including its address.
pub fn spawn_with(
    args: &[String],
    configure: impl FnOnce(&mut std::process::Command),
) -> (Server, Vec<String>) {
    use std::process::Stdio;
    let mut cmd = command();
    cmd.args(args)
        .args(["--listen", "127.0.0.1:0", "--compact-interval-secs", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    // A thread, so a server that never prints cannot hang the test: the
    // receiver below waits with a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let address = line
                .strip_prefix("Spendstream is up on ")
                .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
            seen.push(line);
            if let Some(address) = address {
                let _ = tx.send((address, std::mem::take(&mut seen)));
            }
        }
    });
    let (base, printed) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server never said where it listens");
    (Server { child, base }, printed)
}

/// Makes a self-signed certificate for `localhost` named `name` (its CN)
/// at `cert`, `key`.
pub fn self_signed(cert: &std::path::Path, key: &std::path::Path, name: &str) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pair = rcgen::KeyPair::generate().unwrap();
    let made = params.self_signed(&pair).unwrap();
    std::fs::write(cert, made.pem()).unwrap();
    std::fs::write(key, pair.serialize_pem()).unwrap();
}

/// `GET path` over HTTPS to `addr`, trusting only the certificates in the
/// PEM files `cas` for the name `localhost`, as any client checks it
/// (rustls): the status line, and the certificate the server presented
/// (DER).
pub async fn https_get(addr: &str, cas: &[&std::path::Path], path: &str) -> (String, Vec<u8>) {
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake that verifies the certificate");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    // A server may close without close_notify after `Connection: close`.
    let _ = tls.read_to_end(&mut answer).await;
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (status, presented)
}

/// The DER of the (first) certificate in the PEM file `path`.
pub fn cert_der(path: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

/// Sends SIGTERM to `child` (the signal an orchestrator stops a pod with).
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
}

/// Waits for `child` to exit, at most `within`; returns its status and how
/// long it took.
pub async fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> (std::process::ExitStatus, Duration) {
    let started = std::time::Instant::now();
    let mut poll = Deadline::new(within, Duration::from_millis(20));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        poll.tick("the server did not exit").await;
    }
}

/// The peak resident set of process `pid` so far, in bytes (`VmHWM`).
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("no VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// Every `(route, method, status)` the server at `base` answered so far
/// (read from its own request counter) must be in the OpenAPI document, and
/// every documented path must answer 405 to the methods it does not list:
/// the document describes what the code does, checked against what it did.
pub async fn assert_documented(base: &str) {
    let doc: Value = serde_json::from_str(spendstream::app::openapi_json()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_string())
    };
    let mut seen = 0;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("spendstream_http_requests_total{"))
    {
        let (Some(route), Some(method), Some(status)) = (
            label(line, "route"),
            label(line, "method"),
            label(line, "status"),
        ) else {
            panic!("unreadable metric line: {line}");
        };
        if route == "unmatched" {
            continue;
        }
        let operations = paths
            .get(&route)
            .unwrap_or_else(|| panic!("{route} answered but is not in the OpenAPI document"));
        let operation = &operations[method.to_lowercase()];
        if operation.is_null() && status == "405" {
            // The probes below: a method the path does not have.
            continue;
        }
        seen += 1;
        let responses = &operation["responses"];
        assert!(
            responses.get(&status).is_some(),
            "{method} {route} answered {status}, which the OpenAPI document does not list"
        );
    }
    assert!(seen > 0, "no request was counted");
    assert_metrics_catalogued(&metrics);
    let client = reqwest::Client::new();
    for (path, methods) in paths {
        let url = format!("{base}{}", path.replace("{id}", "1"));
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if methods.get(method.to_lowercase()).is_some() {
                continue;
            }
            let status = client
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(
                status, 405,
                "{method} {path} is routed but not in the OpenAPI document"
            );
        }
    }
}

/// Every `spendstream_*` metric in `text` (a `/metrics` answer) is in the
/// catalogue (and so in docs/metrics.md) with its declared type, a `# HELP`
/// line, and only the labels it declares.
pub fn assert_metrics_catalogued(text: &str) {
    use spendstream_schemas::metrics::Kind;
    let catalogue = spendstream::metrics::catalogue();
    let declared = |name: &str| catalogue.iter().find(|m| m.name == name);
    let mut helped = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            if !name.starts_with("spendstream_") {
                continue;
            }
            let metric = declared(name)
                .unwrap_or_else(|| panic!("{name} is exposed but not in the catalogue"));
            assert_eq!(
                kind,
                metric.kind.as_str(),
                "{name} has another type than declared"
            );
            continue;
        }
        if !line.starts_with("spendstream_") {
            continue;
        }
        let series = line.split_whitespace().next().unwrap();
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let metric = declared(name)
            .or_else(|| {
                ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                    declared(name.strip_suffix(suffix)?).filter(|m| m.kind == Kind::Histogram)
                })
            })
            .unwrap_or_else(|| panic!("{name} is exposed but not in the catalogue"));
        assert!(
            helped.contains(metric.name),
            "{} has no # HELP line",
            metric.name
        );
        // label="value" pairs; values never hold `",` here.
        for pair in labels
            .trim_end_matches('}')
            .split("\",")
            .filter(|p| !p.is_empty())
        {
            let label = pair.split_once('=').map_or(pair, |(l, _)| l);
            assert!(
                label == "le" && metric.kind == Kind::Histogram || metric.labels.contains(&label),
                "{} has the undeclared label {label}",
                metric.name
            );
        }
    }
}

pub async fn wait_healthy(server: &mut Server) {
    let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(50));
    loop {
        if let Ok(r) = reqwest::get(format!("{}/healthz", server.base)).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "the server exited during start-up"
        );
        poll.tick("the server did not start").await;
    }
}

/// The server's `/metrics` text, or `None` when it does not answer.
async fn scrape(base: &str) -> Option<String> {
    reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

fn sample_value(line: &str) -> Option<f64> {
    line.rsplit(' ').next()?.parse().ok()
}

/// A Prometheus counter's value (0 when not yet reported, -1 when the
/// server does not answer).
pub async fn counter(base: &str, name_and_labels: &str) -> f64 {
    let Some(text) = scrape(base).await else {
        return -1.0;
    };
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(sample_value)
        .unwrap_or(0.0)
}

/// The consumer lag the processors at `base` last read, per partition
/// (`spendstream_processor_lag_records`).
pub async fn lag(base: &str) -> BTreeMap<String, f64> {
    let text = scrape(base).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("spendstream_processor_lag_records{"))
        .filter_map(|l| {
            let start = l.find("partition=\"")? + "partition=\"".len();
            let partition = l[start..].split('"').next()?.to_string();
            Some((partition, sample_value(l)?))
        })
        .collect()
}

/// Waits until the processors at `base` report a lag for each of
/// `partitions` partitions that `holds` accepts in total.
pub async fn wait_for_lag(base: &str, partitions: u32, holds: impl Fn(f64) -> bool, what: &str) {
    let mut poll = Deadline::new(Duration::from_secs(60), Duration::from_millis(200));
    loop {
        let lag = lag(base).await;
        if lag.len() == partitions as usize && holds(lag.values().sum()) {
            return;
        }
        poll.tick(format!("{what}; the lag is {lag:?}")).await;
    }
}

/// The sum of a counter's series whose labels include all of `labels`.
pub async fn counter_sum(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = scrape(base).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(sample_value)
        .sum()
}

/// Runs `sql` on the ClickHouse at `url` (`http://host:port/database`) and
/// returns its `JSONEachRow` rows.
pub async fn clickhouse_rows(url: &str, sql: &str) -> Vec<Value> {
    let (server, database) = url.rsplit_once('/').unwrap();
    let text = reqwest::Client::new()
        .post(format!("{server}/?database={database}"))
        .body(format!("{sql} FORMAT JSONEachRow"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A ClickHouse number: JSONEachRow quotes 64-bit integers by default.
pub fn clickhouse_int(v: &Value) -> i128 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => other.to_string().parse().unwrap(),
    }
}

/// Waits until ClickHouse's latest versions of `tenant` (the
/// `expenses_latest` view, and the `daily_spend` rollup) count and sum, per
/// currency and for `statuses`, exactly what the lake's report does.
pub async fn assert_clickhouse_matches_lake(
    base: &str,
    clickhouse: &str,
    tenant: &str,
    statuses: &str,
) {
    let token = token(tenant, &[Role::Read]);
    let lake: BTreeMap<String, (i64, i128)> = report(
        base,
        &token,
        &format!("group_by=currency&status={statuses}"),
    )
    .await
    .into_iter()
    .map(|((_, currency), (count, minor, _))| (currency, (count, minor)))
    .collect();
    let wanted: Vec<String> = if statuses == "all" {
        spendstream_schemas::Status::ALL
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect()
    } else {
        statuses.split(',').map(|s| format!("'{s}'")).collect()
    };
    let filter = format!(
        "tenant_id = '{tenant}' AND status IN ({})",
        wanted.join(", ")
    );
    // Count and sum per currency of what `from` holds for the tenant.
    let totals = |count: &'static str, sum: &'static str, from: &'static str| {
        let sql = format!(
            "SELECT currency, {count} AS n, sum({sum}) AS total FROM {from} WHERE {filter} GROUP BY currency"
        );
        async move {
            clickhouse_rows(clickhouse, &sql)
                .await
                .into_iter()
                .map(|row| {
                    (
                        row["currency"].as_str().unwrap().to_string(),
                        (
                            clickhouse_int(&row["n"]) as i64,
                            clickhouse_int(&row["total"]),
                        ),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        }
    };
    let mut poll = Deadline::new(Duration::from_secs(120), Duration::from_millis(200));
    loop {
        // What counts (the lifecycle rules, as reports apply them) …
        let counted = totals("count()", "counted_amount_minor", "expenses_counted").await;
        // … and the daily rollup, which sums every latest row as sent.
        let latest = totals("count()", "amount_minor", "expenses_latest").await;
        let rollup = totals("sum(expenses)", "amount_minor", "daily_spend").await;
        if counted == lake && rollup == latest {
            return;
        }
        poll.tick(format_args!(
            "ClickHouse counted {counted:?} / latest {latest:?} / rollup {rollup:?} vs lake {lake:?} for {tenant}"
        ))
        .await;
    }
}
