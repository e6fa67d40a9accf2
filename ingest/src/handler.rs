//! `POST /v1/expenses`: stream-decode the body, validate each record, append
//! accepted ones to the log in chunks, answer once the log confirmed them.
//!
//! Every request is bounded whatever its body: a share of the in-flight
//! slots per tenant, idle and total timeouts on the body, byte limits on the
//! wire, after decompression and per record, and a response that lists at
//! most `max_rejected_listed` rejections (the rest are counted by code).

use crate::IngestState;
use crate::body::{BodyEnd, BodyReader};
use crate::committer::AppendError;
use crate::config::IDEMPOTENCY_STALE_AFTER;
use crate::decode::{self, End, Format, Item};
use crate::in_flight::Shed;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use spendstream_http::request_id::current_request_id;
use spendstream_http::{ApiError, Auth, ErrorBody, Role};
use spendstream_log::Record;
use spendstream_schemas::error::Chain;
use spendstream_schemas::{ErrorCode, PackedWriter, RecordError, RecordView, identity_key};
use spendstream_state::{BatchRecord, Claim, IdempotencyStore};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info, instrument, warn};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A record of the request body: the contract's JSON Schema, served at
/// `/v1/schemas/expense.v1.json` (a reference to it in the document).
pub struct RecordRef;

impl utoipa::PartialSchema for RecordRef {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::Ref::new("/v1/schemas/expense.v1.json").into()
    }
}

impl utoipa::ToSchema for RecordRef {
    fn name() -> std::borrow::Cow<'static, str> {
        "Record".into()
    }
}

/// One rejected record in a response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rejected {
    /// Position of the record in the body, from 0.
    pub index: usize,
    #[serde(flatten)]
    pub error: RecordError,
}

/// The rejections of one request: the first `limit` listed with their
/// index, every one counted by code.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Rejections {
    /// The first max_rejected_listed rejections (default 1,000), by index.
    #[serde(rename = "rejected")]
    pub listed: Vec<Rejected>,
    /// Every rejected record, listed or not.
    #[serde(rename = "rejected_total")]
    pub total: usize,
    /// Rejected records per error code (all of them).
    #[serde(rename = "rejected_by_code")]
    #[schema(value_type = BTreeMap<String, usize>)]
    pub by_code: BTreeMap<ErrorCode, usize>,
    /// More records were rejected than are listed.
    #[serde(rename = "rejected_truncated")]
    pub truncated: bool,
    #[serde(skip)]
    limit: usize,
}

impl Rejections {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    pub fn push(&mut self, index: usize, error: RecordError) {
        self.total += 1;
        *self.by_code.entry(error.code).or_default() += 1;
        if self.listed.len() < self.limit {
            self.listed.push(Rejected { index, error });
        } else {
            self.truncated = true;
        }
    }

    /// Whether every rejection has this code.
    fn all(&self, code: ErrorCode) -> bool {
        self.by_code.keys().all(|c| *c == code)
    }
}

/// The body of 202 and 422 answers (and, with an error, of 408, 413 and
/// 503 answers past the first append).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestResponse {
    /// A UUID naming this request's records in the log and the lake.
    pub batch_id: String,
    pub accepted: usize,
    #[serde(flatten)]
    pub rejected: Rejections,
}

/// What a request came to, and whether its whole body was read: only then
/// may its answer be stored for its idempotency key.
struct Outcome {
    response: Response,
    body_whole: bool,
    /// Records that reached the log (charged to the tenant's rate limit).
    accepted: usize,
    /// What the request came to, when it had a batch (anything was
    /// decoded): kept for `GET /v1/batches/{id}`.
    batch: Option<Counts>,
}

/// A batch's counts as its answer gave them.
struct Counts {
    batch_id: String,
    accepted: u64,
    rejected: u64,
    by_code: BTreeMap<String, u64>,
}

impl Counts {
    fn of(body: &IngestResponse) -> Self {
        Self {
            batch_id: body.batch_id.clone(),
            accepted: body.accepted as u64,
            rejected: body.rejected.total as u64,
            by_code: body
                .rejected
                .by_code
                .iter()
                .map(|(code, n)| (code.as_str().to_string(), *n as u64))
                .collect(),
        }
    }
}

