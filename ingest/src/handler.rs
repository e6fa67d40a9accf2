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
use spendstream_http::request_id::current_request_id;
use spendstream_http::{ApiError, Auth, Role};
use spendstream_log::Record;
use spendstream_schemas::{EnvelopeWriter, ErrorCode, ExpenseRecord, RecordError, identity_key};
use std::io::{BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::{info, instrument};

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

    let tenant = auth.tenant().to_string();
    let request_id = current_request_id();
    let batch_id = uuid::Uuid::new_v4().to_string();
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
        decode_body(format, limited, &tenant, &writer, chunk_records, &tx)
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
    chunk_records: usize,
    tx: &mpsc::Sender<Vec<Record>>,
) -> Decoded {
    let mut rejected = Vec::new();
    let mut chunk = Vec::with_capacity(chunk_records);
    let mut open = true;
    let reader = BufReader::with_capacity(256 * 1024, reader);
    let mut end = decode::decode(format, reader, &mut |item| {
        match item {
            Item::Reject { index, error } => rejected.push(Rejected { index, error }),
            Item::Record { index, json } => match ExpenseRecord::from_json(&json) {
                Ok(record) => {
                    chunk.push(Record {
                        key: identity_key(tenant, &record.source, &record.external_id).into_bytes(),
                        value: writer.write(&json),
                        headers: Vec::new(),
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
