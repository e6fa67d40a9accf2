//! Errors of the processors, each knowing whether a retry can help.

use spendstream_log::{Offset, Partition};

/// What can stop a processor step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log operation failed")]
    Log(#[from] spendstream_log::Error),
    #[error("lake operation failed")]
    Lake(#[from] spendstream_lake::Error),
    #[error("could not build the Arrow batch")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("ClickHouse")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("reading the exchange rates from the state store")]
    State(#[from] spendstream_state::Error),
    #[error("the exchange rates stored for `{scope}` do not read: {reason}")]
    FxRates { scope: String, reason: String },
    #[error("a row ClickHouse cannot hold reached the insert: {0}")]
    ClickHouseRow(String),
    /// A sink refused these rows of a batch (positions in what it was
    /// given, with its reasons) and recorded nothing: they become dead
    /// letters and the batch is written again without them.
    #[error("the {sink} refused {} rows", rows.len())]
    RowsRefused {
        sink: &'static str,
        rows: Vec<(usize, String)>,
    },
    #[error(
        "ClickHouse migration {version} (\"{name}\") was applied with other statements than this \
         build has; the database differs from what the code expects"
    )]
    MigrationChanged { version: u32, name: &'static str },
    #[error(
        "the ClickHouse database has migration {version}, but this build knows only up to \
         {known}: run a newer Spendstream"
    )]
    MigrationsAhead { version: u32, known: u32 },
    #[error(
        "the ClickHouse database is behind: migrations {pending} are not applied; run \
         `spendstream migrate --clickhouse <url>` or start with --migrate"
    )]
    MigrationsBehind { pending: String },
    #[error(
        "the {sink} holds offsets up to {version} of partition {partition} of log {log_id} for group \
         `{group}`, but that partition of the log ends at offset {end}: the log was restored from \
         an older copy or recreated under the same identity, and its new records would be skipped \
         as replays; see docs/runbooks/incidents.md (\"Log behind the lake\")"
    )]
    LogBehindLake {
        sink: &'static str,
        group: String,
        log_id: String,
        partition: Partition,
        version: Offset,
        end: Offset,
    },
    #[error(
        "group `{group}` has committed offset {committed} of partition {partition}, but the log \
         ends at offset {end}: the topic was recreated (or the log replaced) while the group's \
         offsets were kept; see docs/runbooks/incidents.md (\"Log behind the lake\")"
    )]
    LogBehindGroup {
        group: String,
        partition: Partition,
        committed: Offset,
        end: Offset,
    },
}

impl Error {
    /// A short fixed word for the `error_type` label of
    /// `spendstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Log(e) => e.kind(),
            Error::Lake(e) => e.kind(),
            Error::Arrow(_) => "arrow",
            Error::State(e) => e.kind(),
            Error::FxRates { .. } => "fx_rates",
            Error::ClickHouse(e) if clickhouse_transient(e) => "unavailable",
            Error::ClickHouse(_) => "clickhouse",
            Error::ClickHouseRow(_) | Error::RowsRefused { .. } => "rows_refused",
            Error::MigrationChanged { .. }
            | Error::MigrationsAhead { .. }
            | Error::MigrationsBehind { .. } => "migrations",
            Error::LogBehindLake { .. } | Error::LogBehindGroup { .. } => "log_behind",
        }
    }

    /// Whether retrying the same step may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Log(e) => e.is_transient(),
            Error::Lake(e) => e.is_transient(),
            Error::ClickHouse(e) => clickhouse_transient(e),
            Error::State(e) => e.is_transient(),
            Error::Arrow(_)
            | Error::FxRates { .. }
            | Error::LogBehindLake { .. }
            | Error::LogBehindGroup { .. }
            | Error::ClickHouseRow(_)
            | Error::RowsRefused { .. }
            | Error::MigrationChanged { .. }
            | Error::MigrationsAhead { .. }
            | Error::MigrationsBehind { .. } => false,
        }
    }
}

/// ClickHouse exception codes no retry fixes: the request or the schema is
/// wrong, or the credentials are.
const PERMANENT_CLICKHOUSE_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    16,  // NO_SUCH_COLUMN_IN_TABLE
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    47,  // UNKNOWN_IDENTIFIER
    53,  // TYPE_MISMATCH
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    81,  // UNKNOWN_DATABASE
    115, // UNKNOWN_SETTING
    117, // INCORRECT_DATA
    164, // READONLY
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    469, // VIOLATED_CONSTRAINT
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// The exception code in a ClickHouse error message (`Code: 60, …`).
pub(crate) fn exception_code(message: &str) -> Option<u32> {
    message
        .split("Code: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
}

/// Whether a ClickHouse client error may pass on retry: network failures
/// and timeouts do, and server exceptions other than the permanent ones
/// (too many parts, memory limits, a server starting up).
fn clickhouse_transient(error: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match error {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(message) => {
            !exception_code(message).is_some_and(|c| PERMANENT_CLICKHOUSE_CODES.contains(&c))
        }
        _ => false,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_errors_classify_themselves() {
        let bad = |m: &str| Error::ClickHouse(clickhouse::error::Error::BadResponse(m.into()));
        assert!(
            !bad("Code: 60, e.displayText() = DB::Exception: Table x doesn't exist").is_transient()
        );
        assert!(!bad("Code: 516. DB::Exception: default: Authentication failed").is_transient());
        assert!(
            bad("Code: 241, e.displayText() = DB::Exception: Memory limit exceeded").is_transient()
        );
        assert!(!bad("Code: 117. DB::Exception: Incorrect data").is_transient());
        assert!(Error::ClickHouse(clickhouse::error::Error::TimedOut).is_transient());
    }
}
