//! Errors of the log backends.

/// What can go wrong talking to a log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported log URL `{0}`: expected embedded://<dir> or kafka://host:port[,host:port]"
    )]
    UnsupportedUrl(String),
    #[error("invalid log URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the embedded log at {path} has {existing} partitions but {requested} were requested")]
    PartitionMismatch {
        path: String,
        existing: u32,
        requested: u32,
    },
    #[error("embedded log storage failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("log I/O failed")]
    Io(#[from] std::io::Error),
    #[error("a log worker task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("partition {0} does not exist")]
    UnknownPartition(u32),
    #[error(
        "Kafka topic `{topic}` has {existing} but {requested} were configured; change the configuration or the topic"
    )]
    TopicMismatch {
        topic: String,
        existing: String,
        requested: String,
    },
    #[error("creating Kafka topic `{topic}` failed: {reason}")]
    TopicCreation { topic: String, reason: String },
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the Kafka producer queue is full; retry later")]
    QueueFull,
    #[error("Kafka did not acknowledge {failed} of {total} records: {first}")]
    NotAcknowledged {
        failed: usize,
        total: usize,
        first: rdkafka::error::KafkaError,
    },
    #[error(
        "this member no longer owns the partitions it tried to commit (a rebalance moved them)"
    )]
    Rebalanced,
    #[error("Kafka did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
