//! Errors of the query service, mapped onto the shared `ApiError`.

use spendstream_http::ApiError;

/// What can go wrong answering a query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lake unavailable")]
    Lake(#[from] spendstream_lake::Error),
    #[error("query failed")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("unexpected result shape: {0}")]
    Shape(String),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Lake(e) => ApiError::unavailable("the lake", e),
            other => ApiError::internal(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
