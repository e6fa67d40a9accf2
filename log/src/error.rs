//! Errors of the log backends, each knowing whether a retry can help.

/// What can go wrong talking to a log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL (credentials already masked) names no known backend.
    #[error(
        "unsupported log URL `{0}`: expected embedded://<dir> or kafka://host:port[,host:port]"
    )]
    UnsupportedUrl(String),
    /// The URL (credentials already masked) is malformed.
    #[error("invalid log URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the embedded log at {path} has {existing} partitions but {requested} were requested")]
    PartitionMismatch {
        path: String,
        existing: u32,
        requested: u32,
    },
    #[error(
        "another process is consuming group `{group}` of the embedded log ({path} is locked); \
         run one processor per embedded log, or use Kafka to run several"
    )]
    ConsumerLocked { group: String, path: String },
    #[error("embedded log storage failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("log I/O failed")]
    Io(#[from] std::io::Error),
    #[error("a log worker task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("partition {0} does not exist")]
    UnknownPartition(u32),
    /// A stored segment of the embedded log cannot be read (the file was
    /// damaged or written by something else).
    #[error("an embedded log segment is damaged: {0}")]
    CorruptSegment(String),
    /// An append prepared by one log was given to another (a bug).
    #[error("an append prepared for another log")]
    ForeignAppend,
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
    #[error(
        "librdkafka option `{name}={value}` is refused: {reason} (pass it with --unsafe-kafka-option to override)"
    )]
    UnsafeKafkaOption {
        name: String,
        value: String,
        reason: &'static str,
    },
    #[error("librdkafka option `{name}` {reason}")]
    InvalidOption { name: String, reason: &'static str },
    #[error("Kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the Kafka producer queue is full; retry later")]
    QueueFull,
    #[error("Kafka did not acknowledge {failed} of {total} records")]
    NotAcknowledged {
        failed: usize,
        total: usize,
        #[source]
        first: rdkafka::error::KafkaError,
    },
    #[error(
        "this member no longer owns the partitions it tried to commit (a rebalance moved them)"
    )]
    Rebalanced,
    #[error("Kafka did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl Error {
    /// A short fixed word for the `error_type` label of
    /// `spendstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::UnsupportedUrl(_) | Error::InvalidUrl { .. } => "configuration",
            Error::PartitionMismatch { .. } | Error::TopicMismatch { .. } => "partition_mismatch",
            Error::ConsumerLocked { .. } => "consumer_locked",
            Error::Sqlite(_) => "sqlite",
            Error::Io(_) => "io",
            Error::Join(_) => "task_failed",
            Error::UnknownPartition(_) => "unknown_partition",
            Error::CorruptSegment(_) => "corrupt",
            Error::ForeignAppend => "foreign_append",
            Error::TopicCreation { .. } => "topic_creation",
            Error::UnsafeKafkaOption { .. } | Error::InvalidOption { .. } => "configuration",
            Error::Kafka(_) => "kafka",
            Error::QueueFull => "queue_full",
            Error::NotAcknowledged { .. } => "not_acknowledged",
            Error::Rebalanced => "rebalanced",
            Error::Timeout(_) => "timeout",
        }
    }

    /// An `InvalidUrl` that never carries the URL's secrets.
    pub(crate) fn invalid_url(url: &str, reason: impl Into<String>) -> Self {
        Self::InvalidUrl {
            url: crate::redact_url(url),
            reason: reason.into(),
        }
    }

    /// Whether the same operation may succeed later (a busy database, an
    /// unreachable or overloaded broker), as opposed to a mistake in the
    /// configuration or the data that no retry fixes. Callers answer the
    /// first kind with 503 and `Retry-After`, the second with a loud error.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Sqlite(e) => spendstream_state::sqlite::is_transient(e),
            Error::Io(_) => true,
            Error::Kafka(e) => kafka_transient(e),
            Error::NotAcknowledged { first, .. } => kafka_transient(first),
            Error::QueueFull | Error::Rebalanced | Error::Timeout(_) => true,
            Error::UnsupportedUrl(_)
            | Error::InvalidUrl { .. }
            | Error::PartitionMismatch { .. }
            | Error::ConsumerLocked { .. }
            | Error::Join(_)
            | Error::UnknownPartition(_)
            | Error::CorruptSegment(_)
            | Error::ForeignAppend
            | Error::TopicMismatch { .. }
            | Error::TopicCreation { .. }
            | Error::UnsafeKafkaOption { .. }
            | Error::InvalidOption { .. } => false,
        }
    }
}

fn kafka_transient(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::KafkaError as K;
    use rdkafka::types::RDKafkaErrorCode as C;
    match error {
        K::ClientConfig(..) | K::ClientCreation(_) | K::Subscription(_) => false,
        K::MessageProduction(code) => !matches!(
            code,
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::UnknownTopic
                | C::UnknownPartition
                | C::InvalidRecord
        ),
        _ => true,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_permanent_errors() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(Error::Sqlite(busy).is_transient());
        let corrupt = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        );
        assert!(!Error::Sqlite(corrupt).is_transient());
        assert!(Error::QueueFull.is_transient());
        assert!(
            !Error::PartitionMismatch {
                path: "p".into(),
                existing: 8,
                requested: 4
            }
            .is_transient()
        );
        assert!(
            Error::Kafka(rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::RequestTimedOut
            ))
            .is_transient()
        );
        assert!(
            !Error::Kafka(rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
            ))
            .is_transient()
        );
    }
}
