//! Edge throughput on the Kafka backend, against a bare rdkafka producer.
//!
//! `cargo run --release --example kafka_throughput -- [records] [concurrency] [batch] [processor-batch]`
//!
//! Runs on librdkafka's mock cluster (3 brokers, in-process), or on the broker
//! in `SPENDSTREAM_TEST_KAFKA`. The reference is a bare `FutureProducer` with
//! the same settings (idempotence, acks=all, zstd, linger) sending the same
//! records (key, envelope, headers, partition) and waiting for every delivery
//! report, measured twice in the same run, before and after Spendstream. The
//! ratio is what the HTTP edge, decoding, validation and group commit cost.
//! Last, a processor-only instance drains the topic into a local lake
//! (records/s from its start, so the consumer-group join is included).

#[path = "common.rs"]
mod common;
use common::line;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use spendstream::Roles;
use spendstream_log::kafka::PRODUCER_DEFAULTS;
use spendstream_log::kafka::testing::TestKafka;
use spendstream_log::{Record, expense_headers, partition_for};
use spendstream_schemas::{ExpenseRecord, PackedWriter, identity_key};
use std::sync::Arc;
use std::time::Instant;

const PARTITIONS: u32 = 8;

/// The bare producer: records/s with every delivery report awaited, in
/// chunks of `batch` sent by `concurrency` tasks (as the edge's clients do).
async fn reference(
    kafka: &TestKafka,
    topic: &str,
    records: &Arc<Vec<Record>>,
    concurrency: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", kafka.brokers());
    for (k, v) in PRODUCER_DEFAULTS {
        config.set(*k, *v);
    }
    config.set("compression.type", "zstd");
    let producer: FutureProducer = config.create()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (producer, records, next, topic) = (
            producer.clone(),
            records.clone(),
            next.clone(),
            topic.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                if start >= records.len() {
                    return Ok::<_, anyhow::Error>(());
                }
                let mut pending = Vec::with_capacity(batch);
                for r in &records[start..(start + batch).min(records.len())] {
                    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
                    for (key, value) in r.headers.iter() {
                        headers = headers.insert(Header {
                            key,
                            value: Some(value.as_bytes()),
                        });
                    }
                    let record = FutureRecord::to(&topic)
                        .partition(partition_for(&r.key, PARTITIONS) as i32)
                        .key(r.key.as_slice())
                        .payload(r.value.as_slice())
                        .headers(headers);
                    pending.push(
                        producer
                            .send_result(record)
                            .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?,
                    );
                }
                for d in futures::future::join_all(pending).await {
                    d?.map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(records.len() as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::numeric_args()?;
    let n = args.first().copied().unwrap_or(200_000);
    let concurrency = args.get(1).copied().unwrap_or(4);
    let batch = args.get(2).copied().unwrap_or(2_000);
    let processor_batch = args.get(3).copied().unwrap_or(50_000);

    let kafka = TestKafka::start(PARTITIONS)?;
    let reference_topic = format!("{}reference", kafka.config().prefix);
    if let Some(mock) = kafka.mock() {
        mock.create_topic(&reference_topic, PARTITIONS as i32, 3)?;
    }
    let writer = PackedWriter::new("bench", "b", "r", 0);
    // What the edge appends: the validated record, packed.
    let envelope =
        |i: usize| writer.write(&ExpenseRecord::from_json(&line(i)).expect("a valid record"));
    let headers = expense_headers("bench", "b", "r", spendstream_schemas::ENVELOPE_VERSION);
    let records: Arc<Vec<Record>> = Arc::new(
        (0..n)
            .map(|i| Record {
                key: identity_key("bench", "bench", &format!("b-{i}")).into_bytes(),
                value: envelope(i),
                headers: headers.clone(),
            })
            .collect(),
    );
    let before = reference(&kafka, &reference_topic, &records, concurrency, batch).await?;

    let dir = tempfile::tempdir()?;
    let running = common::start(Roles::INGEST, kafka.url(), dir.path(), processor_batch).await?;
    let url = format!("http://{}/v1/expenses", running.addr);
    let token = common::token()?;
    let (accepted, secs) = common::post_all(&url, &token, n, batch, concurrency).await?;
    let edge = accepted as f64 / secs;
    anyhow::ensure!(accepted as usize == n, "accepted {accepted} of {n}");
    running.shutdown().await?;

    let after = reference(&kafka, &reference_topic, &records, concurrency, batch).await?;

    // Processors alone, draining what the edge wrote into the lake.
    let started = Instant::now();
    let processors =
        common::start(Roles::PROCESS, kafka.url(), dir.path(), processor_batch).await?;
    let stats = processors.stats.clone().expect("processors run");
    common::wait_written(&stats, accepted).await?;
    let drained = accepted as f64 / started.elapsed().as_secs_f64();
    let commits = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    processors.shutdown().await?;
    let reference = (before + after) / 2.0;
    let backend = if kafka.mock().is_some() {
        "mock cluster, 3 brokers"
    } else {
        "external broker"
    };
    println!(
        "records={n} concurrency={concurrency} batch={batch} partitions={PARTITIONS} ({backend})"
    );
    println!(
        "reference: bare rdkafka FutureProducer    {reference:>10.0} records/s  (runs: {before:.0}, {after:.0})"
    );
    println!(
        "accepted at the edge (202 received)       {edge:>10.0} records/s  ratio to reference {:.2}",
        edge / reference
    );
    println!(
        "processors draining the topic into the lake {drained:>8.0} records/s  ({commits} lake commits, batch {processor_batch}, group join included)"
    );
    Ok(())
}
