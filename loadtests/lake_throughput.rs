//! The lake on S3 (moto) against the lake on the local filesystem, measured
//! in the same run.
//!
//! `SPENDSTREAM_TEST_MOTO=.test-services/venv/bin/moto_server cargo run --release --example lake_throughput -- [records] [processor-batch]`
//!
//! For each lake: fills a fresh embedded log with `records` records through
//! the edge (ingest role only, so the processors are measured alone), then
//! starts the processors and the query API on it and measures
//! - **processors**: records/s from their start (the lake opened or created)
//!   to the last record committed;
//! - **report, unchanged table**: p50/p95 of 30 reports in a row (the query
//!   API serves the state it holds, refreshed at most every second);
//! - **first report after a commit**: 10 times, 100 new records are sent,
//!   the processors commit them, a second passes (so the handle's state is
//!   stale) and one report is timed: the refresh (a LIST of the log and the
//!   new commit's read) is in it.
//!
//! moto is a single-threaded Python server on the same 2 cores: the ratios
//! are a floor for a real S3 endpoint's throughput and a ceiling for its
//! latency only in the sense that moto answers from memory, at loopback
//! distance. Treat them as the cost of the code path, not of S3.

#[path = "common.rs"]
mod common;
use spendstream::Roles;
use spendstream_lake::LakeOptions;
use spendstream_lake::testing::{Moto, TestBucket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Figures {
    processors: f64,
    report_p50: f64,
    report_p95: f64,
    after_commit_p50: f64,
    after_commit_max: f64,
}

async fn report_ms(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let resp = client
        .get(format!(
            "{base}/v1/reports/spend?group_by=currency&status=all"
        ))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "report status {}", resp.status());
    resp.bytes().await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// One run on the lake at `lake_url`.
async fn run(
    records: usize,
    processor_batch: usize,
    lake_url: String,
    lake_options: LakeOptions,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let log_url = format!("embedded://{}", dir.path().join("log").display());
    let edge = common::start(Roles::INGEST, log_url.clone(), dir.path(), processor_batch).await?;
    let url = format!("http://{}/v1/expenses", edge.addr);
    let token = common::token()?;
    let (accepted, _) = common::post_all(&url, &token, records, 5_000, 4).await?;
    edge.shutdown().await?;

    let mut settings = common::settings(
        Roles {
            ingest: true,
            process: true,
            query: true,
        },
        log_url,
        dir.path(),
        processor_batch,
    )?;
    settings.lake_url = lake_url;
    settings.lake_options = lake_options;
    let started = Instant::now();
    let running = spendstream::start(settings).await?;
    let stats = running.stats.clone().unwrap();
    common::wait_written(&stats, accepted).await?;
    let processors = accepted as f64 / started.elapsed().as_secs_f64();

    let base = format!("http://{}", running.addr);
    let read = common::read_token()?;
    let client = reqwest::Client::new();
    report_ms(&client, &base, &read).await?;
    let mut warm = Vec::new();
    for _ in 0..30 {
        warm.push(report_ms(&client, &base, &read).await?);
    }
    let mut after_commit = Vec::new();
    let mut next = records;
    for _ in 0..10 {
        let body: String = (next..next + 100).map(|i| common::line(i) + "\n").collect();
        next += 100;
        let want = stats.written.load(Ordering::Relaxed) + 100;
        let resp = client
            .post(format!("{base}/v1/expenses"))
            .bearer_auth(&token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 202, "status {}", resp.status());
        common::wait_written(&stats, want).await?;
        // Past the read refresh: the next report must look for the commit.
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        after_commit.push(report_ms(&client, &base, &read).await?);
    }
    running.shutdown().await?;
    Ok(Figures {
        processors,
        report_p50: common::percentile(&warm, 0.5),
        report_p95: common::percentile(&warm, 0.95),
        after_commit_p50: common::percentile(&after_commit, 0.5),
        after_commit_max: common::percentile(&after_commit, 1.0),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::numeric_args()?;
    let records = args.first().copied().unwrap_or(200_000);
    let processor_batch = args.get(1).copied().unwrap_or(50_000);

    let dir = tempfile::tempdir()?;
    let file = run(
        records,
        processor_batch,
        format!("file://{}", dir.path().join("lake").display()),
        LakeOptions::default(),
    )
    .await?;
    let moto = Moto::start().await;
    let bucket = TestBucket::create_at(&moto.endpoint).await;
    let s3 = run(
        records,
        processor_batch,
        bucket.url("lake"),
        bucket.options(),
    )
    .await?;

    println!("records={records} processor_batch={processor_batch}");
    println!(
        "{:<44}{:>12}{:>12}{:>8}",
        "", "file://", "s3 (moto)", "ratio"
    );
    let row = |name: &str, f: f64, s: f64, unit: &str| {
        println!("{name:<44}{f:>12.1}{s:>12.1}{:>8.2}  {unit}", s / f);
    };
    row(
        "processors (records/s)",
        file.processors,
        s3.processors,
        "s3/file",
    );
    row(
        "report, unchanged table, p50 (ms)",
        file.report_p50,
        s3.report_p50,
        "s3/file",
    );
    row(
        "report, unchanged table, p95 (ms)",
        file.report_p95,
        s3.report_p95,
        "s3/file",
    );
    row(
        "first report after a commit, p50 (ms)",
        file.after_commit_p50,
        s3.after_commit_p50,
        "s3/file",
    );
    row(
        "first report after a commit, max (ms)",
        file.after_commit_max,
        s3.after_commit_max,
        "s3/file",
    );
    Ok(())
}
