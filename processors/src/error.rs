//! Errors of the processors.

/// What can stop a processor step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log operation failed")]
    Log(#[from] spendstream_log::Error),
    #[error("lake operation failed")]
    Lake(#[from] spendstream_lake::Error),
    #[error("could not build the Arrow batch")]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
