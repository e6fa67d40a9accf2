//! The durable log between ingest and processors. Backends are chosen by URL:
//! `embedded://./data/log` (SQLite in WAL mode, one machine) or
//! `kafka://host1:9092,host2:9092` (see [`kafka`]).
//! The traits follow Kafka's model: keyed records in partitions, consumer
//! groups, at-least-once delivery with explicit offset commits.

mod dead_letter_table;
pub mod embedded;
mod error;
pub mod kafka;
pub mod metrics;
mod open_files;
mod segment;
mod target;

pub use error::{Error, Result};
pub use target::{LogTarget, redact_url};

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// A partition number, `0..partitions`.
pub type Partition = u32;
/// A position inside one partition; strictly increasing per partition.
pub type Offset = i64;

/// Header pairs, shared by every record of one request (they carry the
/// request's batch id, request id, tenant and schema version).
pub type Headers = Arc<[(String, String)]>;

/// Header names of every expense record in the log.
pub mod header {
    pub const BATCH_ID: &str = "batch_id";
    pub const REQUEST_ID: &str = "request_id";
    pub const TENANT: &str = "tenant";
    /// The envelope schema version of the value.
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// The W3C trace context of the request that appended the record.
    pub const TRACEPARENT: &str = spendstream_schemas::trace::TRACEPARENT;
}

/// The headers of the records one request appends, whose values are
/// envelopes of `schema_version`; with the current span's `traceparent`
/// when traces are exported, so the processors' spans continue the
/// request's trace.
pub fn expense_headers(
    tenant: &str,
    batch_id: &str,
    request_id: &str,
    schema_version: u8,
) -> Headers {
    let mut headers = vec![
        (header::BATCH_ID.to_string(), batch_id.to_string()),
        (header::REQUEST_ID.to_string(), request_id.to_string()),
        (header::TENANT.to_string(), tenant.to_string()),
        (
            header::SCHEMA_VERSION.to_string(),
            schema_version.to_string(),
        ),
    ];
    if let Some(traceparent) = spendstream_schemas::trace::current_traceparent() {
        headers.push((header::TRACEPARENT.to_string(), traceparent));
    }
    Arc::from(headers)
}

/// One record to append. `key` decides the partition: equal keys always land
/// in the same partition, in append order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Headers,
}

/// Where an appended record now lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub partition: Partition,
    pub offset: Offset,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: Partition,
    pub offset: Offset,
    /// Key and value share the buffer of the segment they were read from
    /// (embedded log): a record read costs no allocation of its own.
    pub key: bytes::Bytes,
    pub value: bytes::Bytes,
    /// Shared by the records of one append that carry the same headers.
    pub headers: Headers,
    /// Append time, milliseconds since the epoch.
    pub timestamp_ms: i64,
}

/// A record processors could not use, kept with its original bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Tenant, when the envelope could be read far enough to tell.
    pub tenant_id: Option<String>,
    pub group: String,
    pub partition: Partition,
    pub offset: Offset,
    /// Machine-readable reason (a `spendstream_schemas::ErrorCode` string).
    pub code: String,
    pub message: String,
    pub payload: Vec<u8>,
}

/// A stored dead letter with its id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub created_at_ms: i64,
    pub letter: DeadLetter,
    /// When and where the letter was appended to the log again, if it was.
    pub replayed: Option<Replayed>,
}

/// A dead letter's replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub at_ms: i64,
    pub position: Position,
}

/// Writes to the log.
#[async_trait]
pub trait LogProducer: Send + Sync {
    /// Appends `records` durably and returns their positions, in input order.
    /// Returning `Ok` means every record is durable (embedded: committed and
    /// fsynced; Kafka: acknowledged by all in-sync replicas). On `Err`, none
    /// or some may have been written: the caller must not claim any.
    async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>>;

    /// The part of an append that writes nothing: `records` put in the
    /// form the log stores (the embedded log: partitioned, in compressed
    /// segments). A caller that orders its appends can prepare the next
    /// one while the one before is written.
    async fn prepare(&self, records: Vec<Record>) -> Result<Prepared> {
        Ok(Prepared::records(records))
    }

    /// Appends what [`LogProducer::prepare`] of this log made, as
    /// [`LogProducer::append`] appends the records.
    async fn append_prepared(&self, prepared: Prepared) -> Result<Vec<Position>> {
        match prepared.0 {
            PreparedForm::Records(records) => self.append(records).await,
            PreparedForm::Segments(_) => Err(Error::ForeignAppend),
        }
    }
}

/// Records made ready for one log's append ([`LogProducer::prepare`]).
pub struct Prepared(pub(crate) PreparedForm);

pub(crate) enum PreparedForm {
    Records(Vec<Record>),
    Segments(embedded::Segments),
}

