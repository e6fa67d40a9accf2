//! Reads a log entry's record. A packed record the edge checked under
//! these processors' rules is trusted as it is; one checked under other
//! rules, or sent in the JSON envelope of older edges, is validated again.
//! The bytes may not even be an envelope.

use chrono::{DateTime, Utc};
use spendstream_log::{Consumed, DeadLetter};
use spendstream_schemas::{
    Envelope, ErrorCode, ExpenseRecord, JSON_ENVELOPE_VERSION, PACKED_VERSION, RULES_VERSION,
    RecordView, valid_tenant_id,
};
use std::borrow::Cow;

/// A record that passed validation, with what the envelope said about it:
/// its text borrowed from the entry where the entry holds it as it is.
#[derive(Debug)]
pub struct Valid<'a> {
    pub tenant_id: Cow<'a, str>,
    pub batch_id: Cow<'a, str>,
    pub ingested_at: DateTime<Utc>,
    pub record: RecordView<'a>,
}

/// Decodes and validates one log entry; a failure becomes a dead letter that
/// keeps the entry's original bytes.
pub fn validate<'a>(entry: &'a Consumed, group: &str) -> Result<Valid<'a>, Box<DeadLetter>> {
    let letter = |tenant: Option<String>, code: ErrorCode, message: String| {
        Box::new(DeadLetter {
            tenant_id: tenant,
            group: group.to_string(),
            partition: entry.partition,
            offset: entry.offset,
            code: code.as_str().to_string(),
            message,
            payload: entry.value.to_vec(),
        })
    };
    if entry.value.first() == Some(&PACKED_VERSION) {
        let invalid = |tenant, e: spendstream_schemas::UnpackError| {
            letter(tenant, ErrorCode::InvalidEnvelope, e.to_string())
        };
        let (head, _) =
            spendstream_schemas::unpack_head(&entry.value).map_err(|e| invalid(None, e))?;
        if !valid_tenant_id(&head.tenant_id) {
            return Err(letter(
                None,
                ErrorCode::InvalidEnvelope,
                "the envelope's tenant is not supported".into(),
            ));
        }
        // A record whose head reads is its tenant's letter, which it can
        // see: one with a name from a newer edge (a currency, a category)
        // can be replayed once the edges and processors know the name.
        let packed = spendstream_schemas::unpack_borrowed(&entry.value)
            .map_err(|e| invalid(Some(head.tenant_id.to_string()), e))?;
        let record = if packed.rules == RULES_VERSION {
            packed.record.map_text(Cow::Borrowed)
        } else {
            // Checked under other rules: checked again under these, as the
            // importer would have sent it.
            ExpenseRecord::from_json(&packed.record.to_wire_json())
                .map_err(|e| letter(Some(head.tenant_id.to_string()), e.code, e.message))?
                .map_text(Cow::Owned)
        };
        return Ok(Valid {
            tenant_id: head.tenant_id,
            batch_id: packed.head.batch_id,
            ingested_at: DateTime::from_timestamp_micros(packed.head.ingested_at_us)
                .unwrap_or_default(),
            record,
        });
    }
    // The quick read leaves the record's text unchecked: it is trusted only
    // when everything passes. Any failure reads the entry in full, which
    // decides the dead letter exactly as before the quick read existed.
    if let Ok((head, text)) = Envelope::split(&entry.value)
        && head.v == JSON_ENVELOPE_VERSION
        && valid_tenant_id(&head.tenant_id)
        && let Ok(record) = RecordView::from_json(text)
    {
        return Ok(Valid {
            tenant_id: head.tenant_id,
            batch_id: head.batch_id,
            ingested_at: DateTime::from_timestamp_micros(head.ingested_at_us).unwrap_or_default(),
            record,
        });
    }
    let envelope = Envelope::from_slice(&entry.value).map_err(|e| {
        letter(
            None,
            ErrorCode::InvalidEnvelope,
            format!("not a record envelope: {e}"),
        )
    })?;
    let tenant = envelope.tenant_id.to_string();
    if envelope.v != JSON_ENVELOPE_VERSION || !valid_tenant_id(&tenant) {
        return Err(letter(
            Some(tenant).filter(|t| valid_tenant_id(t)),
            ErrorCode::InvalidEnvelope,
            format!("envelope version {} or tenant is not supported", envelope.v),
        ));
    }
    let record = ExpenseRecord::from_json(envelope.record.get())
        .map_err(|e| letter(Some(tenant.clone()), e.code, e.message))?;
    Ok(Valid {
        tenant_id: Cow::Owned(tenant),
        batch_id: Cow::Owned(envelope.batch_id.to_string()),
        ingested_at: DateTime::from_timestamp_micros(envelope.ingested_at_us).unwrap_or_default(),
        record: record.map_text(Cow::Owned),
    })
}

