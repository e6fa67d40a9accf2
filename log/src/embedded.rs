//! The embedded log: one SQLite database in WAL mode with `synchronous=FULL`,
//! so a committed append survives a process crash and a power cut. Partitions,
//! consumer-group offsets and dead letters are tables (the shape of Redpanda
//! Connect's sqlite buffer); records are stored in segments, one row per
//! append and partition (ADR 0013). The log's identity is made when it is created
//! and kept in the `meta` table. One consumer per group at a time: a lock
//! file per group keeps a second processor on the same directory out.

use crate::dead_letter_table::DeadLetterTable;
use crate::open_files::{Held, OpenFiles};
use crate::segment::{SegmentReader, SegmentWriter};
use crate::{
    Consumed, DeadLetter, DeadLetterStore, Error, Headers, LetterScope, Log, LogConsumer,
    LogProducer, Offset, Partition, Position, Prepared, PreparedForm, Record, Result,
    StoredDeadLetter, partition_for,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use spendstream_state::sqlite::{connect, now_ms};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Default partition count of a new embedded log.
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Most partitions an embedded log may have.
pub const MAX_PARTITIONS: u32 = 1024;
const DB_FILE: &str = "log.sqlite3";
/// Longest a consumer sleeps before looking again when nobody woke it (another
/// process may append to the same file).
const IDLE_RECHECK: Duration = Duration::from_millis(100);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL
);
-- One row per append and partition (see the segment module): records
-- base_offset .. base_offset + count - 1, appended at ts.
CREATE TABLE IF NOT EXISTS segments (
    partition INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (partition, base_offset)
);
CREATE TABLE IF NOT EXISTS group_offsets (
    group_name TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (group_name, partition)
);
";