impl From<ApiError> for Outcome {
    fn from(error: ApiError) -> Self {
        Self {
            response: error.into_response(),
            body_whole: false,
            accepted: 0,
            batch: None,
        }
    }
}

/// What the decoding thread reports at the end.
struct Decoded {
    end: End,
    rejected: Rejections,
}

#[utoipa::path(
    post,
    path = "/v1/expenses",
    summary = "Ingest expense records",
    description = "Streams NDJSON, a JSON array, CSV, or a bank file: ISO 20022 CAMT.053 statements, BAI2 reports, OFX 1.x/2.x statements, each entry mapped onto a record as docs/formats.md says (gzip with Content-Encoding). Each record is validated; accepted records are durably in the log before 202 is sent. Every request is bounded: per-tenant and global in-flight limits, idle and total body timeouts, wire, decompressed and per-record byte limits, and at most max_rejected_listed rejections listed (all counted by code).",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, description = "A client's key for this request (at most 255 characters): a retry with the same key and body gets the first answer back and writes nothing."),
    ),
    request_body(content(
        (String = "application/x-ndjson"),
        (Vec<RecordRef> = "application/json"),
        (String = "text/csv"),
        (String = "application/vnd.iso20022.camt.053+xml"),
        (String = "application/x-bai2"),
        (String = "application/x-ofx"),
    )),
    responses(
        (status = 202, description = "At least one record accepted.", body = IngestResponse),
        (status = 400, description = "Nothing could be framed (invalid_body, invalid_csv_header, invalid_camt053, invalid_bai2, invalid_ofx, empty_body, invalid_idempotency_key), or body_incomplete: the body did not arrive whole (carries batch_id, accepted and the rejection counts; the Idempotency-Key is not used up).", body = ErrorBody),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the ingest role.", body = ErrorBody),
        (status = 409, description = "idempotency_key_in_use", body = ErrorBody),
        (status = 413, description = "payload_too_large: past the wire or decompressed limit (with batch_id, accepted and the rejection counts when cut mid-stream).", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "No record acceptable (same body as 202), or idempotency_key_reused.", body = IngestResponse),
        (status = 503, description = "unavailable: the log did not confirm every record (Kafka: a delivery report failed or timed out, or the producer queue is full), or the edge has too many requests in flight; Retry-After. Carries accepted when some records were confirmed first.", body = ErrorBody),
        (status = 408, description = "body_timeout: the body paused longer than the idle timeout or took longer than the total timeout. Carries batch_id, accepted and the rejection counts; Retry-After; the connection is closed.", body = ErrorBody),
        (status = 429, description = "rate_limited: this tenant already has its share of ingest requests in flight; or quota_exceeded: this tenant is over its rate limit (requests or records per second). Retry-After says when to try again. With a rate limit, every answer carries RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset.", body = ErrorBody),
        (status = 500, description = "internal: the log refused the records for a reason no retry fixes (logged with the request id). Carries accepted.", body = ErrorBody),
    ),
)]
#[instrument(skip_all, fields(tenant = %auth.tenant()))]
pub async fn post_expenses(
    State(state): State<IngestState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let admitted = async {
        auth.require(Role::Ingest).map_err(|e| (e, None))?;
        // The tenant's quota before anything else: a tenant over it costs
        // one state round trip, and no other tenant anything.
        match &state.rate {
            Some(rate) => rate
                .admit(spendstream_http::rate::Api::Ingest, auth.tenant())
                .await
                .map_err(|(e, d)| (e, Some(d))),
            None => Ok(None),
        }
    }
    .await;
    let (quota, answer) = match admitted {
        Ok(quota) => (quota, handle(state, auth, headers, body).await),
        Err((refused, quota)) => (quota, Err(refused)),
    };
    let mut response = match answer {
        Ok(response) => response,
        Err(error) => {
            // Every error answer leaves the body unread (or unreadable): the
            // client must not send another request on this connection.
            let mut response = error.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    };
    if let Some(quota) = quota {
        spendstream_http::rate::headers(&quota, response.headers_mut());
    }
    response
}

async fn handle(
    state: IngestState,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Shed load before reading anything: a 429/503 now is cheaper for
    // everyone than a queue that grows until requests time out.
    let slot = state
        .in_flight
        .try_acquire(auth.tenant())
        .map_err(|shed| match shed {
            Shed::Tenant => ApiError::RateLimited {
                code: "rate_limited",
                message: format!(
                    "this tenant already has {} ingest requests in flight; retry later",
                    state.config.max_concurrent_requests_per_tenant
                ),
                retry_after: Duration::from_secs(1),
            },
            Shed::Global => ApiError::Unavailable {
                what: "the ingest edge (too many requests in flight)",
                retry_after: Duration::from_secs(1),
                source: None,
            },
        })?;
    let config = &state.config;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::from_content_type(content_type).ok_or_else(|| {
        let supported: Vec<&str> = Format::ALL.iter().map(Format::content_type).collect();
        ApiError::UnsupportedMediaType(format!(
            "{content_type}; use one of {}",
            supported.join(", ")
        ))
    })?;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => false,
        Some(e) if e == "identity" || e.is_empty() => false,
        Some(e) if e == "gzip" || e == "x-gzip" => true,
        Some(e) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content-encoding {e}; only gzip is supported"
            )));
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > config.max_body_bytes) {
        return Err(ApiError::PayloadTooLarge {
            limit: config.max_body_bytes,
        });
    }

    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })?
                .to_string(),
        ),
    };
    let reader = BodyReader::new(body, gzip, config);
    let Some(key) = idempotency_key else {
        return Ok(ingest_charged(&state, &auth, format, reader).await.response);
    };
    let store = state.idempotency.clone();
    let tenant = auth.tenant().to_string();
    // Armed before claiming: a claim whose answer was lost (Redis timed
    // out after making it) is released by the guard, not left to block
    // every retry until it goes stale.
    let mut claim = ClaimGuard {
        store: Some(store.clone()),
        tenant: tenant.clone(),
        key: key.clone(),
        owner: uuid::Uuid::new_v4().simple().to_string(),
    };
    let found = store
        .claim(&tenant, &key, &claim.owner, IDEMPOTENCY_STALE_AFTER)
        .await
        .map_err(|e| crate::store_error("the idempotency store", e))?;
    if found != Claim::Acquired {
        claim.disarm();
    }
    match found {
        Claim::Acquired => {}
        Claim::InProgress => {
            return Err(ApiError::Conflict {
                code: "idempotency_key_in_use",
                message:
                    "a request with this Idempotency-Key is still being processed; retry later"
                        .into(),
            });
        }
        Claim::Completed {
            fingerprint,
            status,
            body: stored,
        } => {
            let this = reader.fingerprint(format).await?;
            if this != fingerprint {
                return Err(ApiError::Unprocessable {
                    code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used for a different request body".into(),
                });
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            let mut response = (status, stored).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            metrics::counter!(crate::metrics::IDEMPOTENT_REPLAYS_TOTAL.name).increment(1);
            return Ok(response);
        }
    }
    // From here the key is ours until the answer is stored, or released.
    // The rest runs in a task of its own: a client that goes away once its
    // body is in must not cancel the storing of the answer, or its retry
    // would append the same records again. A body cut off midway still
    // frees the key (it is not a final answer).
    let gone = tokio_util::sync::CancellationToken::new();
    let _gone_when_dropped = gone.clone().drop_guard();
    let (reader, fingerprint) = reader.abandoned_with(gone).hashed(format);
    // The in-flight slot goes with the work: a client that left does not
    // free room for more while its records are still being appended.
    let detached = state.detached.clone();
    spendstream_http::request_id::spawn_detached(detached.track_future(answer_keyed(
        state,
        auth,
        format,
        reader,
        fingerprint,
        claim,
        tenant,
        key,
        slot,
    )))
    .await
    .map_err(ApiError::internal)?
}

