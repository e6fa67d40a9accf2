//! Log consumers that validate, enrich and store expense records.
//!
//! Arranged by role: [`source`] reads the log, [`transform`] validates,
//! enriches and drops replays, [`sink`] writes the lake and dead letters.
//! Offsets are committed only after every sink holds the batch, and every
//! sink is idempotent, so a crash anywhere replays without duplicates.
//! Transient sink errors are retried until they pass; a permanent one stops
//! the processor (uncommitted, so nothing is lost) with the whole cause.

pub mod config;
mod error;
pub mod metrics;
pub mod sink;
pub mod source;
pub mod transform;

pub use config::ProcessorConfig;
pub use error::{Error, Result};

use backon::{BackoffBuilder as _, ExponentialBuilder, Retryable};
use chrono::Utc;
use sink::dead_letter::DeadLetterSink;
use sink::lake::LakeSink;
use sink::{Sink, SinkBatch};
use spendstream_lake::Lake;
use spendstream_log::{Consumed, Log, LogConsumer, Partition};
use spendstream_schemas::error::Chain;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

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
    /// The lake, which also numbers the log's generation.
    lake: Arc<LakeSink>,
    /// Every sink, the lake first.
    sinks: Vec<Arc<dyn Sink>>,
    dead_letters: DeadLetterSink,
    stats: Arc<ProcessorStats>,
    /// The log's generation in the lake, set by [`Processor::join`].
    generation: std::sync::OnceLock<u32>,
    /// The group's committed offsets when it joined: where the lag starts.
    joined_at: std::sync::Mutex<Vec<spendstream_log::Offset>>,
    /// Where exchange rates come from; without it no record gets a base
    /// amount.
    fx: Option<transform::fx::FxSource>,
    /// The last batch's row vector, empty, for the next batch (see
    /// [`recycle`]); not kept when over twice the size the batch needed,
    /// and let go when the log is idle, so an idle processor does not
    /// hold it.
    spare_rows: std::sync::Mutex<Vec<sink::Row<'static>>>,
}

/// Test hook: `SPENDSTREAM_FAILPOINT=<name>` aborts the process where
/// `failpoint(name)` is called: `after_sinks` (every sink wrote, the offsets
/// are not committed), `after_clickhouse_insert` (the rows are in
/// ClickHouse, its offsets table not yet). Crash tests use them; nothing
/// else should.
pub(crate) fn failpoint(name: &str) {
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

/// How often the consumer lag is read (a broker round trip on Kafka).
const LAG_EVERY: Duration = Duration::from_secs(5);

/// How long joining the log retries transient errors before the start
/// fails.
const START_RETRY: Duration = Duration::from_secs(30);

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
}

impl Processor {
    /// A processor writing the lake and any `more` sinks.
    pub fn new(
        config: ProcessorConfig,
        log: Arc<dyn Log>,
        lake: Arc<Lake>,
        more: Vec<Arc<dyn Sink>>,
    ) -> Self {
        let lake = Arc::new(LakeSink::new(lake, config.group.clone(), log.log_id()));
        let mut sinks: Vec<Arc<dyn Sink>> = vec![lake.clone()];
        sinks.extend(more);
        let dead_letters = DeadLetterSink::new(log.dead_letters());
        Self {
            config,
            log,
            lake,
            sinks,
            dead_letters,
            stats: Arc::default(),
            generation: std::sync::OnceLock::new(),
            joined_at: std::sync::Mutex::default(),
            fx: None,
            spare_rows: std::sync::Mutex::default(),
        }
    }

