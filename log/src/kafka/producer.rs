//! The idempotent producer behind ingest's appends.

use super::KafkaConfig;
use crate::{Error, Headers, LogProducer, Position, Record, Result, partition_for};
use async_trait::async_trait;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::Duration;

/// Producer settings; any of them can be overridden by pass-through options.
/// `enable.idempotence` makes librdkafka's retries safe (no duplicates, no
/// reordering within a partition); `acks=all` makes an acknowledgement mean
/// every in-sync replica has the record. The queue bounds are what turns an
/// overloaded or unreachable cluster into 503s at the edge.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("batch.size", "1000000"),
    ("queue.buffering.max.messages", "500000"),
    ("queue.buffering.max.kbytes", "524288"),
    // Below ingest's 30 s append timeout, so a failed delivery is reported
    // with its reason rather than as a timeout (configuration checks that
    // an override keeps it below).
    ("message.timeout.ms", "20000"),
];

/// Appends to the raw topic; one Kafka record per log record, sent to the
/// partition [`partition_for`] picks.
pub struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
    partitions: u32,
}

impl KafkaProducer {
    pub fn new(config: &KafkaConfig, partitions: u32) -> Result<Self> {
        let mut ours = PRODUCER_DEFAULTS.to_vec();
        ours.push(("compression.type", config.compression.as_str()));
        Ok(Self {
            producer: config.client(&ours).create()?,
            topic: config.raw_topic(),
            partitions,
        })
    }

    /// Sends `records` to `topic`, each to the partition its key hashes to
    /// among `partitions`, and waits for every delivery report.
    pub(crate) async fn send(
        &self,
        topic: &str,
        partitions: u32,
        records: &[Record],
    ) -> Result<Vec<Position>> {
        let mut pending = Vec::with_capacity(records.len());
        let mut headers: Option<(&Headers, Option<OwnedHeaders>)> = None;
        for record in records {
            if !matches!(&headers, Some((h, _)) if Arc::ptr_eq(h, &record.headers)) {
                let owned = (!record.headers.is_empty()).then(|| kafka_headers(&record.headers));
                headers = Some((&record.headers, owned));
            }
            let partition = partition_for(&record.key, partitions) as i32;
            let mut out = FutureRecord::to(topic)
                .partition(partition)
                .key(record.key.as_slice())
                .payload(record.value.as_slice());
            if let Some((_, Some(h))) = &headers {
                out = out.headers(h.clone());
            }
            match self.producer.send_result(out) {
                Ok(delivery) => pending.push(delivery),
                // What was queued before still goes out; the caller claims
                // none of it and the client's retry makes new versions of
                // the same identities, never duplicates in reports.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    metrics::counter!(crate::metrics::KAFKA_QUEUE_FULL_TOTAL.name).increment(1);
                    return Err(Error::QueueFull);
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
        let total = pending.len();
        let mut positions = Vec::with_capacity(total);
        let mut failed = 0;
        let mut first = None;
        for result in futures::future::join_all(pending).await {
            match result {
                Ok(Ok(d)) => positions.push(Position {
                    partition: d.partition as u32,
                    offset: d.offset,
                }),
                Ok(Err((error, _))) => {
                    failed += 1;
                    first.get_or_insert(error);
                }
                Err(_canceled) => {
                    failed += 1;
                    first.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        match first {
            None => Ok(positions),
            Some(first) => Err(Error::NotAcknowledged {
                failed,
                total,
                first,
            }),
        }
    }

    /// The high watermark of every partition of the raw topic.
    pub async fn end_offsets(&self, timeout: Duration) -> Result<Vec<crate::Offset>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let partitions = self.partitions;
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    let (_low, high) = producer
                        .client()
                        .fetch_watermarks(&topic, p as i32, timeout)?;
                    Ok(high)
                })
                .collect()
        })
        .await?
    }

    /// Whether the cluster answers a metadata request for the raw topic.
    pub async fn ping(&self, timeout: Duration) -> Result<()> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)?;
            Ok(())
        })
        .await?
    }
}

fn kafka_headers(headers: &[(String, String)]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers {
        out = out.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    out
}

#[async_trait]
impl LogProducer for KafkaProducer {
    async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.send(&self.topic, self.partitions, &records).await
    }
}
