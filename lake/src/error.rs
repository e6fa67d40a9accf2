//! Errors of the lake, each knowing whether a retry can help.

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
    #[error("the lake has numbered every log generation it can (2^19)")]
    GenerationsExhausted,
    /// A failure injected by a test after a commit was written.
    #[error("injected failure after the commit was written")]
    Injected,
}

impl Error {
    /// Whether the same operation may succeed later (storage unreachable, a
    /// commit race lost to another writer) rather than a mistake no retry
    /// fixes (a bad URL, a table of another schema).
    pub fn is_transient(&self) -> bool {
        use deltalake::DeltaTableError as D;
        match self {
            Error::Delta(e) => matches!(
                e,
                D::ObjectStore { .. }
                    | D::Io { .. }
                    | D::Transaction { .. }
                    | D::VersionAlreadyExists(_)
                    | D::VersionMismatch(..)
                    | D::Generic(_)
                    | D::GenericError { .. }
            ),
            Error::Io(_) | Error::Injected => true,
            Error::UnsupportedUrl(_)
            | Error::InvalidUrl { .. }
            | Error::Arrow(_)
            | Error::SchemaMismatch(_)
            | Error::GenerationsExhausted => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
