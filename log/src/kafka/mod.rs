//! The Kafka backend, through rdkafka (librdkafka).
//!
//! `kafka://host1:9092,host2:9092[?param=value&...]` with these parameters:
//!
//! | parameter | default | meaning |
//! | --- | --- | --- |
//! | `prefix` | empty | prepended to everything Spendstream names on the cluster: the topics `expenses.raw` and `expenses.dlq` and the consumer group ids |
//! | `partitions` | existing, or 8 for new topics | partitions of both topics; a different existing count is an error |
//! | `replication` | existing, or min(3, brokers) | replication factor of new topics; checked against existing ones |
//! | `compression` | `zstd` | producer `compression.type` |
//! | `state` | `./data/state` | directory of the node-local dead-letter index (idempotency keys are in `--state`) |
//! | `dlq_retention_ms` | `-1` (forever) | `retention.ms` of a new dead-letter topic |
//! | `rdkafka.<name>` | | any librdkafka property, passed to every client |
//!
//! Records are keyed by expense identity and sent to `partition_for(key)`,
//! the same hash as the embedded log, so every version of one expense lands
//! in one partition in order and the offset is a valid version.
//!
//! Pass-through options may not weaken delivery: turning off idempotence,
//! `acks=all` or manual offset commits is refused unless given as an
//! explicitly unsafe option (see [`KafkaConfig::validate`]).

mod consumer;
mod dead_letters;
mod producer;
#[cfg(feature = "testing")]
pub mod testing;

pub use consumer::KafkaConsumer;
pub use dead_letters::KafkaDeadLetters;
pub use producer::{KafkaProducer, PRODUCER_DEFAULTS};

use crate::{DeadLetterStore, Error, Log, LogConsumer, LogProducer, Offset, Result};
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

/// Partitions of new topics when none are configured.
pub const DEFAULT_PARTITIONS: u32 = 8;
/// The raw topic's name after the prefix.
pub const RAW_TOPIC: &str = "expenses.raw";
/// The dead-letter topic's name after the prefix.
pub const DLQ_TOPIC: &str = "expenses.dlq";

/// How to reach Kafka and what to create there.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Namespaces one deployment on a shared cluster: prepended to topic
    /// names and consumer group ids, so two deployments neither read each
    /// other's topics nor rebalance each other's groups.
    pub prefix: String,
    pub partitions: Option<u32>,
    pub replication: Option<i32>,
    /// Producer `compression.type`.
    pub compression: String,
    /// librdkafka properties for every client; they override ours, but
    /// [`KafkaConfig::validate`] refuses the ones that weaken delivery.
    pub client_options: Vec<(String, String)>,
    /// librdkafka properties applied last and never checked: the operator
    /// asked for them knowing they may break the delivery contract.
    pub unsafe_options: Vec<(String, String)>,
    /// Where the dead-letter index is kept (a SQLite file in this
    /// directory).
    pub state_dir: PathBuf,
    /// `retention.ms` of the dead-letter topic when Spendstream creates it;
    /// -1 keeps letters until they are dealt with.
    pub dlq_retention_ms: i64,
    /// Bound on metadata and admin calls.
    pub operation_timeout: Duration,
}

/// Pass-through options that would break the delivery contract, the values
/// that keep it, and why.
const GUARDED_OPTIONS: &[(&str, &[&str], &str)] = &[
    (
        "enable.idempotence",
        &["true"],
        "without the idempotent producer a retried send can duplicate or reorder records",
    ),
    (
        "acks",
        &["all", "-1"],
        "a 202 must mean every in-sync replica has the records",
    ),
    (
        "request.required.acks",
        &["all", "-1"],
        "a 202 must mean every in-sync replica has the records",
    ),
    (
        "enable.auto.commit",
        &["false"],
        "offsets are committed only after the sinks hold the batch",
    ),
    (
        "enable.auto.offset.store",
        &["false"],
        "offsets are stored only after the sinks hold the batch",
    ),
    (
        "auto.offset.reset",
        &["earliest", "smallest", "beginning"],
        "a group without a committed offset would skip every record already in the topic",
    ),
    (
        "enable.partition.eof",
        &["false"],
        "end-of-partition events would stall the processors",
    ),
    (
        "group.id",
        &[],
        "the group id comes from --group and the URL prefix",
    ),
    (
        "transactional.id",
        &[],
        "Spendstream's producer is idempotent, not transactional",
    ),
];

