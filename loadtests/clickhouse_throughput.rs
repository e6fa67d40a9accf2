//! ClickHouse sink throughput against ClickHouse's own bulk insert.
//!
//! `cargo run --release --example clickhouse_throughput -- [records] [batch]`
//! with `SPENDSTREAM_BENCH_CLICKHOUSE=http://127.0.0.1:8123` (default).
//!
//! The same enriched records go into two fresh databases made by the same
//! migrations: the **reference** posts them as `INSERT … FORMAT JSONEachRow`
//! over HTTP in bodies of `batch` rows, serialised beforehand (what
//! ClickHouse itself does with ready rows); the **sink** is
//! `ClickHouseSink::write` with batches of `batch` rows, as the processors
//! call it (RowBinary serialisation, the insert, and the sink's offsets
//! insert included). The reference runs before and after the sink; the
//! ratio is sink records/s over the mean of the two.

use chrono::Utc;
use spendstream_processors::sink::clickhouse::{ClickHouseConfig, ClickHouseSink, migrate};
use spendstream_processors::sink::{Row, Sink, SinkBatch};
use spendstream_schemas::{Category, EnrichedRecord, ExpenseRecord, expense_id, record_version};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

#[path = "common.rs"]
mod common;

fn records(n: usize) -> Vec<Row<'static>> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let raw = common::line(i);
            let record = ExpenseRecord::from_json(&raw).expect("a valid bench record");
            EnrichedRecord {
                expense_id: expense_id("bench", &record.source, &record.external_id),
                tenant_id: "bench".into(),
                version: record_version(1, i as i64),
                category: Category::from_mcc(5814),
                merchant_normalized: Some("Coffee".into()),
                record,
                batch_id: "bench-batch".into(),
                ingested_at: now,
                processed_at: now,
                log_partition: 0,
                log_offset: i as i64,
                base: None,
            }
            .map_text(Cow::Owned)
        })
        .collect()
}

/// One record as a `JSONEachRow` line of `expenses`.
fn json_row(e: &Row<'_>) -> String {
    let r = &e.record;
    let ts = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    serde_json::json!({
        "expense_id": e.expense_id.hyphenated().to_string(),
        "tenant_id": e.tenant_id,
        "month": e.month(),
        "version": e.version,
        "source": r.source,
        "external_id": r.external_id,
        "account_id": r.account_id,
        "status": r.status.as_str(),
        "related_external_id": r.related_external_id,
        "transaction_date": r.transaction_date.to_string(),
        "posted_at": r.posted_at.map(ts),
        "amount_minor": r.amount.minor,
        "currency": r.amount.currency.code(),
        "billed_amount_minor": r.billed.map(|m| m.minor),
        "billed_currency": r.billed.map(|m| m.currency.code()),
        "merchant_name": r.merchant_name,
        "merchant_normalized": e.merchant_normalized,
        "merchant_mcc": r.merchant_mcc,
        "category": e.category.as_str(),
        "employee_id": r.employee_id,
        "memo": r.memo,
        "metadata": (!r.metadata.is_empty()).then(|| serde_json::to_string(&r.metadata).unwrap_or_default()),
        "batch_id": e.batch_id,
        "ingested_at": ts(e.ingested_at),
        "processed_at": ts(e.processed_at),
        "log_partition": e.log_partition,
        "log_offset": e.log_offset,
    })
    .to_string()
}

async fn fresh(server: &str, name: &str) -> anyhow::Result<ClickHouseConfig> {
    let mut config =
        ClickHouseConfig::from_url(&format!("{server}/{name}")).map_err(anyhow::Error::msg)?;
    config.user = std::env::var("SPENDSTREAM_CLICKHOUSE_USER").ok();
    config.password = std::env::var("SPENDSTREAM_CLICKHOUSE_PASSWORD").ok();
    config
        .server_client()
        .query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute()
        .await?;
    migrate(&config, false).await?;
    Ok(config)
}

async fn count(config: &ClickHouseConfig) -> anyhow::Result<u64> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct N {
        n: u64,
    }
    Ok(config
        .client()
        .query("SELECT count() AS n FROM expenses")
        .fetch_one::<N>()
        .await?
        .n)
}

/// ClickHouse's own bulk insert of ready JSONEachRow bodies; records/s.
async fn reference(server: &str, bodies: &[String], n: usize) -> anyhow::Result<f64> {
    let config = fresh(server, "bench_reference").await?;
    let client = reqwest::Client::new();
    let url = format!(
        "{}/?database={}&query=INSERT%20INTO%20expenses%20FORMAT%20JSONEachRow",
        config.url, config.database
    );
    let started = Instant::now();
    for body in bodies {
        client
            .post(&url)
            .body(body.clone())
            .send()
            .await?
            .error_for_status()?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(count(&config).await? == n as u64, "the reference lost rows");
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::numeric_args()?;
    let n = args.first().copied().unwrap_or(200_000);
    let batch = args.get(1).copied().unwrap_or(50_000);
    let server = std::env::var("SPENDSTREAM_BENCH_CLICKHOUSE")
        .unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let rows = records(n);
    let bodies: Vec<String> = rows
        .chunks(batch)
        .map(|c| c.iter().map(json_row).collect::<Vec<_>>().join("\n"))
        .collect();
    println!("records={n} batch={batch} clickhouse={server}");

    let before = reference(&server, &bodies, n).await?;
    println!("reference: INSERT … FORMAT JSONEachRow      {before:>9.0} records/s");

    let config = fresh(&server, "bench_sink").await?;
    let sink = ClickHouseSink::connect(config.clone(), "bench", "bench-log").await?;
    let started = Instant::now();
    for (i, chunk) in rows.chunks(batch).enumerate() {
        let last = BTreeMap::from([(0, ((i + 1) * batch).min(n) as i64 - 1)]);
        sink.write(SinkBatch {
            rows: chunk,
            last: &last,
        })
        .await?;
    }
    let sink_rate = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(count(&config).await? == n as u64, "the sink lost rows");

    let after = reference(&server, &bodies, n).await?;
    println!("reference again                            {after:>9.0} records/s");
    println!(
        "ClickHouse sink (RowBinary + offsets)      {sink_rate:>9.0} records/s  ratio to reference {:.2}",
        sink_rate / ((before + after) / 2.0)
    );
    Ok(())
}
