//! Exchange rates into the state the processors read (`docs/fx.md`):
//! `spendstream fx load FILE` (the operator: rates for every tenant) and
//! `PUT /v1/admin/fx-rates` (an admin: rates of their own tenant, which win
//! over the operator's for the days and currencies they have). A file is
//! taken whole or refused at its first bad line; each rate it has replaces
//! the same day's rate of that currency, and every other rate is kept.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::NaiveDate;
use spendstream_http::{ApiError, Auth, ErrorBody, JwtKeys, Role};
use spendstream_schemas::fx::{Rates, RatesError};
use spendstream_state::FxStore;
use std::sync::Arc;

/// The largest rates file taken over HTTP: the ECB's whole history since
/// 1999 is about 1.5 MiB.
pub const MAX_RATES_BYTES: usize = 16 << 20;

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FxLoaded {
    /// `*` (every tenant) or the tenant the rates are for.
    pub scope: String,
    /// Days the file had.
    pub days_loaded: usize,
    /// Days the scope holds now.
    pub days_held: usize,
    /// The first and last day held.
    pub first_day: Option<NaiveDate>,
    pub last_day: Option<NaiveDate>,
    /// Currencies with a rate on some day held (the euro always has one).
    pub currencies: Vec<&'static str>,
    /// Columns of the file skipped: currencies ISO 4217 no longer lists
    /// (the ECB history's CYP, SIT, …).
    pub ignored: Vec<String>,
}

/// The rates one scope holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FxHeld {
    pub days_held: usize,
    pub first_day: Option<NaiveDate>,
    pub last_day: Option<NaiveDate>,
    pub currencies: Vec<&'static str>,
}

/// The rates a tenant's records are converted with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FxRatesHeld {
    /// The tenant's own (`PUT /v1/admin/fx-rates`); null when none.
    #[schema(required)]
    pub tenant: Option<FxHeld>,
    /// The operator's, for every tenant (`spendstream fx load`); null when
    /// none.
    #[schema(required)]
    pub every_tenant: Option<FxHeld>,
}

fn held(rates: &Rates) -> FxHeld {
    let (first_day, last_day) = rates.span().unzip();
    FxHeld {
        days_held: rates.days(),
        first_day,
        last_day,
        currencies: rates.currencies(),
    }
}

/// What `scope` holds, if anything.
async fn held_in(store: &dyn FxStore, scope: &str) -> Result<Option<FxHeld>, ApiError> {
    let text = store
        .fx_rates(scope)
        .await
        .map_err(|e| crate::revocations::state_store_error("fx_rates", e))?;
    match text {
        None => Ok(None),
        Some(text) => Rates::parse_ecb_csv(&text)
            .map(|rates| Some(held(&rates)))
            .map_err(ApiError::internal),
    }
}

