//! The one HTTP error type: a single status table and a machine-readable JSON
//! body `{"error", "message", "request_id"}`.

use crate::request_id::current_request_id;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Every error an endpoint returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request cannot be read at all (400).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// Readable, but nothing in it is acceptable (422).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// No acceptable token (401); `code` says why (`token_expired`,
    /// `bad_signature`, `token_revoked`, …).
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with another one (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type `{0}`")]
    UnsupportedMediaType(String),
    /// None of the media types `Accept` lists can be produced (406).
    #[error("cannot answer as `{0}`")]
    NotAcceptable(String),
    /// The caller is over its share (429): `rate_limited` (requests in
    /// flight) or `quota_exceeded` (its rate limit); `Retry-After` says when
    /// to try.
    #[error("{message}")]
    RateLimited {
        code: &'static str,
        message: String,
        retry_after: Duration,
    },
    /// The client was too slow to send its request (408); the connection
    /// is closed.
    #[error("{message}")]
    RequestTimeout { code: &'static str, message: String },
    /// A backend (log, lake) did not answer; safe to retry (503).
    #[error("{what} is unavailable")]
    Unavailable {
        what: &'static str,
        retry_after: Duration,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Unavailable {
            what,
            retry_after: Duration::from_secs(1),
            source: Some(source.into()),
        }
    }

    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(source.into())
    }

    /// The status table.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::RequestTimeout { code, .. }
            | ApiError::Unauthenticated { code, .. }
            | ApiError::RateLimited { code, .. } => code,
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::NotAcceptable(_) => "not_acceptable",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => Some(*retry_after),
            ApiError::RequestTimeout { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error: String,
    pub message: String,
    pub request_id: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let request_id = current_request_id();
        if status.is_server_error() {
            // 5xx details go to the log, not to the client.
            let chain = spendstream_schemas::error::Chain(&self);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(error = %chain, request_id = %request_id, "Request failed; the client may retry.");
            } else {
                tracing::error!(error = %chain, request_id = %request_id, "Request failed.");
            }
        }
        let message = match &self {
            ApiError::Internal(_) => {
                "internal error; see the server log for this request id".to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: self.code().to_string(),
            message,
            request_id,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: this connection
            // cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::bad_request("invalid_json", rejection.body_text())
    }
}
