//! `spendstream up --demo`: loads the bundled sample card feed through the
//! HTTP API (gzip NDJSON, like an importer would) and prints a report.

use anyhow::{Context, bail};
use serde::Deserialize;
use spendstream_processors::ProcessorStats;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The sample feed (see `scripts/gen-demo-feed.py`).
pub const SAMPLE_FEED: &[u8] = include_bytes!("../demo/card-feed.ndjson");

#[derive(Debug, Deserialize)]
struct Ingested {
    accepted: usize,
    rejected: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Report {
    rows: Vec<Row>,
}

#[derive(Debug, Deserialize)]
struct Row {
    group: Option<String>,
    currency: String,
    count: i64,
    amount: String,
}

/// Posts the sample, waits for the processors, prints spend by category.
pub async fn run(addr: SocketAddr, token: &str, stats: &ProcessorStats) -> anyhow::Result<()> {
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(SAMPLE_FEED)?;
    let body = gz.finish()?;
    let before =
        stats.written.load(Ordering::Relaxed) + stats.dead_lettered.load(Ordering::Relaxed);
    let response = client
        .post(format!("{base}/v1/expenses"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .context("posting the demo feed")?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("the demo feed was refused: {status} {text}");
    }
    let ingested: Ingested = serde_json::from_str(&text)?;
    println!(
        "Demo: sent the sample card feed: {} records accepted, {} rejected.",
        ingested.accepted,
        ingested.rejected.len()
    );
    for r in &ingested.rejected {
        println!(
            "  rejected #{}: {} ({})",
            r["index"],
            r["error"].as_str().unwrap_or(""),
            r["message"].as_str().unwrap_or("")
        );
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.written.load(Ordering::Relaxed) + stats.dead_lettered.load(Ordering::Relaxed)
        < before + ingested.accepted as u64
    {
        if Instant::now() > deadline {
            bail!("the processors did not catch up within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let report: Report = client
        .get(format!(
            "{base}/v1/reports/spend?group_by=category&status=posted"
        ))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // Amounts in different currencies do not add up: show each currency's
    // top categories.
    let mut currencies: Vec<&str> = report.rows.iter().map(|r| r.currency.as_str()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    println!("\nPosted spend by category, latest version of each expense (top 3 per currency):");
    println!(
        "{:<4} {:<24} {:>8} {:>16}",
        "ccy", "category", "count", "amount"
    );
    for currency in currencies {
        for row in report
            .rows
            .iter()
            .filter(|r| r.currency == currency)
            .take(3)
        {
            println!(
                "{:<4} {:<24} {:>8} {:>16}",
                row.currency,
                row.group.as_deref().unwrap_or("-"),
                row.count,
                row.amount
            );
        }
    }
    println!(
        "\nMore: curl -H \"Authorization: Bearer $TOKEN\" '{base}/v1/reports/spend?group_by=merchant'"
    );
    Ok(())
}
