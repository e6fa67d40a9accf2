//! What the load tests share: the record they send and the HTTP clients.
//! (Each load test uses part of it.)
#![allow(dead_code)]

use spendstream::{Roles, Running, Settings};
use spendstream_http::{JwtKeys, Role};
use spendstream_processors::{ProcessorConfig, ProcessorStats};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One load-test instance on a local port: `roles` on the log at `log_url`,
/// the lake under `dir`, lake commits of up to `processor_batch` records, no
/// compaction or retention running meanwhile.
pub async fn start(
    roles: Roles,
    log_url: String,
    dir: &Path,
    processor_batch: usize,
) -> anyhow::Result<Running> {
    spendstream::start(settings(roles, log_url, dir, processor_batch)?).await
}

/// The settings [`start`] runs with.
pub fn settings(
    roles: Roles,
    log_url: String,
    dir: &Path,
    processor_batch: usize,
) -> anyhow::Result<Settings> {
    Ok(Settings {
        roles,
        log_url,
        processor: ProcessorConfig {
            max_batch_records: processor_batch,
            ..Default::default()
        },
        compact_interval: Duration::ZERO,
        log_retention: Duration::ZERO,
        ..Settings::defaults(keys()?, dir)
    })
}

/// The JWT secret of the load tests' instances (given to child processes as
/// `SPENDSTREAM_JWT_SECRET`).
pub const SECRET: &str = "bench-secret-bench-secret-bench-secret";

fn keys() -> anyhow::Result<JwtKeys> {
    JwtKeys::new(SECRET.as_bytes()).map_err(anyhow::Error::msg)
}

/// An ingest token for tenant `bench`, signed with the instances' keys.
pub fn token() -> anyhow::Result<String> {
    Ok(spendstream::secret::mint(
        &keys()?,
        "bench",
        &[Role::Ingest],
        Duration::from_secs(3600),
    ))
}

/// The command line's arguments, all numbers (`[records] [concurrency] …`).
pub fn numeric_args() -> anyhow::Result<Vec<usize>> {
    Ok(std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?)
}

/// A token for `tenant` with `role`, signed with the instances' keys.
pub fn token_for(tenant: &str, role: Role) -> anyhow::Result<String> {
    Ok(spendstream::secret::mint(
        &keys()?,
        tenant,
        &[role],
        Duration::from_secs(3600),
    ))
}

/// A read token for tenant `bench`.
pub fn read_token() -> anyhow::Result<String> {
    Ok(spendstream::secret::mint(
        &keys()?,
        "bench",
        &[Role::Read],
        Duration::from_secs(3600),
    ))
}

/// Record `i` of a run, as one NDJSON line (no newline).
pub fn line(i: usize) -> String {
    format!(
        r#"{{"source":"bench","external_id":"b-{i}","account_id":"card_tok_{}","status":"posted","transaction_date":"2026-{:02}-{:02}","amount":"{}.{:02}","currency":"{}","merchant_name":"SQ *COFFEE #{}","merchant_mcc":"5814","employee_id":"emp-{}"}}"#,
        i % 500,
        1 + i % 12,
        1 + i % 28,
        i % 997,
        i % 100,
        ["USD", "EUR", "GBP"][i % 3],
        i % 50,
        i % 40
    )
}

/// Posts records `0..records` as NDJSON bodies of `batch` from `concurrency`
/// clients; every request must get a 202. Returns (records accepted,
/// seconds taken).
pub async fn post_all(
    url: &str,
    token: &str,
    records: usize,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let accepted = post_bodies(url, token, bodies(0, records, batch), concurrency).await?;
    Ok((accepted, started.elapsed().as_secs_f64()))
}

/// NDJSON bodies of records `from..from + n`, `batch` records each.
pub fn bodies(from: usize, n: usize, batch: usize) -> Vec<String> {
    (from..from + n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| c.iter().map(|i| line(*i) + "\n").collect())
        .collect()
}

/// Posts NDJSON `bodies` from `concurrency` clients; every request must get
/// a 202. Returns the records accepted.
pub async fn post_bodies(
    url: &str,
    token: &str,
    bodies: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<u64> {
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let client = reqwest::Client::new();
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (queue, client, url, token) = (
            queue.clone(),
            client.clone(),
            url.to_string(),
            token.to_string(),
        );
        clients.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            loop {
                let Some(body) = queue.lock().unwrap().pop() else {
                    break;
                };
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 202, "status {}", resp.status());
                let v: serde_json::Value = resp.json().await?;
                accepted += v["accepted"].as_u64().unwrap_or(0);
            }
            Ok::<_, anyhow::Error>(accepted)
        }));
    }
    let mut accepted = 0;
    for c in clients {
        accepted += c.await??;
    }
    Ok(accepted)
}

/// Runs loadtests/duckdb_reports.py with `python` on `plan` (see there)
/// and returns what it printed.
pub fn duckdb(python: &str, plan: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let mut child = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/loadtests/duckdb_reports.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        plan.to_string().as_bytes(),
    )?;
    drop(child.stdin.take());
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "{python} loadtests/duckdb_reports.py failed"
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The `p` quantile (0 to 1) of `samples`, nearest rank (NaN of none).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits until the processors wrote `records` rows to the lake. A processor
/// that stops making progress for a minute fails the run instead of hanging
/// it.
pub async fn wait_written(stats: &ProcessorStats, records: u64) -> anyhow::Result<()> {
    wait_for_count(
        || async { stats.written.load(Ordering::Relaxed) as f64 },
        records as f64,
    )
    .await
}

/// Waits until `count` reaches `records`; fails once it stopped growing for
/// a minute.
pub async fn wait_for_count<F, Fut>(mut count: F, records: f64) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut last = (0.0, Instant::now());
    loop {
        let written = count().await;
        if written >= records {
            return Ok(());
        }
        if written > last.0 {
            last = (written, Instant::now());
        }
        anyhow::ensure!(
            last.1.elapsed() < Duration::from_secs(60),
            "processors stalled at {written} of {records} records"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
