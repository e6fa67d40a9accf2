//! Envelope version 2: the record as the edge validated it, packed, so
//! processors read it without parsing or checking it again
//! ([ADR 0017](../../docs/adr/0017-processors-trust-the-validated-record.md)).
//!
//! Version 1 (a JSON envelope around the importer's text, [`crate::envelope`])
//! is still read. A JSON envelope starts with `{`; a packed one with the
//! byte 2, which no JSON text starts with.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! u8  version = 2
//! u16 rules: the RULES_VERSION the edge validated under
//! str tenant_id, str batch_id, str request_id
//! i64 ingested_at_us
//! str source, str external_id, str account_id, str status
//! opt str related_external_id
//! i32 transaction_date, days from 0001-01-01 (CE)
//! opt (i64 seconds, u32 nanoseconds) posted_at, UTC
//! money amount
//! opt money billed
//! opt str merchant_name
//! opt u16 merchant_mcc
//! opt str employee_id
//! opt str memo
//! u32 metadata entries, then each: str key, str value
//! opt str category
//!
//! str   = u32 length, then that many bytes of UTF-8
//! opt T = u8 0 (absent) or 1, then T
//! money = i64 minor units, then 3 bytes of ISO 4217 code
//! ```
//!
//! Status, category and currency travel as their names, not as numbers,
//! so reordering an enum never changes what an entry means.

use crate::envelope::EnvelopeHead;
use crate::{Category, Currency, ExpenseRecordOf, Money, Status};
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// First byte of a packed envelope, and its version.
pub const PACKED_VERSION: u8 = 2;

/// Version of the validation rules. An edge writes the version it checked
/// a record under; processors trust a record checked under their own
/// version and check any other again. Raise it whenever a record valid
/// before may no longer be (a new limit, a new check).
pub const RULES_VERSION: u16 = 1;

/// Writes the packed envelopes of one request's records: the head is
/// encoded once.
#[derive(Debug, Clone)]
pub struct PackedWriter {
    prefix: Vec<u8>,
}

impl PackedWriter {
    pub fn new(tenant_id: &str, batch_id: &str, request_id: &str, ingested_at_us: i64) -> Self {
        Self::with_rules(
            RULES_VERSION,
            tenant_id,
            batch_id,
            request_id,
            ingested_at_us,
        )
    }

    /// A writer that says its records were checked under `rules`: what an
    /// edge of another version writes.
    pub fn with_rules(
        rules: u16,
        tenant_id: &str,
        batch_id: &str,
        request_id: &str,
        ingested_at_us: i64,
    ) -> Self {
        let mut prefix = vec![PACKED_VERSION];
        prefix.extend_from_slice(&rules.to_le_bytes());
        for id in [tenant_id, batch_id, request_id] {
            put_str(&mut prefix, id);
        }
        prefix.extend_from_slice(&ingested_at_us.to_le_bytes());
        Self { prefix }
    }

    /// The envelope of `record`, which the caller validated.
    pub fn write<S: AsRef<str>>(&self, record: &ExpenseRecordOf<S>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + 256);
        out.extend_from_slice(&self.prefix);
        pack(record, &mut out);
        out
    }
}

/// A packed envelope read back: its head, the rules its record was
/// checked under, and the record.
#[derive(Debug)]
pub struct Unpacked<'a, S = String> {
    pub head: EnvelopeHead<'a>,
    pub rules: u16,
    pub record: ExpenseRecordOf<S>,
}

/// Why bytes are not a packed envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a packed envelope: {0}")]
pub struct UnpackError(&'static str);

/// Reads a packed envelope. Only the layout is checked (lengths, UTF-8,
/// names of statuses, categories and currencies, dates that exist), not
/// the validation rules: the rules version says whether they were applied.
pub fn unpack(bytes: &[u8]) -> Result<Unpacked<'_>, UnpackError> {
    let Unpacked {
        head,
        rules,
        record,
    } = unpack_borrowed(bytes)?;
    Ok(Unpacked {
        head,
        rules,
        record: record.map_text(str::to_owned),
    })
}

/// [`unpack`] with the record's text borrowed from `bytes`: what
/// processors read, with no copy of a field until it goes into a sink.
pub fn unpack_borrowed(bytes: &[u8]) -> Result<Unpacked<'_, &str>, UnpackError> {
    let mut at = Reader(bytes);
    let (head, rules) = at.head()?;
    let record = at.record()?;
    if !at.0.is_empty() {
        return Err(UnpackError("bytes after the record"));
    }
    Ok(Unpacked {
        head,
        rules,
        record,
    })
}