/// The embedded log backend.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    partitions: u32,
    log_id: String,
    writer: Held,
    appended: Notify,
    dead_letters: DeadLetterTable,
    open: OpenFiles,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("path", &self.inner.path)
            .field("partitions", &self.inner.partitions)
            .field("log_id", &self.inner.log_id)
            .finish()
    }
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in `dir`. `partitions` defaults to
    /// the existing count, or [`DEFAULT_PARTITIONS`] for a new log; asking for
    /// a different count than an existing log has is an error, since it would
    /// move keys between partitions.
    pub async fn open(dir: &Path, partitions: Option<u32>) -> Result<Self> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, partitions)).await?
    }

    fn open_blocking(dir: &Path, requested: Option<u32>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = connect(&path)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        let existing: Option<u32> = tx
            .query_row("SELECT value FROM meta WHERE key = 'partitions'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok());
        let partitions = match (existing, requested) {
            (Some(e), Some(r)) if e != r => {
                return Err(Error::PartitionMismatch {
                    path: path.display().to_string(),
                    existing: e,
                    requested: r,
                });
            }
            (Some(e), _) => e,
            (None, r) => {
                let n = r.unwrap_or(DEFAULT_PARTITIONS);
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('partitions', ?1)",
                    [n.to_string()],
                )?;
                for p in 0..n {
                    tx.execute(
                        "INSERT OR IGNORE INTO partitions (partition, next_offset) VALUES (?1, 0)",
                        [p],
                    )?;
                }
                n
            }
        };
        // Made once, with the log; a wiped directory gets a new one.
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('log_id', ?1)",
            [uuid::Uuid::new_v4().simple().to_string()],
        )?;
        let log_id: String =
            tx.query_row("SELECT value FROM meta WHERE key = 'log_id'", [], |r| {
                r.get(0)
            })?;
        tx.execute_batch(crate::dead_letter_table::SCHEMA)?;
        let moved = migrate_record_rows(&tx)?;
        tx.commit()?;
        if moved > 0 {
            tracing::info!(
                records = moved,
                "Moved the embedded log's records from one row each into segments."
            );
        }
        let open = OpenFiles::new();
        let dead_letters = DeadLetterTable::new(open.hold(connect(&path)?));
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                partitions,
                log_id,
                writer: open.hold(conn),
                appended: Notify::new(),
                dead_letters,
                open,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The committed next offset of `group` for each partition.
    pub async fn committed(&self, group: &str) -> Result<Vec<Offset>> {
        let inner = self.inner.clone();
        let group = group.to_string();
        tokio::task::spawn_blocking(move || {
            let conn = inner.writer.lock();
            read_group_offsets(&conn, &group, inner.partitions)
        })
        .await?
    }

    /// The next offset to be written in each partition (the log end).
    pub async fn end_offsets(&self) -> Result<Vec<Offset>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.writer.lock();
            let mut stmt = conn.prepare("SELECT next_offset FROM partitions ORDER BY partition")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<Vec<Offset>, _>>()
                .map_err(Error::from)
        })
        .await?
    }

    /// Partitions `records` and encodes each partition's into segments:
    /// everything an append does before it needs the writer.
    fn encode(partitions: u32, records: Vec<Record>) -> Segments {
        // Each partition's records, in input order; each record's place
        // among its partition's.
        let mut by_partition: Vec<Vec<usize>> = vec![Vec::new(); partitions as usize];
        let mut slots = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let partition = partition_for(&record.key, partitions);
            let of = &mut by_partition[partition as usize];
            slots.push((partition, of.len() as u32));
            of.push(i);
        }
        let mut segments = Vec::new();
        for (partition, indices) in by_partition.iter().enumerate() {
            if indices.is_empty() {
                continue;
            }
            // Sized for the records it will hold (at most a segment's
            // worth), so pushing them copies each once.
            let room = |from: usize| {
                indices[from..]
                    .iter()
                    .take(crate::segment::MAX_RECORDS)
                    .map(|&i| SegmentWriter::size_of(&records[i].key, &records[i].value))
                    .sum::<usize>()
            };
            let mut encoded = Vec::new();
            let mut writer = SegmentWriter::with_capacity(room(0));
            for (k, &i) in indices.iter().enumerate() {
                let record = &records[i];
                if !writer.fits(&record.key, &record.value) {
                    // The full one is compressed (and freed) before the
                    // next one takes its room.
                    let full = std::mem::take(&mut writer);
                    encoded.push((full.len() as i64, full.finish()));
                    writer = SegmentWriter::with_capacity(room(k));
                }
                writer.push(&record.key, &record.value, &record.headers);
            }
            encoded.push((writer.len() as i64, writer.finish()));
            segments.push((partition as Partition, encoded));
        }
        Segments {
            partitions,
            segments,
            slots,
        }
    }

    /// Writes encoded segments in one transaction: the partitions' next
    /// offsets are read, the segments inserted at them, and the new next
    /// offsets stored, all under the writer.
    fn write_blocking(inner: &Inner, encoded: Segments) -> Result<Vec<Position>> {
        // Encoded for a log of other partitions (one cannot tell two logs
        // of the same count apart here; the committer holds one log).
        if encoded.partitions != inner.partitions {
            return Err(Error::ForeignAppend);
        }
        let mut conn = inner.writer.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut first: Vec<Offset> = vec![0; inner.partitions as usize];
        let ts = now_ms();
        {
            let mut read_next =
                tx.prepare_cached("SELECT next_offset FROM partitions WHERE partition = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO segments (partition, base_offset, count, ts, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut update =
                tx.prepare_cached("UPDATE partitions SET next_offset = ?2 WHERE partition = ?1")?;
            for (partition, segments) in &encoded.segments {
                let mut next: Offset = read_next.query_row([partition], |r| r.get(0))?;
                first[*partition as usize] = next;
                for (count, data) in segments {
                    insert.execute(params![partition, next, count, ts, data])?;
                    next += count;
                }
                update.execute(params![partition, next])?;
            }
        }
        tx.commit()?;
        Ok(encoded
            .slots
            .iter()
            .map(|&(partition, k)| Position {
                partition,
                offset: first[partition as usize] + Offset::from(k),
            })
            .collect())
    }
}

/// An append's records, partitioned and encoded ([`LogProducer::prepare`]):
/// each partition's compressed segments with their record counts, and
/// each record's partition and place among that partition's records.
pub(crate) struct Segments {
    partitions: u32,
    segments: Vec<(Partition, Vec<Encoded>)>,
    slots: Vec<(Partition, u32)>,
}

/// One segment as stored: its record count and its bytes.
type Encoded = (i64, Vec<u8>);

