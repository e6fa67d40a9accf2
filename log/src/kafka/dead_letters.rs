//! Dead letters on the `expenses.dlq` topic, and the log's identity marker.
//!
//! Each letter is one Kafka record: value = the original bytes, key = the
//! tenant (so a tenant's letters share a partition, in order), headers =
//! the reason and where the record came from. A replay is recorded by a
//! marker record with the same key. The API's letter id is the record's
//! partition and offset packed in one number (see `letter_id`).
//!
//! Reads go through an index on disk (a SQLite file in the state directory)
//! that is brought up to the topic's high watermarks on every call, so any
//! process sees what any other wrote and memory does not grow with the
//! number of letters. A letter stored twice (a processor replayed a batch
//! after a crash) is indexed once: the first copy wins. The index can be
//! deleted at any time; it is rebuilt from the topic.
//!
//! The first record of the topic's marker partition names the log: a
//! `kind=log_identity` record made when the log is first opened. Offsets of
//! the raw topic only mean something with it (see [`crate::Log::log_id`]).

use super::{KafkaConfig, KafkaProducer};
use crate::dead_letter_table::{DeadLetterTable, Row};
use crate::open_files::Held;
use crate::{
    DeadLetter, DeadLetterStore, Error, Headers, LetterScope, Offset, Partition, Position, Record,
    Result, StoredDeadLetter,
};
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use rusqlite::{Connection, OptionalExtension, params};
use spendstream_state::sqlite::{connect, now_ms};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

const H_KIND: &str = "kind";
const H_LOG_ID: &str = "log_id";
const H_REASON: &str = "reason";
const H_MESSAGE: &str = "message";
const H_TENANT: &str = "tenant";
const H_GROUP: &str = "source_group";
const H_PARTITION: &str = "source_partition";
const H_OFFSET: &str = "source_offset";
const H_CREATED: &str = "created_at_ms";
const H_REPLAY_OF: &str = "replay_of";
const H_REPLAY_PARTITION: &str = "replayed_partition";
const H_REPLAY_OFFSET: &str = "replayed_offset";
/// `kind` of the identity marker.
const KIND_LOG_IDENTITY: &str = "log_identity";
/// Key of the identity marker; decides its partition.
const MARKER_KEY: &[u8] = b"\0spendstream.log_identity";
/// Letters indexed per SQLite transaction while catching up.
const INDEX_BATCH: usize = 1_000;

const INDEX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS index_progress (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL
);
";

/// The dead-letter topic as a [`DeadLetterStore`].
pub struct KafkaDeadLetters {
    config: Arc<KafkaConfig>,
    producer: Arc<KafkaProducer>,
    topic: String,
    partitions: u32,
    reader: Arc<Mutex<BaseConsumer>>,
    index: DeadLetterTable,
}

