//! The query service: reports over the lake through DataFusion, scoped to
//! the caller's tenant, counting only the latest version of each expense,
//! and tenant-scoped SQL.

pub mod cache;
pub mod current;
mod error;
pub mod etag;
pub mod format;
pub mod metrics;
pub mod report;
pub mod sql;

pub use error::{Error, Result};

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use spendstream_http::JwtKeys;
use spendstream_lake::Lake;
use std::sync::Arc;

/// Shared state of the query routes.
#[derive(Clone)]
pub struct QueryState {
    pub keys: JwtKeys,
    pub lake: Arc<Lake>,
    /// Limits of `POST /v1/sql`.
    pub sql_limits: sql::SqlLimits,
    /// Computed report answers by table version, tenant and query.
    pub reports: Arc<cache::AnswerCache<report::SpendRow>>,
    /// The latest version of each expense, in memory; `None`: reports
    /// read the lake for each computed answer.
    pub current: Option<Arc<current::CurrentState>>,
    /// Per-tenant requests/s of reports and SQL; none: no limits.
    pub rate: Option<spendstream_http::rate::RateLimits>,
}

/// Rows of report answers kept by default (about 150 bytes each).
pub const DEFAULT_REPORT_CACHE_ROWS: usize = 200_000;

impl QueryState {
    /// The state of the query routes, keeping up to `report_cache_rows`
    /// rows of report answers.
    pub fn new(
        keys: JwtKeys,
        lake: Arc<Lake>,
        sql_limits: sql::SqlLimits,
        report_cache_rows: usize,
    ) -> Self {
        Self {
            keys,
            lake,
            sql_limits,
            reports: Arc::new(cache::AnswerCache::new(report_cache_rows)),
            current: Some(Arc::new(current::CurrentState::new(
                current::DEFAULT_REPORT_STATE_ROWS,
            ))),
            rate: None,
        }
    }

    /// Limits each tenant's reports and SQL requests per second.
    pub fn with_rate_limits(mut self, rate: Option<spendstream_http::rate::RateLimits>) -> Self {
        self.rate = rate;
        self
    }

    /// Keeps up to `rows` expenses in the reports' current state (0: none,
    /// reports read the lake for each computed answer).
    pub fn with_report_state_rows(self, rows: usize) -> Self {
        self.with_report_state((rows > 0).then(|| Arc::new(current::CurrentState::new(rows))))
    }

    /// Reports read `state` (shared with other endpoints; None: the lake).
    pub fn with_report_state(mut self, state: Option<Arc<current::CurrentState>>) -> Self {
        self.current = state;
        self
    }
}

/// A query route of `kind` (`report`, `sql`): the `read` role first (a
/// forbidden request uses up no quota), then the tenant's quota around
/// `answer`, which is timed.
pub(crate) async fn query_route<F, Fut>(
    state: axum::extract::State<QueryState>,
    auth: spendstream_http::Auth,
    kind: &'static str,
    answer: F,
) -> Result<axum::response::Response, spendstream_http::ApiError>
where
    F: FnOnce(axum::extract::State<QueryState>, spendstream_http::Auth) -> Fut,
    Fut: std::future::Future<Output = Result<axum::response::Response, spendstream_http::ApiError>>,
{
    use axum::response::IntoResponse as _;
    auth.require(spendstream_http::Role::Read)?;
    let rate = state.rate.clone();
    let tenant = auth.tenant().to_owned();
    let timed = async {
        let started = std::time::Instant::now();
        let answer = answer(state, auth).await;
        metrics::query_done("http", kind, answer.is_ok(), started);
        answer.into_response()
    };
    Ok(spendstream_http::rate::limited(
        rate.as_ref(),
        spendstream_http::rate::Api::Query,
        &tenant,
        timed,
    )
    .await)
}

impl FromRef<QueryState> for JwtKeys {
    fn from_ref(state: &QueryState) -> Self {
        state.keys.clone()
    }
}

/// The query routes' part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(report::spend, sql::sql),
    components(schemas(report::SpendReport, report::SpendRow, sql::SqlResult, sql::SqlRequest))
)]
pub struct QueryApi;

/// The query routes (without the shared layers; see `spendstream_http::finish`).
pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/v1/reports/spend", get(report::spend))
        .route("/v1/sql", post(sql::sql))
        .with_state(state)
}
