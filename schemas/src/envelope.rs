//! The envelope a record travels in through the log: the record's original
//! JSON text plus what the edge knew when it accepted it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Current envelope schema version (also sent as a Kafka header).
pub const ENVELOPE_VERSION: u8 = 1;

/// One log entry's value. The record stays as the raw JSON the importer sent
/// (CSV rows as a JSON object of strings) so processors can validate it again
/// with their own, possibly newer, rules.
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
            r#"{{"v":{ENVELOPE_VERSION},"tenant_id":{},"batch_id":{},"request_id":{},"ingested_at_us":{ingested_at_us},"record":"#,
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

    #[test]
    fn round_trip_keeps_raw_record_text() {
        let raw = RawValue::from_string(r#"{"amount":12.30}"#.to_string()).unwrap();
        let env = Envelope {
            v: ENVELOPE_VERSION,
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