/// The head of a packed envelope and the rules version its record was
/// checked under, the record left unread: it may hold a name (a currency,
/// a category) this build does not know.
pub fn unpack_head(bytes: &[u8]) -> Result<(EnvelopeHead<'_>, u16), UnpackError> {
    Reader(bytes).head()
}

fn pack<S: AsRef<str>>(r: &ExpenseRecordOf<S>, out: &mut Vec<u8>) {
    let opt_str = |out: &mut Vec<u8>, s: &Option<S>| {
        put_opt(out, s.as_ref(), |out, s| put_str(out, s.as_ref()));
    };
    put_str(out, r.source.as_ref());
    put_str(out, r.external_id.as_ref());
    put_str(out, r.account_id.as_ref());
    put_str(out, r.status.as_str());
    opt_str(out, &r.related_external_id);
    out.extend_from_slice(&r.transaction_date.num_days_from_ce().to_le_bytes());
    put_opt(out, r.posted_at.as_ref(), |out, t| {
        out.extend_from_slice(&t.timestamp().to_le_bytes());
        out.extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
    });
    put_money(out, &r.amount);
    put_opt(out, r.billed.as_ref(), put_money);
    opt_str(out, &r.merchant_name);
    put_opt(out, r.merchant_mcc.as_ref(), |out, m| {
        out.extend_from_slice(&m.to_le_bytes());
    });
    opt_str(out, &r.employee_id);
    opt_str(out, &r.memo);
    out.extend_from_slice(&(r.metadata.len() as u32).to_le_bytes());
    for (key, value) in &r.metadata {
        put_str(out, key.as_ref());
        put_str(out, value.as_ref());
    }
    put_opt(out, r.category_hint.as_ref(), |out, c| {
        put_str(out, c.as_str())
    });
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt<T>(out: &mut Vec<u8>, value: Option<&T>, put: impl FnOnce(&mut Vec<u8>, &T)) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put(out, v);
        }
    }
}

fn put_money(out: &mut Vec<u8>, money: &Money) {
    out.extend_from_slice(&money.minor.to_le_bytes());
    out.extend_from_slice(money.currency.code().as_bytes());
}

/// What is left to read of a packed envelope.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], UnpackError> {
        if self.0.len() < n {
            return Err(UnpackError("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], UnpackError> {
        let bytes = self.take(N)?;
        Ok(<[u8; N]>::try_from(bytes).unwrap_or([0; N]))
    }

    fn u8(&mut self) -> Result<u8, UnpackError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, UnpackError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, UnpackError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&'a str, UnpackError> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| UnpackError("text is not UTF-8"))
    }

    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, UnpackError>,
    ) -> Result<Option<T>, UnpackError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(UnpackError("optional field marker")),
        }
    }

    fn money(&mut self) -> Result<Money, UnpackError> {
        let minor = self.i64()?;
        let code = std::str::from_utf8(self.take(3)?).map_err(|_| UnpackError("currency"))?;
        let currency = Currency::from_code(code).ok_or(UnpackError("currency"))?;
        Ok(Money::new(minor, currency))
    }

    fn head(&mut self) -> Result<(EnvelopeHead<'a>, u16), UnpackError> {
        if self.u8()? != PACKED_VERSION {
            return Err(UnpackError("version"));
        }
        let rules = u16::from_le_bytes(self.array()?);
        let tenant_id = self.str()?;
        let batch_id = self.str()?;
        let request_id = self.str()?;
        let ingested_at_us = self.i64()?;
        let head = EnvelopeHead {
            v: PACKED_VERSION,
            tenant_id: Cow::Borrowed(tenant_id),
            batch_id: Cow::Borrowed(batch_id),
            request_id: Cow::Borrowed(request_id),
            ingested_at_us,
        };
        Ok((head, rules))
    }

    fn record(&mut self) -> Result<ExpenseRecordOf<&'a str>, UnpackError> {
        let source = self.str()?;
        let external_id = self.str()?;
        let account_id = self.str()?;
        let status: Status = self.str()?.parse().map_err(|_| UnpackError("status"))?;
        let related_external_id = self.opt(Self::str)?;
        let days = i32::from_le_bytes(self.array()?);
        let transaction_date =
            NaiveDate::from_num_days_from_ce_opt(days).ok_or(UnpackError("transaction date"))?;
        let posted_at = self.opt(|at| {
            let seconds = at.i64()?;
            let nanos = at.u32()?;
            DateTime::from_timestamp(seconds, nanos).ok_or(UnpackError("posted_at"))
        })?;
        let amount = self.money()?;
        let billed = self.opt(Self::money)?;
        let merchant_name = self.opt(Self::str)?;
        let merchant_mcc = self.opt(|at| Ok(u16::from_le_bytes(at.array()?)))?;
        let employee_id = self.opt(Self::str)?;
        let memo = self.opt(Self::str)?;
        let entries = self.u32()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..entries {
            let key = self.str()?;
            metadata.insert(key, self.str()?);
        }
        if metadata.len() != entries as usize {
            return Err(UnpackError("a metadata key twice"));
        }
        let category_hint = self.opt(|at| {
            at.str()?
                .parse::<Category>()
                .map_err(|_| UnpackError("category"))
        })?;
        Ok(ExpenseRecordOf {
            source,
            external_id,
            account_id,
            status,
            related_external_id,
            transaction_date,
            posted_at,
            amount,
            billed,
            merchant_name,
            merchant_mcc,
            employee_id,
            memo,
            metadata,
            category_hint,
        })
    }
}

