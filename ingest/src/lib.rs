//! The HTTP edge: bearer-token auth, streaming body decoding (NDJSON, JSON,
//! CSV, gzip), per-record validation and group-committed appends to the log.
//! A 202 is sent only after the log confirmed every accepted record.

mod body;
pub mod committer;
pub mod config;
mod dead_letters;
pub mod decode;
mod handler;
pub mod in_flight;
pub mod metrics;

pub use committer::Committer;
pub use config::IngestConfig;
pub use handler::{IngestResponse, Rejected, Rejections};
pub use in_flight::InFlight;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::header;
use axum::routing::{get, post};
use spendstream_http::JwtKeys;
use spendstream_log::Log;
use spendstream_state::IdempotencyStore;
use std::sync::Arc;

/// Shared state of the ingest routes.
#[derive(Clone)]
pub struct IngestState {
    pub keys: JwtKeys,
    pub committer: Committer,
    /// The log itself, for dead letters.
    pub log: Arc<dyn Log>,
    /// Idempotency keys, shared by every ingest node (`--state`).
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Where each request's counts are kept for `GET /v1/batches/{id}`
    /// (`--state`); none: not kept.
    pub batches: Option<Arc<dyn spendstream_state::BatchStore>>,
    /// Keyed requests finishing after their client left: shutdown waits
    /// for them (within its grace period), so none is cut off between its
    /// append and the storing of its answer.
    pub detached: tokio_util::task::TaskTracker,
    /// One slot per ingest request in flight, fair between tenants.
    pub in_flight: Arc<InFlight>,
    pub config: Arc<IngestConfig>,
    /// The tenant whose admins also see dead letters no tenant could be
    /// read from; none when unset.
    pub operator_tenant: Option<String>,
    /// Per-tenant rate limits; none: no limits.
    pub rate: Option<spendstream_http::rate::RateLimits>,
}

impl FromRef<IngestState> for JwtKeys {
    fn from_ref(state: &IngestState) -> Self {
        state.keys.clone()
    }
}

impl IngestState {
    /// Starts the group-commit task on `log`'s producer. `config` must have
    /// passed [`IngestConfig::validate`].
    pub fn new(
        keys: JwtKeys,
        log: &Arc<dyn Log>,
        idempotency: Arc<dyn IdempotencyStore>,
        config: IngestConfig,
    ) -> Self {
        let committer = Committer::spawn(
            log.producer(),
            config.group_commit_max_records,
            config.append_timeout,
        );
        Self {
            keys,
            committer,
            log: log.clone(),
            idempotency,
            in_flight: Arc::new(InFlight::new(
                config.max_concurrent_requests,
                config.max_concurrent_requests_per_tenant,
            )),
            config: Arc::new(config),
            operator_tenant: None,
            rate: None,
            batches: None,
            detached: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Tracks keyed requests that outlive their client in `tracker`.
    pub fn with_detached(mut self, tracker: tokio_util::task::TaskTracker) -> Self {
        self.detached = tracker;
        self
    }

    /// Keeps each request's counts in `store` for `GET /v1/batches/{id}`.
    pub fn with_batches(mut self, store: Option<Arc<dyn spendstream_state::BatchStore>>) -> Self {
        self.batches = store;
        self
    }

    /// Limits each tenant's requests and records per second.
    pub fn with_rate_limits(mut self, rate: Option<spendstream_http::rate::RateLimits>) -> Self {
        self.rate = rate;
        self
    }

    /// Lets admins of `tenant` list dead letters without a tenant.
    pub fn with_operator_tenant(mut self, tenant: Option<String>) -> Self {
        self.operator_tenant = tenant;
        self
    }
}

/// A log or store failure as an answer: 503 with `Retry-After` when a retry
/// may succeed, 500 (and an ERROR line) when it cannot.
pub(crate) fn store_error(
    what: &'static str,
    error: impl Into<StoreError>,
) -> spendstream_http::ApiError {
    let error = error.into();
    if error.is_transient() {
        spendstream_http::ApiError::unavailable(what, error)
    } else {
        spendstream_http::ApiError::internal(error)
    }
}

/// A failure of the log or of the state store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Log(#[from] spendstream_log::Error),
    #[error(transparent)]
    State(#[from] spendstream_state::Error),
}

impl StoreError {
    fn is_transient(&self) -> bool {
        match self {
            StoreError::Log(e) => e.is_transient(),
            StoreError::State(e) => e.is_transient(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/schemas/expense.v1.json",
    summary = "JSON Schema of a record (contract v1)",
    responses(
        (status = 200, description = "The schema."),
    ),
)]
pub async fn record_schema() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        spendstream_schemas::RECORD_JSON_SCHEMA,
    )
}

/// The ingest routes' part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        handler::post_expenses,
        dead_letters::list,
        dead_letters::replay,
        record_schema
    ),
    components(schemas(
        handler::IngestResponse,
        handler::Rejected,
        handler::RecordRef,
        spendstream_http::ErrorBody
    ))
)]
pub struct IngestApi;

/// The ingest routes (without the shared layers; see `spendstream_http::finish`).
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/expenses", post(handler::post_expenses))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/v1/schemas/expense.v1.json", get(record_schema))
        // The handler enforces its own, streaming-aware limits.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
