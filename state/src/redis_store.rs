//! The Redis backend: every ingest node sees the same keys. Each operation
//! is one Lua script, so a claim is atomic across nodes; time is the Redis
//! server's (`TIME`), so nodes with skewed clocks agree on staleness.
//!
//! Revocations: the sorted set `spendstream:revocations`, members
//! `<tenant>:<jti>` scored by their expiry (seconds).
//!
//! Keys: `spendstream:idempotency:<tenant>:<key>`, a hash with `state`
//! (`running` or `done`), `fingerprint`, `status`, `body` and `updated_at`
//! (ms), expiring [`IDEMPOTENCY_RETENTION`] after its last change. Tenant
//! ids cannot contain `:`, so keys of different tenants never meet.

use crate::{
    Claim, Error, IDEMPOTENCY_RETENTION, IdempotencyStore, OPERATION_TIMEOUT, Result, Revocation,
    RevocationStore,
};
use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::LazyLock;
use std::time::Duration;

/// Returns `{"acquired"}`, `{"running"}` or `{"done", fingerprint, status,
/// body}`. ARGV: stale_after ms, retention ms.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'status', 'body', 'updated_at')
if h[1] == 'done' then
  return {'done', h[2], h[3], h[4]}
end
if h[1] == 'running' and now - tonumber(h[5]) < tonumber(ARGV[1]) then
  return {'running'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'running', 'updated_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'acquired'}
",
    )
});

/// Stores the answer of a running claim. ARGV: fingerprint, status, body,
/// retention ms.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'done', 'fingerprint', ARGV[1], 'status', ARGV[2],
  'body', ARGV[3], 'updated_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
",
    )
});

/// Deletes the key while it is running (a completed one stays).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'state') == 'running' then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// The state in Redis, over one multiplexed connection that reconnects by
/// itself when Redis comes back.
#[derive(Clone)]
pub struct RedisState {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisState")
    }
}

fn key(tenant: &str, key: &str) -> String {
    format!("spendstream:idempotency:{tenant}:{key}")
}

impl RedisState {
    /// Connects to `url`; fails when Redis cannot be reached within
    /// [`OPERATION_TIMEOUT`].
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(OPERATION_TIMEOUT)
            .set_response_timeout(OPERATION_TIMEOUT)
            // Reconnection attempts while Redis is down are short and few:
            // each request then fails fast with 503 instead of waiting.
            .set_number_of_retries(1)
            .set_factor(50)
            .set_max_delay(500);
        let mut conn = bounded(ConnectionManager::new_with_config(client, config)).await?;
        // Fails now, with the reason, rather than on the first request.
        let _: String = bounded(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(Self { conn })
    }
}

/// `op` bounded by [`OPERATION_TIMEOUT`].
async fn bounded<T>(op: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::Timeout(OPERATION_TIMEOUT)),
    }
}

fn text(part: Option<&Vec<u8>>) -> Result<String> {
    part.and_then(|p| String::from_utf8(p.clone()).ok())
        .ok_or_else(|| Error::UnexpectedReply("a claim without its stored answer".into()))
}

#[async_trait]
impl IdempotencyStore for RedisState {
    async fn claim(&self, tenant: &str, k: &str, stale_after: Duration) -> Result<Claim> {
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = bounded(
            CLAIM
                .key(key(tenant, k))
                .arg(stale_after.as_millis() as u64)
                .arg(IDEMPOTENCY_RETENTION.as_millis() as u64)
                .invoke_async(&mut conn),
        )
        .await?;
        match reply.first().map(Vec::as_slice) {
            Some(b"acquired") => Ok(Claim::Acquired),
            Some(b"running") => Ok(Claim::InProgress),
            Some(b"done") => Ok(Claim::Completed {
                fingerprint: text(reply.get(1))?,
                status: text(reply.get(2))?
                    .parse()
                    .map_err(|_| Error::UnexpectedReply("a stored status".into()))?,
                body: reply.get(3).cloned().unwrap_or_default(),
            }),
            _ => Err(Error::UnexpectedReply(format!("{reply:?}"))),
        }
    }

    async fn complete(
        &self,
        tenant: &str,
        k: &str,
        fingerprint: &str,
        status: u16,
        body: &[u8],
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            COMPLETE
                .key(key(tenant, k))
                .arg(fingerprint)
                .arg(status)
                .arg(body)
                .arg(IDEMPOTENCY_RETENTION.as_millis() as u64)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn release(&self, tenant: &str, k: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(RELEASE.key(key(tenant, k)).invoke_async(&mut conn)).await?;
        Ok(())
    }
}

const REVOCATIONS: &str = "spendstream:revocations";

#[async_trait]
impl RevocationStore for RedisState {
    async fn revoke(&self, r: &Revocation) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            redis::cmd("ZADD")
                .arg(REVOCATIONS)
                .arg(r.expires_at)
                .arg(format!("{}:{}", r.tenant, r.jti))
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn revoked(&self, now: i64) -> Result<Vec<Revocation>> {
        let mut conn = self.conn.clone();
        let (_, members): (i64, Vec<(String, i64)>) = bounded(
            redis::pipe()
                .atomic()
                .cmd("ZREMRANGEBYSCORE")
                .arg(REVOCATIONS)
                .arg("-inf")
                .arg(now)
                .cmd("ZRANGE")
                .arg(REVOCATIONS)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut conn),
        )
        .await?;
        members
            .into_iter()
            .map(|(member, expires_at)| {
                let (tenant, jti) = member.split_once(':').ok_or_else(|| {
                    Error::UnexpectedReply(format!("a revocation without a tenant: {member}"))
                })?;
                Ok(Revocation {
                    tenant: tenant.into(),
                    jti: jti.into(),
                    expires_at,
                })
            })
            .collect()
    }
}
