//! The table SREs need, measured on this machine in one run:
//!
//! ```sh
//! cargo build --release --bin spendstream
//! SPENDSTREAM_BENCH_CLICKHOUSE=http://127.0.0.1:8123 \
//! SPENDSTREAM_BENCH_PYTHON=.test-services/venv/bin/python \
//!   cargo run --release --example bench -- [records] [--write]
//! ```
//!
//! Runs the release binary as three processes on one fresh data directory
//! (`ingest`, `process`, `query`: the embedded log, the local lake), so each
//! one's peak RSS is its own, and measures what users see: records/s and
//! MiB/s to a durable 202 (4 clients, 5,000-record NDJSON requests), how
//! fast the processors write them to the lake, freshness (202 → visible in
//! a report) at a fixed 20,000 records/s, report latency, and overload at
//! 10× the rate the edge sustained (statuses, memory, and every
//! acknowledged record in the reports afterwards). The references come
//! from the same run: ClickHouse's own `INSERT … FORMAT JSONEachRow` of the
//! same bodies into a plain MergeTree (with `SPENDSTREAM_BENCH_CLICKHOUSE`)
//! and DuckDB on the same Parquet files (with `SPENDSTREAM_BENCH_PYTHON`, a
//! Python with `duckdb`). Then the edge again on Kafka (librdkafka's mock
//! cluster, in this process), and last `spendstream up` alone, as one
//! machine runs it: a load of `--up-records` (2,000,000) at full speed and a
//! report mix, with the process's peak RSS throughout. Before that, the
//! processors beside the edge: 20 s at 80% of the edge's rate, their lag
//! sampled every second. `--write` puts
//! the table into docs/benchmarks.md; `--up-only` runs the `up` step alone.

#[path = "common.rs"]
mod common;

use common::{line, percentile};
use serde_json::{Value, json};
use spendstream_http::Role;
use spendstream_log::kafka::testing::TestKafka;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;
const BATCH: usize = 5_000;
const FRESH_RATE: usize = 20_000;
const FRESH_SECONDS: u64 = 15;
const OVERLOAD_SECONDS: u64 = 10;
const STEADY_SECONDS: u64 = 20;
const UP_RECORDS: usize = 2_000_000;

/// User and system CPU seconds of the process whose `stat` file is `path`
/// (fields 14 and 15, in the kernel's fixed 100 ticks a second; the name
/// in field 2 may hold spaces, so fields count from its closing bracket).
fn cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the name: state is field 3, so utime (14) is the 11th, stime the 12th.
    (ticks(11) + ticks(12)) / 100.0
}

