//! Record-level rejection reasons: stable machine-readable codes that appear
//! in HTTP responses and in dead letters.

use serde::Serialize;
use std::fmt;

/// A stable code for why one record was rejected. The string forms are part
/// of the public API: never rename one, only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one record was rejected: a code, the field it concerns and a sentence
/// for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RecordError {
    #[serde(rename = "error")]
    pub code: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    pub message: String,
}

impl RecordError {
    pub fn new(code: ErrorCode, field: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            code,
            field,
            message: message.into(),
        }
    }

    pub fn field(code: ErrorCode, field: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, Some(field), message)
    }
}
