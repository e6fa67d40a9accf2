//! Errors of the log backends.

/// What can go wrong talking to a log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported log URL `{0}`: expected embedded://<dir> (or kafka://host:port once enabled)"
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
