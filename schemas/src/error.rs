//! Record-level rejection reasons: stable machine-readable codes that appear
//! in HTTP responses and in dead letters.

use serde::Serialize;
use std::fmt;

/// A stable code for why one record was rejected. The string forms are part
/// of the public API: never rename one, only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The record is not a JSON object (or the NDJSON line is not JSON).
    InvalidJson,
    /// The body's framing broke before this record; it and any after it were
    /// not read.
    MalformedBody,
    MissingField,
    UnknownField,
    /// A field has the wrong JSON type or an unusable value.
    InvalidField,
    FieldTooLong,
    InvalidCurrency,
    /// Not a decimal number (`"abc"`, `"NaN"`, `"1,000"`).
    InvalidAmount,
    /// More decimal places than the currency's minor unit.
    AmountPrecision,
    /// Does not fit in 64-bit minor units.
    AmountOverflow,
    InvalidDate,
    InvalidMcc,
    InvalidStatus,
    InvalidCategory,
    InvalidMetadata,
    /// A value looks like a card number; PANs are never stored.
    PanDetected,
    /// The log holds an envelope this version cannot read.
    InvalidEnvelope,
    /// One record (an NDJSON line, a JSON array element, a CSV row, a bank
    /// file's entry) is larger than the per-record limit; it was skipped,
    /// not buffered.
    RecordTooLarge,
    /// A field appears twice in one record.
    DuplicateField,
    /// A sink could not hold a valid record (a value outside what its
    /// storage represents); the record is a dead letter for that sink.
    SinkRefused,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::FieldTooLong => "field_too_long",
            ErrorCode::InvalidCurrency => "invalid_currency",
            ErrorCode::InvalidAmount => "invalid_amount",
            ErrorCode::AmountPrecision => "amount_precision",
            ErrorCode::AmountOverflow => "amount_overflow",
            ErrorCode::InvalidDate => "invalid_date",
            ErrorCode::InvalidMcc => "invalid_mcc",
            ErrorCode::InvalidStatus => "invalid_status",
            ErrorCode::InvalidCategory => "invalid_category",
            ErrorCode::InvalidMetadata => "invalid_metadata",
            ErrorCode::PanDetected => "pan_detected",
            ErrorCode::InvalidEnvelope => "invalid_envelope",
            ErrorCode::RecordTooLarge => "record_too_large",
            ErrorCode::DuplicateField => "duplicate_field",
            ErrorCode::SinkRefused => "sink_refused",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one record was rejected: a code, the field it concerns and a sentence
/// for people. The sentence never carries a card number: anything in it that
/// looks like one (an echoed value, a parser's quote of the input) is masked
/// when the error is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error, utoipa::ToSchema)]
#[error("{code}: {message}")]
pub struct RecordError {
    #[serde(rename = "error")]
    pub code: ErrorCode,
    /// The field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub field: Option<&'static str>,
    pub message: String,
}

impl RecordError {
    pub fn new(code: ErrorCode, field: Option<&'static str>, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match crate::pan::mask_pans(&message) {
            std::borrow::Cow::Borrowed(_) => message,
            std::borrow::Cow::Owned(masked) => masked,
        };
        Self {
            code,
            field,
            message,
        }
    }

    pub fn field(code: ErrorCode, field: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, Some(field), message)
    }
}

/// Formats an error with every cause in its chain, `outer: inner: root`, for
/// log lines: a wrapper such as "writing the lake failed" says nothing about
/// why without its sources.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing the lake failed")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("commit 7 failed")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn chain_names_every_cause() {
        let e = Outer(Inner(std::io::Error::other("disk full")));
        assert_eq!(
            Chain(&e).to_string(),
            "writing the lake failed: commit 7 failed: disk full"
        );
    }

    #[test]
    fn messages_never_carry_a_card_number() {
        let e = RecordError::new(
            ErrorCode::InvalidJson,
            None,
            "invalid type: string \"4111 1111 1111 1111\", expected a map",
        );
        assert!(!crate::pan::contains_pan(&e.message), "{}", e.message);
        assert!(e.message.contains("1111\""), "{}", e.message);
    }
}