/// Ingests a keyed request's body and stores its final answer for the key
/// (`claim` holds it), or gives the key up.
#[allow(clippy::too_many_arguments)]
async fn answer_keyed(
    state: IngestState,
    auth: Auth,
    format: Format,
    reader: BodyReader,
    fingerprint: crate::body::Fingerprint,
    mut claim: ClaimGuard,
    tenant: String,
    key: String,
    _slot: crate::in_flight::Slot,
) -> Result<Response, ApiError> {
    let store = state.idempotency.clone();
    let Outcome {
        response,
        body_whole,
        ..
    } = ingest_charged(&state, &auth, format, reader).await;
    let status = response.status();
    // Only final answers to a body that arrived whole are remembered;
    // anything worth retrying frees the key.
    if body_whole && (status == StatusCode::ACCEPTED || status == StatusCode::UNPROCESSABLE_ENTITY)
    {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(ApiError::internal)?;
        match store
            .complete(
                &tenant,
                &key,
                &claim.owner,
                &fingerprint.finish(),
                status.as_u16(),
                &bytes,
            )
            .await
        {
            Ok(()) => claim.disarm(),
            // The records are in the log; the guard frees the key, and a
            // retry makes new versions of the same expenses, never more.
            Err(e) => {
                spendstream_schemas::metrics::error("idempotency", e.kind());
                warn!(error = %Chain(&e), "Storing the idempotent response failed.");
            }
        }
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    }
    claim.release().await;
    Ok(response)
}

