//! What every edge node must agree on, behind one seam with two backends
//! (ADR 0011): idempotency keys with their stored answers, revoked token
//! ids, and per-tenant rate limits.
//!
//! | URL | Backend | For |
//! |---|---|---|
//! | `embedded://<dir>` | SQLite file `<dir>/state.sqlite3` | one machine (the default, under the data directory) |
//! | `redis://[:password@]host:port[/db]` | Redis 6 or later (no TLS: `rediss://` is refused) | many nodes behind a load balancer |
//!
//! A failure that a retry may fix (Redis unreachable or slow, SQLite busy)
//! is [`Error::is_transient`]: the edge answers it with 503 and
//! `Retry-After`, never by applying a request without its key.

mod embedded;
pub mod rate;
mod redis_store;
pub mod sqlite;

pub use embedded::SqliteState;
pub use redis_store::RedisState;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// How long a completed idempotency key is remembered.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The longest a state operation may take before it counts as failed (and
/// the request gets 503): a hung Redis must not hang the edge.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A state store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--state {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the embedded state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the state store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the state store's directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("a state store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("Redis answered a script with something unexpected: {0}")]
    UnexpectedReply(String),
}

impl Error {
    /// Whether the same operation may succeed later (Redis down, slow or
    /// loading; SQLite busy), as opposed to a mistake no retry fixes.
    pub fn is_transient(&self) -> bool {
        use redis::ErrorKind as R;
        match self {
            Error::Sqlite(e) => sqlite::is_transient(e),
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                    || matches!(
                        e.kind(),
                        R::BusyLoadingError
                            | R::TryAgain
                            | R::ClusterDown
                            | R::MasterDown
                            | R::ReadOnly
                    )
            }
            Error::Timeout(_) | Error::Io(_) => true,
            Error::InvalidUrl { .. } | Error::Join(_) | Error::UnexpectedReply(_) => false,
        }
    }

    /// The `error_type` label of `spendstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidUrl { .. } => "invalid_url",
            Error::Sqlite(_) => "sqlite",
            Error::Redis(_) => "redis",
            Error::Timeout(_) => "timeout",
            Error::Io(_) => "io",
            Error::Join(_) => "task",
            Error::UnexpectedReply(_) => "unexpected_reply",
        }
    }
}

/// What a claim on an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is now held by the caller, who must `complete` or `release`.
    Acquired,
    /// Another request with this key is still running.
    InProgress,
    /// A request with this key already finished with this response.
    Completed {
        fingerprint: String,
        status: u16,
        body: Vec<u8>,
    },
}

/// Remembers the outcome of requests sent with an `Idempotency-Key`, so a
/// retried request gets the first answer back and writes nothing. Keys are
/// per tenant; a claim, completion or release is atomic in the store, so
/// of any number of concurrent claims on every node exactly one acquires.
///
/// A claim is held by an `owner` (a random id the caller makes before
/// claiming): only the owner completes or releases it, so a holder whose
/// claim went stale and was taken over cannot overwrite the new holder's,
/// and a caller whose claim timed out can release it without knowing
/// whether it was made.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug {
    /// Claims `key` of `tenant` for `owner`. A claim left in progress for
    /// longer than `stale_after` (its holder crashed) is taken over.
    async fn claim(
        &self,
        tenant: &str,
        key: &str,
        owner: &str,
        stale_after: Duration,
    ) -> Result<Claim>;

    /// Stores the final response of `owner`'s claim (nothing when the claim
    /// is not, or no longer, `owner`'s).
    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        owner: &str,
        fingerprint: &str,
        status: u16,
        body: &[u8],
    ) -> Result<()>;

    /// Gives `owner`'s claim up (the request failed in a way worth
    /// retrying). A completed key, or another owner's claim, stays.
    async fn release(&self, tenant: &str, key: &str, owner: &str) -> Result<()>;
}

/// A revoked token: refused until `expires_at` (seconds since the epoch;
/// normally the token's own `exp`, after which it is refused anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub tenant: String,
    pub jti: String,
    pub expires_at: i64,
}

/// Token ids revoked by an admin, read by every node every second.
#[async_trait]
pub trait RevocationStore: Send + Sync + std::fmt::Debug {
    /// Revokes `jti` of `tenant` until `expires_at` (a later revocation of
    /// the same id moves its expiry).
    async fn revoke(&self, revocation: &Revocation) -> Result<()>;

    /// Every revocation still in force at `now` (seconds since the epoch);
    /// expired ones are forgotten on the way.
    async fn revoked(&self, now: i64) -> Result<Vec<Revocation>>;
}