impl<S: AsRef<str>> ExpenseRecordOf<S> {
    /// The record as an importer would send it: JSON text that
    /// [`ExpenseRecord::from_json`] reads back to this record. Amounts are
    /// given in minor units, so nothing is rounded.
    pub fn to_wire_json(&self) -> String {
        let mut o = Map::new();
        let mut text = |name: &str, value: Option<&str>| {
            if let Some(v) = value {
                o.insert(name.into(), Value::String(v.into()));
            }
        };
        text("source", Some(self.source.as_ref()));
        text("external_id", Some(self.external_id.as_ref()));
        text("account_id", Some(self.account_id.as_ref()));
        text("status", Some(self.status.as_str()));
        text(
            "related_external_id",
            self.related_external_id.as_ref().map(AsRef::as_ref),
        );
        let date = self.transaction_date.format("%Y-%m-%d").to_string();
        text("transaction_date", Some(&date));
        let posted = self
            .posted_at
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        text("posted_at", posted.as_deref());
        text("currency", Some(self.amount.currency.code()));
        text(
            "billed_currency",
            self.billed.as_ref().map(|b| b.currency.code()),
        );
        text(
            "merchant_name",
            self.merchant_name.as_ref().map(AsRef::as_ref),
        );
        text("employee_id", self.employee_id.as_ref().map(AsRef::as_ref));
        text("memo", self.memo.as_ref().map(AsRef::as_ref));
        text("category", self.category_hint.map(|c| c.as_str()));
        o.insert("amount_minor".into(), self.amount.minor.into());
        if let Some(billed) = &self.billed {
            o.insert("billed_amount_minor".into(), billed.minor.into());
        }
        if let Some(mcc) = self.merchant_mcc {
            o.insert("merchant_mcc".into(), mcc.into());
        }
        if !self.metadata.is_empty() {
            let metadata = self
                .metadata
                .iter()
                .map(|(k, v)| (k.as_ref().to_owned(), Value::String(v.as_ref().to_owned())))
                .collect();
            o.insert("metadata".into(), Value::Object(metadata));
        }
        Value::Object(o).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpenseRecord, RecordView};

    const FULL: &str = r#"{"source":"visa","external_id":"e\"1","account_id":"a","status":"reversed","related_external_id":"e0","transaction_date":"2026-08-05","posted_at":"2026-08-06T21:30:00.123456789+02:00","amount":"-1234.56","currency":"usd","billed_amount":"990","billed_currency":"JPY","merchant_name":"SQ *BLUE","merchant_mcc":"0742","employee_id":"emp-1","memo":"café 🍵","metadata":{"k":"v","n":1,"b":true},"category":"airlines"}"#;
    const SMALL: &str = r#"{"source":"s","external_id":"x","account_id":"a","transaction_date":"1970-01-01","amount_minor":-9223372036854775808,"currency":"BHD"}"#;

