//! Per-tenant rate limits (requests/s and records/s token buckets in the
//! state store) and their `RateLimit-*` headers
//! (draft-ietf-httpapi-ratelimit-headers). Ingest and the query API keep
//! separate buckets under the same limits: an importer's traffic does not
//! use up its dashboards' requests.

use crate::ApiError;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use spendstream_schemas::error::Chain;
use spendstream_state::rate::{Decision, Policy, RateLimiter};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::warn;

/// Whose buckets: ingest's, or the query API's (reports, SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Ingest,
    Query,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Ingest => "ingest",
            Api::Query => "query",
        }
    }

    /// The bucket's name in the store (tenant ids hold no `/`).
    fn bucket(self, tenant: &str) -> String {
        match self {
            Api::Ingest => tenant.to_owned(),
            Api::Query => format!("{tenant}/query"),
        }
    }
}

/// The quotas and where their buckets live.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub limiter: Arc<dyn RateLimiter>,
    pub policy: Policy,
}

/// When the last "cannot check the rate limit" warning was logged (seconds
/// since the epoch): one a minute during an outage, not one per request.
static WARNED_AT: AtomicU64 = AtomicU64::new(0);

fn store_failed(e: &spendstream_state::Error) {
    spendstream_schemas::metrics::error("rate_limits", e.kind());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = WARNED_AT.load(Ordering::Relaxed);
    if last + 60 <= now
        && WARNED_AT
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!(error = %Chain(e), "Rate limits cannot be checked; requests are let through meanwhile.");
    }
}

impl RateLimits {
    /// Admits one request of `tenant`: `Ok(None)` when the tenant has no
    /// limit, the decision for the headers when admitted, and when not, 429
    /// `quota_exceeded` with `Retry-After` and the decision. When the state
    /// store cannot be asked, the request is let through (counted and
    /// logged): a rate limit is not worth refusing honest traffic for.
    pub async fn admit(
        &self,
        api: Api,
        tenant: &str,
    ) -> Result<Option<Decision>, (ApiError, Decision)> {
        let mut limits = self.policy.limits_for(tenant);
        if api == Api::Query {
            // Records are counted on ingest only.
            limits.records_per_sec = 0.0;
        }
        if limits.is_unlimited() {
            return Ok(None);
        }
        let decision = match self.limiter.admit(&api.bucket(tenant), &limits).await {
            Ok(decision) => decision,
            Err(e) => {
                store_failed(&e);
                return Ok(None);
            }
        };
        if decision.admitted {
            return Ok(Some(decision));
        }
        metrics::counter!(crate::metrics::QUOTA_EXCEEDED_TOTAL.name, "api" => api.name())
            .increment(1);
        let error = ApiError::RateLimited {
            code: "quota_exceeded",
            message: format!(
                "this tenant is over its rate limit; retry in {} s",
                decision.retry_after_secs
            ),
            retry_after: Duration::from_secs(decision.retry_after_secs),
        };
        Err((error, decision))
    }

    /// Charges `records` accepted records to `tenant` (ingest's bucket).
    pub async fn charge(&self, tenant: &str, records: u64) {
        let limits = self.policy.limits_for(tenant);
        if records == 0 || limits.records_per_sec <= 0.0 {
            return;
        }
        if let Err(e) = self
            .limiter
            .charge(&Api::Ingest.bucket(tenant), &limits, records)
            .await
        {
            store_failed(&e);
        }
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` of the
/// quota that binds first.
pub fn headers(decision: &Decision, headers: &mut HeaderMap) {
    for (name, value) in [
        ("ratelimit-limit", decision.limit),
        ("ratelimit-remaining", decision.remaining),
        ("ratelimit-reset", decision.reset_secs),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// Answers with `answer` when `tenant`'s quota for `api` admits the
/// request (no limits: always), with the `RateLimit-*` headers on whatever
/// is answered; 429 `quota_exceeded` when it does not.
pub async fn limited(
    rate: Option<&RateLimits>,
    api: Api,
    tenant: &str,
    answer: impl Future<Output = Response>,
) -> Response {
    let quota = match rate {
        Some(rate) => match rate.admit(api, tenant).await {
            Ok(quota) => quota,
            Err((refused, decision)) => {
                let mut response = refused.into_response();
                headers(&decision, response.headers_mut());
                return response;
            }
        },
        None => None,
    };
    let mut response = answer.await;
    if let Some(quota) = quota {
        headers(&quota, response.headers_mut());
    }
    response
}