/// How long what an ingest request came to is kept for
/// `GET /v1/batches/{id}`.
pub const BATCH_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What one ingest request came to, as the edge answered it: kept so that
/// an importer can ask later where its records are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchRecord {
    pub tenant: String,
    pub batch_id: String,
    pub accepted: u64,
    pub rejected: u64,
    /// Rejected records per error code.
    pub rejected_by_code: std::collections::BTreeMap<String, u64>,
    /// When the edge answered (milliseconds since the epoch).
    pub answered_at_ms: i64,
}

/// The edge's record of each ingest request, per tenant, for
/// [`BATCH_RETENTION`].
#[async_trait]
pub trait BatchStore: Send + Sync + std::fmt::Debug {
    async fn put_batch(&self, batch: &BatchRecord) -> Result<()>;

    /// Batch `batch_id` of `tenant`: another tenant's is `None`, as is one
    /// past retention.
    async fn batch(&self, tenant: &str, batch_id: &str) -> Result<Option<BatchRecord>>;
}

/// The scope of rates every tenant reads (loaded by the operator with
/// `spendstream fx load`); a tenant's own rates (`PUT
/// /v1/admin/fx-rates`) are stored under its id and win on the days they
/// have.
pub const FX_SCOPE_ALL: &str = "*";

/// Exchange rates per scope ([`FX_SCOPE_ALL`] or a tenant id), each held
/// as the whole rates text (the ECB CSV layout
/// `spendstream_schemas::fx::Rates` reads and writes); processors read
/// them (`docs/fx.md`).
#[async_trait]
pub trait FxStore: Send + Sync + std::fmt::Debug {
    /// Replaces the rates of `scope` (callers merge what they load with
    /// what is there; the last of two loads at once wins).
    async fn put_fx_rates(&self, scope: &str, csv: &str) -> Result<()>;

    /// The rates of `scope`, if any were loaded.
    async fn fx_rates(&self, scope: &str) -> Result<Option<String>>;

    /// A number every put changes: readers reload when it moved.
    async fn fx_version(&self) -> Result<u64>;
}

/// The opened state backend.
#[derive(Clone)]
pub struct State {
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub revocations: Arc<dyn RevocationStore>,
    pub batches: Arc<dyn BatchStore>,
    pub fx: Arc<dyn FxStore>,
    /// Shared by every node on Redis; per process on the embedded state.
    pub limiter: Arc<dyn rate::RateLimiter>,
    /// The URL without credentials, for logs.
    pub url: String,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("url", &self.url).finish()
    }
}

/// Where the state lives, parsed from `--state` without any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateTarget {
    Embedded(std::path::PathBuf),
    Redis(String),
}

impl StateTarget {
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: redact(url),
            reason: reason.into(),
        };
        if let Some(dir) = url.strip_prefix("embedded://") {
            if dir.is_empty() {
                return Err(invalid("embedded:// needs a directory"));
            }
            Ok(Self::Embedded(dir.into()))
        } else if url.starts_with("rediss://") {
            Err(invalid(
                "TLS to Redis is not built in: reach it over a private network, or through a TLS tunnel such as stunnel",
            ))
        } else if url.starts_with("redis://") {
            redis::Client::open(url).map_err(|e| invalid(&e.to_string()))?;
            Ok(Self::Redis(url.to_string()))
        } else {
            Err(invalid("expected embedded://<dir> or redis://host:port"))
        }
    }

    /// Opens the backend: creates the embedded file, or connects to Redis
    /// (failing when it cannot be reached within [`OPERATION_TIMEOUT`]).
    pub async fn open(&self) -> Result<State> {
        Ok(match self {
            Self::Embedded(dir) => {
                let store = Arc::new(SqliteState::open(&dir.join("state.sqlite3")).await?);
                State {
                    idempotency: store.clone(),
                    revocations: store.clone(),
                    batches: store.clone(),
                    fx: store,
                    limiter: Arc::new(rate::LocalLimiter::default()),
                    url: format!("embedded://{}", dir.display()),
                }
            }
            Self::Redis(url) => {
                let store = Arc::new(RedisState::connect(url).await?);
                State {
                    idempotency: store.clone(),
                    revocations: store.clone(),
                    batches: store.clone(),
                    fx: store.clone(),
                    limiter: store,
                    url: redact(url),
                }
            }
        })
    }
}

/// `url` without its password (`redis://:secret@h` → `redis://:***@h`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_redact() {
        assert_eq!(
            StateTarget::parse("embedded:///var/lib/s").unwrap(),
            StateTarget::Embedded("/var/lib/s".into())
        );
        assert!(matches!(
            StateTarget::parse("redis://:pw@h:6379/2").unwrap(),
            StateTarget::Redis(_)
        ));
        for bad in ["embedded://", "memcached://h", "h:6379", "rediss://h:6379"] {
            let e = StateTarget::parse(bad).unwrap_err();
            assert!(!e.is_transient(), "{bad}");
            assert!(e.to_string().starts_with("--state "), "{e}");
        }
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let e = StateTarget::parse("redis://:pw@h:notaport").unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
