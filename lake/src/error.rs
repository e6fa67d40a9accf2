//! Errors of the lake, each knowing whether a retry can help.

/// What can go wrong with the lake table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported lake URL `{0}`: expected file://<dir> or s3://bucket/prefix")]
    UnsupportedUrl(String),
    #[error(
        "lake URL `{0}` carries credentials: give them in the AWS_* environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never in the URL"
    )]
    CredentialsInUrl(String),
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
    #[error(
        "the lake table has a column this version does not know, `{0}`: compaction would drop it"
    )]
    UnknownColumn(String),
    #[error("there is no lake table at `{0}`")]
    NoTable(String),
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
        match self {
            Error::Delta(e) => delta_is_transient(e),
            Error::Io(_) | Error::Injected => true,
            Error::UnsupportedUrl(_)
            | Error::CredentialsInUrl(_)
            | Error::InvalidUrl { .. }
            | Error::Arrow(_)
            | Error::SchemaMismatch(_)
            | Error::NoTable(_)
            | Error::UnknownColumn(_)
            | Error::GenerationsExhausted => false,
        }
    }
}

impl Error {
    /// A short fixed word for the `error_type` label of
    /// `spendstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Delta(_) if self.is_commit_conflict() => "commit_conflict",
            Error::Delta(e) if delta_is_transient(e) => "storage_unavailable",
            Error::Delta(_) => "delta",
            Error::Arrow(_) => "arrow",
            Error::Io(_) => "io",
            Error::UnsupportedUrl(_) | Error::CredentialsInUrl(_) | Error::InvalidUrl { .. } => {
                "configuration"
            }
            Error::UnknownColumn(_) | Error::SchemaMismatch(_) => "schema_mismatch",
            Error::NoTable(_) => "no_table",
            Error::GenerationsExhausted => "generations_exhausted",
            Error::Injected => "injected",
        }
    }

    /// Whether this is a commit that lost to a concurrent commit it
    /// conflicts with (not an outage).
    pub fn is_commit_conflict(&self) -> bool {
        use deltalake::DeltaTableError as D;
        use deltalake::kernel::transaction::TransactionError as T;
        matches!(
            self,
            Error::Delta(D::Transaction {
                source: T::CommitConflict(_)
            })
        )
    }
}

/// Whether a delta-rs failure may pass on a retry: storage unreachable or
/// slow, or a commit race lost to another writer.
pub(crate) fn delta_is_transient(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::DeltaTableError as D;
    if let D::ObjectStore { source } = e {
        return store_is_transient(source);
    }
    matches!(
        e,
        D::Io { .. }
            | D::Transaction { .. }
            | D::VersionAlreadyExists(_)
            | D::VersionMismatch(..)
            | D::Generic(_)
            | D::GenericError { .. }
    )
}

/// Whether an object-store failure may pass: not when the store refused
/// the credentials or the request itself (a retry gets the same answer).
fn store_is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as S;
    !matches!(
        e,
        S::PermissionDenied { .. }
            | S::Unauthenticated { .. }
            | S::UnknownConfigurationKey { .. }
            | S::InvalidPath { .. }
            | S::NotSupported { .. }
            | S::NotImplemented { .. }
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn store(source: object_store::Error) -> Error {
        Error::Delta(deltalake::DeltaTableError::ObjectStore { source })
    }

    #[test]
    fn refused_credentials_are_permanent_and_outages_transient() {
        let cause = || Box::new(std::io::Error::other("x")) as _;
        let denied = store(object_store::Error::PermissionDenied {
            path: "p".into(),
            source: cause(),
        });
        let unauthenticated = store(object_store::Error::Unauthenticated {
            path: "p".into(),
            source: cause(),
        });
        let away = store(object_store::Error::Generic {
            store: "S3",
            source: cause(),
        });
        assert!(!denied.is_transient());
        assert!(!unauthenticated.is_transient());
        assert!(away.is_transient());
    }
}