impl Segments {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Moves the records of a log written before segments (one row each in
/// `records`) into segments, in the transaction that opens the log; once.
/// Returns how many records moved.
fn migrate_record_rows(tx: &rusqlite::Transaction<'_>) -> Result<u64> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let mut moved = 0u64;
    {
        let mut select = tx.prepare(
            "SELECT partition, offset, key, value, headers, ts FROM records ORDER BY partition, offset",
        )?;
        let mut insert = tx.prepare(
            "INSERT INTO segments (partition, base_offset, count, ts, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        // (partition, base offset, newest ts, writer) of the open segment.
        let mut open: Option<(Partition, Offset, i64, SegmentWriter)> = None;
        let mut flush = |open: &mut Option<(Partition, Offset, i64, SegmentWriter)>| -> Result<()> {
            if let Some((partition, base, ts, writer)) = open.take() {
                let count = writer.len() as i64;
                insert.execute(params![partition, base, count, ts, writer.finish()])?;
            }
            Ok(())
        };
        let mut last_headers: Option<(Option<String>, Headers)> = None;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let partition: Partition = row.get(0)?;
            let offset: Offset = row.get(1)?;
            let key: Vec<u8> = row.get(2)?;
            let value: Vec<u8> = row.get(3)?;
            let text: Option<String> = row.get(4)?;
            let ts: i64 = row.get(5)?;
            // A segment holds consecutive offsets of one partition.
            let continues = matches!(&open, Some((p, base, _, w))
                if *p == partition && base + w.len() as Offset == offset && w.fits(&key, &value));
            if !continues {
                flush(&mut open)?;
                open = Some((partition, offset, ts, SegmentWriter::default()));
            }
            let headers = match &last_headers {
                Some((t, h)) if *t == text => h.clone(),
                _ => {
                    let h: Headers = Arc::from(decode_headers(text.clone()));
                    last_headers = Some((text, h.clone()));
                    h
                }
            };
            if let Some((_, _, newest, writer)) = open.as_mut() {
                *newest = (*newest).max(ts);
                writer.push(&key, &value, &headers);
            }
            moved += 1;
        }
        flush(&mut open)?;
    }
    tx.execute_batch("DROP TABLE records")?;
    Ok(moved)
}

/// The headers of a record written before segments (tab/newline text).
fn decode_headers(text: Option<String>) -> Vec<(String, String)> {
    text.map(|t| {
        t.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
    .unwrap_or_default()
}

fn read_group_offsets(conn: &Connection, group: &str, partitions: u32) -> Result<Vec<Offset>> {
    let mut offsets = vec![0; partitions as usize];
    let mut stmt = conn
        .prepare_cached("SELECT partition, next_offset FROM group_offsets WHERE group_name = ?1")?;
    let rows = stmt.query_map([group], |r| {
        Ok((r.get::<_, u32>(0)?, r.get::<_, Offset>(1)?))
    })?;
    for row in rows {
        let (p, o) = row?;
        if let Some(slot) = offsets.get_mut(p as usize) {
            *slot = o;
        }
    }
    Ok(offsets)
}

#[async_trait]
impl LogProducer for EmbeddedLog {
    async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.append_prepared(Prepared::records(records)).await
    }

    async fn prepare(&self, records: Vec<Record>) -> Result<Prepared> {
        let partitions = self.inner.partitions;
        let segments = if records.is_empty() {
            Self::encode(partitions, records)
        } else {
            tokio::task::spawn_blocking(move || Self::encode(partitions, records)).await?
        };
        Ok(Prepared(PreparedForm::Segments(segments)))
    }

    async fn append_prepared(&self, prepared: Prepared) -> Result<Vec<Position>> {
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        let positions = tokio::task::spawn_blocking(move || {
            let segments = match prepared.0 {
                PreparedForm::Segments(segments) => segments,
                PreparedForm::Records(records) => Self::encode(inner.partitions, records),
            };
            Self::write_blocking(&inner, segments)
        })
        .await??;
        self.inner.appended.notify_waiters();
        Ok(positions)
    }
}

#[async_trait]
impl DeadLetterStore for EmbeddedLog {
    async fn put(&self, letters: Vec<DeadLetter>) -> Result<()> {
        self.inner.dead_letters.put(letters).await
    }

    async fn list(
        &self,
        scope: LetterScope<'_>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>> {
        self.inner.dead_letters.list(scope, after_id, limit).await
    }

    async fn get(&self, tenant_id: &str, id: i64) -> Result<Option<StoredDeadLetter>> {
        self.inner.dead_letters.get(tenant_id, id).await
    }

    async fn mark_replayed(&self, tenant_id: &str, id: i64, position: Position) -> Result<()> {
        self.inner
            .dead_letters
            .mark_replayed(tenant_id, id, position)
            .await
    }
}

/// The lock file that keeps a second consumer of `group` out: the group's
/// name made safe for a file name (and cut), with a hash of the whole name
/// so two names that read the same once made safe still differ.
fn lock_path(dir: &Path, group: &str) -> PathBuf {
    let safe: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let hash = crate::partition_for(group.as_bytes(), u32::MAX);
    dir.join(format!("consumer-{safe}-{hash:08x}.lock"))
}

/// Takes the group's lock, without waiting: a second processor must fail
/// at once with a clear error, not hang.
fn lock_group(dir: &Path, group: &str) -> Result<std::fs::File> {
    let path = lock_path(dir, group);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::ConsumerLocked {
            group: group.to_string(),
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    fn producer(&self) -> Arc<dyn LogProducer> {
        Arc::new(self.clone())
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>> {
        let inner = self.inner.clone();
        let group_name = group.to_string();
        let (lock, conn, positions) = tokio::task::spawn_blocking(move || -> Result<_> {
            let dir = inner.path.parent().unwrap_or(Path::new("."));
            let lock = lock_group(dir, &group_name)?;
            let conn = inner.open.hold(connect(&inner.path)?);
            let positions = read_group_offsets(&conn.lock(), &group_name, inner.partitions)?;
            Ok((lock, conn, positions))
        })
        .await??;
        Ok(Box::new(EmbeddedConsumer {
            log: self.clone(),
            group: group.to_string(),
            conn: Arc::new(conn),
            positions,
            next_partition: 0,
            _lock: lock,
        }))
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(self.clone())
    }

    fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    fn log_id(&self) -> &str {
        &self.inner.log_id
    }

    async fn end_offsets(&self) -> Result<Vec<Offset>> {
        EmbeddedLog::end_offsets(self).await
    }

    async fn enforce_retention(&self, min_age: Duration) -> Result<u64> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let cutoff = now_ms() - min_age.as_millis() as i64;
            let mut deleted = 0u64;
            {
                // A group without a commit on a partition counts as offset 0
                // there, so nothing it has not read is ever deleted.
                let mut floor = tx.prepare_cached(
                    "SELECT MIN(COALESCE(o.next_offset, 0))
                     FROM (SELECT DISTINCT group_name FROM group_offsets) g
                     LEFT JOIN group_offsets o
                       ON o.group_name = g.group_name AND o.partition = ?1",
                )?;
                // Whole segments go, as Kafka deletes whole log segments: one
                // with a record some group still needs stays.
                let mut count = tx.prepare_cached(
                    "SELECT COALESCE(SUM(count), 0) FROM segments
                     WHERE partition = ?1 AND base_offset + count <= ?2 AND ts < ?3",
                )?;
                let mut delete = tx.prepare_cached(
                    "DELETE FROM segments
                     WHERE partition = ?1 AND base_offset + count <= ?2 AND ts < ?3",
                )?;
                for partition in 0..inner.partitions {
                    let min: Option<Offset> = floor.query_row([partition], |r| r.get(0))?;
                    if let Some(min) = min {
                        let args = params![partition, min, cutoff];
                        deleted += count.query_row(args, |r| r.get::<_, i64>(0))? as u64;
                        delete.execute(args)?;
                    }
                }
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await?
    }

    fn closed(&self) -> futures::future::BoxFuture<'static, ()> {
        self.inner.open.closed()
    }

    async fn ping(&self) -> Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.writer.lock();
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await?
    }
}

/// One group member reading every partition of the embedded log.
pub struct EmbeddedConsumer {
    log: EmbeddedLog,
    group: String,
    conn: Arc<Held>,
    /// Next offset to read, per partition.
    positions: Vec<Offset>,
    /// Where the next poll starts, so no partition starves the others.
    next_partition: usize,
    /// Held while this consumer lives; released (by the OS, also on a
    /// crash) when the file is closed.
    _lock: std::fs::File,
}

impl EmbeddedConsumer {
    fn read(
        conn: &Connection,
        positions: &[Offset],
        start: usize,
        max: usize,
    ) -> Result<Vec<Consumed>> {
        let n = positions.len();
        let mut out = Vec::new();
        // From the segment holding `from` (the newest starting at or before
        // it) on; records before `from` are skipped while decoding.
        let mut stmt = conn.prepare_cached(
            "SELECT base_offset, count, ts, data FROM segments
             WHERE partition = ?1 AND base_offset >= COALESCE(
                 (SELECT MAX(base_offset) FROM segments WHERE partition = ?1 AND base_offset <= ?2),
                 ?2)
             ORDER BY base_offset",
        )?;
        // Where each partition goes on: after the last record read (not
        // counted, since offsets may have holes where retention deleted).
        let mut next = positions.to_vec();
        // A fair share per partition first, then whatever room is left.
        let share = max.div_ceil(n).max(1);
        for round in 0..2 {
            for i in 0..n {
                let partition = (start + i) % n;
                let room = max - out.len();
                if room == 0 {
                    return Ok(out);
                }
                let limit = if round == 0 { room.min(share) } else { room };
                let before = out.len();
                read_partition(
                    &mut stmt,
                    partition as Partition,
                    next[partition],
                    limit,
                    &mut out,
                )?;
                if out.len() > before {
                    next[partition] = out[out.len() - 1].offset + 1;
                }
            }
        }
        Ok(out)
    }
}

/// Appends to `out` at most `limit` records of `partition` from offset
/// `from` on.
fn read_partition(
    stmt: &mut rusqlite::CachedStatement<'_>,
    partition: Partition,
    from: Offset,
    limit: usize,
    out: &mut Vec<Consumed>,
) -> Result<()> {
    let mut taken = 0;
    let mut rows = stmt.query(params![partition, from])?;
    while let Some(row) = rows.next()? {
        let base: Offset = row.get(0)?;
        let count: i64 = row.get(1)?;
        let ts: i64 = row.get(2)?;
        let data = row.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?;
        // One buffer per segment, which its records' keys and values slice.
        let data = bytes::Bytes::from(crate::segment::open(data)?.into_owned());
        let mut reader = SegmentReader::new(&data)?;
        if i64::from(reader.remaining()) != count {
            return Err(Error::CorruptSegment(format!(
                "partition {partition}, offset {base}: {} records stored, {count} listed",
                reader.remaining()
            )));
        }
        let mut offset = base;
        while let Some(record) = reader.next_record()? {
            if offset >= from {
                out.push(Consumed {
                    partition,
                    offset,
                    key: data.slice_ref(record.key),
                    value: data.slice_ref(record.value),
                    headers: record.headers.clone(),
                    timestamp_ms: ts,
                });
                taken += 1;
                if taken == limit {
                    return Ok(());
                }
            }
            offset += 1;
        }
    }
    Ok(())
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    fn group(&self) -> &str {
        &self.group
    }

    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Consumed>> {
        let deadline = Instant::now() + max_wait;
        loop {
            let notified = self.log.inner.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let conn = self.conn.clone();
            let positions = self.positions.clone();
            let start = self.next_partition;
            let records = tokio::task::spawn_blocking(move || {
                let conn = conn.lock();
                Self::read(&conn, &positions, start, max.max(1))
            })
            .await??;
            if !records.is_empty() {
                for r in &records {
                    let slot = &mut self.positions[r.partition as usize];
                    *slot = (*slot).max(r.offset + 1);
                }
                self.next_partition = (self.next_partition + 1) % self.positions.len();
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wait = (deadline - now).min(IDLE_RECHECK);
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    async fn committed(&mut self) -> Result<Vec<Offset>> {
        let conn = self.conn.clone();
        let group = self.group.clone();
        let partitions = self.log.inner.partitions;
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock();
            read_group_offsets(&conn, &group, partitions)
        })
        .await?
    }

    async fn commit(&mut self, offsets: &[(Partition, Offset)]) -> Result<()> {
        let partitions = self.log.inner.partitions;
        if let Some((p, _)) = offsets.iter().find(|(p, _)| *p >= partitions) {
            return Err(Error::UnknownPartition(*p));
        }
        let conn = self.conn.clone();
        let group = self.group.clone();
        let offsets = offsets.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                // MAX keeps a commit from moving a group backwards.
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO group_offsets (group_name, partition, next_offset, updated_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (group_name, partition) DO UPDATE SET
                       next_offset = MAX(next_offset, excluded.next_offset),
                       updated_at = excluded.updated_at",
                )?;
                let ts = now_ms();
                for (p, o) in &offsets {
                    stmt.execute(params![group, p, o, ts])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?
    }
}
