//! Sources: where processors read from. Every log backend implements
//! [`spendstream_log::LogConsumer`]; this module batches what it yields.

use crate::Result;
use spendstream_log::{Consumed, LogConsumer};
use std::time::{Duration, Instant};

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
        if more.is_empty() {
            break;
        }
        batch.extend(more);
    }
    Ok(batch)
}
