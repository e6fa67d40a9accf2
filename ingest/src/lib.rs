//! The HTTP edge: bearer-token auth, streaming body decoding (NDJSON, JSON,
//! CSV, gzip), per-record validation and group-committed appends to the log.
//! A 202 is sent only after the log confirmed every accepted record.

pub mod committer;
pub mod config;
mod dead_letters;
pub mod decode;
mod handler;

pub use committer::Committer;
pub use config::IngestConfig;
pub use handler::{IngestResponse, Rejected};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::header;
use axum::routing::{get, post};
use spendstream_http::JwtKeys;
use spendstream_log::Log;
use std::sync::Arc;

/// Shared state of the ingest routes.
#[derive(Clone)]
pub struct IngestState {
    pub keys: JwtKeys,
    pub committer: Committer,
    /// The log itself, for idempotency keys and dead letters.
    pub log: Arc<dyn Log>,
    /// One permit per ingest request in flight.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub config: Arc<IngestConfig>,
}

impl FromRef<IngestState> for JwtKeys {
    fn from_ref(state: &IngestState) -> Self {
        state.keys.clone()
    }
}

impl IngestState {
    /// Starts the group-commit task on `log`'s producer.
    pub fn new(keys: JwtKeys, log: &Arc<dyn Log>, config: IngestConfig) -> Self {
        let committer = Committer::spawn(
            log.producer(),
            config.group_commit_max_records,
            config.append_timeout,
        );
        Self {
            keys,
            committer,
            log: log.clone(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_requests.max(1),
            )),
            config: Arc::new(config),
        }
    }
}

/// The ingest routes (without the shared layers; see `spendstream_http::finish`).
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/expenses", post(handler::post_expenses))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/{id}/replay", post(dead_letters::replay))
        .route(
            "/v1/schemas/expense.v1.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/schema+json")],
                    spendstream_schemas::RECORD_JSON_SCHEMA,
                )
            }),
        )
        // The handler enforces its own, streaming-aware limits.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
