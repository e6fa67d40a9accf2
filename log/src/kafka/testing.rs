//! Kafka for tests: librdkafka's in-process mock cluster (real wire
//! protocol, 3 brokers, failure injection), or the broker named by
//! `SPENDSTREAM_TEST_KAFKA=host:port` when it is set. Each instance uses its
//! own topic prefix, so tests can share one external broker.

use super::{KafkaConfig, KafkaLog};
use crate::Result;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable naming an external broker for the test suite.
pub const EXTERNAL_ENV: &str = "SPENDSTREAM_TEST_KAFKA";

/// Brokers in the mock cluster.
pub const MOCK_BROKERS: i32 = 3;

/// A Kafka cluster for one test; the mock one stops when this is dropped.
pub struct TestKafka {
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    brokers: String,
    prefix: String,
    partitions: u32,
    state_dir: PathBuf,
}

impl std::fmt::Debug for TestKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKafka")
            .field("brokers", &self.brokers)
            .field("prefix", &self.prefix)
            .field("mock", &self.mock.is_some())
            .finish()
    }
}

impl TestKafka {
    /// Starts a mock cluster (or uses the external broker) with topics of
    /// `partitions` partitions.
    pub fn start(partitions: u32) -> Result<Self> {
        match std::env::var(EXTERNAL_ENV) {
            Ok(brokers) if !brokers.is_empty() => Self::build(partitions, Some(brokers)),
            _ => Self::build(partitions, None),
        }
    }

    /// Always the mock cluster, whatever the environment says: for tests
    /// that inject failures.
    pub fn start_mock(partitions: u32) -> Result<Self> {
        Self::build(partitions, None)
    }

    fn build(partitions: u32, external: Option<String>) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "t{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            spendstream_state::sqlite::now_ms()
        );
        let prefix = format!("{unique}.");
        let state_dir = std::env::temp_dir().join(format!("spendstream-kafka-{unique}"));
        let (mock, brokers) = match external {
            Some(brokers) => (None, brokers),
            None => {
                let mock = MockCluster::new(MOCK_BROKERS)?;
                // The mock cluster does not implement CreateTopics: make the
                // topics the way an operator would have.
                let config = KafkaConfig {
                    prefix: prefix.clone(),
                    ..KafkaConfig::new(mock.bootstrap_servers())
                };
                for topic in [config.raw_topic(), config.dlq_topic()] {
                    mock.create_topic(&topic, partitions as i32, MOCK_BROKERS)?;
                }
                let brokers = mock.bootstrap_servers();
                (Some(mock), brokers)
            }
        };
        Ok(Self {
            mock,
            brokers,
            prefix,
            partitions,
            state_dir,
        })
    }

    /// The mock cluster, for failure injection; `None` on an external broker.
    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self.mock.as_ref()
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The log's configuration: this cluster, this test's prefix.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig {
            prefix: self.prefix.clone(),
            partitions: Some(self.partitions),
            state_dir: self.state_dir.clone(),
            // Tests want failures fast, not after librdkafka's defaults.
            client_options: vec![("message.timeout.ms".into(), "10000".into())],
            ..KafkaConfig::new(self.brokers.clone())
        }
    }

    /// The `kafka://` URL of [`TestKafka::config`].
    pub fn url(&self) -> String {
        format!(
            "kafka://{}?prefix={}&partitions={}&state={}&rdkafka.message.timeout.ms=10000",
            self.brokers,
            self.prefix,
            self.partitions,
            self.state_dir.display()
        )
    }

    pub async fn open(&self) -> Result<KafkaLog> {
        KafkaLog::open(self.config()).await
    }
}

impl Drop for TestKafka {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
