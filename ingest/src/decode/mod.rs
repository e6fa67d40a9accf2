//! Streaming body decoders: NDJSON, a JSON array, CSV, and the bank files
//! CAMT.053, BAI2 and OFX (mapped onto the record contract by `bank`). Each
//! reads from a
//! `BufRead` and hands out one record at a time, so a 100 MB body never needs
//! 100 MB of records in memory; and none buffers more than `max_record` bytes
//! of one record: a larger one is skipped and rejected with
//! `record_too_large`, and decoding goes on.

mod bai2;
mod bank;
mod camt053;
mod csv;
mod json_array;
mod markup;
mod ndjson;
mod ofx;

use spendstream_schemas::RecordError;
use std::io::BufRead;

/// Body formats, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Json,
    Csv,
    /// ISO 20022 CAMT.053 bank-to-customer statements (XML).
    Camt053,
    /// BAI2 cash-management reports.
    Bai2,
    /// OFX 1.x (SGML) and 2.x (XML) bank and credit-card statements.
    Ofx,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Ndjson,
        Format::Json,
        Format::Csv,
        Format::Camt053,
        Format::Bai2,
        Format::Ofx,
    ];

    /// The content type a body of this format is sent with.
    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Camt053 => "application/vnd.iso20022.camt.053+xml",
            Format::Bai2 => "application/x-bai2",
            Format::Ofx => "application/x-ofx",
        }
    }

    /// The format of a `Content-Type` value (parameters such as `charset`
    /// ignored), or `None` if unsupported.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines" => Some(Format::Ndjson),
            "application/json" => Some(Format::Json),
            "text/csv" | "application/csv" => Some(Format::Csv),
            "application/vnd.iso20022.camt.053+xml" | "application/xml" | "text/xml" => {
                Some(Format::Camt053)
            }
            "application/x-bai2" | "text/x-bai2" => Some(Format::Bai2),
            "application/x-ofx" | "application/ofx" | "application/vnd.intu.qfx" => {
                Some(Format::Ofx)
            }
            _ => None,
        }
    }
}

/// One framed item of a body.
#[derive(Debug)]
pub enum Item {
    /// The JSON object text of record `index` (CSV rows become objects of
    /// strings). Not validated yet.
    Record { index: usize, json: String },
    /// Record `index` could be framed but is not usable.
    Reject { index: usize, error: RecordError },
}

/// How decoding ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The whole body was read.
    Complete,
    /// The framing broke before record `index`; it and anything after it were
    /// not read.
    Malformed { index: usize, message: String },
    /// Nothing could be framed at all (not JSON, CSV without a header).
    Unframable { code: &'static str, message: String },
    /// The consumer stopped listening.
    Cancelled,
}

/// Decodes `reader` as `format`, calling `emit` for each item; `emit`
/// returns `false` to stop. No record larger than `max_record` bytes is
/// buffered.
pub fn decode(
    format: Format,
    reader: impl BufRead,
    max_record: usize,
    emit: &mut dyn FnMut(Item) -> bool,
) -> End {
    match format {
        Format::Ndjson => ndjson::decode(reader, max_record, emit),
        Format::Json => json_array::decode(reader, max_record, emit),
        Format::Csv => csv::decode(reader, max_record, emit),
        Format::Camt053 => camt053::decode(reader, max_record, emit),
        Format::Bai2 => bai2::decode(reader, max_record, emit),
        Format::Ofx => ofx::decode(reader, max_record, emit),
    }
}

/// The rejection of a record over the size limit.
fn too_large(index: usize, max_record: usize) -> Item {
    Item::Reject {
        index,
        error: RecordError::new(
            spendstream_schemas::ErrorCode::RecordTooLarge,
            None,
            format!("the record is larger than {max_record} bytes; it was skipped"),
        ),
    }
}

/// Record text that must be UTF-8 JSON.
fn utf8_record(index: usize, bytes: Vec<u8>) -> Item {
    match String::from_utf8(bytes) {
        Ok(json) => Item::Record { index, json },
        Err(_) => Item::Reject {
            index,
            error: RecordError::new(
                spendstream_schemas::ErrorCode::InvalidJson,
                None,
                "the record is not UTF-8",
            ),
        },
    }
}

