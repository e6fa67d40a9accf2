//! Edge plumbing shared by the HTTP services (ingest, query-api): the one
//! `ApiError`, bearer-token auth, request ids, operations endpoints and
//! metrics. Not a service itself, so services can share it without depending
//! on each other.

pub mod audit;
pub mod auth;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod rate;
pub mod request_id;
pub mod serve;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

pub use auth::{Auth, Claims, JwtKeys, Role};
pub use error::{ApiError, ErrorBody};
pub use serve::{ServerLimits, serve};

/// Wraps a service router with request ids, metrics and a JSON 404.
pub fn finish(router: axum::Router) -> axum::Router {
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn(ops::track_metrics))
        .layer(axum::middleware::from_fn(request_id::layer))
}

/// A page size from a `limit` query parameter: `default` when absent,
/// `400 invalid_query` outside `1..=max`.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be 1 to {max}"),
        ))
    }
}
