//! One member of a consumer group on the raw topic.
//!
//! Auto-commit is off: the processor commits after its sinks hold a batch.
//! librdkafka runs rebalance callbacks inside our `recv` calls, so a
//! partition can only be taken away while we poll, never while a batch is
//! being written. Records of a revoked partition polled before the
//! revocation are dropped here and reported through
//! [`LogConsumer::take_revoked`], so the caller drops what it still holds:
//! the new owner reads them again from the last commit, and the lake's
//! per-partition transaction versions skip whatever was written already.

use super::KafkaConfig;
use crate::{Consumed, Error, LogConsumer, Offset, Partition, Result};
use async_trait::async_trait;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset as KafkaOffset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Consumer settings; pass-through options override them.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    // Incremental rebalances: a member joining or leaving moves only the
    // partitions that change owner; the others keep flowing.
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("enable.partition.eof", "false"),
    // Batches are written before the next poll; a lake that is slow for
    // minutes must not get the member thrown out of the group.
    ("max.poll.interval.ms", "600000"),
    // A member that vanishes without leaving (killed, partitioned) gives its
    // partitions up after this long.
    ("session.timeout.ms", "10000"),
];

/// Records rebalance callbacks for the consumer that owns it.
struct GroupContext {
    topic: String,
    group: String,
    revoked: Mutex<BTreeSet<Partition>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<Partition> = list
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition() as Partition)
                .collect();
            info!(group = %self.group, ?partitions, "Partitions revoked.");
            metrics::counter!(crate::metrics::KAFKA_REBALANCES_TOTAL.name, "kind" => "revoke")
                .increment(1);
            self.revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(partitions);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = list
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                info!(group = %self.group, ?partitions, "Partitions assigned.");
                metrics::counter!(crate::metrics::KAFKA_REBALANCES_TOTAL.name, "kind" => "assign")
                    .increment(1);
            }
            Rebalance::Error(error) => warn!(group = %self.group, %error, "Rebalance failed."),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A group member reading the raw topic.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    topic: String,
    group: String,
    partitions: u32,
    /// Partitions revoked since the caller last asked.
    revoked: BTreeSet<Partition>,
    timeout: Duration,
}

impl KafkaConsumer {
    pub fn new(config: &KafkaConfig, group: &str, partitions: u32) -> Result<Self> {
        let group_id = config.group_id(group);
        let mut ours = CONSUMER_DEFAULTS.to_vec();
        ours.push(("group.id", &group_id));
        let context = GroupContext {
            topic: config.raw_topic(),
            // Logged as Kafka knows it, for `kafka-consumer-groups.sh`.
            group: group_id.clone(),
            revoked: Mutex::default(),
        };
        let consumer: StreamConsumer<GroupContext> =
            config.client(&ours).create_with_context(context)?;
        consumer.subscribe(&[&config.raw_topic()])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: config.raw_topic(),
            group: group.to_string(),
            partitions,
            revoked: BTreeSet::new(),
            timeout: config.operation_timeout,
        })
    }

    /// Takes the revocations the context saw; drops `held` records of them.
    fn absorb_revocations(&mut self, held: &mut Vec<Consumed>) {
        let mut seen = self
            .consumer
            .context()
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen.is_empty() {
            return;
        }
        held.retain(|c| !seen.contains(&c.partition));
        self.revoked.append(&mut seen);
    }
}

fn consumed(m: &BorrowedMessage<'_>) -> Consumed {
    let headers = super::message_headers(m).into();
    Consumed {
        partition: m.partition() as Partition,
        offset: m.offset(),
        key: bytes::Bytes::copy_from_slice(m.key().unwrap_or_default()),
        value: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        headers,
        timestamp_ms: m.timestamp().to_millis().unwrap_or_default(),
    }
}

/// Commit errors that mean "you are no longer the owner".
fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::State
        )
    )
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    fn group(&self) -> &str {
        &self.group
    }

    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Consumed>> {
        let deadline = Instant::now() + max_wait;
        let max = max.max(1);
        let mut out = Vec::new();
        while out.len() < max {
            // Wait for the first record; after that take only what is ready.
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let next = tokio::time::timeout(wait, self.consumer.recv()).await;
            // A rebalance may have run inside that `recv`: what was taken
            // before it may belong to partitions that are gone now.
            let message = match next {
                Err(_elapsed) => None,
                Ok(Ok(m)) => Some(consumed(&m)),
                Ok(Err(error)) if out.is_empty() => {
                    self.absorb_revocations(&mut out);
                    return Err(error.into());
                }
                Ok(Err(error)) => {
                    warn!(%error, "Kafka consumer error; returning what was read.");
                    None
                }
            };
            self.absorb_revocations(&mut out);
            match message {
                Some(m) => out.push(m),
                None => break,
            }
        }
        Ok(out)
    }

    async fn committed(&mut self) -> Result<Vec<Offset>> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let partitions = self.partitions;
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let mut ask = TopicPartitionList::new();
            for p in 0..partitions {
                ask.add_partition(&topic, p as i32);
            }
            let current = consumer.committed_offsets(ask, timeout)?;
            Ok((0..partitions)
                .map(
                    |p| match current.find_partition(&topic, p as i32).map(|e| e.offset()) {
                        Some(KafkaOffset::Offset(o)) => o,
                        _ => 0,
                    },
                )
                .collect())
        })
        .await?
    }

    async fn commit(&mut self, offsets: &[(Partition, Offset)]) -> Result<()> {
        if let Some((p, _)) = offsets.iter().find(|(p, _)| *p >= self.partitions) {
            return Err(Error::UnknownPartition(*p));
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let offsets = offsets.to_vec();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let mut ask = TopicPartitionList::new();
            for (p, _) in &offsets {
                ask.add_partition(&topic, *p as i32);
            }
            // Never move the group backwards: a member that lost a partition
            // and got it back must not undo its successor's progress.
            let current = consumer.committed_offsets(ask, timeout)?;
            let mut list = TopicPartitionList::new();
            for (p, next) in &offsets {
                let known =
                    current
                        .find_partition(&topic, *p as i32)
                        .and_then(|e| match e.offset() {
                            KafkaOffset::Offset(o) => Some(o),
                            _ => None,
                        });
                if known.is_none_or(|k| *next > k) {
                    list.add_partition_offset(&topic, *p as i32, KafkaOffset::Offset(*next))?;
                }
            }
            if list.count() == 0 {
                return Ok(());
            }
            consumer.commit(&list, CommitMode::Sync).map_err(|e| {
                if is_fenced(&e) {
                    Error::Rebalanced
                } else {
                    e.into()
                }
            })
        })
        .await?
    }

    fn take_revoked(&mut self) -> Vec<Partition> {
        let mut none = Vec::new();
        self.absorb_revocations(&mut none);
        std::mem::take(&mut self.revoked).into_iter().collect()
    }
}
