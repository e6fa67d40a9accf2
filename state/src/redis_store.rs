//! The Redis backend: every ingest node sees the same keys. Each operation
//! is one Lua script, so a claim is atomic across nodes; time is the Redis
//! server's (`TIME`), so nodes with skewed clocks agree on staleness.
//!
//! Rate limits: `spendstream:rate:<tenant>:requests` and `…:records`,
//! hashes of `tokens` and `at` (seconds, the server's clock), expiring once
//! they would be full again (an absent bucket is a full one).
//!
//! Revocations: the sorted set `spendstream:revocations`, members
//! `<tenant>:<jti>` scored by their expiry (seconds).
//!
//! Keys: `spendstream:idempotency:<tenant>:<key>`, a hash with `state`
//! (`running` or `done`), `owner`, `fingerprint`, `status`, `body` and `updated_at`
//! (ms), expiring [`IDEMPOTENCY_RETENTION`] after its last change. Tenant
//! ids cannot contain `:`, so keys of different tenants never meet.

use crate::rate::{Decision, Limits, RateLimiter};
use crate::{
    BATCH_RETENTION, BatchRecord, BatchStore, Claim, Error, IDEMPOTENCY_RETENTION,
    IdempotencyStore, OPERATION_TIMEOUT, Result, Revocation, RevocationStore,
};
use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::LazyLock;
use std::time::Duration;

/// Returns `{"acquired"}`, `{"running"}` or `{"done", fingerprint, status,
/// body}`. ARGV: stale_after ms, retention ms, owner.
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
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[3], 'updated_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'acquired'}
",
    )
});

/// Stores the answer of `owner`'s running claim. ARGV: fingerprint,
/// status, body, retention ms, owner.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local h = redis.call('HMGET', KEYS[1], 'state', 'owner')
if h[1] ~= 'running' or h[2] ~= ARGV[5] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'done', 'fingerprint', ARGV[1], 'status', ARGV[2],
  'body', ARGV[3], 'updated_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
",
    )
});

/// Deletes the key while it is `owner`'s running claim (a completed one,
/// or another owner's, stays). ARGV: owner.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local h = redis.call('HMGET', KEYS[1], 'state', 'owner')
if h[1] == 'running' and h[2] == ARGV[1] then
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
    bounded_by(OPERATION_TIMEOUT, op).await
}

async fn bounded_by<T>(
    limit: Duration,
    op: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, op).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::Timeout(limit)),
    }
}

fn text(part: Option<&Vec<u8>>) -> Result<String> {
    part.and_then(|p| String::from_utf8(p.clone()).ok())
        .ok_or_else(|| Error::UnexpectedReply("a claim without its stored answer".into()))
}

#[async_trait]
impl IdempotencyStore for RedisState {
    async fn claim(
        &self,
        tenant: &str,
        k: &str,
        owner: &str,
        stale_after: Duration,
    ) -> Result<Claim> {
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = bounded(
            CLAIM
                .key(key(tenant, k))
                .arg(stale_after.as_millis() as u64)
                .arg(IDEMPOTENCY_RETENTION.as_millis() as u64)
                .arg(owner)
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
        owner: &str,
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
                .arg(owner)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn release(&self, tenant: &str, k: &str, owner: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            RELEASE
                .key(key(tenant, k))
                .arg(owner)
                .invoke_async(&mut conn),
        )
        .await?;
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

/// Token buckets (`crate::rate`): ARGV = requests/s, requests capacity,
/// records/s, records capacity, mode (`admit`, or `charge` with the record
/// count as ARGV[6]). `admit` returns {admitted, limit, remaining,
/// reset_secs, retry_after_secs}, the arithmetic of `rate::decide`.
static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local req_rate, req_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local rec_rate, rec_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local function load(key, rate, cap)
  local h = redis.call('HMGET', key, 'tokens', 'at')
  if not h[1] then return cap end
  return math.min(cap, tonumber(h[1]) + math.max(0, now - tonumber(h[2])) * rate)
end
local function save(key, tokens, rate, cap)
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil((cap - tokens) / rate * 1000) + 1000)
end
local function secs(tokens, rate)
  return math.max(0, math.ceil(tokens / rate))
end
if ARGV[5] == 'charge' then
  local tokens = load(KEYS[2], rec_rate, rec_cap) - tonumber(ARGV[6])
  save(KEYS[2], tokens, rec_rate, rec_cap)
  return {1}
end
local req, rec
if req_rate > 0 then req = load(KEYS[1], req_rate, req_cap) end
if rec_rate > 0 then rec = load(KEYS[2], rec_rate, rec_cap) end
if rec and rec < 1 then
  save(KEYS[2], rec, rec_rate, rec_cap)
  if req then save(KEYS[1], req, req_rate, req_cap) end
  return {0, math.floor(rec_cap), 0, secs(rec_cap - rec, rec_rate), math.max(1, secs(1 - rec, rec_rate))}
end
if req and req < 1 then
  save(KEYS[1], req, req_rate, req_cap)
  if rec then save(KEYS[2], rec, rec_rate, rec_cap) end
  return {0, math.floor(req_cap), 0, secs(req_cap - req, req_rate), math.max(1, secs(1 - req, req_rate))}
end
if rec then save(KEYS[2], rec, rec_rate, rec_cap) end
if req then
  req = req - 1
  save(KEYS[1], req, req_rate, req_cap)
  return {1, math.floor(req_cap), math.floor(math.max(0, req)), secs(req_cap - req, req_rate), 0}
end
return {1, math.floor(rec_cap), math.floor(math.max(0, rec)), secs(rec_cap - rec, rec_rate), 0}
",
    )
});

