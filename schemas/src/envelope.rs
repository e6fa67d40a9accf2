//! The envelope a record travels in through the log: the record's original
//! JSON text plus what the edge knew when it accepted it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The envelope version the edge writes (also sent as a Kafka header):
/// the packed record, [`crate::packed`].
pub const ENVELOPE_VERSION: u8 = crate::packed::PACKED_VERSION;

/// Version of the JSON envelope, which earlier edges wrote; still read.
pub const JSON_ENVELOPE_VERSION: u8 = 1;

/// One log entry's value in the JSON envelope (version 1), which earlier
/// edges wrote: the record as the raw JSON the importer sent (CSV
/// rows as a JSON object of strings), which processors validate again.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// Envelope schema version.
    pub v: u8,
    #[serde(borrow)]
    pub tenant_id: Cow<'a, str>,
    #[serde(borrow)]
    pub batch_id: Cow<'a, str>,
    #[serde(borrow)]
    pub request_id: Cow<'a, str>,
    /// When the edge accepted the record, microseconds since the epoch (UTC).
    pub ingested_at_us: i64,
    #[serde(borrow)]
    pub record: &'a RawValue,
}

impl<'a> Envelope<'a> {
    pub fn to_vec(&self) -> Vec<u8> {
        // A struct of strings, integers and already-valid raw JSON cannot fail
        // to serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_slice(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The envelope's fields and its record's text, reading the record's
    /// bytes once instead of twice (as [`Envelope::from_slice`] and then the
    /// record's own parse do). In the layout [`EnvelopeWriter`] and
    /// [`Envelope::to_vec`] write, the record comes last and is the text
    /// between `"record":` and the closing brace: it is not checked to be
    /// JSON here. The caller parses it, and when that fails asks
    /// [`Envelope::from_slice`] whether the entry is an envelope at all.
    /// Other layouts are read in full.
    pub fn split(bytes: &'a [u8]) -> Result<(EnvelopeHead<'a>, &'a str), serde_json::Error> {
        if let Some(split) = split_written(bytes) {
            return Ok(split);
        }
        Self::from_slice(bytes).map(Self::into_parts)
    }

    /// The head and the record's text.
    fn into_parts(self) -> (EnvelopeHead<'a>, &'a str) {
        let head = EnvelopeHead {
            v: self.v,
            tenant_id: self.tenant_id,
            batch_id: self.batch_id,
            request_id: self.request_id,
            ingested_at_us: self.ingested_at_us,
        };
        (head, self.record.get())
    }
}

/// The head of an envelope of either version and its record as JSON text
/// (the importer's own in version 1, [`ExpenseRecord::to_wire_json`] of
/// the packed record in version 2); `None` when the bytes are neither.
/// For what shows or replays a stored entry; processors read entries with
/// [`Envelope::split`] and [`crate::packed::unpack`].
///
/// [`ExpenseRecord::to_wire_json`]: crate::ExpenseRecordOf::to_wire_json
pub fn open(bytes: &[u8]) -> Option<(EnvelopeHead<'_>, Cow<'_, str>)> {
    if bytes.first() == Some(&crate::packed::PACKED_VERSION) {
        let packed = crate::packed::unpack(bytes).ok()?;
        return Some((packed.head, Cow::Owned(packed.record.to_wire_json())));
    }
    let (head, record) = Envelope::from_slice(bytes).ok()?.into_parts();
    Some((head, Cow::Borrowed(record)))
}

/// The head of an envelope of either version, its record unread; `None`
/// when the bytes are neither.
pub fn head(bytes: &[u8]) -> Option<EnvelopeHead<'_>> {
    if bytes.first() == Some(&crate::packed::PACKED_VERSION) {
        return crate::packed::unpack_head(bytes).ok().map(|(head, _)| head);
    }
    Envelope::from_slice(bytes).ok().map(|e| e.into_parts().0)
}

/// An [`Envelope`] without its record.
#[derive(Debug, PartialEq, Eq)]
pub struct EnvelopeHead<'a> {
    pub v: u8,
    pub tenant_id: Cow<'a, str>,
    pub batch_id: Cow<'a, str>,
    pub request_id: Cow<'a, str>,
    pub ingested_at_us: i64,
}