    #[test]
    fn a_packed_record_reads_back_the_same() {
        for raw in [FULL, SMALL] {
            let record = ExpenseRecord::from_json(raw).unwrap();
            let view = RecordView::from_json(raw).unwrap();
            let bytes = PackedWriter::new("acme", "b\"1", "r1", -7).write(&view);
            assert_eq!(bytes.first(), Some(&PACKED_VERSION));
            let back = unpack(&bytes).unwrap();
            assert_eq!(back.record, record);
            assert_eq!(back.rules, RULES_VERSION);
            assert_eq!(
                (
                    back.head.tenant_id.as_ref(),
                    back.head.batch_id.as_ref(),
                    back.head.request_id.as_ref(),
                    back.head.ingested_at_us
                ),
                ("acme", "b\"1", "r1", -7)
            );
            // The wire form is the same record again, under today's rules.
            assert_eq!(
                ExpenseRecord::from_json(&record.to_wire_json()).unwrap(),
                record
            );
        }
    }

    /// Every cut, and a changed byte where a name or marker is, is an
    /// error, never a panic or another record.
    #[test]
    fn damaged_bytes_are_refused() {
        let record = ExpenseRecord::from_json(FULL).unwrap();
        let bytes = PackedWriter::new("acme", "b", "r", 1).write(&record);
        for cut in 0..bytes.len() {
            assert!(unpack(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            unpack(&longer).unwrap_err(),
            UnpackError("bytes after the record")
        );
        let mut version = bytes.clone();
        version[0] = b'{';
        assert_eq!(unpack(&version).unwrap_err(), UnpackError("version"));
        let status_at = bytes.windows(8).position(|w| w == b"reversed").unwrap();
        let mut status = bytes.clone();
        status[status_at] = b'R';
        assert_eq!(unpack(&status).unwrap_err(), UnpackError("status"));
        let mut currency = bytes.clone();
        let usd_at = bytes.windows(3).position(|w| w == b"USD").unwrap();
        currency[usd_at] = b'X';
        assert_eq!(unpack(&currency).unwrap_err(), UnpackError("currency"));
    }

    proptest::proptest! {
        /// Any record validation accepts survives the log and its wire
        /// form: packed and read back, and sent again as JSON.
        #[test]
        fn any_valid_record_round_trips(
            ids in proptest::collection::vec("[a-z0-9_.-]{1,10}|[a-z\"\\\\\u{e9}\u{1f375}]{1,6}", 3),
            texts in proptest::collection::vec(proptest::option::of("\\PC{1,30}"), 4),
            status in proptest::sample::select(Status::ALL.to_vec()),
            day in 0i64..83_000,
            minor in proptest::num::i64::ANY,
            billed in proptest::option::of(proptest::num::i64::ANY),
            currency in proptest::sample::select(vec!["USD", "JPY", "BHD", "CLF", "EUR"]),
            posted in proptest::option::of(0i64..7_258_118_399),
            nanos in 0u32..1_000_000_000,
            mcc in proptest::option::of(0u16..10_000),
            metadata in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,20}", 0..5),
            category in proptest::option::of(proptest::sample::select(Category::ALL.to_vec())),
        ) {
            let date = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Days::new(day as u64);
            let mut o = serde_json::json!({
                "source": ids[0], "external_id": ids[1], "account_id": ids[2],
                "status": status.as_str(), "transaction_date": date.format("%Y-%m-%d").to_string(),
                "amount_minor": minor, "currency": currency, "metadata": metadata,
            });
            for (name, text) in ["memo", "merchant_name", "employee_id", "related_external_id"].iter().zip(texts) {
                if let Some(t) = text { o[name] = t.into(); }
            }
            if let Some(b) = billed {
                o["billed_amount_minor"] = b.into();
                o["billed_currency"] = "JPY".into();
            }
            if let Some(s) = posted {
                let t = DateTime::from_timestamp(s, nanos).unwrap();
                o["posted_at"] = t.to_rfc3339().into();
            }
            if let Some(m) = mcc { o["merchant_mcc"] = m.into(); }
            if let Some(c) = category { o["category"] = c.as_str().into(); }
            let Ok(record) = ExpenseRecord::from_json(&o.to_string()) else {
                // A memo that looks like a card number, say: not this test's.
                return Ok(());
            };
            let bytes = PackedWriter::new("t", "b", "r", 0).write(&record);
            proptest::prop_assert_eq!(&unpack(&bytes).unwrap().record, &record);
            proptest::prop_assert_eq!(ExpenseRecord::from_json(&record.to_wire_json()).unwrap(), record);
        }
    }
}
