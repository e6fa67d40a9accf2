//! Errors of the query service, mapped onto the shared `ApiError`.

use spendstream_http::ApiError;

/// What can go wrong answering a query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the lake failed")]
    Lake(#[from] spendstream_lake::Error),
    #[error("query failed")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("unexpected result shape: {0}")]
    Shape(String),
}

impl Error {
    /// A short fixed word for the `error_type` label of
    /// `spendstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Lake(e) => e.kind(),
            Error::DataFusion(_) => "datafusion",
            Error::Shape(_) => "shape",
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            // A retry helps only when the failure is transient (storage
            // unreachable); a table of another schema is a 500, logged.
            Error::Lake(e) if e.is_transient() => ApiError::unavailable("the lake", e),
            // A report bigger than a query's memory pool: the caller can
            // narrow it, or the operator raise --sql-memory-mb.
            Error::DataFusion(e)
                if matches!(
                    e.find_root(),
                    datafusion::error::DataFusionError::ResourcesExhausted(_)
                ) =>
            {
                ApiError::Unprocessable {
                    code: "query_memory_exceeded",
                    message: "the query needs more memory than one query may hold (--sql-memory-mb): narrow it with from/to or filters".into(),
                }
            }
            other => ApiError::internal(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn only_transient_lake_failures_invite_a_retry() {
        let transient = Error::Lake(spendstream_lake::Error::Io(std::io::Error::other("gone")));
        assert_eq!(
            ApiError::from(transient).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let permanent = Error::Lake(spendstream_lake::Error::SchemaMismatch(
            "amount_minor".into(),
        ));
        assert_eq!(
            ApiError::from(permanent).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