/// [`Envelope::split`] of the layout the edge writes; `None` for any other.
fn split_written(bytes: &[u8]) -> Option<(EnvelopeHead<'_>, &str)> {
    let mut at = Cursor(bytes);
    at.tag(b"{\"v\":")?;
    let v = u8::try_from(at.int()?).ok()?;
    at.tag(b",\"tenant_id\":")?;
    let tenant_id = at.string()?;
    at.tag(b",\"batch_id\":")?;
    let batch_id = at.string()?;
    at.tag(b",\"request_id\":")?;
    let request_id = at.string()?;
    at.tag(b",\"ingested_at_us\":")?;
    let ingested_at_us = at.int()?;
    at.tag(b",\"record\":")?;
    // JSON's whitespace only (`str::trim` also takes Unicode spaces).
    let json_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let record = std::str::from_utf8(at.0)
        .ok()?
        .trim_end_matches(json_space)
        .strip_suffix('}')?
        .trim_matches(json_space);
    let head = EnvelopeHead {
        v,
        tenant_id,
        batch_id,
        request_id,
        ingested_at_us,
    };
    Some((head, record))
}

/// What is left to read of an envelope.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn tag(&mut self, tag: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(tag)?;
        Some(())
    }

    /// An integer as JSON writes it (no leading zeros, no sign but `-`).
    fn int(&mut self) -> Option<i64> {
        let sign = usize::from(self.0.first() == Some(&b'-'));
        let digits = self.0[sign..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        // serde_json reads `-0` as a float, not an integer.
        if self.0[sign] == b'0' && (digits > 1 || sign == 1) {
            return None;
        }
        let (number, rest) = self.0.split_at(sign + digits);
        self.0 = rest;
        std::str::from_utf8(number).ok()?.parse().ok()
    }

    /// A JSON string: borrowed when it holds no escape, else unescaped by
    /// serde_json (which also refuses what JSON does not allow).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let body = self.0.strip_prefix(b"\"")?;
        // Ids hold no escapes: the first quote or backslash is the end.
        let first = body.iter().position(|&b| b == b'"' || b == b'\\')?;
        let len = if body[first] == b'"' {
            first
        } else {
            let mut escaped = false;
            first
                + body[first..].iter().position(|&b| {
                    let end = b == b'"' && !escaped;
                    escaped = b == b'\\' && !escaped;
                    end
                })?
        };
        let (token, rest) = self.0.split_at(len + 2);
        self.0 = rest;
        let inner = &body[..len];
        if inner.contains(&b'\\') || inner.iter().any(|&b| b < 0x20) {
            return serde_json::from_slice::<String>(token).ok().map(Cow::Owned);
        }
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

/// Writes envelopes for many records of one request without re-parsing the
/// records: the common prefix is serialised once, the record's JSON text is
/// appended as is. The caller guarantees `record_json` is one valid JSON
/// object (validation parsed it).
#[derive(Debug, Clone)]
pub struct EnvelopeWriter {
    prefix: Vec<u8>,
}

impl EnvelopeWriter {
    pub fn new(tenant_id: &str, batch_id: &str, request_id: &str, ingested_at_us: i64) -> Self {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let prefix = format!(
            r#"{{"v":{JSON_ENVELOPE_VERSION},"tenant_id":{},"batch_id":{},"request_id":{},"ingested_at_us":{ingested_at_us},"record":"#,
            q(tenant_id),
            q(batch_id),
            q(request_id),
        );
        Self {
            prefix: prefix.into_bytes(),
        }
    }

    pub fn write(&self, record_json: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + record_json.len() + 1);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(record_json.trim().as_bytes());
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_output_parses_as_envelope() {
        let w = EnvelopeWriter::new("t\"1", "b", "r", 7);
        let bytes = w.write(" {\"a\": [1, 2.50]}\n");
        let env = Envelope::from_slice(&bytes).unwrap();
        assert_eq!(env.tenant_id, "t\"1");
        assert_eq!(env.ingested_at_us, 7);
        assert_eq!(env.record.get(), "{\"a\": [1, 2.50]}");
    }

    /// The quick read and the full one agree on what the edge writes,
    /// escapes included, and other layouts are read in full.
    #[test]
    fn split_matches_the_full_read() {
        let w = EnvelopeWriter::new("t1", "b\"\\é\n", "r\u{1}", -7);
        let bytes = w.write(" {\"a\": [1, \"}\"]}\n");
        assert!(split_written(&bytes).is_some());
        let (head, record) = Envelope::split(&bytes).unwrap();
        let full = Envelope::from_slice(&bytes).unwrap();
        assert_eq!(record, full.record.get());
        assert_eq!(record, "{\"a\": [1, \"}\"]}");
        assert_eq!(
            (
                head.v,
                head.tenant_id,
                head.batch_id,
                head.request_id,
                head.ingested_at_us
            ),
            (
                full.v,
                full.tenant_id,
                full.batch_id,
                full.request_id,
                full.ingested_at_us
            )
        );
        let other = br#"{"record":{"a":1},"v":1,"tenant_id":"t","batch_id":"b","request_id":"r","ingested_at_us":5}"#;
        assert!(split_written(other).is_none());
        let (head, record) = Envelope::split(other).unwrap();
        assert_eq!((head.batch_id.as_ref(), record), ("b", r#"{"a":1}"#));
        for bad in [
            &br#"{"v":1,"tenant_id":"t","batch_id":"b","request_id":"r","ingested_at_us":-0,"record":{}}"#[..],
            "{\"v\":1,\"tenant_id\":\"t\",\"batch_id\":\"b\",\"request_id\":\"r\",\"ingested_at_us\":5,\"record\":{}}\u{a0}".as_bytes(),
            br#"{"v":01,"tenant_id":"t","batch_id":"b","request_id":"r","ingested_at_us":5,"record":{}}"#,
            br#"{"v":1,"tenant_id":"t,"batch_id":"b","request_id":"r","ingested_at_us":5,"record":{}}"#,
        ] {
            assert!(split_written(bad).is_none(), "{}", String::from_utf8_lossy(bad));
            assert!(Envelope::split(bad).is_err());
        }
        // The record's text is the caller's to check: cut short, the
        // entry splits, its record does not parse, and the full read says
        // the entry is no envelope.
        let cut = br#"{"v":1,"tenant_id":"t","batch_id":"b","request_id":"r","ingested_at_us":5,"record":{}"#;
        assert_eq!(Envelope::split(cut).unwrap().1, "{");
        assert!(Envelope::from_slice(cut).is_err());
    }

    proptest::proptest! {
        /// Any ids the edge may write read back the same both ways.
        #[test]
        fn split_reads_any_ids(batch in "\\PC{0,40}", request in ".{0,40}", at in proptest::num::i64::ANY) {
            let bytes = EnvelopeWriter::new("t1", &batch, &request, at).write("{}");
            proptest::prop_assert!(split_written(&bytes).is_some());
            let (head, record) = Envelope::split(&bytes).unwrap();
            let full = Envelope::from_slice(&bytes).unwrap();
            proptest::prop_assert_eq!(record, full.record.get());
            proptest::prop_assert_eq!(
                (head.batch_id, head.request_id, head.ingested_at_us),
                (full.batch_id, full.request_id, full.ingested_at_us)
            );
        }
    }

    /// Either version opens to its head and a record any edge reads back.
    #[test]
    fn both_versions_open() {
        let raw = r#"{"source":"s","external_id":"x1","account_id":"a","transaction_date":"2026-01-01","amount":"1.50","currency":"USD"}"#;
        let json = EnvelopeWriter::new("acme", "b1", "r1", 5).write(raw);
        let record = crate::ExpenseRecord::from_json(raw).unwrap();
        let packed = crate::PackedWriter::new("acme", "b1", "r1", 5).write(&record);
        let (head, text) = open(&json).unwrap();
        assert_eq!((head.v, text.as_ref()), (JSON_ENVELOPE_VERSION, raw));
        let (head, text) = open(&packed).unwrap();
        assert_eq!(
            (head.v, head.tenant_id.as_ref(), head.batch_id.as_ref()),
            (ENVELOPE_VERSION, "acme", "b1")
        );
        assert_eq!(crate::ExpenseRecord::from_json(&text).unwrap(), record);
        assert!(open(b"not an envelope").is_none());
        assert!(open(&packed[..packed.len() - 1]).is_none());
        // The head alone, even of a record cut short.
        for bytes in [&json[..], &packed[..], &packed[..packed.len() - 1]] {
            assert_eq!(super::head(bytes).unwrap().batch_id, "b1");
        }
        assert!(super::head(b"not an envelope").is_none());
    }

    #[test]
    fn round_trip_keeps_raw_record_text() {
        let raw = RawValue::from_string(r#"{"amount":12.30}"#.to_string()).unwrap();
        let env = Envelope {
            v: JSON_ENVELOPE_VERSION,
            tenant_id: "t1".into(),
            batch_id: "b".into(),
            request_id: "r".into(),
            ingested_at_us: 42,
            record: &raw,
        };
        let bytes = env.to_vec();
        let back = Envelope::from_slice(&bytes).unwrap();
        assert_eq!(back.record.get(), r#"{"amount":12.30}"#);
        assert_eq!(back.tenant_id, "t1");
        assert_eq!(back.ingested_at_us, 42);
    }
}
