//! Sources: where processors read from. Every log backend implements
//! [`spendstream_log::LogConsumer`]; this module batches what it yields.

use crate::Result;
use spendstream_log::{Consumed, LogConsumer};
use std::time::{Duration, Instant};

/// Drops held records of partitions a rebalance took away: their new owner
/// reads them again from the last commit.
fn drop_revoked(consumer: &mut dyn LogConsumer, held: &mut Vec<Consumed>) {
    let revoked = consumer.take_revoked();
    if revoked.is_empty() {
        return;
    }
    let before = held.len();
    held.retain(|c| !revoked.contains(&c.partition));
    metrics::counter!(crate::metrics::RECORDS_TOTAL.name, "outcome" => "abandoned_on_revoke")
        .increment((before - held.len()) as u64);
    tracing::info!(
        ?revoked,
        abandoned = before - held.len(),
        "Partitions revoked mid-batch; their records were dropped uncommitted."
    );
}

/// Reads one batch: waits up to `idle_wait` for a first record, then keeps
/// reading until `max_records` or until `max_wait` passed since that first
/// record.
pub async fn next_batch(
    consumer: &mut dyn LogConsumer,
    max_records: usize,
    max_wait: Duration,
    idle_wait: Duration,
) -> Result<Vec<Consumed>> {
    let mut batch = consumer.poll(max_records, idle_wait).await?;
    // Revocations before this batch started concern nothing held.
    consumer.take_revoked();
    if batch.is_empty() {
        return Ok(batch);
    }
    let deadline = Instant::now() + max_wait;
    while batch.len() < max_records {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let more = consumer
            .poll(max_records - batch.len(), deadline - now)
            .await?;
        drop_revoked(consumer, &mut batch);
        if more.is_empty() {
            break;
        }
        batch.extend(more);
    }
    Ok(batch)
}