impl KafkaDeadLetters {
    /// Opens the index in the state directory (creating it if needed).
    pub async fn open(
        config: Arc<KafkaConfig>,
        producer: Arc<KafkaProducer>,
        partitions: u32,
    ) -> Result<Self> {
        let group_id = config.group_id("spendstream-dlq-reader");
        let reader: BaseConsumer = config
            .client(&[
                ("group.id", &group_id),
                // Should retention delete records between the watermark
                // read and the fetch, go on from the new head.
                ("auto.offset.reset", "earliest"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ])
            .create()?;
        let topic = config.dlq_topic();
        let path = config
            .state_dir
            .join(format!("dead-letters-{topic}.sqlite3"));
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let conn = connect(&path)?;
            conn.execute_batch(crate::dead_letter_table::SCHEMA)?;
            conn.execute_batch(INDEX_SCHEMA)?;
            Ok(conn)
        })
        .await??;
        Ok(Self {
            config,
            producer,
            topic,
            partitions,
            reader: Arc::new(Mutex::new(reader)),
            index: DeadLetterTable::new(Held::untracked(conn)),
        })
    }

    /// Brings the index up to the topic's end.
    async fn catch_up(&self) -> Result<()> {
        let reader = self.reader.clone();
        let topic = self.topic.clone();
        let partitions = self.partitions;
        let timeout = self.config.operation_timeout;
        self.index
            .with(move |conn| {
                let reader = reader.lock().unwrap_or_else(|e| e.into_inner());
                catch_up(&reader, conn, &topic, partitions, timeout)
            })
            .await
    }

    /// The log's identity: the first marker in the marker partition, made
    /// now when there is none. Two processes racing to make one both read
    /// back the first, so they agree.
    pub async fn log_id(&self) -> Result<String> {
        if let Some(id) = self.find_marker().await? {
            return Ok(id);
        }
        let headers: Headers = vec![
            (H_KIND.to_string(), KIND_LOG_IDENTITY.to_string()),
            (
                H_LOG_ID.to_string(),
                uuid::Uuid::new_v4().simple().to_string(),
            ),
            (H_CREATED.to_string(), now_ms().to_string()),
        ]
        .into();
        let marker = Record {
            key: MARKER_KEY.to_vec(),
            value: Vec::new(),
            headers,
        };
        self.producer
            .send(&self.topic, self.partitions, &[marker])
            .await?;
        self.find_marker()
            .await?
            .ok_or(Error::Timeout(self.config.operation_timeout))
    }

    async fn find_marker(&self) -> Result<Option<String>> {
        let reader = self.reader.clone();
        let topic = self.topic.clone();
        let partition = crate::partition_for(MARKER_KEY, self.partitions) as i32;
        let timeout = self.config.operation_timeout;
        tokio::task::spawn_blocking(move || {
            let reader = reader.lock().unwrap_or_else(|e| e.into_inner());
            let (low, high) = reader.fetch_watermarks(&topic, partition, timeout)?;
            if low >= high {
                return Ok(None);
            }
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, partition, KafkaOffset::Offset(low))?;
            reader.assign(&list)?;
            let deadline = Instant::now() + timeout;
            let found = loop {
                if Instant::now() >= deadline {
                    reader.unassign()?;
                    return Err(Error::Timeout(timeout));
                }
                let Some(message) = reader.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let message = message?;
                let headers = super::message_headers(&message);
                if header(&headers, H_KIND) == Some(KIND_LOG_IDENTITY)
                    && let Some(id) = header(&headers, H_LOG_ID)
                {
                    break Some(id.to_string());
                }
                if message.offset() + 1 >= high {
                    break None;
                }
            };
            reader.unassign()?;
            Ok(found)
        })
        .await?
    }
}