/// One role of the release binary; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(
        binary: &std::path::Path,
        role: &str,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .arg(role)
            .args([
                "--data-dir",
                &dir.display().to_string(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args([
                "--compact-interval-secs",
                "0",
                "--log-retention-hours",
                "0",
                "--pg-listen",
                "off",
            ])
            .args(extra)
            .env("SPENDSTREAM_JWT_SECRET", common::SECRET)
            .env("SPENDSTREAM_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.strip_prefix("Spendstream is up on ") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let Ok(base) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("`spendstream {role}` did not start");
        };
        Ok(Self { child, base })
    }

    /// Peak resident set so far (`VmHWM`), MiB.
    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// CPU time the process has used so far (user and system), seconds.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    async fn metric(&self, series: &str) -> f64 {
        let Ok(text) = reqwest::get(format!("{}/metrics", self.base)).await else {
            return 0.0;
        };
        let text = text.text().await.unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Waits until the processors wrote `records` rows in all; fails when they
/// make no progress for a minute.
async fn wait_written(process: &Server, records: f64) -> anyhow::Result<()> {
    let series = "spendstream_processor_records_total{outcome=\"written\"}";
    common::wait_for_count(|| process.metric(series), records).await
}

/// Records and total of `tenant`'s report by currency.
async fn counted(client: &reqwest::Client, query: &str, tenant: &str) -> anyhow::Result<i64> {
    let report: Value = client
        .get(format!(
            "{query}/v1/reports/spend?group_by=currency&limit=1000"
        ))
        .bearer_auth(common::token_for(tenant, Role::Read)?)
        .send()
        .await?
        .json()
        .await?;
    Ok(report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["count"].as_i64())
        .sum())
}

/// ClickHouse's own bulk insert of the same bodies into a plain MergeTree,
/// from `CLIENTS` clients: (rows/s, MiB/s).
async fn clickhouse_reference(url: &str, bodies: &[String]) -> anyhow::Result<(f64, f64)> {
    let client = reqwest::Client::new();
    let database = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let run = |sql: String| {
        let client = client.clone();
        let url = url.to_string();
        async move {
            let r = client.post(format!("{url}/")).body(sql).send().await?;
            anyhow::ensure!(r.status().is_success(), "{}", r.text().await?);
            anyhow::Ok(())
        }
    };
    run(format!("CREATE DATABASE {database}")).await?;
    run(format!(
        "CREATE TABLE {database}.raw (source String, external_id String, account_id String, \
         status String, transaction_date Date, amount String, currency String, \
         merchant_name String, merchant_mcc String, employee_id String) \
         ENGINE = MergeTree ORDER BY (account_id, external_id)"
    ))
    .await?;
    let queue = Arc::new(std::sync::Mutex::new(bodies.to_vec()));
    let bytes: usize = bodies.iter().map(String::len).sum();
    let rows: usize = bodies.iter().map(|b| b.lines().count()).sum();
    let insert = format!("{url}/?query=INSERT%20INTO%20{database}.raw%20FORMAT%20JSONEachRow");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (queue, client, insert) = (queue.clone(), client.clone(), insert.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(body) = queue.lock().unwrap().pop() else {
                    return anyhow::Ok(());
                };
                let r = client.post(&insert).body(body).send().await?;
                anyhow::ensure!(r.status().is_success(), "{}", r.text().await?);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    run(format!("DROP DATABASE {database}")).await?;
    Ok((
        rows as f64 / seconds,
        bytes as f64 / seconds / (1 << 20) as f64,
    ))
}

/// DuckDB's report by category on the tenant's Parquet files: p50 ms.
fn duckdb_reference(python: &str, lake: &std::path::Path, repeats: usize) -> anyhow::Result<f64> {
    let mut files = Vec::new();
    let mut dirs = vec![lake.join("tenant_id=bench")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path.display().to_string());
            }
        }
    }
    let plan = json!({
        "files": files,
        "tenant": "bench",
        "repeats": repeats,
        "queries": {"category": "SELECT category, currency, count(*), sum(amount_minor) FROM latest GROUP BY 1, 2 ORDER BY 4 DESC"},
    });
    let out = common::duckdb(python, &plan)?;
    let ms: Vec<f64> = out["category"]["ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    Ok(percentile(&ms, 0.5))
}

/// Sends one NDJSON request of `body`; returns its answer's label (the
/// status code, or `connection error`) and adds the records a 202
/// accepted to `acked`.
async fn post_counted(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
    acked: &AtomicU64,
) -> String {
    match client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status();
            if status == 202 {
                let v: Value = r.json().await.unwrap_or_default();
                acked.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
            status.as_u16().to_string()
        }
        Err(_) => "connection error".to_string(),
    }
}

