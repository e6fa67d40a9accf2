//! Per-tenant token buckets: requests per second and records per second.
//!
//! A request is admitted when its tenant has a request token and is not in
//! records debt; it takes the request token at once, and its accepted
//! records are charged afterwards (the count is known only once the body
//! is read), which may leave the records bucket in debt: the tenant's next
//! requests wait until it is paid back. Over time the tenant gets exactly
//! its rate; a single request can overrun it by at most one body.

use crate::Result;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The longest a rate-limit check may take before the request is let
/// through without it: limits fail open, and a hung Redis must cost
/// unkeyed requests next to nothing.
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// One tenant's limits; a rate of 0 is no limit on that bucket.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub requests_per_sec: f64,
    #[serde(default)]
    pub records_per_sec: f64,
    /// Seconds of rate a full bucket holds (the burst allowed after a pause).
    #[serde(default = "default_burst_secs")]
    pub burst_secs: f64,
}

fn default_burst_secs() -> f64 {
    2.0
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_sec: 0.0,
            records_per_sec: 0.0,
            burst_secs: default_burst_secs(),
        }
    }
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_sec <= 0.0 && self.records_per_sec <= 0.0
    }

    /// Checks the numbers (finite, not negative, a burst of at least one).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(self.requests_per_sec) || !ok(self.records_per_sec) {
            return Err("rates must be finite numbers of at least 0".into());
        }
        if !ok(self.burst_secs) || self.burst_secs <= 0.0 {
            return Err("burst_secs must be a finite number above 0".into());
        }
        for rate in [self.requests_per_sec, self.records_per_sec] {
            if rate > 0.0 && rate * self.burst_secs < 1.0 {
                return Err(format!(
                    "a rate of {rate}/s with burst_secs {} never holds one whole token",
                    self.burst_secs
                ));
            }
        }
        Ok(())
    }

    fn requests_capacity(&self) -> f64 {
        self.requests_per_sec * self.burst_secs
    }

    fn records_capacity(&self) -> f64 {
        self.records_per_sec * self.burst_secs
    }
}

/// What [`RateLimiter::admit`] decided, with the figures of the quota that
/// binds first (for the `RateLimit-*` headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub admitted: bool,
    /// The binding quota's bucket size.
    pub limit: u64,
    /// Whole tokens left in it after this request's admission (its records
    /// are charged later, once counted).
    pub remaining: u64,
    /// Seconds until it is full again.
    pub reset_secs: u64,
    /// When refused: seconds until a request would be admitted.
    pub retry_after_secs: u64,
}

#[async_trait]
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Admits one request of `tenant` under `limits` (taking its request
    /// token), or refuses it.
    async fn admit(&self, tenant: &str, limits: &Limits) -> Result<Decision>;

    /// Charges `records` accepted records to `tenant`'s records bucket.
    async fn charge(&self, tenant: &str, limits: &Limits, records: u64) -> Result<()>;
}

/// A bucket: `tokens` as of `at_secs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    pub tokens: f64,
    pub at_secs: f64,
}

impl Bucket {
    /// Refilled at `rate` up to `capacity` by `now`.
    fn refilled(bucket: Option<Bucket>, rate: f64, capacity: f64, now: f64) -> Bucket {
        let tokens = match bucket {
            None => capacity,
            Some(b) => (b.tokens + (now - b.at_secs).max(0.0) * rate).min(capacity),
        };
        Bucket {
            tokens,
            at_secs: now,
        }
    }
}

/// The decision for buckets already refilled to `now`; takes the request
/// token when admitted. The same arithmetic as the Redis script.
pub(crate) fn decide(
    limits: &Limits,
    requests: Option<&mut Bucket>,
    records: Option<&Bucket>,
) -> Decision {
    let secs = |tokens: f64, rate: f64| (tokens / rate).max(0.0).ceil() as u64;
    let records_short = records.filter(|r| limits.records_per_sec > 0.0 && r.tokens < 1.0);
    let requests_short = requests
        .as_ref()
        .filter(|r| limits.requests_per_sec > 0.0 && r.tokens < 1.0);
    if let Some(r) = records_short {
        return Decision {
            admitted: false,
            limit: limits.records_capacity() as u64,
            remaining: 0,
            reset_secs: secs(limits.records_capacity() - r.tokens, limits.records_per_sec),
            retry_after_secs: secs(1.0 - r.tokens, limits.records_per_sec).max(1),
        };
    }
    if let Some(r) = requests_short {
        return Decision {
            admitted: false,
            limit: limits.requests_capacity() as u64,
            remaining: 0,
            reset_secs: secs(
                limits.requests_capacity() - r.tokens,
                limits.requests_per_sec,
            ),
            retry_after_secs: secs(1.0 - r.tokens, limits.requests_per_sec).max(1),
        };
    }
    match requests {
        Some(r) if limits.requests_per_sec > 0.0 => {
            r.tokens -= 1.0;
            Decision {
                admitted: true,
                limit: limits.requests_capacity() as u64,
                remaining: r.tokens.max(0.0).floor() as u64,
                reset_secs: secs(
                    limits.requests_capacity() - r.tokens,
                    limits.requests_per_sec,
                ),
                retry_after_secs: 0,
            }
        }
        _ => {
            let r = records.map_or(limits.records_capacity(), |r| r.tokens);
            Decision {
                admitted: true,
                limit: limits.records_capacity() as u64,
                remaining: r.max(0.0).floor() as u64,
                reset_secs: secs(limits.records_capacity() - r, limits.records_per_sec),
                retry_after_secs: 0,
            }
        }
    }
}