/// A letter's id: its place in the topic, unique across partitions and
/// increasing within one (a tenant's letters all share one partition).
fn letter_id(partition: Partition, offset: Offset) -> i64 {
    (i64::from(partition) << 40) | (offset + 1)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads every partition from the index's position to the high watermark
/// the call started with, indexing letters and replays as it goes.
fn catch_up(
    reader: &BaseConsumer,
    conn: &mut Connection,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<()> {
    let mut next = Vec::with_capacity(partitions as usize);
    let mut ends = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let (low, high) = reader.fetch_watermarks(topic, p as i32, timeout)?;
        let mut from: Offset = conn
            .query_row(
                "SELECT next_offset FROM index_progress WHERE partition = ?1",
                [p],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if from > high {
            // The topic was recreated: what the index holds of it is gone.
            warn!(
                topic,
                partition = p,
                "Dead-letter topic went back; reindexing."
            );
            conn.execute(
                "DELETE FROM dead_letters WHERE id >= ?1 AND id < ?2",
                params![letter_id(p, -1), letter_id(p + 1, -1)],
            )?;
            from = 0;
        }
        // Retention may have deleted the topic's head: what is gone is
        // gone, read from what is left.
        next.push(from.max(low));
        ends.push(high);
    }
    if ends.iter().zip(&next).all(|(end, next)| next >= end) {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for (p, from) in next.iter().enumerate() {
        list.add_partition_offset(topic, p as i32, KafkaOffset::Offset(*from))?;
    }
    reader.assign(&list)?;
    let deadline = Instant::now() + timeout;
    let mut pending = Pending::default();
    let result = (|| {
        while ends.iter().zip(&next).any(|(end, next)| next < end) {
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            let Some(message) = reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message?;
            let partition = message.partition() as Partition;
            let offset = message.offset();
            if let Some(slot) = next.get_mut(partition as usize) {
                *slot = (*slot).max(offset + 1);
            }
            let headers = super::message_headers(&message);
            pending.add(partition, offset, &headers, message.payload());
            if pending.len() >= INDEX_BATCH {
                pending.flush(conn, &next)?;
            }
        }
        pending.flush(conn, &next)
    })();
    reader.unassign()?;
    result
}

/// What catching up read and has not written to the index yet.
#[derive(Default)]
struct Pending {
    letters: Vec<Row>,
    replays: Vec<(String, i64, i64, Position)>,
}

impl Pending {
    fn len(&self) -> usize {
        self.letters.len() + self.replays.len()
    }

    fn add(
        &mut self,
        dlq_partition: Partition,
        offset: Offset,
        headers: &[(String, String)],
        payload: Option<&[u8]>,
    ) {
        let number = |name| header(headers, name).and_then(|v| v.parse::<i64>().ok());
        let tenant = header(headers, H_TENANT).filter(|t| !t.is_empty());
        if header(headers, H_KIND).is_some() {
            // A marker (the log's identity), not a letter.
            return;
        }
        if let (Some(tenant), Some(id), Some(partition), Some(at)) = (
            tenant,
            number(H_REPLAY_OF),
            number(H_REPLAY_PARTITION),
            number(H_REPLAY_OFFSET),
        ) {
            self.replays.push((
                tenant.to_string(),
                id,
                number(H_CREATED).unwrap_or_default(),
                Position {
                    partition: partition as Partition,
                    offset: at,
                },
            ));
            return;
        }
        let (Some(group), Some(partition), Some(source_offset)) = (
            header(headers, H_GROUP),
            number(H_PARTITION),
            number(H_OFFSET),
        ) else {
            return;
        };
        self.letters.push(Row {
            id: Some(letter_id(dlq_partition, offset)),
            created_at_ms: number(H_CREATED).unwrap_or_default(),
            letter: DeadLetter {
                tenant_id: tenant.map(str::to_string),
                group: group.to_string(),
                partition: partition as Partition,
                offset: source_offset,
                code: header(headers, H_REASON).unwrap_or_default().to_string(),
                message: header(headers, H_MESSAGE).unwrap_or_default().to_string(),
                payload: payload.unwrap_or_default().to_vec(),
            },
        });
    }

    /// Writes what is pending and where reading got to, in one transaction.
    fn flush(&mut self, conn: &mut Connection, next: &[Offset]) -> Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        DeadLetterTable::insert(&tx, &self.letters)?;
        for (tenant, id, at_ms, position) in &self.replays {
            DeadLetterTable::set_replayed(&tx, tenant, *id, *at_ms, *position)?;
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO index_progress (partition, next_offset) VALUES (?1, ?2)
                 ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?;
            for (p, offset) in next.iter().enumerate() {
                stmt.execute(params![p as u32, offset])?;
            }
        }
        tx.commit()?;
        self.letters.clear();
        self.replays.clear();
        Ok(())
    }
}

#[async_trait]
impl DeadLetterStore for KafkaDeadLetters {
    async fn put(&self, letters: Vec<DeadLetter>) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let created = now_ms().to_string();
        let records: Vec<Record> = letters
            .into_iter()
            .map(|l| {
                let tenant = l.tenant_id.unwrap_or_default();
                let headers: Headers = vec![
                    (H_REASON.to_string(), l.code),
                    (H_MESSAGE.to_string(), l.message),
                    (H_TENANT.to_string(), tenant.clone()),
                    (H_GROUP.to_string(), l.group),
                    (H_PARTITION.to_string(), l.partition.to_string()),
                    (H_OFFSET.to_string(), l.offset.to_string()),
                    (H_CREATED.to_string(), created.clone()),
                ]
                .into();
                Record {
                    key: tenant.into_bytes(),
                    value: l.payload,
                    headers,
                }
            })
            .collect();
        self.producer
            .send(&self.topic, self.partitions, &records)
            .await?;
        Ok(())
    }

    async fn list(
        &self,
        scope: LetterScope<'_>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>> {
        self.catch_up().await?;
        self.index.list(scope, after_id, limit).await
    }

    async fn get(&self, tenant_id: &str, id: i64) -> Result<Option<StoredDeadLetter>> {
        self.catch_up().await?;
        self.index.get(tenant_id, id).await
    }

    async fn mark_replayed(&self, tenant_id: &str, id: i64, position: Position) -> Result<()> {
        let headers: Headers = vec![
            (H_TENANT.to_string(), tenant_id.to_string()),
            (H_REPLAY_OF.to_string(), id.to_string()),
            (
                H_REPLAY_PARTITION.to_string(),
                position.partition.to_string(),
            ),
            (H_REPLAY_OFFSET.to_string(), position.offset.to_string()),
            (H_CREATED.to_string(), now_ms().to_string()),
        ]
        .into();
        let marker = Record {
            key: tenant_id.as_bytes().to_vec(),
            value: Vec::new(),
            headers,
        };
        self.producer
            .send(&self.topic, self.partitions, &[marker])
            .await?;
        Ok(())
    }
}