fn rate_keys(tenant: &str) -> [String; 2] {
    [
        format!("spendstream:rate:{tenant}:requests"),
        format!("spendstream:rate:{tenant}:records"),
    ]
}

impl RedisState {
    async fn rate(
        &self,
        tenant: &str,
        limits: &Limits,
        mode: &str,
        records: u64,
    ) -> Result<Vec<i64>> {
        let [requests_key, records_key] = rate_keys(tenant);
        let mut conn = self.conn.clone();
        bounded_by(
            crate::rate::CHECK_TIMEOUT,
            RATE.key(requests_key)
                .key(records_key)
                .arg(limits.requests_per_sec)
                .arg(limits.requests_per_sec * limits.burst_secs)
                .arg(limits.records_per_sec)
                .arg(limits.records_per_sec * limits.burst_secs)
                .arg(mode)
                .arg(records)
                .invoke_async(&mut conn),
        )
        .await
    }
}

#[async_trait]
impl RateLimiter for RedisState {
    async fn admit(&self, tenant: &str, limits: &Limits) -> Result<Decision> {
        if limits.is_unlimited() {
            return Ok(crate::rate::decide(limits, None, None));
        }
        let reply = self.rate(tenant, limits, "admit", 0).await?;
        let [admitted, limit, remaining, reset, retry_after] = reply[..] else {
            return Err(Error::UnexpectedReply(format!("{reply:?}")));
        };
        let n = |x: i64| x.max(0) as u64;
        Ok(Decision {
            admitted: admitted == 1,
            limit: n(limit),
            remaining: n(remaining),
            reset_secs: n(reset),
            retry_after_secs: n(retry_after),
        })
    }

    async fn charge(&self, tenant: &str, limits: &Limits, records: u64) -> Result<()> {
        if limits.records_per_sec <= 0.0 || records == 0 {
            return Ok(());
        }
        self.rate(tenant, limits, "charge", records).await?;
        Ok(())
    }
}

/// A batch's key: `spendstream:batch:{tenant}:{batch_id}`, expiring after
/// [`BATCH_RETENTION`].
fn batch_key(tenant: &str, batch_id: &str) -> String {
    format!("spendstream:batch:{tenant}:{batch_id}")
}

#[async_trait]
impl BatchStore for RedisState {
    async fn put_batch(&self, batch: &BatchRecord) -> Result<()> {
        let mut conn = self.conn.clone();
        let value = serde_json::to_string(batch).unwrap_or_default();
        let _: () = bounded(
            redis::cmd("SET")
                .arg(batch_key(&batch.tenant, &batch.batch_id))
                .arg(value)
                .arg("EX")
                .arg(BATCH_RETENTION.as_secs())
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn batch(&self, tenant: &str, batch_id: &str) -> Result<Option<BatchRecord>> {
        let mut conn = self.conn.clone();
        let value: Option<String> = bounded(
            redis::cmd("GET")
                .arg(batch_key(tenant, batch_id))
                .query_async(&mut conn),
        )
        .await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }
}

fn fx_key(scope: &str) -> String {
    format!("spendstream:fx:{scope}")
}

const FX_VERSION_KEY: &str = "spendstream:fx-version";

#[async_trait]
impl crate::FxStore for RedisState {
    async fn put_fx_rates(&self, scope: &str, csv: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: ((), i64) = bounded(
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(fx_key(scope))
                .arg(csv)
                .cmd("INCR")
                .arg(FX_VERSION_KEY)
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn fx_rates(&self, scope: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        bounded(redis::cmd("GET").arg(fx_key(scope)).query_async(&mut conn)).await
    }

    async fn fx_version(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let version: Option<u64> =
            bounded(redis::cmd("GET").arg(FX_VERSION_KEY).query_async(&mut conn)).await?;
        Ok(version.unwrap_or(0))
    }
}