/// Offers `rate` records/s to `url` for [`STEADY_SECONDS`] (open loop, in
/// `BATCH`-record requests of new expenses from `from` on) and samples the
/// processors' lag (records acknowledged but not yet in the lake; a lower
/// bound, since records of requests still in flight may already be
/// written) every second; then how long the rest took to drain.
async fn steady_load(
    server: &Server,
    url: &str,
    token: &str,
    from: usize,
    rate: f64,
) -> anyhow::Result<String> {
    let series = "spendstream_processor_records_total{outcome=\"written\"}";
    let written_before = server.metric(series).await;
    let acked = Arc::new(AtomicU64::new(0));
    let statuses: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    let client = reqwest::Client::new();
    let every = Duration::from_secs_f64(BATCH as f64 / rate);
    let mut tick = tokio::time::interval(every);
    let started = Instant::now();
    let mut next = from;
    let mut requests = Vec::new();
    let mut samples = Vec::new();
    let mut next_sample = Duration::from_secs(1);
    while started.elapsed() < Duration::from_secs(STEADY_SECONDS) {
        tokio::select! {
            _ = tick.tick() => {
                let body: String = (next..next + BATCH).map(|i| line(i) + "\n").collect();
                next += BATCH;
                let (client, url, token) = (client.clone(), url.to_string(), token.to_string());
                let (acked, statuses) = (acked.clone(), statuses.clone());
                requests.push(tokio::spawn(async move {
                    let status = post_counted(&client, &url, &token, body, &acked).await;
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                }));
            }
            _ = tokio::time::sleep_until((started + next_sample).into()) => {
                let written = server.metric(series).await - written_before;
                samples.push(acked.load(Ordering::Relaxed) as f64 - written);
                next_sample += Duration::from_secs(1);
            }
        }
    }
    for r in requests {
        r.await?;
    }
    let sent = acked.load(Ordering::Relaxed) as f64;
    let drain = Instant::now();
    common::wait_for_count(
        || async { server.metric(series).await - written_before },
        sent,
    )
    .await?;
    let half = samples.len() / 2;
    let max = |s: &[f64]| s.iter().copied().fold(0.0, f64::max);
    let (first, second) = samples.split_at(half);
    Ok(format!(
        "{sent:.0} records acknowledged (answers {:?}); lag each second {:?}; max lag {:.0} in the first half, {:.0} in the second ({}); the rest drained in {:.1} s",
        statuses.lock().unwrap(),
        samples.iter().map(|s| *s as i64).collect::<Vec<_>>(),
        max(first),
        max(second),
        if max(second) <= max(first) * 1.5 + BATCH as f64 * 2.0 {
            "not growing"
        } else {
            "GROWING"
        },
        drain.elapsed().as_secs_f64()
    ))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {memory_gib:.0} GiB")
}

