//! `POST /v1/expenses`: stream-decode the body, validate each record, append
//! accepted ones to the log in chunks, answer once the log confirmed them.

use crate::IngestState;
use crate::committer::AppendError;
use crate::decode::{self, End, Format, Item};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use spendstream_http::request_id::current_request_id;
use spendstream_http::{ApiError, Auth, Role};
use spendstream_log::Claim;
use spendstream_log::Record;
use spendstream_schemas::{EnvelopeWriter, ErrorCode, ExpenseRecord, RecordError, identity_key};
use std::io::{BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::{info, instrument, warn};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// A claim whose request has not finished after this long is taken over (its
/// process died); longer than any request can take.
const IDEMPOTENCY_STALE_AFTER: Duration = Duration::from_secs(600);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of a replayed request: the same hash `ingest` computes
/// while decoding, over a body that is only read, never decoded.
async fn fingerprint_of(seed: &str, body: Body, limit: usize) -> Result<String, ApiError> {
    let mut hasher = Sha256::new();
    hasher.update(seed.as_bytes());
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("invalid_body", format!("reading the body failed: {e}"))
        })?;
        seen += chunk.len();
        if seen > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        hasher.update(&chunk);
    }
    Ok(hex(&hasher.finalize()))
}

/// One rejected record in a response.
#[derive(Debug, Serialize)]
pub struct Rejected {
    pub index: usize,
    #[serde(flatten)]
    pub error: RecordError,
}

/// The body of 202 and 422 answers (and of 413/503 past the first append).
#[derive(Debug, Serialize)]
pub struct IngestResponse {
    pub batch_id: String,
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
}

/// What the decoding thread reports at the end.
struct Decoded {
    end: End,
    rejected: Vec<Rejected>,
}

#[instrument(skip_all, fields(tenant = %auth.tenant()))]
pub async fn post_expenses(
    State(state): State<IngestState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    auth.require(Role::Ingest)?;
    // Shed load before reading anything: a 503 now is cheaper for everyone
    // than a queue that grows until requests time out.
    let _permit =
        state
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Unavailable {
                what: "the ingest edge (too many requests in flight)",
                retry_after: Duration::from_secs(1),
                source: None,
            })?;
    let config = &state.config;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = Format::from_content_type(content_type).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "{content_type}; use application/x-ndjson, application/json or text/csv"
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
    let fingerprint_seed = format!("{content_type}\n{gzip}\n");
    let Some(key) = idempotency_key else {
        return ingest(state, auth, format, gzip, body, None).await;
    };
    let store = state.log.idempotency();
    let tenant = auth.tenant().to_string();
    match store
        .claim(&tenant, &key, IDEMPOTENCY_STALE_AFTER)
        .await
        .map_err(|e| ApiError::unavailable("the idempotency store", e))?
    {
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
            let this = fingerprint_of(&fingerprint_seed, body, config.max_body_bytes).await?;
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
                header::HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(
                "idempotent-replayed",
                header::HeaderValue::from_static("true"),
            );
            return Ok(response);
        }
    }
    let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
    hasher
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .update(fingerprint_seed.as_bytes());
    let response = match ingest(state, auth, format, gzip, body, Some(hasher.clone())).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let status = response.status();
    // Only final answers are remembered; anything worth retrying frees the key.
    if status == StatusCode::ACCEPTED || status == StatusCode::UNPROCESSABLE_ENTITY {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(ApiError::internal)?;
        let fingerprint = hex(&hasher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .finalize());
        if let Err(error) = store
            .complete(&tenant, &key, &fingerprint, status.as_u16(), &bytes)
            .await
        {
            // The records are in the log; a retry with this key would be
            // held off until the claim goes stale, then re-sent as versions.
            warn!(error = %error, "Storing the idempotent response failed.");
        }
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    }
    if let Err(error) = store.release(&tenant, &key).await {
        warn!(error = %error, "Releasing an idempotency key failed.");
    }
    Ok(response)
}

