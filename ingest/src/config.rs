//! Ingest settings, and their check before anything starts.

use serde::Deserialize;
use std::time::Duration;

/// A claim on an idempotency key whose request has not finished after this
/// long is taken over (its process died). Every request ends before it:
/// the body timeout and three append timeouts must add up to less (a
/// chunk waits at most for its group's preparation, the write before its
/// own, and its own write).
pub const IDEMPOTENCY_STALE_AFTER: Duration = Duration::from_secs(900);

/// Limits and batching of the HTTP edge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body on the wire, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression, in bytes (413 past it), so a
    /// small compressed body cannot expand without bound.
    pub max_decompressed_bytes: usize,
    /// Largest single record (an NDJSON line, a JSON array element or a
    /// single-object body, a CSV row), in bytes; a larger one is rejected
    /// with `record_too_large` and decoding goes on.
    pub max_record_bytes: usize,
    /// Rejected records listed by index in one response; the rest are only
    /// counted (`rejected_total`, `rejected_by_code`), so a body of a
    /// million bad lines gets an answer of bounded size.
    pub max_rejected_listed: usize,
    /// Records per chunk handed from the decoder to the log.
    pub chunk_records: usize,
    /// Most records in one group commit (one log append shared by
    /// concurrent requests).
    pub group_commit_max_records: usize,
    /// Ingest requests handled at once; past it the edge answers 503 with
    /// `Retry-After` at once instead of queueing without bound.
    pub max_concurrent_requests: usize,
    /// Ingest requests one tenant may have in flight; past it that tenant
    /// gets 429 with `Retry-After`, so it cannot take every slot.
    pub max_concurrent_requests_per_tenant: usize,
    /// Longest wait for the next piece of a request body (408 past it).
    #[serde(with = "secs")]
    pub body_idle_timeout: Duration,
    /// Longest time to receive a whole request body (408 past it).
    #[serde(with = "secs")]
    pub body_timeout: Duration,
    /// Least average rate of a request body in bytes per second, checked
    /// once `body_idle_timeout` has passed (408 below it; 0: not checked),
    /// so a client trickling a byte now and then does not hold a slot for
    /// the whole `body_timeout`.
    pub body_min_bytes_per_sec: u64,
    /// Longest wait for the log to confirm an append before answering 503.
    #[serde(with = "secs")]
    pub append_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 << 20,
            max_decompressed_bytes: 1 << 30,
            max_record_bytes: 1 << 20,
            max_rejected_listed: 1_000,
            chunk_records: 2_000,
            group_commit_max_records: 20_000,
            max_concurrent_requests: 256,
            max_concurrent_requests_per_tenant: 32,
            body_idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(600),
            body_min_bytes_per_sec: 1024,
            append_timeout: Duration::from_secs(30),
        }
    }
}

impl IngestConfig {
    /// Checks the settings without touching anything; the error names the
    /// setting (by its command-line flag) and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, value) in [
            ("--max-body-bytes", self.max_body_bytes),
            ("--max-decompressed-bytes", self.max_decompressed_bytes),
            ("--max-record-bytes", self.max_record_bytes),
            ("--max-rejected-listed", self.max_rejected_listed),
            ("--max-concurrent-requests", self.max_concurrent_requests),
            (
                "--max-concurrent-requests-per-tenant",
                self.max_concurrent_requests_per_tenant,
            ),
            ("chunk_records", self.chunk_records),
            ("group_commit_max_records", self.group_commit_max_records),
        ] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.max_record_bytes > self.max_decompressed_bytes {
            return Err(format!(
                "--max-record-bytes ({}) must not be larger than --max-decompressed-bytes ({})",
                self.max_record_bytes, self.max_decompressed_bytes
            ));
        }
        if self.max_concurrent_requests_per_tenant > self.max_concurrent_requests {
            return Err(format!(
                "--max-concurrent-requests-per-tenant ({}) must not be larger than --max-concurrent-requests ({})",
                self.max_concurrent_requests_per_tenant, self.max_concurrent_requests
            ));
        }
        for (flag, value) in [
            ("--body-idle-timeout-secs", self.body_idle_timeout),
            ("--body-timeout-secs", self.body_timeout),
            ("--append-timeout-secs", self.append_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.body_timeout + 3 * self.append_timeout >= IDEMPOTENCY_STALE_AFTER {
            return Err(format!(
                "--body-timeout-secs ({}) plus three --append-timeout-secs ({}: a chunk may wait \
                 for its append's preparation, the write before it and its own write) must stay \
                 under {} s, the age at which an unfinished Idempotency-Key claim is taken over",
                self.body_timeout.as_secs(),
                self.append_timeout.as_secs(),
                IDEMPOTENCY_STALE_AFTER.as_secs()
            ));
        }
        if self.body_idle_timeout > self.body_timeout {
            return Err(format!(
                "--body-idle-timeout-secs ({}) must not be longer than --body-timeout-secs ({})",
                self.body_idle_timeout.as_secs(),
                self.body_timeout.as_secs()
            ));
        }
        Ok(())
    }
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bad_setting_is_named() {
        IngestConfig::default().validate().unwrap();
        let cases: Vec<(IngestConfig, &str)> = vec![
            (
                IngestConfig {
                    max_body_bytes: 0,
                    ..Default::default()
                },
                "--max-body-bytes",
            ),
            (
                IngestConfig {
                    max_rejected_listed: 0,
                    ..Default::default()
                },
                "--max-rejected-listed",
            ),
            (
                IngestConfig {
                    max_record_bytes: 2 << 30,
                    ..Default::default()
                },
                "--max-record-bytes",
            ),
            (
                IngestConfig {
                    max_concurrent_requests_per_tenant: 300,
                    ..Default::default()
                },
                "--max-concurrent-requests-per-tenant",
            ),
            (
                IngestConfig {
                    body_idle_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "--body-idle-timeout-secs",
            ),
            (
                IngestConfig {
                    body_idle_timeout: Duration::from_secs(700),
                    ..Default::default()
                },
                "--body-idle-timeout-secs",
            ),
            (
                IngestConfig {
                    append_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "--append-timeout-secs",
            ),
            (
                IngestConfig {
                    body_timeout: Duration::from_secs(880),
                    ..Default::default()
                },
                "--body-timeout-secs",
            ),
        ];
        for (config, flag) in cases {
            let error = config.validate().unwrap_err();
            assert!(error.starts_with(flag), "{flag}: {error}");
        }
    }
}
