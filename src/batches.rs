//! `GET /v1/batches/{batch_id}`: where an ingest request's records are.
//! The edge keeps each request's counts in the state store (`--state`,
//! [`spendstream_state::BATCH_RETENTION`]); this route adds what the
//! processors made of them: the rows each sink holds (the lake as the
//! reports read it; ClickHouse when this process writes it), the dead
//! letters, and whether (and since when) reports count every record.

use axum::extract::{FromRef, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use spendstream_http::{ApiError, Auth, ErrorBody, JwtKeys, Role};
use spendstream_lake::Lake;
use spendstream_log::{DeadLetterStore, LetterScope};
use spendstream_processors::sink::clickhouse::ClickHouseConfig;
use spendstream_query_api::current::CurrentState;
use spendstream_schemas::error::Chain;
use spendstream_state::BatchStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::warn;

/// Dead letters read at most to count one batch's: past this the count is
/// left unknown rather than make one request read them all.
const MAX_LETTERS_SCANNED: usize = 100_000;

#[derive(Clone)]
pub struct BatchState {
    pub keys: JwtKeys,
    pub store: Arc<dyn BatchStore>,
    pub lake: Arc<Lake>,
    /// The reports' current state: the rows reports count, and when they
    /// came in. None: the lake is counted, and the time is unknown.
    pub current: Option<Arc<CurrentState>>,
    /// The log's dead letters, when this process has the log.
    pub dead_letters: Option<Arc<dyn DeadLetterStore>>,
    /// ClickHouse, when this process writes it.
    pub clickhouse: Option<ClickHouseConfig>,
    /// Per-tenant requests/s, shared with reports and SQL (it reads what
    /// they read); none: no limits.
    pub rate: Option<spendstream_http::rate::RateLimits>,
}

impl FromRef<BatchState> for JwtKeys {
    fn from_ref(state: &BatchState) -> Self {
        state.keys.clone()
    }
}

pub fn router(state: BatchState) -> Router {
    Router::new()
        .route("/v1/batches/{batch_id}", get(batch))
        .with_state(state)
}

/// Where a batch's records are.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchStatus {
    pub batch_id: String,
    /// `accepted`: no record of it is in a sink yet; `processing`: some
    /// are; `visible`: every accepted record is counted by reports (or is
    /// a dead letter).
    pub status: &'static str,
    /// When the edge answered the request.
    pub answered_at: DateTime<Utc>,
    pub accepted: u64,
    pub rejected: u64,
    /// Rejected records per error code.
    pub rejected_by_code: BTreeMap<String, u64>,
    /// Rows of the batch each sink holds: `lake` as reports read it,
    /// `clickhouse` when this node writes it (null: ClickHouse did not
    /// answer now).
    #[schema(value_type = BTreeMap<String, Option<u64>>)]
    pub sinks: BTreeMap<&'static str, Option<u64>>,
    /// Its records the processors could not use (null: not known on this
    /// node, which does not have the log).
    pub dead_letters: Option<u64>,
    /// When reports began to count its last record (null until visible,
    /// and when reports read the lake directly).
    pub visible_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    get,
    path = "/v1/batches/{batch_id}",
    summary = "Where an ingest request's records are",
    description = "The batch_id of an ingest answer: its accepted and rejected counts, the rows each sink holds, its dead letters, and when reports began to count all of it. Batches are kept 7 days; another tenant's is 404.",
    security(("bearer" = [])),
    params(("batch_id" = String, Path, description = "The batch_id of a POST /v1/expenses answer.")),
    responses(
        (status = 200, description = "The batch.", body = BatchStatus),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token has neither the ingest nor the read role.", body = ErrorBody),
        (status = 404, description = "not_found: no such batch of this tenant (or older than 7 days).", body = ErrorBody),
        (status = 429, description = "quota_exceeded: this tenant is over its query rate limit (shared with reports and SQL); Retry-After.", body = ErrorBody),
        (status = 503, description = "unavailable: the state store or the lake did not answer; Retry-After.", body = ErrorBody),
    ),
)]
pub async fn batch(
    State(state): State<BatchState>,
    auth: Auth,
    Path(batch_id): Path<String>,
) -> Response {
    if !auth.0.has(Role::Ingest)
        && let Err(e) = auth.require(Role::Read)
    {
        return e.into_response();
    }
    let rate = state.rate.clone();
    let tenant = auth.tenant().to_string();
    spendstream_http::rate::limited(
        rate.as_ref(),
        spendstream_http::rate::Api::Query,
        &tenant,
        async { status(&state, &tenant, batch_id).await.into_response() },
    )
    .await
}