#[cfg(test)]
pub(crate) fn collect_limited(format: Format, body: &[u8], max_record: usize) -> (Vec<Item>, End) {
    let mut items = Vec::new();
    let end = decode(format, body, max_record, &mut |i| {
        items.push(i);
        true
    });
    (items, end)
}

#[cfg(test)]
pub(crate) fn collect(format: Format, body: &[u8]) -> (Vec<Item>, End) {
    collect_limited(format, body, 1 << 20)
}

/// The record an item holds, validated; panics on anything else.
#[cfg(test)]
pub(crate) fn validated(item: &Item) -> spendstream_schemas::ExpenseRecord {
    match item {
        Item::Record { json, .. } => spendstream_schemas::ExpenseRecord::from_json(json).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn indices(items: &[Item]) -> Vec<usize> {
        items
            .iter()
            .map(|i| match i {
                Item::Record { index, .. } | Item::Reject { index, .. } => *index,
            })
            .collect()
    }

    proptest! {
        /// Any bytes in any format: no panic, indices dense from 0, and a
        /// malformed end points just past the last item.
        #[test]
        fn arbitrary_bodies_frame_consistently(body in proptest::collection::vec(any::<u8>(), 0..2048), fmt in 0usize..6) {
            let format = Format::ALL[fmt];
            let (items, end) = collect(format, &body);
            let idx = indices(&items);
            prop_assert_eq!(idx, (0..items.len()).collect::<Vec<_>>());
            if let End::Malformed { index, .. } = end {
                prop_assert_eq!(index, items.len());
            }
        }

        /// Structured-looking input, cut anywhere: the items before the cut
        /// are a prefix of the items of the whole body.
        #[test]
        fn a_cut_json_array_yields_a_prefix(n in 1usize..20, cut in 0usize..400) {
            let body = format!("[{}]", (0..n).map(|i| format!("{{\"i\":{i},\"s\":\"x,]}}\"}}")).collect::<Vec<_>>().join(","));
            let (all, end) = collect(Format::Json, body.as_bytes());
            prop_assert_eq!(end, End::Complete);
            prop_assert_eq!(all.len(), n);
            let cut = cut.min(body.len());
            let (some, _) = collect(Format::Json, &body.as_bytes()[..cut]);
            prop_assert!(some.len() <= all.len());
            for (a, b) in some.iter().zip(&all) {
                match (a, b) {
                    (Item::Record { json: x, .. }, Item::Record { json: y, .. }) => prop_assert_eq!(x, y),
                    _ => prop_assert!(false, "unexpected reject"),
                }
            }
        }

        /// Whatever the format, a record over the limit is rejected with
        /// `record_too_large` at its index and the records around it still
        /// come through.
        #[test]
        fn an_oversized_record_is_skipped_not_buffered(big in 65usize..5000, fmt in 0usize..3, quoted in any::<bool>()) {
            let filler = "x".repeat(big);
            let body = match fmt {
                0 => format!("{{\"a\":1}}\n{{\"m\":\"{filler}\"}}\n{{\"b\":2}}\n"),
                1 => format!("[{{\"a\":1}}, {{\"m\":[\"{filler}\", {{\"n\": 1}}]}} ,{{\"b\":2}}]"),
                _ if quoted => format!("memo,source\r\na,1\r\n\"{filler}\nmore\",2\r\nb,3\r\n"),
                _ => format!("memo,source\na,1\n{filler},2\nb,3\n"),
            };
            let format = [Format::Ndjson, Format::Json, Format::Csv][fmt];
            let (items, end) = collect_limited(format, body.as_bytes(), 64);
            prop_assert_eq!(end, End::Complete);
            prop_assert_eq!(items.len(), 3);
            prop_assert!(matches!(&items[0], Item::Record { index: 0, .. }), "{:?}", items[0]);
            prop_assert!(
                matches!(&items[1], Item::Reject { index: 1, error } if error.code == spendstream_schemas::ErrorCode::RecordTooLarge),
                "{:?}", items[1]
            );
            prop_assert!(matches!(&items[2], Item::Record { index: 2, .. }), "{:?}", items[2]);
        }
    }
}
