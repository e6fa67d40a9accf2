//! Ingest settings.

use serde::Deserialize;
use std::time::Duration;

/// Limits and batching of the HTTP edge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body on the wire, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression, in bytes (413 past it), so a
    /// small compressed body cannot expand without bound.
    pub max_decompressed_bytes: usize,
    /// Records per chunk handed from the decoder to the log.
    pub chunk_records: usize,
    /// Most records in one group commit (one log append shared by
    /// concurrent requests).
    pub group_commit_max_records: usize,
    /// Ingest requests handled at once; past it the edge answers 503 with
    /// `Retry-After` at once instead of queueing without bound.
    pub max_concurrent_requests: usize,
    /// Longest wait for the log to confirm an append before answering 503.
    #[serde(with = "secs")]
    pub append_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 << 20,
            max_decompressed_bytes: 1 << 30,
            chunk_records: 2_000,
            group_commit_max_records: 20_000,
            max_concurrent_requests: 256,
            append_timeout: Duration::from_secs(30),
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}