/// Holds an idempotency claim; gives it up when dropped unless disarmed (the
/// answer was stored) or released.
struct ClaimGuard {
    store: Option<Arc<dyn IdempotencyStore>>,
    tenant: String,
    key: String,
    /// This request's id as the claim's holder.
    owner: String,
}

impl ClaimGuard {
    fn disarm(&mut self) {
        self.store = None;
    }

    async fn release(mut self) {
        if let Some(store) = self.store.take()
            && let Err(e) = store.release(&self.tenant, &self.key, &self.owner).await
        {
            spendstream_schemas::metrics::error("idempotency", e.kind());
            warn!(error = %Chain(&e), "Releasing an idempotency key failed.");
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let (tenant, key, owner) = (
            std::mem::take(&mut self.tenant),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.owner),
        );
        // The request future is being dropped (the client disconnected):
        // without this, every honest retry would get 409 until the claim
        // went stale.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.release(&tenant, &key, &owner).await {
                    spendstream_schemas::metrics::error("idempotency", e.kind());
                    warn!(error = %Chain(&e), "Releasing an abandoned idempotency key failed.");
                }
            });
        }
    }
}

/// [`ingest`], then the accepted records charged to the tenant's rate
/// limit.
async fn ingest_charged(
    state: &IngestState,
    auth: &Auth,
    format: Format,
    reader: BodyReader,
) -> Outcome {
    let outcome = ingest(state, auth, format, reader).await;
    if let Some(rate) = &state.rate {
        rate.charge(auth.tenant(), outcome.accepted as u64).await;
    }
    if let (Some(store), Some(counts)) = (&state.batches, &outcome.batch) {
        let record = BatchRecord {
            tenant: auth.tenant().to_string(),
            batch_id: counts.batch_id.clone(),
            accepted: counts.accepted,
            rejected: counts.rejected,
            rejected_by_code: counts.by_code.clone(),
            answered_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        // The records are in the log whatever happens here: a failure
        // only means the batch cannot be looked up later, which is said in
        // the log and the metrics, never by failing the request.
        if let Err(e) = store.put_batch(&record).await {
            spendstream_schemas::metrics::error("batches", e.kind());
            warn!(batch_id = %record.batch_id, error = %Chain(&e), "Could not keep the batch's counts for GET /v1/batches.");
        }
    }
    outcome
}

/// Decodes, validates and appends the body; the answer for one request.
async fn ingest(state: &IngestState, auth: &Auth, format: Format, reader: BodyReader) -> Outcome {
    let config = &state.config;
    let tenant = auth.tenant().to_string();
    let request_id = current_request_id();
    let batch_id = uuid::Uuid::new_v4().to_string();
    let headers = spendstream_log::expense_headers(
        &tenant,
        &batch_id,
        &request_id,
        spendstream_schemas::ENVELOPE_VERSION,
    );
    let writer = PackedWriter::new(
        &tenant,
        &batch_id,
        &request_id,
        chrono::Utc::now().timestamp_micros(),
    );

    let (tx, mut rx) = mpsc::channel::<Vec<Record>>(2);
    let chunk_records = config.chunk_records;
    let max_record = config.max_record_bytes;
    let max_listed = config.max_rejected_listed;
    let (read, body_end) = reader.into_read();
    let decoder = tokio::task::spawn_blocking(move || {
        decode_body(
            format,
            read,
            &tenant,
            &writer,
            &headers,
            Limits {
                chunk_records,
                max_record,
                max_listed,
            },
            &tx,
        )
    });

    // Append chunks as they come; at most two in flight keeps memory bounded
    // while the decoder works on the next one.
    let mut accepted = 0usize;
    let mut failure: Option<AppendError> = None;
    let mut decoded_all = false;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    loop {
        tokio::select! {
            chunk = rx.recv(), if !decoded_all && failure.is_none() && in_flight.len() < 2 => {
                match chunk {
                    Some(records) => {
                        let committer = state.committer.clone();
                        in_flight.push_back(async move { committer.append(records).await });
                    }
                    // The decoder is done; only the appends in flight remain.
                    None => decoded_all = true,
                }
            }
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                match result {
                    Ok(n) => accepted += n,
                    Err(e) => {
                        failure.get_or_insert(e);
                        // Stop the decoder: nothing more is appended.
                        rx.close();
                    }
                }
            }
            else => break,
        }
        if in_flight.is_empty() && (decoded_all || failure.is_some()) {
            break;
        }
    }
    drop(rx);
    let Decoded { end, mut rejected } = match decoder.await {
        Ok(decoded) => decoded,
        Err(e) => return ApiError::internal(e).into(),
    };
    let body = body_end.get();
    let body_whole = body == BodyEnd::Whole;
    metrics::counter!(crate::metrics::RECORDS_TOTAL.name, "outcome" => "accepted")
        .increment(accepted as u64);
    for (code, n) in &rejected.by_code {
        metrics::counter!(
            crate::metrics::RECORDS_TOTAL.name,
            "outcome" => "rejected",
            "code" => code.as_str()
        )
        .increment(*n as u64);
    }

    let response = |accepted: usize, rejected: Rejections| IngestResponse {
        batch_id: batch_id.clone(),
        accepted,
        rejected,
    };
    if let Some(error) = failure {
        // The client retries the whole request; records already appended are
        // re-sent with the same identity and become versions, not duplicates.
        let permanent = matches!(&error, AppendError::Log(e) if !e.is_transient());
        if permanent {
            error!(error = %Chain(&error), "The log refused an append; this is not a transient failure.");
            return partial_failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the log refused the records; see the server log for this request id".into(),
                response(accepted, rejected),
            );
        }
        return partial_failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "the log did not confirm every record ({}); retry the request",
                Chain(&error)
            ),
            response(accepted, rejected),
        );
    }
    let cut = |rejected: &mut Rejections, index: Option<usize>, why: &str| {
        if let Some(index) = index {
            rejected.push(
                index,
                RecordError::new(
                    ErrorCode::MalformedBody,
                    None,
                    format!("{why}; this record and any after it were not read"),
                ),
            );
        }
    };
    let malformed_at = match &end {
        End::Malformed { index, .. } => Some(*index),
        _ => None,
    };
    match body {
        BodyEnd::TimedOut => {
            cut(
                &mut rejected,
                malformed_at,
                "the body stopped arriving here",
            );
            return partial_failure(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive in time (nothing for {} s, under {} bytes/s on average, or not all within {} s); {accepted} records before the cut were accepted",
                    config.body_idle_timeout.as_secs(),
                    config.body_min_bytes_per_sec,
                    config.body_timeout.as_secs()
                ),
                response(accepted, rejected),
            );
        }
        BodyEnd::Broken => {
            cut(&mut rejected, malformed_at, "the body broke off here");
            return partial_failure(
                StatusCode::BAD_REQUEST,
                "body_incomplete",
                format!(
                    "the body did not arrive whole; {accepted} records before the break were accepted; send the whole request again"
                ),
                response(accepted, rejected),
            );
        }
        BodyEnd::TooLarge | BodyEnd::TooLargeDecoded => {
            cut(
                &mut rejected,
                malformed_at,
                "the body exceeded the size limit here",
            );
            let limit = if body == BodyEnd::TooLarge {
                format!("{} bytes on the wire", config.max_body_bytes)
            } else {
                format!("{} bytes decompressed", config.max_decompressed_bytes)
            };
            return partial_failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body is larger than the limit of {limit}; {accepted} records before the cut were accepted"
                ),
                response(accepted, rejected),
            );
        }
        BodyEnd::Whole => {}
    }
    match end {
        End::Complete | End::Cancelled => {}
        End::Malformed { index, message } => cut(&mut rejected, Some(index), &message),
        End::Unframable { code, message } => {
            return Outcome {
                response: ApiError::bad_request(code, message).into_response(),
                body_whole,
                accepted,
                batch: None,
            };
        }
    }
    if accepted == 0 {
        let answer = if rejected.total == 0 {
            Some(ApiError::bad_request(
                "empty_body",
                "the body holds no records",
            ))
        } else if format == Format::Ndjson && rejected.all(ErrorCode::InvalidJson) {
            Some(ApiError::bad_request(
                "invalid_body",
                "no line of the body is a JSON object",
            ))
        } else {
            None
        };
        if let Some(answer) = answer {
            return Outcome {
                response: answer.into_response(),
                body_whole,
                accepted,
                batch: None,
            };
        }
    }
    info!(
        batch_id = %batch_id,
        accepted,
        rejected = rejected.total,
        "Ingested a request."
    );
    let status = if accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let body = response(accepted, rejected);
    Outcome {
        batch: Some(Counts::of(&body)),
        response: (status, Json(body)).into_response(),
        body_whole,
        accepted,
    }
}

