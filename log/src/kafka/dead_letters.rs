//! Dead letters on the `expenses.dlq` topic.
//!
//! Each letter is one Kafka record: value = the original bytes, key = the
//! tenant (so a tenant's letters share a partition, in order), headers =
//! the reason and where the record came from. A replay is recorded by a
//! marker record with the same key. The API's letter id is the record's
//! partition and offset packed in one number (see `letter_id`).
//!
//! Reads go through an index built from the topic and brought up to the high
//! watermarks on every call, so any process sees what any other wrote. A
//! letter stored twice (a processor replayed a batch after a crash) is
//! indexed once: the first copy wins.

use super::{KafkaConfig, KafkaProducer};
use crate::idempotency::now_ms;
use crate::{
    DeadLetter, DeadLetterStore, Error, Headers, Offset, Partition, Position, Record, Replayed,
    Result, StoredDeadLetter,
};
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The dead-letter topic as a [`DeadLetterStore`].
pub struct KafkaDeadLetters {
    config: Arc<KafkaConfig>,
    producer: Arc<KafkaProducer>,
    topic: String,
    partitions: u32,
    index: Arc<Mutex<Index>>,
}

struct Index {
    reader: BaseConsumer,
    /// Next offset to read, per partition.
    next: Vec<Offset>,
    by_tenant: HashMap<String, BTreeMap<i64, StoredDeadLetter>>,
    seen: HashSet<(String, Partition, Offset)>,
}

impl KafkaDeadLetters {
    pub fn new(
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
        Ok(Self {
            config,
            producer,
            topic,
            partitions,
            index: Arc::new(Mutex::new(Index {
                reader,
                next: vec![0; partitions as usize],
                by_tenant: HashMap::new(),
                seen: HashSet::new(),
            })),
        })
    }

    /// Brings the index up to the topic's end, then runs `read` on it.
    async fn with_index<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Index) -> T + Send + 'static,
    ) -> Result<T> {
        let index = self.index.clone();
        let topic = self.topic.clone();
        let timeout = self.config.operation_timeout;
        tokio::task::spawn_blocking(move || {
            let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
            index.catch_up(&topic, timeout)?;
            Ok(read(&index))
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

impl Index {
    fn catch_up(&mut self, topic: &str, timeout: Duration) -> Result<()> {
        let mut ends = Vec::with_capacity(self.next.len());
        for p in 0..self.next.len() {
            let (low, high) = self.reader.fetch_watermarks(topic, p as i32, timeout)?;
            // Retention may have deleted the topic's head: what is gone is
            // gone, read from what is left.
            self.next[p] = self.next[p].max(low);
            ends.push(high);
        }
        if ends.iter().zip(&self.next).all(|(end, next)| next >= end) {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (p, next) in self.next.iter().enumerate() {
            list.add_partition_offset(topic, p as i32, KafkaOffset::Offset(*next))?;
        }
        self.reader.assign(&list)?;
        let deadline = Instant::now() + timeout;
        while ends.iter().zip(&self.next).any(|(end, next)| next < end) {
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            let Some(message) = self.reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message?;
            let partition = message.partition() as Partition;
            let offset = message.offset();
            let headers = super::message_headers(&message);
            let payload = message.payload().unwrap_or_default().to_vec();
            if let Some(slot) = self.next.get_mut(partition as usize) {
                *slot = (*slot).max(offset + 1);
            }
            self.apply(partition, offset, &headers, payload);
        }
        self.reader.unassign()?;
        Ok(())
    }

    fn apply(
        &mut self,
        dlq_partition: Partition,
        offset: Offset,
        headers: &[(String, String)],
        payload: Vec<u8>,
    ) {
        let Some(tenant) = header(headers, H_TENANT).filter(|t| !t.is_empty()) else {
            return;
        };
        let number = |name| header(headers, name).and_then(|v| v.parse::<i64>().ok());
        if let (Some(id), Some(partition), Some(at)) = (
            number(H_REPLAY_OF),
            number(H_REPLAY_PARTITION),
            number(H_REPLAY_OFFSET),
        ) {
            if let Some(letter) = self
                .by_tenant
                .get_mut(tenant)
                .and_then(|letters| letters.get_mut(&id))
            {
                letter.replayed = Some(Replayed {
                    at_ms: number(H_CREATED).unwrap_or_default(),
                    position: Position {
                        partition: partition as Partition,
                        offset: at,
                    },
                });
            }
            return;
        }
        let (Some(group), Some(partition), Some(source_offset)) = (
            header(headers, H_GROUP),
            number(H_PARTITION),
            number(H_OFFSET),
        ) else {
            return;
        };
        if !self
            .seen
            .insert((group.to_string(), partition as Partition, source_offset))
        {
            return;
        }
        let id = letter_id(dlq_partition, offset);
        self.by_tenant
            .entry(tenant.to_string())
            .or_default()
            .insert(
                id,
                StoredDeadLetter {
                    id,
                    created_at_ms: number(H_CREATED).unwrap_or_default(),
                    letter: DeadLetter {
                        tenant_id: Some(tenant.to_string()),
                        group: group.to_string(),
                        partition: partition as Partition,
                        offset: source_offset,
                        code: header(headers, H_REASON).unwrap_or_default().to_string(),
                        message: header(headers, H_MESSAGE).unwrap_or_default().to_string(),
                        payload,
                    },
                    replayed: None,
                },
            );
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
        tenant_id: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>> {
        let tenant = tenant_id.to_string();
        self.with_index(move |index| {
            index
                .by_tenant
                .get(&tenant)
                .map(|letters| {
                    letters
                        .range(after_id.saturating_add(1)..)
                        .take(limit)
                        .map(|(_, l)| l.clone())
                        .collect()
                })
                .unwrap_or_default()
        })
        .await
    }

    async fn get(&self, tenant_id: &str, id: i64) -> Result<Option<StoredDeadLetter>> {
        let tenant = tenant_id.to_string();
        self.with_index(move |index| {
            index
                .by_tenant
                .get(&tenant)
                .and_then(|letters| letters.get(&id).cloned())
        })
        .await
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