/// Decodes, validates and appends the body; the answer for one request.
async fn ingest(
    state: IngestState,
    auth: Auth,
    format: Format,
    gzip: bool,
    body: Body,
    // Only requests with an Idempotency-Key pay for hashing their body.
    hasher: Option<Arc<std::sync::Mutex<Sha256>>>,
) -> Result<Response, ApiError> {
    let config = &state.config;
    let tenant = auth.tenant().to_string();
    let request_id = current_request_id();
    let batch_id = uuid::Uuid::new_v4().to_string();
    let headers = spendstream_log::expense_headers(&tenant, &batch_id, &request_id);
    let writer = EnvelopeWriter::new(
        &tenant,
        &batch_id,
        &request_id,
        chrono::Utc::now().timestamp_micros(),
    );

    // The wire limit counts bytes as they arrive (chunked bodies have no
    // Content-Length to check up front).
    let too_large = Arc::new(AtomicBool::new(false));
    let wire_limit = config.max_body_bytes as u64;
    let seen = Arc::new(AtomicU64::new(0));
    let stream = {
        let too_large = too_large.clone();
        body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            if let Some(hasher) = &hasher {
                hasher
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .update(&chunk);
            }
            if seen.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64
                > wire_limit
            {
                too_large.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("request body too large"));
            }
            Ok(chunk)
        })
    };
    let bridge = SyncIoBridge::new(StreamReader::new(stream));

    let (tx, mut rx) = mpsc::channel::<Vec<Record>>(2);
    let chunk_records = config.chunk_records.max(1);
    let decompressed_limit = config.max_decompressed_bytes as u64;
    let decoder_too_large = too_large.clone();
    let decoder = tokio::task::spawn_blocking(move || {
        let raw: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(bridge))
        } else {
            Box::new(bridge)
        };
        let limited = Limited {
            inner: raw,
            left: decompressed_limit,
            flag: decoder_too_large,
        };
        decode_body(
            format,
            limited,
            &tenant,
            &writer,
            &headers,
            chunk_records,
            &tx,
        )
    });

    // Append chunks as they come; at most two in flight keeps memory bounded
    // while the decoder works on the next one.
    let mut accepted = 0usize;
    let mut failure: Option<AppendError> = None;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    loop {
        tokio::select! {
            chunk = rx.recv(), if failure.is_none() && in_flight.len() < 2 => {
                match chunk {
                    Some(records) => {
                        let committer = state.committer.clone();
                        in_flight.push_back(async move { committer.append(records).await });
                    }
                    None if in_flight.is_empty() => break,
                    None => {}
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
        if failure.is_some() && in_flight.is_empty() {
            break;
        }
    }
    drop(rx);
    let Decoded { end, mut rejected } = decoder.await.map_err(ApiError::internal)?;

    let response = |accepted: usize, rejected: Vec<Rejected>| IngestResponse {
        batch_id: batch_id.clone(),
        accepted,
        rejected,
    };
    if let Some(error) = failure {
        metrics::counter!("spendstream_ingest_records_total", "outcome" => "accepted")
            .increment(accepted as u64);
        // The client retries the whole request; records already appended are
        // re-sent with the same identity and become versions, not duplicates.
        return Ok(partial_failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the log did not confirm every record ({error}); retry the request"),
            response(accepted, rejected),
        ));
    }
    match end {
        End::Complete | End::Cancelled => {}
        End::Malformed { index, message } => {
            if too_large.load(Ordering::Relaxed) {
                rejected.push(Rejected {
                    index,
                    error: RecordError::new(
                        ErrorCode::MalformedBody,
                        None,
                        "the body exceeded the size limit here; this record and any after it were not read",
                    ),
                });
                metrics::counter!("spendstream_ingest_records_total", "outcome" => "accepted")
                    .increment(accepted as u64);
                return Ok(partial_failure(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the body is larger than the limit ({} bytes on the wire, {} decompressed); {accepted} records before the cut were accepted",
                        config.max_body_bytes, config.max_decompressed_bytes
                    ),
                    response(accepted, rejected),
                ));
            }
            rejected.push(Rejected {
                index,
                error: RecordError::new(
                    ErrorCode::MalformedBody,
                    None,
                    format!("{message}; this record and any after it were not read"),
                ),
            });
        }
        End::Unframable { code, message } => {
            return Err(ApiError::bad_request(code, message));
        }
    }
    let n_rejected = rejected.len();
    metrics::counter!("spendstream_ingest_records_total", "outcome" => "accepted")
        .increment(accepted as u64);
    metrics::counter!("spendstream_ingest_records_total", "outcome" => "rejected")
        .increment(n_rejected as u64);
    if accepted == 0 {
        if n_rejected == 0 {
            return Err(ApiError::bad_request(
                "empty_body",
                "the body holds no records",
            ));
        }
        if format == Format::Ndjson
            && rejected
                .iter()
                .all(|r| r.error.code == ErrorCode::InvalidJson)
        {
            return Err(ApiError::bad_request(
                "invalid_body",
                "no line of the body is a JSON object",
            ));
        }
    }
    info!(batch_id = %batch_id, accepted, rejected = n_rejected, "Ingested a request.");
    let status = if accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, Json(response(accepted, rejected))).into_response())
}

/// An error answer that still says what reached the log.
fn partial_failure(
    status: StatusCode,
    code: &'static str,
    message: String,
    body: IngestResponse,
) -> Response {
    let json = serde_json::json!({
        "error": code,
        "message": message,
        "request_id": current_request_id(),
        "batch_id": body.batch_id,
        "accepted": body.accepted,
        "rejected": body.rejected,
    });
    let mut response = (status, Json(json)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// Runs on a blocking thread: decode, validate, wrap in envelopes, send in
/// chunks. Stops early when the receiver is gone.
fn decode_body(
    format: Format,
    reader: impl Read,
    tenant: &str,
    writer: &EnvelopeWriter,
    headers: &spendstream_log::Headers,
    chunk_records: usize,
    tx: &mpsc::Sender<Vec<Record>>,
) -> Decoded {
    let mut rejected = Vec::new();
    let mut chunk = Vec::with_capacity(chunk_records);
    let mut open = true;
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut end = decode::decode(format, &mut reader, &mut |item| {
        match item {
            Item::Reject { index, error } => rejected.push(Rejected { index, error }),
            Item::Record { index, json } => match ExpenseRecord::from_json(&json) {
                Ok(record) => {
                    chunk.push(Record {
                        key: identity_key(tenant, &record.source, &record.external_id).into_bytes(),
                        value: writer.write(&json),
                        headers: headers.clone(),
                    });
                    if chunk.len() >= chunk_records {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_records));
                        open = tx.blocking_send(full).is_ok();
                    }
                }
                Err(error) => rejected.push(Rejected { index, error }),
            },
        }
        open
    });
    if open && !chunk.is_empty() && tx.blocking_send(chunk).is_err() {
        end = End::Cancelled;
    }
    if open {
        // Read what the decoder left (after a break, or trailing bytes) so
        // the idempotency fingerprint covers the whole body.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    }
    Decoded { end, rejected }
}

/// Caps how many bytes a reader yields; past the cap it fails and raises
/// `flag`.
struct Limited<R> {
    inner: R,
    left: u64,
    flag: Arc<AtomicBool>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.flag.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("decompressed body too large"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