/// Why a load did nothing.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the rates file is refused at {0}")]
    Rates(#[from] RatesError),
    #[error("the rates file is not UTF-8 text")]
    NotText,
    #[error("the state store")]
    Store(#[from] spendstream_state::Error),
}

/// Reads `text` (the ECB layout) and merges it into the rates of `scope`.
pub async fn load(store: &dyn FxStore, scope: &str, text: &[u8]) -> Result<FxLoaded, LoadError> {
    let text = std::str::from_utf8(text).map_err(|_| LoadError::NotText)?;
    let loaded = Rates::parse_ecb_csv(text)?;
    let days_loaded = loaded.days();
    let ignored = loaded.ignored().to_vec();
    let mut held = match store.fx_rates(scope).await? {
        // What is stored was written by `Rates::to_ecb_csv`; a text that no
        // longer reads is replaced rather than kept blocking every load.
        Some(stored) => Rates::parse_ecb_csv(&stored).unwrap_or_else(|e| {
            tracing::warn!(scope, error = %e, "The stored rates do not read; replacing them.");
            Rates::default()
        }),
        None => Rates::default(),
    };
    held.merge(loaded);
    store.put_fx_rates(scope, &held.to_ecb_csv()).await?;
    let FxHeld {
        days_held,
        first_day,
        last_day,
        currencies,
    } = self::held(&held);
    Ok(FxLoaded {
        scope: scope.to_string(),
        days_loaded,
        days_held,
        first_day,
        last_day,
        currencies,
        ignored,
    })
}

#[derive(Clone)]
pub struct FxState {
    pub keys: JwtKeys,
    pub store: Arc<dyn FxStore>,
}

impl FromRef<FxState> for JwtKeys {
    fn from_ref(state: &FxState) -> Self {
        state.keys.clone()
    }
}

pub fn router(state: FxState) -> Router {
    Router::new()
        .route("/v1/admin/fx-rates", get(get_rates).put(put_rates))
        // The handler reads the body itself, within MAX_RATES_BYTES.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

#[utoipa::path(
    put,
    path = "/v1/admin/fx-rates",
    summary = "Load exchange rates for the caller's tenant",
    description = "The body is a rates file in the European Central Bank's reference-rate CSV layout (Date,USD,JPY,… then one row per day, each rate the units of that currency one euro buys; N/A or empty for none). Each rate replaces the tenant's rate of that currency and day (other rates are kept), and wins over the rates loaded for every tenant with `spendstream fx load`. Processors convert records from the next batch on (docs/fx.md). A file is taken whole or not at all.",
    security(("bearer" = [])),
    request_body(content = String, content_type = "text/csv"),
    responses(
        (status = 200, description = "Loaded.", body = FxLoaded),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 413, description = "payload_too_large: the file is larger than 16 MiB.", body = ErrorBody),
        (status = 422, description = "invalid_rates: the message names the first bad line (`line 3: …`); nothing was loaded.", body = ErrorBody),
        (status = 503, description = "unavailable: the state store did not answer; Retry-After.", body = ErrorBody),
    ),
)]
pub async fn put_rates(
    State(state): State<FxState>,
    auth: Auth,
    body: Body,
) -> Result<Json<FxLoaded>, ApiError> {
    let tenant = auth.tenant().to_string();
    let answer = async {
        // The role before the body is read.
        auth.require(Role::Admin)?;
        let body = axum::body::to_bytes(body, MAX_RATES_BYTES)
            .await
            .map_err(|_| ApiError::PayloadTooLarge {
                limit: MAX_RATES_BYTES,
            })?;
        match load(state.store.as_ref(), &tenant, &body).await {
            Ok(loaded) => Ok(Json(loaded)),
            Err(LoadError::Store(e)) => Err(crate::revocations::state_store_error("fx_rates", e)),
            Err(e @ (LoadError::Rates(_) | LoadError::NotText)) => Err(ApiError::Unprocessable {
                code: "invalid_rates",
                message: match e {
                    LoadError::Rates(e) => e.to_string(),
                    other => other.to_string(),
                },
            }),
        }
    }
    .await;
    spendstream_http::audit::audited("fx_rates.put", &tenant, &answer);
    answer
}

#[utoipa::path(
    get,
    path = "/v1/admin/fx-rates",
    summary = "The exchange rates the caller's tenant is converted with",
    description = "What the tenant's own rates and the rates for every tenant hold: days, first and last day, currencies. Where both have a rate for a currency and day, the tenant's is used (docs/fx.md).",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rates held.", body = FxRatesHeld),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 503, description = "unavailable: the state store did not answer; Retry-After.", body = ErrorBody),
    ),
)]
pub async fn get_rates(
    State(state): State<FxState>,
    auth: Auth,
) -> Result<Json<FxRatesHeld>, ApiError> {
    let tenant = auth.tenant().to_string();
    let answer = async {
        auth.require(Role::Admin)?;
        Ok(Json(FxRatesHeld {
            tenant: held_in(state.store.as_ref(), &tenant).await?,
            every_tenant: held_in(state.store.as_ref(), spendstream_state::FX_SCOPE_ALL).await?,
        }))
    }
    .await;
    spendstream_http::audit::audited("fx_rates.get", &tenant, &answer);
    answer
}