async fn status(
    state: &BatchState,
    tenant: &str,
    batch_id: String,
) -> Result<Json<BatchStatus>, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "no batch {} of this tenant (batches are kept 7 days)",
            batch_id.chars().take(64).collect::<String>()
        ))
    };
    if !is_batch_id(&batch_id) {
        return Err(not_found());
    }
    let record = state
        .store
        .batch(tenant, &batch_id)
        .await
        .map_err(|e| crate::revocations::state_store_error("batches", e))?
        .ok_or_else(not_found)?;

    let (lake_rows, last_at_ms) = match &state.current {
        Some(current) => match current.batch(&state.lake, tenant, &batch_id).await {
            Some((_, seen)) => (seen.rows, (seen.rows > 0).then_some(seen.last_at_ms)),
            None => (lake_rows(&state.lake, tenant, &batch_id).await?, None),
        },
        None => (lake_rows(&state.lake, tenant, &batch_id).await?, None),
    };
    let mut sinks = BTreeMap::from([("lake", Some(lake_rows))]);
    if let Some(config) = &state.clickhouse {
        let rows =
            match spendstream_processors::sink::clickhouse::batch_rows(config, tenant, &batch_id)
                .await
            {
                Ok(rows) => Some(rows),
                Err(e) => {
                    warn!(error = %Chain(&e), "Could not count a batch's rows in ClickHouse.");
                    None
                }
            };
        sinks.insert("clickhouse", rows);
    }
    let letters = match &state.dead_letters {
        Some(store) => letters_of(store.as_ref(), tenant, &batch_id).await,
        None => None,
    };
    let dead_letters = letters.map(|l| l.records);

    let answered_at = DateTime::from_timestamp_millis(record.answered_at_ms).unwrap_or_default();
    // A record refused by one sink only is a dead letter and a lake row:
    // counted once.
    let settled = lake_rows + letters.map_or(0, |l| l.not_in_lake);
    let status = if settled >= record.accepted {
        "visible"
    } else if settled == 0 {
        "accepted"
    } else {
        "processing"
    };
    let visible_at = match (status, last_at_ms, &state.current) {
        ("visible", Some(ms), _) => DateTime::from_timestamp_millis(ms),
        // Nothing to wait for: nothing was accepted, or all went to dead
        // letters.
        ("visible", None, _) if lake_rows == 0 => Some(answered_at),
        _ => None,
    };
    Ok(Json(BatchStatus {
        batch_id,
        status,
        answered_at,
        accepted: record.accepted,
        rejected: record.rejected,
        rejected_by_code: record.rejected_by_code,
        sinks,
        dead_letters,
        visible_at,
    }))
}

/// A batch id as the edge makes them: a lowercase hyphenated UUID.
fn is_batch_id(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok_and(|id| {
        id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            == text
    })
}

/// The batch's rows in the lake's newest version (when reports read the
/// lake directly).
async fn lake_rows(lake: &Lake, tenant: &str, batch_id: &str) -> Result<u64, ApiError> {
    use datafusion::arrow::array::Int64Array;
    let ctx = datafusion::prelude::SessionContext::new();
    let fail = |e: &dyn std::fmt::Display| {
        ApiError::unavailable("the lake", format!("counting a batch's rows: {e}"))
    };
    let provider = lake
        .table_provider(&ctx)
        .await
        .map_err(|e| fail(&Chain(&e)))?;
    ctx.register_table("expenses", provider)
        .map_err(|e| fail(&e))?;
    // Both values are checked (a tenant id, a UUID): no quoting to escape.
    let batches = ctx
        .sql(&format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM expenses WHERE tenant_id = '{tenant}' AND batch_id = '{batch_id}'"
        ))
        .await
        .map_err(|e| fail(&e))?
        .collect()
        .await
        .map_err(|e| fail(&e))?;
    Ok(batches
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>())
        .map_or(0, |c| c.value(0).max(0) as u64))
}

/// A batch's dead letters.
#[derive(Debug, Clone, Copy)]
struct Letters {
    /// Its records with a letter not replayed since (each once, however
    /// many consumer groups wrote one).
    records: u64,
    /// Those of them no sink wrote (not a `sink_refused` letter, which
    /// one sink wrote of a record the lake holds).
    not_in_lake: u64,
}

/// The tenant's dead letters of this batch, or `None` when they cannot be
/// read now or there are too many to read for one request.
async fn letters_of(store: &dyn DeadLetterStore, tenant: &str, batch_id: &str) -> Option<Letters> {
    let mut after = 0;
    let mut scanned = 0;
    let mut records = std::collections::BTreeMap::new();
    loop {
        let page = match store.list(LetterScope::Tenant(tenant), after, 500).await {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %Chain(&e), "Could not read dead letters to count a batch's.");
                return None;
            }
        };
        scanned += page.len();
        for l in &page {
            if spendstream_schemas::envelope::head(&l.letter.payload)
                .is_some_and(|head| head.batch_id == batch_id)
            {
                // Per record: (replayed by any group's letter, every letter
                // a sink refusal).
                let refused = l.letter.code == spendstream_schemas::ErrorCode::SinkRefused.as_str();
                let seen = records
                    .entry((l.letter.partition, l.letter.offset))
                    .or_insert((false, true));
                seen.0 |= l.replayed.is_some();
                seen.1 &= refused;
            }
        }
        match page.last() {
            Some(last) if page.len() == 500 && scanned < MAX_LETTERS_SCANNED => after = last.id,
            Some(_) if page.len() == 500 => return None,
            _ => {
                // A record replayed (by any group's letter) is in the log
                // again, to be counted where its replay lands.
                let dead = records.values().filter(|(replayed, _)| !replayed);
                return Some(Letters {
                    records: dead.clone().count() as u64,
                    not_in_lake: dead.filter(|(_, in_lake)| !in_lake).count() as u64,
                });
            }
        }
    }
}
