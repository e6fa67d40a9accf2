//! Operator routes for dead letters: records the processors could not use.
//! `GET /v1/dead-letters` lists a tenant's letters; `POST
//! /v1/dead-letters/{id}/replay` appends a letter's original envelope to the
//! log again, to be processed with the processors' current rules.

use crate::IngestState;
use axum::Json;
use axum::extract::{Path, Query, State, rejection::QueryRejection};
use axum::http::StatusCode;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use spendstream_http::{ApiError, Auth, ErrorBody, Role};
use spendstream_log::{LetterScope, Record, StoredDeadLetter};
use spendstream_schemas::envelope::open;
use spendstream_schemas::identity_key;
use std::collections::BTreeMap;
use tracing::{info, instrument};

const MAX_LIMIT: usize = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Return letters with ids above this (the previous page's `next_cursor`).
    pub after: Option<i64>,
    /// Letters per page.
    #[param(minimum = 1, maximum = 500, default = 100)]
    pub limit: Option<usize>,
    /// List the letters no tenant could be read from instead (the
    /// operator tenant's admins only).
    #[serde(default)]
    pub unattributed: bool,
}

fn letter_json(l: &StoredDeadLetter) -> Value {
    // The record when the envelope is readable (the importer's text from
    // older edges, the validated record as JSON from packed envelopes);
    // raw bytes otherwise.
    let record = open(&l.letter.payload)
        .map(|(_, text)| serde_json::from_str::<Value>(&text).unwrap_or(Value::Null));
    let payload_base64 = record
        .is_none()
        .then(|| base64::engine::general_purpose::STANDARD.encode(&l.letter.payload));
    json!({
        "id": l.id,
        "created_at": chrono::DateTime::from_timestamp_millis(l.created_at_ms),
        "error": l.letter.code,
        "message": l.letter.message,
        "log_position": {"partition": l.letter.partition, "offset": l.letter.offset},
        "record": record,
        "payload_base64": payload_base64,
        "replayed": l.replayed.map(|r| json!({
            "at": chrono::DateTime::from_timestamp_millis(r.at_ms),
            "partition": r.position.partition,
            "offset": r.position.offset,
        })),
    })
}

#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    summary = "List dead letters",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "Letters, oldest first, with next_cursor."),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role, or asks for unattributed letters without being the operator tenant.", body = ErrorBody),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 500, description = "internal: the dead-letter store failed for a reason no retry fixes.", body = ErrorBody),
        (status = 503, description = "unavailable: the dead-letter store did not answer; Retry-After.", body = ErrorBody),
    ),
)]
#[instrument(skip_all, fields(tenant = %auth.tenant()))]
pub async fn list(
    state: State<IngestState>,
    auth: Auth,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant().to_string();
    let answer = list_answer(state, auth, params).await;
    spendstream_http::audit::audited("dead_letters.list", &tenant, &answer);
    answer
}

async fn list_answer(
    State(state): State<IngestState>,
    auth: Auth,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Admin)?;
    let Query(params) = params?;
    let limit = spendstream_http::page_limit(params.limit, 100, MAX_LIMIT)?;
    let scope = if params.unattributed {
        // Such a letter may hold any tenant's record: operators only.
        if state.operator_tenant.as_deref() != Some(auth.tenant()) {
            return Err(ApiError::Forbidden(
                "only admins of the operator tenant (--operator-tenant) see letters without a tenant"
                    .into(),
            ));
        }
        LetterScope::Unattributed
    } else {
        LetterScope::Tenant(auth.tenant())
    };
    let letters = state
        .log
        .dead_letters()
        .list(scope, params.after.unwrap_or(0), limit)
        .await
        .map_err(|e| crate::store_error("the dead-letter store", e))?;
    let next = (letters.len() == limit)
        .then(|| letters.last().map(|l| l.id))
        .flatten();
    Ok(Json(json!({
        "dead_letters": letters.iter().map(letter_json).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

#[utoipa::path(
    post,
    path = "/v1/dead-letters/{id}/replay",
    summary = "Append a dead letter to the log again",
    security(("bearer" = [])),
    params(
        ("id" = i64, Path, description = "The letter id."),
    ),
    responses(
        (status = 202, description = "Appended at the returned partition and offset."),
        (status = 404, description = "No such letter for this tenant.", body = ErrorBody),
        (status = 409, description = "already_replayed", body = ErrorBody),
        (status = 422, description = "not_replayable", body = ErrorBody),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 500, description = "internal", body = ErrorBody),
        (status = 503, description = "unavailable: the log or the dead-letter store did not answer; Retry-After.", body = ErrorBody),
    ),
)]
#[instrument(skip_all, fields(tenant = %auth.tenant(), id))]
pub async fn replay(
    state: State<IngestState>,
    auth: Auth,
    id: Path<i64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = auth.tenant().to_string();
    let answer = replay_answer(state, auth, id).await;
    spendstream_http::audit::audited("dead_letters.replay", &tenant, &answer);
    answer
}

async fn replay_answer(
    State(state): State<IngestState>,
    auth: Auth,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.require(Role::Admin)?;
    let store = state.log.dead_letters();
    let unavailable = |e| crate::store_error("the dead-letter store", e);
    let letter = store
        .get(auth.tenant(), id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    if letter.replayed.is_some() {
        return Err(ApiError::Conflict {
            code: "already_replayed",
            message: format!("dead letter {id} was already replayed"),
        });
    }
    let payload = letter.letter.payload.clone();
    let (head, record) = open(&payload).ok_or_else(|| ApiError::Unprocessable {
        code: "not_replayable",
        message: "the stored payload is not a record envelope; it cannot be processed".into(),
    })?;
    if head.tenant_id != auth.tenant() {
        return Err(ApiError::NotFound(format!("no dead letter {id}")));
    }
    // Same key as at the edge, so the replay lands with the expense's other
    // versions (a record without its identity keys by tenant alone and
    // will be dead-lettered again, visibly).
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(&record).unwrap_or_default();
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            .unwrap_or_default()
    };
    let key = identity_key(auth.tenant(), &text("source"), &text("external_id"));
    // The header says what the stored bytes are, not what this edge writes.
    let schema_version = head.v;
    let position = state
        .log
        .producer()
        .append(vec![Record {
            key: key.into_bytes(),
            value: payload,
            headers: spendstream_log::expense_headers(
                auth.tenant(),
                &format!("replay-{id}"),
                &spendstream_http::request_id::current_request_id(),
                schema_version,
            ),
        }])
        .await
        .map_err(|e| crate::store_error("the log", e))?
        .pop()
        .ok_or_else(|| ApiError::internal("the log returned no position"))?;
    store
        .mark_replayed(auth.tenant(), id, position)
        .await
        .map_err(unavailable)?;
    info!(
        partition = position.partition,
        offset = position.offset,
        "Replayed a dead letter."
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "partition": position.partition, "offset": position.offset})),
    ))
}