/// The dead letter of a valid entry that `sink` could not hold (a value
/// outside what its storage can represent), with the sink's reason.
pub fn refused(entry: &Consumed, group: &str, sink: &str, reason: &str) -> DeadLetter {
    let tenant = spendstream_schemas::envelope::head(&entry.value)
        .map(|head| head.tenant_id.into_owned())
        .filter(|t| valid_tenant_id(t));
    DeadLetter {
        tenant_id: tenant,
        group: group.to_string(),
        partition: entry.partition,
        offset: entry.offset,
        code: ErrorCode::SinkRefused.as_str().to_string(),
        message: format!("the {sink} sink cannot hold this record: {reason}"),
        payload: entry.value.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spendstream_schemas::EnvelopeWriter;

    fn entry(value: Vec<u8>) -> Consumed {
        Consumed {
            partition: 0,
            offset: 7,
            key: Default::default(),
            value: value.into(),
            headers: Vec::new().into(),
            timestamp_ms: 0,
        }
    }

    /// A record's own error keeps its code and tenant; an entry whose
    /// record text hides a broken envelope is an envelope error.
    #[test]
    fn record_errors_and_envelope_errors_keep_their_codes() {
        let writer = EnvelopeWriter::new("acme", "b1", "r1", 5);
        let good = r#"{"source":"s","external_id":"x1","account_id":"a","transaction_date":"2026-01-01","amount":"1.00","currency":"USD"}"#;
        let written = entry(writer.write(good));
        let valid = validate(&written, "g").unwrap();
        assert_eq!((&*valid.tenant_id, &*valid.batch_id), ("acme", "b1"));
        assert_eq!(valid.record.external_id, "x1");

        let bad_amount = good.replace("1.00", "1.001");
        let letter = validate(&entry(writer.write(&bad_amount)), "g").unwrap_err();
        assert_eq!(letter.code, ErrorCode::AmountPrecision.as_str());
        assert_eq!(letter.tenant_id.as_deref(), Some("acme"));

        // A field after the record (not what the edge writes) is read in
        // full, as before.
        let late = format!(
            r#"{{"v":1,"tenant_id":"acme","batch_id":"b1","request_id":"r1","ingested_at_us":5,"record":{good},"extra":1}}"#
        );
        assert_eq!(
            validate(&entry(late.into_bytes()), "g")
                .unwrap()
                .record
                .external_id,
            "x1"
        );

        let mut cut = writer.write(good);
        cut.pop();
        let letter = validate(&entry(cut.clone()), "g").unwrap_err();
        assert_eq!(letter.code, ErrorCode::InvalidEnvelope.as_str());
        assert_eq!((letter.tenant_id, letter.payload), (None, cut));
    }

    /// A packed record checked under these rules is taken as it is; one
    /// checked under other rules is checked again, and what today's rules
    /// refuse becomes the tenant's dead letter with its original bytes.
    #[test]
    fn packed_records_are_trusted_only_under_the_same_rules() {
        use spendstream_schemas::PackedWriter;
        let raw = r#"{"source":"s","external_id":"x1","account_id":"a","transaction_date":"2026-01-01","amount":"1.00","currency":"USD","memo":"card 4111 1111 1111 1111"}"#;
        // Only a record from outside validation can hold a card number.
        let fields: serde_json::Value = serde_json::from_str(raw).unwrap();
        let mut clean = fields.clone();
        clean["memo"] = "lunch".into();
        let mut record = ExpenseRecord::from_json(&clean.to_string()).unwrap();
        record.memo = fields["memo"].as_str().map(str::to_owned);

        let now = entry(PackedWriter::new("acme", "b1", "r1", 5).write(&record));
        let valid = validate(&now, "g").unwrap();
        // Trusted as it is: read in place, not copied.
        assert!(matches!(
            (&valid.tenant_id, &valid.record.source, &valid.record.memo),
            (Cow::Borrowed(_), Cow::Borrowed(_), Some(Cow::Borrowed(_)))
        ));
        assert_eq!(valid.record.clone().map_text(Cow::into_owned), record);
        assert_eq!((&*valid.tenant_id, &*valid.batch_id), ("acme", "b1"));
        assert_eq!(valid.ingested_at.timestamp_micros(), 5);

        let older =
            PackedWriter::with_rules(RULES_VERSION - 1, "acme", "b1", "r1", 5).write(&record);
        let letter = validate(&entry(older.clone()), "g").unwrap_err();
        assert_eq!(letter.code, ErrorCode::PanDetected.as_str());
        assert_eq!(
            (letter.tenant_id.as_deref(), &letter.payload),
            (Some("acme"), &older)
        );
        record.memo = None;
        let older =
            PackedWriter::with_rules(RULES_VERSION - 1, "acme", "b1", "r1", 5).write(&record);
        assert_eq!(
            validate(&entry(older), "g")
                .unwrap()
                .record
                .map_text(Cow::into_owned),
            record
        );

        // A record that does not read is its tenant's letter; a head
        // that does not read is no one's.
        let whole = PackedWriter::new("acme", "b1", "r1", 5).write(&record);
        let mut cut = whole.clone();
        cut.pop();
        let letter = validate(&entry(cut.clone()), "g").unwrap_err();
        assert_eq!(letter.code, ErrorCode::InvalidEnvelope.as_str());
        assert_eq!(
            (letter.tenant_id.as_deref(), &letter.payload),
            (Some("acme"), &cut)
        );
        let letter = validate(&entry(whole[..12].to_vec()), "g").unwrap_err();
        assert_eq!(letter.code, ErrorCode::InvalidEnvelope.as_str());
        assert_eq!(letter.tenant_id, None);
        let foreign = PackedWriter::new("no tenant!", "b1", "r1", 5).write(&record);
        let letter = validate(&entry(foreign), "g").unwrap_err();
        assert_eq!(
            (letter.code.as_str(), letter.tenant_id),
            ("invalid_envelope", None)
        );
    }
}
