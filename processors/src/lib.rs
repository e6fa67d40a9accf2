//! Log consumers that validate, enrich and store expense records.
//!
//! Arranged by role: [`source`] reads the log, [`transform`] validates,
//! enriches and drops replays, [`sink`] writes the lake and dead letters.
//! Offsets are committed only after every sink holds the batch, and every
//! sink is idempotent, so a crash anywhere replays without duplicates.

pub mod config;
mod error;
pub mod sink;
pub mod source;
pub mod transform;

pub use config::ProcessorConfig;
pub use error::{Error, Result};

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use sink::dead_letter::DeadLetterSink;
use sink::lake::LakeSink;
use spendstream_lake::Lake;
use spendstream_log::{Consumed, Log, LogConsumer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

/// Counters a caller can watch (tests, the demo, `/readyz`).
#[derive(Debug, Default)]
pub struct ProcessorStats {
    /// Rows committed to the lake.
    pub written: AtomicU64,
    /// Records sent to the dead-letter store.
    pub dead_lettered: AtomicU64,
    /// Entries skipped because the lake already held them (replays).
    pub replay_skipped: AtomicU64,
    /// Lake commits.
    pub batches: AtomicU64,
}

/// One processor: a consumer-group member with its sinks.
pub struct Processor {
    config: ProcessorConfig,
    log: Arc<dyn Log>,
    lake: LakeSink,
    dead_letters: DeadLetterSink,
    stats: Arc<ProcessorStats>,
}

/// Test hook: `SPENDSTREAM_FAILPOINT=after_lake_commit` aborts the process
/// right after a lake commit and before the offset commit, the window that
/// exactly-once depends on. Crash tests use it; nothing else should.
fn failpoint(name: &str) {
    static ACTIVE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if ACTIVE
        .get_or_init(|| std::env::var("SPENDSTREAM_FAILPOINT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("Failpoint {name} reached: aborting.");
        std::process::abort();
    }
}

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
}

impl Processor {
    pub fn new(config: ProcessorConfig, log: Arc<dyn Log>, lake: Arc<Lake>) -> Self {
        let lake = LakeSink::new(lake, config.group.clone());
        let dead_letters = DeadLetterSink::new(log.dead_letters());
        Self {
            config,
            log,
            lake,
            dead_letters,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<ProcessorStats> {
        self.stats.clone()
    }

    /// Runs until `stop` is cancelled; the batch in hand is finished first.
    #[instrument(skip_all, fields(group = %self.config.group))]
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<()> {
        let mut consumer = self.log.consumer(&self.config.group).await?;
        info!(partitions = self.log.partitions(), "Processor started.");
        while !stop.is_cancelled() {
            let batch = tokio::select! {
                _ = stop.cancelled() => break,
                batch = source::next_batch(
                    consumer.as_mut(),
                    self.config.max_batch_records,
                    self.config.max_batch_wait,
                    Duration::from_millis(500),
                ) => batch,
            };
            match batch {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => self.process(consumer.as_mut(), batch).await,
                Err(error) => {
                    warn!(error = %error, "Reading the log failed; retrying.");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        info!("Processor stopped.");
        Ok(())
    }

    /// Handles one batch to the end: sinks first, then the offset commit.
    /// Sink failures are retried until they succeed: committing past a batch
    /// the sinks do not hold would lose it.
    async fn process(&self, consumer: &mut dyn LogConsumer, mut batch: Vec<Consumed>) {
        let started = Instant::now();
        let last = transform::dedupe::last_offsets(&batch);
        let commits: Vec<_> = last.iter().map(|(p, o)| (*p, o + 1)).collect();

        // The retries below never give up (`without_max_times`): moving on
        // without knowing what the lake holds could write a batch twice.
        let partitions: Vec<_> = last.keys().copied().collect();
        let committed = (|| self.lake.committed(&partitions))
            .retry(retry_policy())
            .notify(|e, d| warn!(error = %e, retry_in = ?d, "Reading lake transactions failed."))
            .await
            .unwrap_or_default();
        let skipped = transform::dedupe::drop_committed(&mut batch, &committed);

        let processed_at = Utc::now();
        let group = self.config.group.as_str();
        let mut rows = Vec::with_capacity(batch.len());
        let mut letters = Vec::new();
        for entry in &batch {
            match transform::validate::validate(entry, group) {
                Ok(valid) => rows.push(transform::enrich::enrich(entry, valid, processed_at)),
                Err(letter) => letters.push(*letter),
            }
        }
        let (n_rows, n_letters) = (rows.len(), letters.len());

        if !batch.is_empty() {
            let _ = (|| self.dead_letters.write(letters.clone()))
                .retry(retry_policy())
                .notify(|e, d| warn!(error = %e, retry_in = ?d, "Writing dead letters failed."))
                .await;
            // The transaction versions cover every partition in the batch,
            // dead letters included, so a replay skips them too.
            let handled = transform::dedupe::last_offsets(&batch);
            let _ = (|| self.lake.write(&rows, &handled))
                .retry(retry_policy())
                .notify(|e, d| warn!(error = %e, retry_in = ?d, "Writing the lake failed."))
                .await;
            failpoint("after_lake_commit");
        }

        let mut delay = Duration::from_millis(100);
        for attempt in 1..=20 {
            match consumer.commit(&commits).await {
                Ok(()) => break,
                // The partitions moved to another member: its replay of
                // this batch is skipped by the lake's transaction versions.
                Err(spendstream_log::Error::Rebalanced) => {
                    info!("Partitions moved before the offset commit; the lake has the batch.");
                    break;
                }
                // Not fatal: the lake knows what it holds and a replay of
                // this batch is skipped; the next commit covers it.
                Err(error) if attempt == 20 => {
                    warn!(error = %error, "Giving up on this offset commit.");
                }
                Err(error) => {
                    warn!(error = %error, retry_in = ?delay, "Committing offsets failed.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }

        let s = &self.stats;
        s.written.fetch_add(n_rows as u64, Ordering::Relaxed);
        s.dead_lettered
            .fetch_add(n_letters as u64, Ordering::Relaxed);
        s.replay_skipped
            .fetch_add(skipped as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("spendstream_processor_records_total", "outcome" => "written")
            .increment(n_rows as u64);
        metrics::counter!("spendstream_processor_records_total", "outcome" => "dead_lettered")
            .increment(n_letters as u64);
        metrics::counter!("spendstream_processor_records_total", "outcome" => "replay_skipped")
            .increment(skipped as u64);
        metrics::histogram!("spendstream_processor_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        debug!(
            rows = n_rows,
            dead_letters = n_letters,
            skipped,
            "Batch committed."
        );
    }
}