/// `message.timeout.ms` of the producer unless an option overrides it.
const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 20_000;

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            prefix: String::new(),
            partitions: None,
            replication: None,
            compression: "zstd".into(),
            client_options: Vec::new(),
            unsafe_options: Vec::new(),
            state_dir: PathBuf::from("./data/state"),
            dlq_retention_ms: -1,
            operation_timeout: Duration::from_secs(30),
        }
    }

    /// Refuses pass-through options that would weaken delivery (see
    /// [`GUARDED_OPTIONS`]); `unsafe_options` are not checked.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in &self.client_options {
            let name = name.trim();
            let Some((_, allowed, reason)) = GUARDED_OPTIONS.iter().find(|(n, ..)| *n == name)
            else {
                continue;
            };
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(value.trim())) {
                return Err(Error::UnsafeKafkaOption {
                    name: name.to_string(),
                    value: if crate::target::is_secret_name(name) {
                        "***".into()
                    } else {
                        value.clone()
                    },
                    reason,
                });
            }
        }
        if self.message_timeout().is_zero() {
            return Err(Error::InvalidOption {
                name: "message.timeout.ms".into(),
                reason: "must be a positive number of milliseconds",
            });
        }
        Ok(())
    }

    /// How long the producer tries to deliver a record before it reports a
    /// failure (`message.timeout.ms`, ours or overridden); zero when the
    /// override is not a number.
    pub fn message_timeout(&self) -> Duration {
        let set = self
            .client_options
            .iter()
            .chain(&self.unsafe_options)
            .rev()
            .find(|(name, _)| {
                name.trim() == "message.timeout.ms" || name.trim() == "delivery.timeout.ms"
            })
            .map(|(_, value)| value.trim().parse::<u64>().unwrap_or(0));
        Duration::from_millis(set.unwrap_or(DEFAULT_MESSAGE_TIMEOUT_MS))
    }

    /// Parses `kafka://brokers?params` (see the module documentation).
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::invalid_url(url, reason);
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| Error::UnsupportedUrl(crate::redact_url(url)))?;
        let (brokers, query) = rest.split_once('?').unwrap_or((rest, ""));
        let brokers = brokers.trim_end_matches('/');
        if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
            return Err(invalid("expected host:port[,host:port...]".into()));
        }
        let mut config = Self::new(brokers);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("parameter `{pair}` has no value")))?;
            match name {
                "prefix" => config.prefix = value.to_string(),
                "partitions" => {
                    config.partitions = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|n| (1..=10_000).contains(n))
                            .ok_or_else(|| invalid("partitions must be 1 to 10000".into()))?,
                    )
                }
                "replication" => {
                    config.replication = Some(
                        value
                            .parse::<i32>()
                            .ok()
                            .filter(|n| *n >= 1)
                            .ok_or_else(|| invalid("replication must be 1 or more".into()))?,
                    )
                }
                "compression" => config.compression = value.to_string(),
                "state" => config.state_dir = PathBuf::from(value),
                "dlq_retention_ms" => {
                    config.dlq_retention_ms = value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n == -1 || *n > 0)
                        .ok_or_else(|| {
                            invalid(
                                "dlq_retention_ms must be -1 (forever) or a positive number".into(),
                            )
                        })?
                }
                _ => match name.strip_prefix("rdkafka.") {
                    Some(option) if !option.is_empty() => config
                        .client_options
                        .push((option.to_string(), value.to_string())),
                    _ => return Err(invalid(format!("unknown parameter `{name}`"))),
                },
            }
        }
        Ok(config)
    }

    pub fn raw_topic(&self) -> String {
        format!("{}{RAW_TOPIC}", self.prefix)
    }

    pub fn dlq_topic(&self) -> String {
        format!("{}{DLQ_TOPIC}", self.prefix)
    }

    /// The Kafka `group.id` of the consumer group Spendstream calls `group`.
    /// (The lake's transaction ids keep the unprefixed name.)
    pub fn group_id(&self, group: &str) -> String {
        format!("{}{group}", self.prefix)
    }

    /// A client configuration with the brokers and the pass-through options
    /// applied over `ours`.
    pub(crate) fn client(&self, ours: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("client.id", "spendstream");
        for (k, v) in ours {
            config.set(*k, *v);
        }
        for (k, v) in self.client_options.iter().chain(&self.unsafe_options) {
            config.set(k.trim(), v.trim());
        }
        config
    }

    /// Topic-level settings of a topic Spendstream creates.
    fn topic_settings(&self, topic: &str, replication: i32) -> Vec<(&'static str, String)> {
        // Replication alone is not durability: acks=all must mean at least
        // two copies.
        let mut settings = vec![(
            "min.insync.replicas",
            if replication >= 3 { "2" } else { "1" }.to_string(),
        )];
        if topic == self.dlq_topic() {
            // Letters wait for an operator; the broker's default (7 days)
            // would delete them unread.
            settings.push(("retention.ms", self.dlq_retention_ms.to_string()));
        }
        settings
    }
}