type TenantBuckets = (Option<Bucket>, Option<Bucket>);

/// Buckets in this process's memory: the embedded backend's limiter (one
/// machine; a SQLite write per request would cost an fsync each).
#[derive(Debug, Default)]
pub struct LocalLimiter {
    /// Per tenant: the requests bucket and the records bucket.
    buckets: Mutex<HashMap<String, TenantBuckets>>,
    started: std::sync::OnceLock<Instant>,
}

impl LocalLimiter {
    fn now(&self) -> f64 {
        self.started
            .get_or_init(Instant::now)
            .elapsed()
            .as_secs_f64()
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn admit(&self, tenant: &str, limits: &Limits) -> Result<Decision> {
        let now = self.now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (requests, records) = buckets.entry(tenant.to_owned()).or_default();
        let mut req = (limits.requests_per_sec > 0.0).then(|| {
            Bucket::refilled(
                *requests,
                limits.requests_per_sec,
                limits.requests_capacity(),
                now,
            )
        });
        let rec = (limits.records_per_sec > 0.0).then(|| {
            Bucket::refilled(
                *records,
                limits.records_per_sec,
                limits.records_capacity(),
                now,
            )
        });
        let decision = decide(limits, req.as_mut(), rec.as_ref());
        *requests = req;
        *records = rec;
        Ok(decision)
    }

    async fn charge(&self, tenant: &str, limits: &Limits, records: u64) -> Result<()> {
        if limits.records_per_sec <= 0.0 || records == 0 {
            return Ok(());
        }
        let now = self.now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (_, bucket) = buckets.entry(tenant.to_owned()).or_default();
        let mut b = Bucket::refilled(
            *bucket,
            limits.records_per_sec,
            limits.records_capacity(),
            now,
        );
        b.tokens -= records as f64;
        *bucket = Some(b);
        Ok(())
    }
}

/// Which limits apply to which tenant: defaults (from flags) and per-tenant
/// overrides (from a file, replaced when it changes). Shared by clones.
#[derive(Debug, Clone, Default)]
pub struct Policy(std::sync::Arc<std::sync::RwLock<PolicyInner>>);

#[derive(Debug, Default)]
struct PolicyInner {
    default: Limits,
    tenants: HashMap<String, Limits>,
}

/// The overrides file: `{"tenants": {"<tenant>": {"requests_per_sec": …,
/// "records_per_sec": …, "burst_secs": …}}}`; a field left out is 0 (no
/// limit), or 2 for `burst_secs`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OverridesFile {
    tenants: HashMap<String, Limits>,
}

impl Policy {
    pub fn new(default: Limits) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(PolicyInner {
            default,
            tenants: HashMap::new(),
        })))
    }

    /// Parses an overrides file (every tenant's limits checked).
    pub fn parse_overrides(json: &[u8]) -> std::result::Result<HashMap<String, Limits>, String> {
        let file: OverridesFile =
            serde_json::from_slice(json).map_err(|e| format!("not a rate limits file: {e}"))?;
        for (tenant, limits) in &file.tenants {
            limits
                .validate()
                .map_err(|e| format!("tenant {tenant}: {e}"))?;
        }
        Ok(file.tenants)
    }

    /// Replaces the overrides.
    pub fn replace_overrides(&self, tenants: HashMap<String, Limits>) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).tenants = tenants;
    }

    pub fn limits_for(&self, tenant: &str) -> Limits {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner.tenants.get(tenant).copied().unwrap_or(inner.default)
    }
}