    fn lock_spare_rows(&self) -> std::sync::MutexGuard<'_, Vec<sink::Row<'static>>> {
        self.spare_rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Converts every record to its tenant's base currency with the rates
    /// `fx` holds (`docs/fx.md`).
    pub fn with_fx(mut self, fx: transform::fx::FxSource) -> Self {
        self.fx = Some(fx);
        self
    }

    pub fn stats(&self) -> Arc<ProcessorStats> {
        self.stats.clone()
    }

    /// The sinks, the lake first: for readiness checks.
    pub fn sinks(&self) -> &[Arc<dyn Sink>] {
        &self.sinks
    }

    /// Refuses to run on a log that is behind what a sink says it holds of
    /// it: a log restored from an older copy, or a Kafka topic recreated
    /// under the same identity, would have its new records at offsets the
    /// sink takes for replays, and they would be skipped without a trace.
    pub async fn check_log_against_lake(&self) -> Result<()> {
        let partitions: Vec<_> = (0..self.log.partitions()).collect();
        let ends = self.log.end_offsets().await?;
        for sink in &self.sinks {
            for (partition, version) in sink.committed(&partitions).await? {
                let end = ends.get(partition as usize).copied().unwrap_or(0);
                if version >= end {
                    return Err(Error::LogBehindLake {
                        sink: sink.name(),
                        group: self.config.group.clone(),
                        log_id: self.log.log_id().to_string(),
                        partition,
                        version,
                        end,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs until `stop` is cancelled; the batch in hand is finished first.
    /// Returns an error only for a permanent failure (the batch in hand is
    /// left uncommitted: the next start reads it again).
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<()> {
        let consumer = self.join().await?;
        self.run_with(consumer, stop).await
    }

    /// Checks the log against the lake and joins the consumer group: what
    /// can refuse to start (a log behind the lake, another processor on the
    /// same embedded log) fails here, before the caller reports it started.
    pub async fn join(&self) -> Result<Box<dyn LogConsumer>> {
        // A broker still electing leaders (or a busy database) answers the
        // first requests with transient errors: retried for a while, so a
        // slow start is not a failed one, and an address that stays
        // unreachable still fails loudly. The consumer is made once
        // (locally: a failed attempt does not join and leave the group).
        retry_at_start(
            "log_read",
            "Checking the log against the lake",
            async || self.check_log_against_lake().await,
        )
        .await?;
        let mut consumer = self.log.consumer(&self.config.group).await?;
        let committed = retry_at_start("log_read", "Reading the group's offsets", async || {
            consumer.committed().await.map_err(Error::from)
        })
        .await?;
        let ends = retry_at_start("log_read", "Reading the log's end", async || {
            self.log.end_offsets().await.map_err(Error::from)
        })
        .await?;
        *self.joined_at.lock().unwrap_or_else(|e| e.into_inner()) = committed.clone();
        // A group committed past the log's end: the topic was recreated (or
        // the log replaced) while the group's offsets were kept.
        if let Some((partition, (committed, end))) = committed
            .iter()
            .zip(&ends)
            .enumerate()
            .find(|(_, (c, e))| c > e)
        {
            return Err(Error::LogBehindGroup {
                group: self.config.group.clone(),
                partition: partition as Partition,
                committed: *committed,
                end: *end,
            });
        }
        let generation = retry(
            "sink_lake",
            "Numbering the log's generation in the lake",
            || self.lake.log_generation(),
        )
        .await?;
        let _ = self.generation.set(generation);
        info!(generation, "Writing under this log generation.");
        Ok(consumer)
    }

    /// [`Processor::run_until_stopped`] with the consumer [`Processor::join`]
    /// returned.
    #[instrument(skip_all, fields(group = %self.config.group))]
    pub async fn run_with(
        self,
        mut consumer: Box<dyn LogConsumer>,
        stop: CancellationToken,
    ) -> Result<()> {
        info!(
            partitions = self.log.partitions(),
            log_id = self.log.log_id(),
            "Processor started."
        );
        // The group's committed offsets as read when it joined, moved by
        // this member's own commits (no further broker round trips on the
        // consumer); a task compares them with the log's end, also while a
        // batch waits for a sink that is down (when lag matters most). With
        // several members, each partition's owner has the freshest offsets:
        // the lowest lag across members is the partition's.
        let joined_at = self
            .joined_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let committed = Arc::new(std::sync::Mutex::new(joined_at));
        let lag = LagWatch::start(
            self.log.clone(),
            self.config.group.clone(),
            committed.clone(),
        );
        let result = self.consume(consumer.as_mut(), &stop, &committed).await;
        // Awaited, not only aborted: when this returns nothing of the
        // processor holds the log any more (an embedded log's files are
        // closed, so a copy taken right after shutdown is whole).
        lag.stop().await;
        info!("Processor stopped.");
        result
    }

    /// Gives each row its amount in its tenant's base currency, with one
    /// set of rates for the whole batch (every sink gets the same). A row
    /// without a rate is written without, and counted.
    async fn convert(
        &self,
        fx: &transform::fx::FxSource,
        rows: &mut [sink::Row<'_>],
    ) -> Result<()> {
        // Rows come in runs of one tenant: a set of the runs' first rows.
        let mut tenants: Vec<&str> = Vec::new();
        for row in rows.iter() {
            if tenants.last() != Some(&row.tenant_id.as_ref()) {
                tenants.push(row.tenant_id.as_ref());
            }
        }
        tenants.sort_unstable();
        tenants.dedup();
        let tenants: Vec<String> = tenants.into_iter().map(String::from).collect();
        let rates = retry("fx_rates", "Reading the exchange rates", || {
            fx.for_batch(&tenants)
        })
        .await?;
        // Counted per currency and reason, then added once each: a label
        // lookup per row costs more than the conversion.
        let mut unconverted: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        for row in rows.iter_mut() {
            match rates.convert(row) {
                Ok(base) => row.base = Some(base),
                Err(e) => {
                    let reason = match e {
                        spendstream_schemas::fx::FxError::MissingRate { .. } => "missing_rate",
                        spendstream_schemas::fx::FxError::Overflow => "overflow",
                    };
                    *unconverted
                        .entry((row.record.amount.currency.code(), reason))
                        .or_default() += 1;
                    debug!(expense_id = %row.expense_id, error = %e, "No base amount.");
                }
            }
        }
        for ((currency, reason), n) in unconverted {
            ::metrics::counter!(
                metrics::FX_UNCONVERTED_TOTAL.name,
                "currency" => currency,
                "reason" => reason
            )
            .increment(n);
        }
        Ok(())
    }

    /// Reads and processes batches until `stop` is cancelled.
    async fn consume(
        &self,
        consumer: &mut dyn LogConsumer,
        stop: &CancellationToken,
        committed: &std::sync::Mutex<Vec<spendstream_log::Offset>>,
    ) -> Result<()> {
        while !stop.is_cancelled() {
            let batch = tokio::select! {
                _ = stop.cancelled() => break,
                batch = source::next_batch(
                    consumer,
                    self.config.max_batch_records,
                    self.config.max_batch_wait,
                    Duration::from_millis(500),
                ) => batch,
            };
            match batch {
                Ok(batch) if batch.is_empty() => *self.lock_spare_rows() = Vec::new(),
                Ok(batch) => {
                    let done = self.process(consumer, batch).await?;
                    let mut committed = committed.lock().unwrap_or_else(|e| e.into_inner());
                    for (partition, next) in done {
                        if let Some(c) = committed.get_mut(partition as usize) {
                            *c = (*c).max(next);
                        }
                    }
                }
                Err(e) if e.is_transient() => {
                    spendstream_schemas::metrics::error("log_read", e.kind());
                    warn!(error = %Chain(&e), "Reading the log failed; retrying.");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => {
                    spendstream_schemas::metrics::error("log_read", e.kind());
                    error!(error = %Chain(&e), "Reading the log failed for good; stopping.");
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Handles one batch to the end: sinks first, then the offset commit.
    /// Transient sink failures are retried until they pass: committing past
    /// a batch the sinks do not hold would lose it.
    /// Returns the offsets committed (next offset per partition).
    async fn process(
        &self,
        consumer: &mut dyn LogConsumer,
        mut batch: Vec<Consumed>,
    ) -> Result<Vec<(Partition, spendstream_log::Offset)>> {
        let started = Instant::now();
        let entries_in_batch = batch.len();
        // Closed when this returns: they time the whole batch.
        let _traces = trace_spans(&batch);
        let last = transform::replay::last_offsets(&batch);
        let commits: Vec<_> = last.iter().map(|(p, o)| (*p, o + 1)).collect();

        // Skip what every sink holds before validating: a replay after a
        // crash should not redo the work. (Each sink checks again, and
        // leaves out what it alone holds, when writing.)
        let partitions: Vec<_> = last.keys().copied().collect();
        let mut held_by_all: Option<BTreeMap<Partition, i64>> = None;
        for sink in &self.sinks {
            let held = retry(sink.stage(), "Reading what a sink holds", || {
                sink.committed(&partitions)
            })
            .await?;
            held_by_all = Some(match held_by_all {
                None => held,
                Some(all) => all
                    .into_iter()
                    .filter_map(|(p, v)| held.get(&p).map(|h| (p, v.min(*h))))
                    .collect(),
            });
        }
        let skipped =
            transform::replay::drop_committed(&mut batch, &held_by_all.unwrap_or_default());

        let processed_at = Utc::now();
        let group = self.config.group.as_str();
        let generation = self.generation.get().copied().unwrap_or_default();
        let Prepared {
            mut rows,
            entries,
            mut letters,
        } = prepare(
            &batch,
            group,
            generation,
            processed_at,
            std::mem::take(&mut *self.lock_spare_rows()),
        );

        if let Some(fx) = &self.fx {
            self.convert(fx, &mut rows).await?;
        }

        // Rows a sink cannot hold are dead letters for it; every letter is
        // stored before any sink records the batch's offsets as held, so a
        // crash in between replays the batch and stores them again (once:
        // the store keeps one per log position).
        let mut refused: Vec<Vec<bool>> = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            let mut mask = vec![false; rows.len()];
            for (i, row) in rows.iter().enumerate() {
                if let Some(reason) = sink.refuses(row) {
                    mask[i] = true;
                    letters.push(transform::validate::refused(
                        entries[i],
                        group,
                        sink.name(),
                        &reason,
                    ));
                }
            }
            refused.push(mask);
        }

        if !batch.is_empty() {
            retry("dead_letters", "Writing dead letters", || {
                self.dead_letters.write(letters.clone())
            })
            .await?;
            // The transaction versions cover every partition in the batch,
            // dead letters included, so a replay skips them too.
            let handled = transform::replay::last_offsets(&batch);
            for (sink, mask) in self.sinks.iter().zip(refused.iter_mut()) {
                loop {
                    // Rarely anything is refused: only then copy the rest.
                    let kept_at: Vec<usize> = (0..rows.len()).filter(|i| !mask[*i]).collect();
                    let kept: Vec<sink::Row<'_>>;
                    let sink_rows = if kept_at.len() == rows.len() {
                        &rows[..]
                    } else {
                        kept = kept_at.iter().map(|i| rows[*i].clone()).collect();
                        &kept[..]
                    };
                    let batch = SinkBatch {
                        rows: sink_rows,
                        last: &handled,
                    };
                    let what = format!("Writing the {}", sink.name());
                    let writing = Instant::now();
                    match retry(sink.stage(), &what, || sink.write(batch)).await {
                        Ok(_) => {
                            ::metrics::histogram!(metrics::SINK_WRITE_SECONDS.name, "sink" => sink.name())
                                .record(writing.elapsed().as_secs_f64());
                            break;
                        }
                        // The sink refused rows it could not know it would
                        // (the server's word) and recorded nothing: store
                        // them as dead letters first, then write the rest.
                        Err(Error::RowsRefused { rows: bad, .. }) => {
                            let mut refused_now = Vec::with_capacity(bad.len());
                            for (position, reason) in bad {
                                let Some(&at) = kept_at.get(position) else {
                                    continue;
                                };
                                mask[at] = true;
                                refused_now.push(transform::validate::refused(
                                    entries[at],
                                    group,
                                    sink.name(),
                                    &reason,
                                ));
                            }
                            warn!(
                                sink = sink.name(),
                                rows = refused_now.len(),
                                "A sink refused rows; they are dead letters now."
                            );
                            retry("dead_letters", "Writing dead letters", || {
                                self.dead_letters.write(refused_now.clone())
                            })
                            .await?;
                            letters.extend(refused_now);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            failpoint("after_sinks");
        }
        let (n_rows, n_letters) = (rows.len(), letters.len());
        if keep_spare(rows.capacity(), entries_in_batch) {
            *self.lock_spare_rows() = recycle(rows);
        }

        let mut delay = Duration::from_millis(100);
        let mut committed = Vec::new();
        for attempt in 1..=20 {
            match consumer.commit(&commits).await {
                Ok(()) => {
                    committed = commits;
                    break;
                }
                // The partitions moved to another member: its replay of
                // this batch is skipped by the lake's transaction versions.
                Err(spendstream_log::Error::Rebalanced) => {
                    info!("Partitions moved before the offset commit; the lake has the batch.");
                    break;
                }
                // Not fatal: the lake knows what it holds and a replay of
                // this batch is skipped; the next commit covers it.
                Err(e) if attempt == 20 || !e.is_transient() => {
                    spendstream_schemas::metrics::error("log_commit", e.kind());
                    warn!(error = %Chain(&e), "Giving up on this offset commit.");
                    break;
                }
                Err(e) => {
                    spendstream_schemas::metrics::error("log_commit", e.kind());
                    warn!(error = %Chain(&e), retry_in = ?delay, "Committing offsets failed.");
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
        ::metrics::counter!(metrics::RECORDS_TOTAL.name, "outcome" => "written")
            .increment(n_rows as u64);
        ::metrics::counter!(metrics::RECORDS_TOTAL.name, "outcome" => "dead_lettered")
            .increment(n_letters as u64);
        ::metrics::counter!(metrics::RECORDS_TOTAL.name, "outcome" => "replay_skipped")
            .increment(skipped as u64);
        ::metrics::histogram!(metrics::BATCH_SECONDS.name).record(started.elapsed().as_secs_f64());
        ::metrics::histogram!(metrics::BATCH_RECORDS.name).record(entries_in_batch as f64);
        debug!(
            rows = n_rows,
            dead_letters = n_letters,
            skipped,
            "Batch committed."
        );
        Ok(committed)
    }
}

/// The fewest entries a part of a split batch gets: below that a thread
/// costs more than it saves, so batches under twice this size are
/// validated on the calling thread alone.
const PART_MIN: usize = 4_096;

/// A batch validated and enriched: the rows, in log order, with the entry
/// each came from, and the dead letters of the entries that failed.
struct Prepared<'b> {
    rows: Vec<sink::Row<'b>>,
    entries: Vec<&'b Consumed>,
    letters: Vec<spendstream_log::DeadLetter>,
}

/// Validates and enriches `batch`. Decoding and validating the records is
/// most of a processor's CPU (profiled), so a large batch is split into
/// one contiguous part per core; the parts are joined in order.
fn prepare<'b>(
    batch: &'b [Consumed],
    group: &str,
    generation: u32,
    processed_at: chrono::DateTime<Utc>,
    rows: Vec<sink::Row<'b>>,
) -> Prepared<'b> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    prepare_in(batch, group, generation, processed_at, cores, rows)
}

/// Whether a batch's row vector, of `capacity` rows, is kept for the next
/// batch after one of `entries`: not when far larger than that batch
/// needed (a burst's, with a trickle after it).
fn keep_spare(capacity: usize, entries: usize) -> bool {
    capacity <= 2 * entries.max(PART_MIN)
}

/// `rows`' allocation, emptied, for rows of another lifetime: the
/// standard library collects a vector's iterator into its own allocation
/// when the two element types are the same size (and lifetimes do not
/// change a type's size), so this moves no memory. A batch's rows are
/// tens of MiB, above malloc's mmap threshold: allocated afresh for each
/// batch, every page of them was a page fault (7% of a processor's CPU,
/// profiled).
fn recycle<'to>(mut rows: Vec<sink::Row<'_>>) -> Vec<sink::Row<'to>> {
    rows.clear();
    rows.into_iter()
        .map(|_| unreachable!("the vector was emptied"))
        .collect()
}

/// [`prepare`] on at most `threads` threads, the rows in `rows` (emptied
/// first: its allocation is what is wanted).
fn prepare_in<'b>(
    batch: &'b [Consumed],
    group: &str,
    generation: u32,
    processed_at: chrono::DateTime<Utc>,
    threads: usize,
    rows: Vec<sink::Row<'b>>,
) -> Prepared<'b> {
    // The first part is the one the others join: it is sized for all.
    let part = |entries: &'b [Consumed], mut rows: Vec<sink::Row<'b>>, capacity: usize| {
        rows.clear();
        rows.reserve_exact(capacity);
        let mut out = Prepared {
            rows,
            entries: Vec::with_capacity(capacity),
            letters: Vec::new(),
        };
        let mut merchants = transform::enrich::Merchants::default();
        for entry in entries {
            match transform::validate::validate(entry, group) {
                Ok(valid) => {
                    out.rows.push(transform::enrich::enrich(
                        entry,
                        valid,
                        generation,
                        processed_at,
                        &mut merchants,
                    ));
                    out.entries.push(entry);
                }
                Err(letter) => out.letters.push(*letter),
            }
        }
        out
    };
    let threads = threads.min(batch.len() / PART_MIN).max(1);
    if threads == 1 {
        return part(batch, rows, batch.len());
    }
    let size = batch.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let others: Vec<_> = batch[size..]
            .chunks(size)
            .map(|entries| scope.spawn(move || part(entries, Vec::new(), entries.len())))
            .collect();
        let mut all = part(&batch[..size], rows, batch.len());
        for other in others {
            let other = other
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            all.rows.extend(other.rows);
            all.entries.extend(other.entries);
            all.letters.extend(other.letters);
        }
        all
    })
}

/// Most traces a batch's entries continue: a span each.
const MAX_TRACES_PER_BATCH: usize = 64;

/// A `process_records` span for each trace the batch's entries carry (the
/// `traceparent` the edge wrote into their headers), child of the edge's
/// span, with the number of entries; none when traces are not exported.
fn trace_spans(batch: &[Consumed]) -> Vec<tracing::Span> {
    let mut traces: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in batch {
        let Some((_, parent)) = entry
            .headers
            .iter()
            .find(|(k, _)| k == spendstream_log::header::TRACEPARENT)
        else {
            continue;
        };
        if traces.len() < MAX_TRACES_PER_BATCH || traces.contains_key(parent.as_str()) {
            *traces.entry(parent).or_default() += 1;
        }
    }
    traces
        .into_iter()
        .map(|(parent, records)| {
            let span = tracing::info_span!("process_records", records);
            spendstream_schemas::trace::continue_trace(&span, Some(parent));
            span
        })
        .collect()
}

/// Sets `spendstream_processor_lag_records` for every partition every
/// [`LAG_EVERY`]: the log's end minus the group's committed offset (what is
/// still to read, and what a restart would read again). Stops with
/// [`LagWatch::stop`], or (without waiting) when dropped.
struct LagWatch {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LagWatch {
    fn start(
        log: Arc<dyn Log>,
        group: String,
        committed: Arc<std::sync::Mutex<Vec<spendstream_log::Offset>>>,
    ) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(LAG_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = every.tick() => {}
                }
                let ends = match tokio::time::timeout(LAG_EVERY, log.end_offsets()).await {
                    Ok(Ok(ends)) => ends,
                    Ok(Err(e)) => {
                        debug!(error = %Chain(&e), "Reading the log's end offsets failed.");
                        continue;
                    }
                    Err(_) => continue,
                };
                let committed = committed.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for (partition, (committed, end)) in committed.iter().zip(&ends).enumerate() {
                    ::metrics::gauge!(
                        metrics::LAG_RECORDS.name,
                        "group" => group.clone(),
                        "partition" => partition.to_string()
                    )
                    .set((end - committed).max(0) as f64);
                }
            }
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops the task and waits until it has let go of the log (a read of
    /// the end offsets in flight finishes first, bounded by its timeout).
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LagWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Runs `op` until it succeeds or fails permanently. Transient failures are
/// retried without end (moving on without knowing what a sink holds could
/// write a batch twice or lose it), each logged with its whole cause.
/// Each failure counts in `spendstream_errors_total` under `stage`.
async fn retry<T, F, Fut>(stage: &'static str, what: &str, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    op.retry(retry_policy())
        .when(Error::is_transient)
        .notify(|e, d| {
            spendstream_schemas::metrics::error(stage, e.kind());
            warn!(error = %Chain(e), retry_in = ?d, "{what} failed; retrying.")
        })
        .await
        .inspect_err(|e| {
            // The caller handles refused rows (they become dead letters).
            if !matches!(e, Error::RowsRefused { .. }) {
                spendstream_schemas::metrics::error(stage, e.kind());
                error!(error = %Chain(e), "{what} failed for good; stopping.")
            }
        })
}

/// [`retry`] while starting: transient errors are retried until
/// [`START_RETRY`] has passed since the first attempt (an attempt itself
/// may wait up to the log's operation timeout), then the start fails.
async fn retry_at_start<T>(
    stage: &'static str,
    what: &str,
    mut op: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    let mut delays = retry_policy().build();
    loop {
        let e = match op().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        spendstream_schemas::metrics::error(stage, e.kind());
        match delays
            .next()
            .filter(|d| e.is_transient() && started.elapsed() + *d <= START_RETRY)
        {
            Some(delay) => {
                warn!(error = %Chain(&e), retry_in = ?delay, "{what} failed; retrying.");
                tokio::time::sleep(delay).await;
            }
            None => {
                error!(error = %Chain(&e), "{what} failed; the processors cannot start.");
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spendstream_schemas::{EnvelopeWriter, ExpenseRecord, PackedWriter};

    /// A batch split across threads comes back whole and in log order:
    /// rows beside their entries, bad entries as dead letters. Entries of
    /// both envelope versions, as a log written before and after an
    /// upgrade holds them.
    #[test]
    fn a_large_batch_is_prepared_in_order() {
        let json = EnvelopeWriter::new("t1", "b1", "r1", 1_700_000_000_000_000);
        let packed = PackedWriter::new("t1", "b1", "r1", 1_700_000_000_000_000);
        let n = PART_MIN * 3 + 17;
        let batch: Vec<Consumed> = (0..n)
            .map(|i| {
                let record = format!(
                    r#"{{"source":"s","external_id":"e{i}","account_id":"a","transaction_date":"2026-01-01","amount_minor":{i},"currency":"USD"}}"#
                );
                let value = if i % 1_000 == 7 {
                    b"not an envelope".to_vec()
                } else if i % 2 == 0 {
                    json.write(&record)
                } else {
                    packed.write(&ExpenseRecord::from_json(&record).unwrap())
                };
                Consumed {
                    partition: (i % 3) as Partition,
                    offset: i as i64,
                    key: Default::default(),
                    value: value.into(),
                    headers: Default::default(),
                    timestamp_ms: 0,
                }
            })
            .collect();
        let mut rows = Vec::new();
        let mut first = None;
        for threads in [1, 2, 3, 8] {
            let prepared = prepare_in(&batch, "g", 0, Utc::now(), threads, rows);
            let at = prepared.rows.as_ptr();
            // Every batch after the first writes into the first's memory.
            assert_eq!(*first.get_or_insert(at), at);
            check(&batch, &prepared);
            rows = recycle(prepared.rows);
            assert_eq!(rows.as_ptr(), at);
            assert!(rows.is_empty() && rows.capacity() == batch.len());
        }
    }

    #[test]
    fn a_spare_far_larger_than_its_batch_is_not_kept() {
        assert!(keep_spare(50_000, 50_000));
        assert!(keep_spare(100_000, 50_000));
        assert!(!keep_spare(100_001, 50_000));
        assert!(keep_spare(2 * PART_MIN, 10));
        assert!(!keep_spare(50_000, 10));
    }

    fn check(batch: &[Consumed], prepared: &Prepared<'_>) {
        let n = batch.len();
        let bad: Vec<i64> = (0..n as i64).filter(|i| i % 1_000 == 7).collect();
        assert_eq!(
            prepared
                .letters
                .iter()
                .map(|l| l.offset)
                .collect::<Vec<_>>(),
            bad
        );
        assert_eq!(prepared.rows.len(), n - bad.len());
        assert_eq!(prepared.entries.len(), prepared.rows.len());
        let mut previous = -1;
        for (row, entry) in prepared.rows.iter().zip(&prepared.entries) {
            assert!(row.log_offset > previous);
            previous = row.log_offset;
            assert_eq!(row.log_offset, entry.offset);
            assert_eq!(row.record.external_id, format!("e{}", entry.offset));
            assert_eq!(row.record.amount.minor, entry.offset);
        }
    }
}
