//! Errors of the lake.

/// What can go wrong with the lake table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported lake URL `{0}`: expected file://<dir> (or s3://bucket/prefix once enabled)"
    )]
    UnsupportedUrl(String),
    #[error("invalid lake URL `{url}`")]
    InvalidUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("delta table operation failed")]
    Delta(#[from] deltalake::DeltaTableError),
    #[error("arrow conversion failed")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error("lake I/O failed")]
    Io(#[from] std::io::Error),
    #[error("the lake table's schema does not match this version: missing column `{0}`")]
    SchemaMismatch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