/// An error answer that still says what reached the log.
fn partial_failure(
    status: StatusCode,
    code: &'static str,
    message: String,
    body: IngestResponse,
) -> Outcome {
    let accepted = body.accepted;
    let batch = Some(Counts::of(&body));
    let mut json = serde_json::to_value(&body).unwrap_or_default();
    if let Some(fields) = json.as_object_mut() {
        fields.insert("error".into(), code.into());
        fields.insert("message".into(), message.into());
        fields.insert("request_id".into(), current_request_id().into());
    }
    let mut response = (status, Json(json)).into_response();
    let headers = response.headers_mut();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::REQUEST_TIMEOUT {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    // The rest of the body (if any) was not read.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Outcome {
        response,
        body_whole: false,
        accepted,
        batch,
    }
}

/// What the decoding thread works with.
struct Limits {
    chunk_records: usize,
    max_record: usize,
    max_listed: usize,
}

/// Runs on a blocking thread: decode, validate, wrap in envelopes, send in
/// chunks. Stops early when the receiver is gone.
fn decode_body(
    format: Format,
    reader: impl Read,
    tenant: &str,
    writer: &PackedWriter,
    headers: &spendstream_log::Headers,
    limits: Limits,
    tx: &mpsc::Sender<Vec<Record>>,
) -> Decoded {
    let mut rejected = Rejections::new(limits.max_listed);
    let mut chunk = Vec::with_capacity(limits.chunk_records);
    let mut open = true;
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut end = decode::decode(format, &mut reader, limits.max_record, &mut |item| {
        match item {
            Item::Reject { index, error } => rejected.push(index, error),
            // Checked and packed from the text it borrows, so processors
            // need not read the JSON again.
            Item::Record { index, json } => match RecordView::from_json(&json) {
                Ok(record) => {
                    chunk.push(Record {
                        key: identity_key(tenant, &record.source, &record.external_id).into_bytes(),
                        value: writer.write(&record),
                        headers: headers.clone(),
                    });
                    if chunk.len() >= limits.chunk_records {
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(limits.chunk_records));
                        open = tx.blocking_send(full).is_ok();
                    }
                }
                Err(error) => rejected.push(index, error),
            },
        }
        open
    });
    if open && !chunk.is_empty() && tx.blocking_send(chunk).is_err() {
        end = End::Cancelled;
    }
    if open {
        // Read what the decoder left (after a break, or trailing bytes) so
        // the idempotency fingerprint covers the whole body and a body that
        // is cut off or too slow is noticed.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    }
    Decoded { end, rejected }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_list_a_bounded_number_and_count_all() {
        let mut r = Rejections::new(2);
        for i in 0..5 {
            let code = if i % 2 == 0 {
                ErrorCode::InvalidJson
            } else {
                ErrorCode::PanDetected
            };
            r.push(i, RecordError::new(code, None, "x"));
        }
        assert_eq!((r.listed.len(), r.total, r.truncated), (2, 5, true));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rejected_total"], 5);
        assert_eq!(json["rejected_by_code"]["invalid_json"], 3);
        assert_eq!(json["rejected_by_code"]["pan_detected"], 2);
        assert_eq!(json["rejected_truncated"], true);
        assert_eq!(json["rejected"].as_array().unwrap().len(), 2);
        assert!(!r.all(ErrorCode::InvalidJson));
    }
}