impl Prepared {
    /// `records` as they are, for a log that writes them so (what
    /// [`LogProducer::prepare`] does unless a log overrides it).
    pub fn records(records: Vec<Record>) -> Self {
        Self(PreparedForm::Records(records))
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        match &self.0 {
            PreparedForm::Records(records) => records.len(),
            PreparedForm::Segments(segments) => segments.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the log as one member of a consumer group.
#[async_trait]
pub trait LogConsumer: Send {
    /// The consumer group name.
    fn group(&self) -> &str;

    /// Waits up to `max_wait` for records and returns at most `max`, in
    /// offset order within each partition. Continues after what it returned
    /// last, not after the last commit: after a restart, reading resumes at
    /// the committed offsets, so records may be seen twice but never skipped.
    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Consumed>>;

    /// Marks everything below `next_offset` of each partition as processed.
    /// A commit never moves a group backwards.
    async fn commit(&mut self, offsets: &[(Partition, Offset)]) -> Result<()>;

    /// The group's committed next offset of every partition (0 where it has
    /// committed nothing).
    async fn committed(&mut self) -> Result<Vec<Offset>>;

    /// Partitions taken from this member by a group rebalance since the last
    /// call. Records of them that the caller holds from earlier polls must be
    /// dropped without committing: the new owner reads them again from the
    /// last commit. (What `poll` returns after a rebalance is already clean.)
    fn take_revoked(&mut self) -> Vec<Partition> {
        Vec::new()
    }
}

/// Whose dead letters a listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterScope<'a> {
    /// One tenant's letters.
    Tenant(&'a str),
    /// Letters no tenant could be read from (an undecodable envelope): only
    /// operators see them.
    Unattributed,
}

/// Where processors put records they could not use.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Stores letters durably. Storing the same (group, partition, offset)
    /// twice keeps one: a replay after a crash does not duplicate them.
    async fn put(&self, letters: Vec<DeadLetter>) -> Result<()>;

    /// Lists the letters of `scope` with ids above `after_id`, oldest first.
    async fn list(
        &self,
        scope: LetterScope<'_>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>>;

    /// One letter of a tenant.
    async fn get(&self, tenant_id: &str, id: i64) -> Result<Option<StoredDeadLetter>>;

    /// Records that letter `id` was appended to the log again at `position`.
    async fn mark_replayed(&self, tenant_id: &str, id: i64, position: Position) -> Result<()>;
}

/// A log backend: a producer, consumers by group, dead letters.
#[async_trait]
pub trait Log: Send + Sync {
    fn producer(&self) -> Arc<dyn LogProducer>;
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>>;
    fn dead_letters(&self) -> Arc<dyn DeadLetterStore>;
    fn partitions(&self) -> u32;

    /// This log's identity: made once when the log is created and kept for
    /// its life (embedded: in its database; Kafka: a marker record in the
    /// dead-letter topic). Offsets only mean something together with it: a
    /// wiped, recreated or other log starts its offsets again at 0.
    fn log_id(&self) -> &str;

    /// The next offset to be written in each partition (the log end).
    async fn end_offsets(&self) -> Result<Vec<Offset>>;
    /// Whether the backend answers now (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Deletes records that every consumer group has committed past and that
    /// are older than `min_age`; returns how many. Backends with their own
    /// retention (Kafka) keep the default, which does nothing.
    async fn enforce_retention(&self, _min_age: Duration) -> Result<u64> {
        Ok(0)
    }

    /// Resolves once nothing holds the log's local files open any more:
    /// take it, drop every handle, then await it (a copy of an embedded
    /// log's directory is whole only then). A blocking read keeps its
    /// connection until it ends, even when whoever awaited it has stopped.
    /// The default resolves at once: Kafka's only local file is its index
    /// of dead letters, rebuilt from the topic when it is not whole.
    fn closed(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Opens the log a URL names.
pub async fn open(url: &str) -> Result<Arc<dyn Log>> {
    LogTarget::parse(url, &[], &[])?.open().await
}

/// The partition of a key among `partitions`: FNV-1a, stable across releases
/// and platforms (the embedded log's on-disk layout depends on it).
pub fn partition_for(key: &[u8], partitions: u32) -> Partition {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as Partition
}

/// Default poll wait used by callers that have no better idea.
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioning_is_stable() {
        // Pinned values: changing the hash would move existing expenses.
        assert_eq!(partition_for(b"", 8), (0xcbf2_9ce4_8422_2325u64 % 8) as u32);
        let p = partition_for(b"t1\x1fvisa\x1f123", 8);
        assert_eq!(p, partition_for(b"t1\x1fvisa\x1f123", 8));
        assert!(p < 8);
        let spread: std::collections::HashSet<_> = (0..1000)
            .map(|i| partition_for(format!("k{i}").as_bytes(), 8))
            .collect();
        assert_eq!(spread.len(), 8);
    }
}