/// The Kafka log: a shared idempotent producer, consumers by group, the
/// dead-letter topic and its node-local index.
#[derive(Clone)]
pub struct KafkaLog {
    config: Arc<KafkaConfig>,
    partitions: u32,
    log_id: String,
    producer: Arc<KafkaProducer>,
    dead_letters: Arc<KafkaDeadLetters>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.raw_topic())
            .field("partitions", &self.partitions)
            .field("log_id", &self.log_id)
            .finish()
    }
}

/// A Kafka message's headers as text pairs (ours are all text).
pub(crate) fn message_headers(m: &impl rdkafka::Message) -> Vec<(String, String)> {
    use rdkafka::message::Headers as _;
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the cluster says about one topic.
struct TopicShape {
    partitions: u32,
    replication: i32,
}

fn topic_shape(metadata: &Metadata, topic: &str) -> Option<TopicShape> {
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())?;
    Some(TopicShape {
        partitions: t.partitions().len() as u32,
        replication: t
            .partitions()
            .iter()
            .map(|p| p.replicas().len() as i32)
            .min()
            .unwrap_or(0),
    })
}

impl KafkaLog {
    /// Connects, creates the topics if they are missing (checking them if
    /// they exist), and starts the producer.
    pub async fn open(config: KafkaConfig) -> Result<Self> {
        config.validate()?;
        let config = Arc::new(config);
        let partitions = ensure_topics(&config).await?;
        let producer = Arc::new(KafkaProducer::new(&config, partitions)?);
        let dead_letters =
            Arc::new(KafkaDeadLetters::open(config.clone(), producer.clone(), partitions).await?);
        let log_id = dead_letters.log_id().await?;
        info!(
            brokers = %config.brokers,
            topic = %config.raw_topic(),
            partitions,
            log_id = %log_id,
            "Kafka log ready."
        );
        Ok(Self {
            config,
            partitions,
            log_id,
            producer,
            dead_letters,
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }
}

/// Reads cluster metadata (all topics, so that asking does not auto-create).
async fn metadata(config: &KafkaConfig) -> Result<Metadata> {
    let client: BaseConsumer = config
        .client(&[("allow.auto.create.topics", "false")])
        .create()?;
    let timeout = config.operation_timeout;
    Ok(tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout)).await??)
}

