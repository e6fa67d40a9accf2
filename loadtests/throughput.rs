//! Throughput baseline of the whole path on this machine.
//!
//! `cargo run --release --example throughput -- [records] [concurrency] [batch] [processor-batch]`
//!
//! Starts Spendstream in-process on a fresh data dir (real socket, embedded
//! log, local lake), posts `records` NDJSON records in requests of `batch`
//! from `concurrency` clients, then waits until the processors wrote them
//! all. Reports records/s accepted at the edge and records/s processed into
//! the lake, and, as the reference measured in the same run, records/s of
//! bare log appends of the same envelopes in chunks of the same size: the
//! ratio is what the HTTP edge, decoding and validation cost. Last, one
//! ~100 MB body streamed from a generator, with the growth of the process's
//! peak RSS: most of it is the processors' batch (`processor-batch` records
//! held while they are written), not the edge.

#[path = "common.rs"]
mod common;
use common::line;
use spendstream::Roles;
use spendstream_log::{Log, Record, embedded::EmbeddedLog};
use spendstream_schemas::{ExpenseRecord, PackedWriter, identity_key};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Peak resident set size of this process so far (Linux `VmHWM`), bytes.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::numeric_args()?;
    let records = args.first().copied().unwrap_or(200_000);
    let concurrency = args.get(1).copied().unwrap_or(4);
    let batch = args.get(2).copied().unwrap_or(2_000);
    let processor_batch = args.get(3).copied().unwrap_or(50_000);

    // Reference: bare appends of the same envelopes to a fresh embedded log.
    let ref_dir = tempfile::tempdir()?;
    let log = EmbeddedLog::open(ref_dir.path(), None).await?;
    let writer = PackedWriter::new("bench", "b", "r", 0);
    // What the edge appends: the validated record, packed.
    let envelope =
        |i: usize| writer.write(&ExpenseRecord::from_json(&line(i)).expect("a valid record"));
    let chunks: Vec<Vec<Record>> = (0..records)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| {
            c.iter()
                .map(|i| Record {
                    key: identity_key("bench", "bench", &format!("b-{i}")).into_bytes(),
                    value: envelope(*i),
                    headers: Default::default(),
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let producer = log.producer();
    for chunk in chunks {
        producer.append(chunk).await?;
    }
    let reference = records as f64 / started.elapsed().as_secs_f64();

    // The real thing.
    let dir = tempfile::tempdir()?;
    let running = common::start(
        Roles::ALL,
        format!("embedded://{}", dir.path().join("log").display()),
        dir.path(),
        processor_batch,
    )
    .await?;
    let url = format!("http://{}/v1/expenses", running.addr);
    let token = common::token()?;
    let started = Instant::now();
    let (accepted, ingest_secs) =
        common::post_all(&url, &token, records, batch, concurrency).await?;
    let stats = running.stats.clone().unwrap();
    common::wait_written(&stats, accepted).await?;
    let processed_secs = started.elapsed().as_secs_f64();
    let batches = stats.batches.load(Ordering::Relaxed);

    // Memory: one ~100 MB NDJSON body, streamed from a generator so the
    // client holds only a chunk at a time. The process's peak RSS growth
    // over the request shows whether the edge buffers the body.
    let big_records = 100 * 1024 * 1024 / line(0).len();
    let client = reqwest::Client::new();
    let hwm_before = peak_rss_bytes();
    let stream = futures::stream::iter((0..big_records.div_ceil(5_000)).map(move |c| {
        let lines = (c * 5_000..((c + 1) * 5_000).min(big_records))
            .map(|i| line(records + i) + "\n")
            .collect::<String>();
        Ok::<_, std::io::Error>(lines)
    }));
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "status {}", resp.status());
    let hwm_after = peak_rss_bytes();
    running.shutdown().await?;

    let accepted_rate = accepted as f64 / ingest_secs;
    let processed_rate = accepted as f64 / processed_secs;
    println!(
        "records={records} concurrency={concurrency} batch={batch} processor_batch={processor_batch}"
    );
    println!("reference: bare embedded-log appends      {reference:>10.0} records/s");
    println!(
        "accepted at the edge (202 received)       {accepted_rate:>10.0} records/s  ratio to reference {:.2}",
        accepted_rate / reference
    );
    println!(
        "processed into the lake (end to end)      {processed_rate:>10.0} records/s  ({batches} lake commits)"
    );
    let body_mb = (big_records * (line(0).len() + 1)) as f64 / 1e6;
    let grew_mb = hwm_after.saturating_sub(hwm_before) as f64 / 1e6;
    println!(
        "one {body_mb:.0} MB streamed body: peak RSS grew {grew_mb:.0} MB (ratio to body size {:.2})",
        grew_mb / body_mb
    );
    Ok(())
}
