//! Token revocation by `jti` (`/v1/admin/revocations`): admins revoke a
//! token of their tenant in the state store (`--state`); every node reads
//! the store's revocations every [`SYNC_EVERY`] into its keys, which then
//! refuse the token with 401 `token_revoked` (ADR 0011).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use spendstream_http::auth::Revocations;
use spendstream_http::{ApiError, Auth, ErrorBody, JwtKeys, Role};
use spendstream_schemas::error::Chain;
use spendstream_state::{Revocation, RevocationStore};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often every node reads the revocations: a revoked token is refused
/// everywhere within about this.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The longest a revocation may be asked to last: past a token's `exp` it
/// is refused anyway, and tokens are meant to be short-lived.
const MAX_REVOCATION: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Clone)]
pub struct RevocationState {
    pub keys: JwtKeys,
    pub store: Arc<dyn RevocationStore>,
}

impl FromRef<RevocationState> for JwtKeys {
    fn from_ref(state: &RevocationState) -> Self {
        state.keys.clone()
    }
}

pub fn router(state: RevocationState) -> Router {
    Router::new()
        .route("/v1/admin/revocations", get(list).post(revoke))
        .with_state(state)
}

/// A token to refuse from now on.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The token's `jti` claim (`spendstream token` prints it).
    pub jti: String,
    /// Until when (RFC 3339); the token's `exp` is enough. At most 366 days
    /// ahead.
    pub expires_at: DateTime<Utc>,
}

/// A revocation in force.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RevocationBody {
    pub tenant: String,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

fn body(r: Revocation) -> RevocationBody {
    RevocationBody {
        expires_at: DateTime::from_timestamp(r.expires_at, 0).unwrap_or_default(),
        tenant: r.tenant,
        jti: r.jti,
    }
}

fn store_error(e: spendstream_state::Error) -> ApiError {
    state_store_error("revocations", e)
}

/// A state store failure of `stage` as an answer: counted, and 503 with
/// `Retry-After` when a retry may succeed, 500 when it cannot.
pub(crate) fn state_store_error(stage: &'static str, e: spendstream_state::Error) -> ApiError {
    spendstream_schemas::metrics::error(stage, e.kind());
    if e.is_transient() {
        ApiError::unavailable("the state store", e)
    } else {
        ApiError::internal(e)
    }
}

#[utoipa::path(
    post,
    path = "/v1/admin/revocations",
    summary = "Revoke a token of the caller's tenant",
    description = "Every node refuses the token (401 token_revoked) within about a second. Revoking an id again moves its expiry.",
    security(("bearer" = [])),
    request_body = RevokeRequest,
    responses(
        (status = 201, description = "Revoked.", body = RevocationBody),
        (status = 400, description = "invalid_body: not the JSON object above.", body = ErrorBody),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 422, description = "invalid_jti (1 to 255 visible ASCII characters) or invalid_expiry (in the past, or more than 366 days ahead).", body = ErrorBody),
        (status = 503, description = "unavailable: the state store did not answer; Retry-After.", body = ErrorBody),
    ),
)]
pub async fn revoke(
    State(state): State<RevocationState>,
    auth: Auth,
    request: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RevocationBody>), ApiError> {
    let tenant = auth.tenant().to_string();
    let answer = revoke_answer(&state, &auth, request).await;
    spendstream_http::audit::audited("revocations.revoke", &tenant, &answer);
    answer
}

async fn revoke_answer(
    state: &RevocationState,
    auth: &Auth,
    request: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RevocationBody>), ApiError> {
    auth.require(Role::Admin)?;
    let Json(request) =
        request.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    if !(1..=255).contains(&request.jti.len()) || !request.jti.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::Unprocessable {
            code: "invalid_jti",
            message: "jti must be 1 to 255 visible ASCII characters".into(),
        });
    }
    let now = Utc::now();
    let latest = now + MAX_REVOCATION;
    if request.expires_at <= now || request.expires_at > latest {
        return Err(ApiError::Unprocessable {
            code: "invalid_expiry",
            message: "expires_at must be in the future and at most 366 days ahead".into(),
        });
    }
    let revocation = Revocation {
        tenant: auth.tenant().to_string(),
        jti: request.jti,
        expires_at: request.expires_at.timestamp(),
    };
    state.store.revoke(&revocation).await.map_err(store_error)?;
    // Refused here at once; the other nodes within SYNC_EVERY.
    state
        .keys
        .revocations()
        .insert(&revocation.tenant, &revocation.jti, revocation.expires_at);
    Ok((StatusCode::CREATED, Json(body(revocation))))
}

#[utoipa::path(
    get,
    path = "/v1/admin/revocations",
    summary = "The caller's tenant's revocations in force",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revocations, by jti.", body = [RevocationBody]),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 503, description = "unavailable: the state store did not answer; Retry-After.", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<RevocationState>,
    auth: Auth,
) -> Result<Json<Vec<RevocationBody>>, ApiError> {
    let tenant = auth.tenant().to_string();
    let answer = list_answer(&state, &auth).await;
    spendstream_http::audit::audited("revocations.list", &tenant, &answer);
    answer
}

async fn list_answer(
    state: &RevocationState,
    auth: &Auth,
) -> Result<Json<Vec<RevocationBody>>, ApiError> {
    auth.require(Role::Admin)?;
    let all = state
        .store
        .revoked(Utc::now().timestamp())
        .await
        .map_err(store_error)?;
    Ok(Json(
        all.into_iter()
            .filter(|r| r.tenant == auth.tenant())
            .map(body)
            .collect(),
    ))
}

/// Reads the store's revocations into `into` once.
pub async fn sync(
    store: &dyn RevocationStore,
    into: &Revocations,
) -> spendstream_state::Result<()> {
    let now = Utc::now().timestamp();
    let revoked = store.revoked(now).await?;
    into.replace(revoked.into_iter().map(|r| (r.tenant, r.jti)), now);
    Ok(())
}

/// [`sync`] every [`SYNC_EVERY`] until `stop`. While the store cannot be
/// read the last revocations read stay in force (logged once per outage).
pub async fn follow(store: Arc<dyn RevocationStore>, into: Revocations, stop: CancellationToken) {
    let mut every = tokio::time::interval(SYNC_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match sync(store.as_ref(), &into).await {
            Ok(()) if failing => {
                failing = false;
                info!("Reading revocations works again.");
            }
            Ok(()) => {}
            Err(e) => {
                spendstream_schemas::metrics::error("revocations", e.kind());
                if !failing {
                    failing = true;
                    warn!(error = %Chain(&e), "Reading revocations failed; the last ones read stay in force.");
                }
            }
        }
    }
}