/// `spendstream up` alone, as one machine runs it: `up_records` at full
/// speed, then the report mix, with the process's peak RSS after each.
async fn up_step(
    binary: &std::path::Path,
    up_records: usize,
    token: &str,
    read: &str,
    client: &reqwest::Client,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let up_dir = tempfile::tempdir()?;
    // SPENDSTREAM_BENCH_UP_ARGS: flags for `up` (whitespace-separated), to
    // try settings.
    let up_args = std::env::var("SPENDSTREAM_BENCH_UP_ARGS").unwrap_or_default();
    let up_args: Vec<&str> = up_args.split_whitespace().collect();
    let up = Server::start(binary, "up", up_dir.path(), &up_args)?;
    let up_url = format!("{}/v1/expenses", up.base);
    let load = common::bodies(0, up_records, BATCH);
    let started = Instant::now();
    let accepted = common::post_bodies(&up_url, token, load, CLIENTS).await?;
    let up_edge_s = started.elapsed().as_secs_f64();
    let after_load = up.peak_rss_mib();
    wait_written(&up, up_records as f64).await?;
    let up_processed_s = started.elapsed().as_secs_f64();
    let after_drain = up.peak_rss_mib();
    anyhow::ensure!(
        accepted == up_records as u64,
        "up: {accepted} of {up_records} accepted"
    );
    let up_edge_rate = up_records as f64 / up_edge_s;
    row(
        &format!("`up` (one process): {up_records} records at full speed"),
        format!(
            "edge {up_edge_rate:.0} records/s; all in the lake after {up_processed_s:.1} s ({:.0} records/s)",
            up_records as f64 / up_processed_s
        ),
    );
    let mut report_ms = Vec::new();
    for _ in 0..25 {
        for group in ["category", "merchant", "month", "currency", "employee"] {
            let t = Instant::now();
            let r = client
                .get(format!("{}/v1/reports/spend?group_by={group}", up.base))
                .bearer_auth(read)
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            anyhow::ensure!(
                status == 200,
                "report by {group}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            report_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let r = client
            .post(format!("{}/v1/sql", up.base))
            .bearer_auth(read)
            .json(&json!({"sql": "SELECT currency, count(*), sum(amount_minor) FROM expenses_latest GROUP BY 1"}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "sql: {}", r.status());
        r.bytes().await?;
    }
    row(
        "`up`: report mix (5 groupings and one SQL query, × 25)",
        format!(
            "reports p50 {:.1} ms, p95 {:.1} ms; peak RSS of the process through all of `up`'s steps {:.0} MiB (goal < 512; {after_load:.0} after the load, {after_drain:.0} after the drain)",
            percentile(&report_ms, 0.5),
            percentile(&report_ms, 0.95),
            up.peak_rss_mib()
        ),
    );
    Ok(())
}

/// Runs the bench until it ends or is told to stop (Ctrl-C, SIGTERM):
/// either way the `spendstream` processes it started are killed, as the
/// run is dropped with their [`Server`]s. (Killed on a signal before,
/// it left them running, and the next runs were measured beside them.)
/// Both handlers are in place before the run starts; a signal is acted
/// on at the run's next await.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        biased;
        _ = interrupt.recv() => anyhow::bail!("interrupted; the servers it started are stopped"),
        _ = terminate.recv() => anyhow::bail!("terminated; the servers it started are stopped"),
        result = run() => result,
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let write = args.iter().any(|a| a == "--write");
    if let Some(unknown) = args.iter().find(|a| {
        a.starts_with("--") && !matches!(a.as_str(), "--write" | "--up-records" | "--up-only")
    }) {
        anyhow::bail!(
            "unknown argument {unknown}: [records] [--up-records N] [--up-only] [--write]"
        );
    }
    let up_only = args.iter().any(|a| a == "--up-only");
    anyhow::ensure!(
        !(up_only && write),
        "--up-only measures one row of the table; it cannot --write it"
    );
    let up_records: usize = match args.iter().position(|a| a == "--up-records") {
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| anyhow::anyhow!("--up-records needs a number"))?
            .parse()?,
        None => UP_RECORDS,
    };
    let records: usize = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--up-records"))
        .map_or(Ok(400_000), |(_, a)| a.parse())?;
    let binary = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("spendstream"))
        .filter(|b| b.exists())
        .ok_or_else(|| {
            anyhow::anyhow!("build the binary first: cargo build --release --bin spendstream")
        })?;
    let token = common::token()?;
    let read = common::read_token()?;
    let client = reqwest::Client::new();
    let mut rows: Vec<(String, String)> = Vec::new();
    // Each row is printed as it is measured: a run that fails later still
    // shows what it measured.
    let mut row = |what: &str, value: String| {
        eprintln!("bench: {what}: {value}");
        rows.push((what.to_string(), value));
    };
    if up_only {
        // Step 7 alone, to compare `up`'s memory between builds.
        return up_step(&binary, up_records, &token, &read, &client, &mut row).await;
    }
    let dir = tempfile::tempdir()?;
    let ingest = Server::start(&binary, "ingest", dir.path(), &[])?;
    // No report cache: every report below is computed, as the first one
    // after a change is.
    let query = Server::start(&binary, "query", dir.path(), &["--report-cache-rows", "0"])?;
    let url = format!("{}/v1/expenses", ingest.base);

    // 1. Ingest at full speed, then the processors.
    let load = common::bodies(0, records, BATCH);
    let load_bytes: usize = load.iter().map(String::len).sum();
    let (edge_cpu, client_cpu) = (ingest.cpu_seconds(), cpu_seconds("/proc/self/stat"));
    let started = Instant::now();
    let accepted = common::post_bodies(&url, &token, load.clone(), CLIENTS).await?;
    let edge_s = started.elapsed().as_secs_f64();
    let per_record = |cpu: f64| cpu / records as f64 * 1e6;
    let edge_cpu = per_record(ingest.cpu_seconds() - edge_cpu);
    let client_cpu = per_record(cpu_seconds("/proc/self/stat") - client_cpu);
    // The processors start after the load, so the edge has the machine to
    // itself, as ClickHouse has below; they run beside it in 5. and 7.
    let started = Instant::now();
    let process = Server::start(&binary, "process", dir.path(), &[])?;
    wait_written(&process, records as f64).await?;
    let processed_s = started.elapsed().as_secs_f64();
    let processors_cpu = per_record(process.cpu_seconds());
    anyhow::ensure!(
        accepted == records as u64,
        "{accepted} of {records} accepted"
    );
    let edge_rate = records as f64 / edge_s;
    row(
        "Ingest to durable 202 (embedded log, processors not running)",
        format!(
            "{:.0} records/s, {:.1} MiB/s ({records} records, {CLIENTS} clients, {BATCH}-record NDJSON requests)",
            edge_rate,
            load_bytes as f64 / edge_s / (1 << 20) as f64
        ),
    );
    // The median of three: one insert of this size takes well under a
    // second, and single runs vary by 2× on a shared machine.
    let clickhouse = match std::env::var("SPENDSTREAM_BENCH_CLICKHOUSE") {
        Ok(ch) => {
            let mut runs = Vec::new();
            for _ in 0..3 {
                runs.push(clickhouse_reference(&ch, &load).await?);
            }
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            Some(runs[1])
        }
        Err(_) => None,
    };
    drop(load);
    row(
        "Reference: ClickHouse INSERT FORMAT JSONEachRow, same bodies, plain MergeTree \
         (median of 3)",
        match clickhouse {
            Some((rate, mib)) => format!(
                "{rate:.0} rows/s, {mib:.1} MiB/s; the edge is {:.2}× of it",
                edge_rate / rate
            ),
            None => "not measured (set SPENDSTREAM_BENCH_CLICKHOUSE)".into(),
        },
    );
    row(
        "Processors alone, log → lake (from their start, the whole load waiting)",
        format!("{:.0} records/s", records as f64 / processed_s),
    );
    // What keeping up beside the edge needs of the machine's cores: at 80%
    // of the edge's rate, all three together must fit in them. The
    // processors' time includes their start (a little over their share).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    row(
        "CPU time per record (user + system)",
        format!(
            "edge {edge_cpu:.1} µs, processors {processors_cpu:.1} µs, this load client {client_cpu:.1} µs; at 80% of the edge's rate the three need {:.2} of the machine's {cores:.0} cores",
            0.8 * edge_rate * (edge_cpu + processors_cpu + client_cpu) / 1e6
        ),
    );

    // 2. Reports on the settled data.
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..25 {
        for group in ["category", "merchant", "month", "currency"] {
            let t = Instant::now();
            let r = client
                .get(format!("{}/v1/reports/spend?group_by={group}", query.base))
                .bearer_auth(&read)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "report: {}", r.status());
            r.bytes().await?;
            by_kind
                .entry(group)
                .or_default()
                .push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let all: Vec<f64> = by_kind.values().flatten().copied().collect();
    let category_p50 = percentile(&by_kind["category"], 0.5);
    row(
        "Report (4 groupings × 25, no cache)",
        format!(
            "p50 {:.1} ms, p95 {:.1} ms",
            percentile(&all, 0.5),
            percentile(&all, 0.95)
        ),
    );
    row(
        "Reference: DuckDB, report by category on the same Parquet files",
        match std::env::var("SPENDSTREAM_BENCH_PYTHON") {
            Ok(python) => {
                let duck = duckdb_reference(&python, &dir.path().join("lake"), 25)?;
                format!(
                    "p50 {duck:.1} ms; the API is {:.2}× of it",
                    category_p50 / duck
                )
            }
            Err(_) => "not measured (set SPENDSTREAM_BENCH_PYTHON)".into(),
        },
    );

    // 3. Freshness at a fixed arrival rate: the load keeps arriving while
    // probes (one record of a tenant of their own) time 202 → visible.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background_accepted = Arc::new(AtomicU64::new(0));
    let background = {
        let (stop, url, token) = (stop.clone(), url.clone(), token.clone());
        let (client, accepted) = (client.clone(), background_accepted.clone());
        tokio::spawn(async move {
            let per_tick = FRESH_RATE / 20;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut next = records;
            let mut sent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let body: String = (next..next + per_tick).map(|i| line(i) + "\n").collect();
                next += per_tick;
                let (client, url, token) = (client.clone(), url.clone(), token.clone());
                let accepted = accepted.clone();
                // Open loop: a slow answer does not slow the arrivals.
                sent.push(tokio::spawn(async move {
                    if let Ok(r) = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await
                        && r.status() == 202
                    {
                        let v: Value = r.json().await.unwrap_or_default();
                        accepted.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                }));
            }
            for request in sent {
                let _ = request.await;
            }
        })
    };
    let mut freshness = Vec::new();
    let fresh_started = Instant::now();
    let mut probe = 0;
    while fresh_started.elapsed() < Duration::from_secs(FRESH_SECONDS) {
        probe += 1;
        let tenant = format!("probe{probe}");
        let t = Instant::now();
        let r = client
            .post(&url)
            .bearer_auth(common::token_for(&tenant, Role::Ingest)?)
            .header("content-type", "application/x-ndjson")
            .body(line(probe) + "\n")
            .send()
            .await?;
        anyhow::ensure!(r.status() == 202, "probe: {}", r.status());
        let acked = Instant::now();
        while counted(&client, &query.base, &tenant).await? < 1 {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "probe {probe} never became visible"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        freshness.push(acked.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    background.await?;
    let background_sent = background_accepted.load(Ordering::Relaxed);
    row(
        &format!("Freshness, 202 → visible in a report, at {FRESH_RATE} records/s"),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms ({} probes)",
            percentile(&freshness, 0.5),
            percentile(&freshness, 0.99),
            freshness.len()
        ),
    );
    let rss_steady = (
        ingest.peak_rss_mib(),
        process.peak_rss_mib(),
        query.peak_rss_mib(),
    );

    // 4. Overload: 10× the rate the edge sustained, open loop, from eight
    // tenants; then every acknowledged record must be in the reports.
    let overload_rate = edge_rate * 10.0;
    let every = Duration::from_secs_f64(BATCH as f64 / overload_rate);
    let statuses: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    let acked: Arc<[AtomicU64; 8]> = Arc::new(Default::default());
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let body = Arc::new(common::bodies(0, BATCH, BATCH).remove(0));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let overload_started = Instant::now();
    let mut requests = Vec::new();
    let mut skipped = 0u64;
    let mut n = 0usize;
    while overload_started.elapsed() < Duration::from_secs(OVERLOAD_SECONDS) {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        n += 1;
        let tenant = n % 8;
        let (client, url, statuses, acked, body) = (
            client.clone(),
            url.clone(),
            statuses.clone(),
            acked.clone(),
            body.clone(),
        );
        let token = common::token_for(&format!("flood{tenant}"), Role::Ingest)?;
        requests.push(tokio::spawn(async move {
            let status = post_counted(
                &client,
                &url,
                &token,
                body.as_str().to_owned(),
                &acked[tenant],
            )
            .await;
            *statuses.lock().unwrap().entry(status).or_default() += 1;
            drop(permit);
        }));
    }
    for r in requests {
        r.await?;
    }
    let overload_s = overload_started.elapsed().as_secs_f64();
    let statuses = statuses.lock().unwrap().clone();
    let total_acked: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    // The same 5,000 identities per tenant, sent again and again: versions
    // of 5,000 expenses, so each tenant's report counts 5,000 once any of
    // its requests was acknowledged.
    let all_written = records as f64 + background_sent as f64 + probe as f64 + total_acked as f64;
    let drained = wait_written(&process, all_written).await;
    let mut missing = Vec::new();
    // Only tenants with an acknowledged request are checked: a 503 after
    // a partial append leaves some of a batch in, which is allowed.
    for (tenant, a) in acked.iter().enumerate() {
        if a.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let expected = BATCH as i64;
        let waited = Instant::now();
        loop {
            let got = counted(&client, &query.base, &format!("flood{tenant}")).await?;
            if got == expected {
                break;
            }
            if waited.elapsed() > Duration::from_secs(30) {
                missing.push(format!("flood{tenant}: {got} of {expected}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    row(
        &format!("Overload: {OVERLOAD_SECONDS} s at 10× ({overload_rate:.0} records/s offered)"),
        format!(
            "answers {statuses:?}; {skipped} arrivals not sent (client cap of 512 in flight); \
             {total_acked} records acknowledged in {overload_s:.1} s; ingest peak RSS {:.0} MiB (was {:.0}); \
             afterwards {}",
            ingest.peak_rss_mib(),
            rss_steady.0,
            match (&drained, missing.is_empty()) {
                (Ok(()), true) =>
                    "every acknowledged record is in the log, the lake and the reports".to_string(),
                (Err(e), _) => format!("NOT DRAINED: {e}"),
                (Ok(()), false) => format!("MISSING: {missing:?}"),
            }
        ),
    );
    row(
        "Peak RSS after the load and reports (ingest, process, query)",
        format!(
            "{:.0} MiB, {:.0} MiB, {:.0} MiB",
            rss_steady.0, rss_steady.1, rss_steady.2
        ),
    );

    // 5. Processors beside the edge: 80% of the edge's solo rate, new
    // expenses of a tenant of their own, lag sampled every second.
    let steady_token = common::token_for("steady", Role::Ingest)?;
    let steady = steady_load(&process, &url, &steady_token, 0, edge_rate * 0.8).await?;
    row(
        &format!(
            "Processors beside the edge: {STEADY_SECONDS} s at 80% of the edge's rate ({:.0} records/s offered)",
            edge_rate * 0.8
        ),
        steady,
    );
    drop((ingest, process, query));

    // 6. The edge on Kafka: the same bodies, librdkafka's mock cluster (3
    // brokers in this process; acks=all, idempotence, zstd).
    let kafka = TestKafka::start_mock(8)?;
    let kafka_dir = tempfile::tempdir()?;
    let kafka_ingest = Server::start(
        &binary,
        "ingest",
        kafka_dir.path(),
        &["--log", &kafka.url()],
    )?;
    let load = common::bodies(0, records, BATCH);
    let started = Instant::now();
    let accepted = common::post_bodies(
        &format!("{}/v1/expenses", kafka_ingest.base),
        &token,
        load,
        CLIENTS,
    )
    .await?;
    let kafka_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        accepted == records as u64,
        "Kafka: {accepted} of {records} accepted"
    );
    row(
        "Ingest to durable 202 (Kafka, librdkafka's mock cluster)",
        format!(
            "{:.0} records/s, {:.1} MiB/s{}",
            records as f64 / kafka_s,
            load_bytes as f64 / kafka_s / (1 << 20) as f64,
            clickhouse.map_or(String::new(), |(rate, _)| format!(
                "; {:.2}× ClickHouse's insert",
                records as f64 / kafka_s / rate
            ))
        ),
    );
    drop(kafka_ingest);
    drop(kafka);

    // 7. `spendstream up`, one process as one machine runs it.
    up_step(&binary, up_records, &token, &read, &client, &mut row).await?;

    let mut table = format!(
        "Machine: {}. Release build, three processes (`ingest`, `process`, `query`) on one data directory (embedded log, local lake), then `ingest` on Kafka, then `up` alone. Run: `cargo run --release --example bench -- {records} --up-records {up_records}`.\n\n| What | Measured |\n| --- | --- |\n",
        machine()
    );
    for (what, value) in &rows {
        table.push_str(&format!("| {what} | {value} |\n"));
    }
    println!("{table}");
    if write {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
        let doc = std::fs::read_to_string(path)?;
        let (start, end) = ("<!-- bench:start -->\n", "<!-- bench:end -->");
        let (before, rest) = doc
            .split_once(start)
            .ok_or_else(|| anyhow::anyhow!("docs/benchmarks.md has no {start}"))?;
        let (_, after) = rest
            .split_once(end)
            .ok_or_else(|| anyhow::anyhow!("docs/benchmarks.md has no {end}"))?;
        std::fs::write(path, format!("{before}{start}{table}{end}{after}"))?;
        println!("Written to docs/benchmarks.md.");
    }
    anyhow::ensure!(
        drained.is_ok() && missing.is_empty(),
        "acknowledged records are missing after the overload"
    );
    Ok(())
}
