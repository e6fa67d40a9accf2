//! Errors of the processors, each knowing whether a retry can help.

use spendstream_log::{Offset, Partition};

/// What can stop a processor step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log operation failed")]
    Log(#[from] spendstream_log::Error),
    #[error("lake operation failed")]
    Lake(#[from] spendstream_lake::Error),
    #[error("could not build the Arrow batch")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(
        "the {sink} holds offsets up to {version} of partition {partition} of log {log_id} for group \
         `{group}`, but that partition of the log ends at offset {end}: the log was restored from \
         an older copy or recreated under the same identity, and its new records would be skipped \
         as replays; see docs/runbooks/incidents.md (\"Log behind the lake\")"
    )]
    LogBehindLake {
        sink: &'static str,
        group: String,
        log_id: String,
        partition: Partition,
        version: Offset,
        end: Offset,
    },
    #[error(
        "group `{group}` has committed offset {committed} of partition {partition}, but the log \
         ends at offset {end}: the topic was recreated (or the log replaced) while the group's \
         offsets were kept; see docs/runbooks/incidents.md (\"Log behind the lake\")"
    )]
    LogBehindGroup {
        group: String,
        partition: Partition,
        committed: Offset,
        end: Offset,
    },
}

impl Error {
    /// Whether retrying the same step may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Log(e) => e.is_transient(),
            Error::Lake(e) => e.is_transient(),
            Error::Arrow(_) | Error::LogBehindLake { .. } | Error::LogBehindGroup { .. } => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
