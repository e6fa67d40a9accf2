//! Streaming body decoders: NDJSON, a JSON array, CSV. Each reads from a
//! `BufRead` and hands out one record at a time, so a 100 MB body never needs
//! 100 MB of records in memory.

mod csv;
mod json_array;
mod ndjson;

use spendstream_schemas::RecordError;
use std::io::BufRead;

/// Body formats, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Json,
    Csv,
}

impl Format {
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
/// returns `false` to stop.
pub fn decode(format: Format, reader: impl BufRead, emit: &mut dyn FnMut(Item) -> bool) -> End {
    match format {
        Format::Ndjson => ndjson::decode(reader, emit),
        Format::Json => json_array::decode(reader, emit),
        Format::Csv => csv::decode(reader, emit),
    }
}

#[cfg(test)]
pub(crate) fn collect(format: Format, body: &[u8]) -> (Vec<Item>, End) {
    let mut items = Vec::new();
    let end = decode(format, body, &mut |i| {
        items.push(i);
        true
    });
    (items, end)
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
        fn arbitrary_bodies_frame_consistently(body in proptest::collection::vec(any::<u8>(), 0..2048), fmt in 0usize..3) {
            let format = [Format::Ndjson, Format::Json, Format::Csv][fmt];
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
    }
}