/// Makes sure both topics exist with the configured shape; returns the
/// partition count.
async fn ensure_topics(config: &KafkaConfig) -> Result<u32> {
    let topics = [config.raw_topic(), config.dlq_topic()];
    let meta = metadata(config).await?;
    let brokers = meta.brokers().len().max(1) as i32;
    let existing = topic_shape(&meta, &topics[0]).or_else(|| topic_shape(&meta, &topics[1]));
    let partitions = config
        .partitions
        .or(existing.as_ref().map(|t| t.partitions))
        .unwrap_or(DEFAULT_PARTITIONS);
    let replication = config.replication.unwrap_or(brokers.min(3));

    let missing: Vec<&String> = topics
        .iter()
        .filter(|t| topic_shape(&meta, t).is_none())
        .collect();
    if !missing.is_empty() {
        let admin: AdminClient<DefaultClientContext> = config.client(&[]).create()?;
        let partitions_i32 = partitions as i32;
        let settings: Vec<_> = missing
            .iter()
            .map(|t| config.topic_settings(t, replication))
            .collect();
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .zip(&settings)
            .map(|(topic, settings)| {
                settings.iter().fold(
                    NewTopic::new(topic, partitions_i32, TopicReplication::Fixed(replication)),
                    |topic, (name, value)| topic.set(name, value),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(config.operation_timeout));
        for result in admin.create_topics(&new, &options).await? {
            match result {
                Ok(topic) => info!(%topic, partitions, replication, "Created Kafka topic."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::TopicCreation {
                        topic,
                        reason: code.to_string(),
                    });
                }
            }
        }
        // Creation is asynchronous on the brokers: wait until both are seen.
        let deadline = Instant::now() + config.operation_timeout;
        loop {
            let meta = metadata(config).await?;
            if topics.iter().all(|t| topic_shape(&meta, t).is_some()) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(config.operation_timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let meta = metadata(config).await?;
    for topic in &topics {
        let shape = topic_shape(&meta, topic).ok_or(Error::Timeout(config.operation_timeout))?;
        if shape.partitions != partitions {
            return Err(Error::TopicMismatch {
                topic: topic.clone(),
                existing: format!("{} partitions", shape.partitions),
                requested: format!("{partitions} partitions"),
            });
        }
        if let Some(wanted) = config.replication
            && shape.replication != wanted
        {
            return Err(Error::TopicMismatch {
                topic: topic.clone(),
                existing: format!("replication factor {}", shape.replication),
                requested: format!("replication factor {wanted}"),
            });
        }
    }
    Ok(partitions)
}

#[async_trait]
impl Log for KafkaLog {
    fn producer(&self) -> Arc<dyn LogProducer> {
        self.producer.clone()
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>> {
        Ok(Box::new(KafkaConsumer::new(
            &self.config,
            group,
            self.partitions,
        )?))
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        self.dead_letters.clone()
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn log_id(&self) -> &str {
        &self.log_id
    }

    async fn end_offsets(&self) -> Result<Vec<Offset>> {
        self.producer
            .end_offsets(self.config.operation_timeout)
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.producer.ping(Duration::from_secs(5)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = KafkaConfig::from_url(
            "kafka://a:9092,b:9092?prefix=acme.&partitions=4&replication=2&compression=lz4&state=/tmp/s&rdkafka.linger.ms=20",
        )
        .unwrap();
        assert_eq!(c.brokers, "a:9092,b:9092");
        assert_eq!(c.raw_topic(), "acme.expenses.raw");
        assert_eq!(c.dlq_topic(), "acme.expenses.dlq");
        assert_eq!(c.group_id("processors"), "acme.processors");
        assert_eq!((c.partitions, c.replication), (Some(4), Some(2)));
        assert_eq!(c.compression, "lz4");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(
            c.client_options,
            vec![("linger.ms".to_string(), "20".to_string())]
        );
        for bad in [
            "kafka://",
            "kafka://host",
            "kafka://h:1?partitions=0",
            "kafka://h:1?acks=1",
            "kafka://h:1?prefix",
            "kafka://h:1?rdkafka.=x",
            "kafka://h:1?dlq_retention_ms=0",
        ] {
            assert!(KafkaConfig::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_that_weaken_delivery_are_refused_unless_marked_unsafe() {
        for (name, value) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "true"),
            ("auto.offset.reset", "latest"),
            ("group.id", "other"),
            ("enable.partition.eof", "true"),
        ] {
            let mut c = KafkaConfig::new("h:1");
            c.client_options.push((name.into(), value.into()));
            let error = c.validate().unwrap_err().to_string();
            assert!(error.contains(name), "{error}");
            let mut c = KafkaConfig::new("h:1");
            c.unsafe_options.push((name.into(), value.into()));
            c.validate().unwrap();
        }
        let url = "kafka://h:1?rdkafka.acks=1";
        assert!(crate::LogTarget::parse(url, &[], &[]).is_err());
        for (name, value) in [("acks", "all"), ("acks", "-1"), ("linger.ms", "50")] {
            let mut c = KafkaConfig::new("h:1");
            c.client_options.push((name.into(), value.into()));
            c.validate().unwrap();
        }
    }

    #[test]
    fn message_timeout_follows_the_last_override() {
        let mut c = KafkaConfig::new("h:1");
        assert_eq!(c.message_timeout(), Duration::from_secs(20));
        c.client_options
            .push(("message.timeout.ms".into(), "45000".into()));
        assert_eq!(c.message_timeout(), Duration::from_secs(45));
        c.client_options
            .push(("message.timeout.ms".into(), "soon".into()));
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_dead_letter_topic_keeps_letters_forever_by_default() {
        let c = KafkaConfig::from_url("kafka://h:1?prefix=p.").unwrap();
        let dlq = c.topic_settings(&c.dlq_topic(), 3);
        assert!(dlq.contains(&("retention.ms", "-1".to_string())), "{dlq:?}");
        assert!(dlq.contains(&("min.insync.replicas", "2".to_string())));
        let raw = c.topic_settings(&c.raw_topic(), 1);
        assert!(!raw.iter().any(|(k, _)| *k == "retention.ms"));
        let c = KafkaConfig::from_url("kafka://h:1?dlq_retention_ms=86400000").unwrap();
        assert!(
            c.topic_settings(&c.dlq_topic(), 1)
                .contains(&("retention.ms", "86400000".to_string()))
        );
    }
}
