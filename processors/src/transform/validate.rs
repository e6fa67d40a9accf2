//! Validates a log entry again: the log may hold records written by an older
//! edge, and its bytes may not even be an envelope.

use chrono::{DateTime, Utc};
use spendstream_log::{Consumed, DeadLetter};
use spendstream_schemas::{ENVELOPE_VERSION, Envelope, ErrorCode, ExpenseRecord, valid_tenant_id};

/// A record that passed validation, with what the envelope said about it.
#[derive(Debug)]
pub struct Valid {
    pub tenant_id: String,
    pub batch_id: String,
    pub ingested_at: DateTime<Utc>,
    pub record: ExpenseRecord,
}

/// Decodes and validates one log entry; a failure becomes a dead letter that
/// keeps the entry's original bytes.
pub fn validate(entry: &Consumed, group: &str) -> Result<Valid, Box<DeadLetter>> {
    let letter = |tenant: Option<String>, code: ErrorCode, message: String| {
        Box::new(DeadLetter {
            tenant_id: tenant,
            group: group.to_string(),
            partition: entry.partition,
            offset: entry.offset,
            code: code.as_str().to_string(),
            message,
            payload: entry.value.clone(),
        })
    };
    let envelope = Envelope::from_slice(&entry.value).map_err(|e| {
        letter(
            None,
            ErrorCode::InvalidEnvelope,
            format!("not a record envelope: {e}"),
        )
    })?;
    let tenant = envelope.tenant_id.to_string();
    if envelope.v != ENVELOPE_VERSION || !valid_tenant_id(&tenant) {
        return Err(letter(
            Some(tenant).filter(|t| valid_tenant_id(t)),
            ErrorCode::InvalidEnvelope,
            format!("envelope version {} or tenant is not supported", envelope.v),
        ));
    }
    let record = ExpenseRecord::from_json(envelope.record.get())
        .map_err(|e| letter(Some(tenant.clone()), e.code, e.message))?;
    let ingested_at = DateTime::from_timestamp_micros(envelope.ingested_at_us).unwrap_or_default();
    Ok(Valid {
        tenant_id: tenant,
        batch_id: envelope.batch_id.to_string(),
        ingested_at,
        record,
    })
}

/// The dead letter of a valid entry that `sink` could not hold (a value
/// outside what its storage can represent), with the sink's reason.
pub fn refused(entry: &Consumed, group: &str, sink: &str, reason: &str) -> DeadLetter {
    let tenant = Envelope::from_slice(&entry.value)
        .ok()
        .map(|e| e.tenant_id.to_string())
        .filter(|t| valid_tenant_id(t));
    DeadLetter {
        tenant_id: tenant,
        group: group.to_string(),
        partition: entry.partition,
        offset: entry.offset,
        code: ErrorCode::SinkRefused.as_str().to_string(),
        message: format!("the {sink} sink cannot hold this record: {reason}"),
        payload: entry.value.clone(),
    }
}
