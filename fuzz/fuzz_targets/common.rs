//! The check every decoder target runs: decode, validate each framed record,
//! and require dense indices (and a malformed end just past the last item).

use spendstream_ingest::decode::{End, Format, Item, decode};

pub fn check(format: Format, data: &[u8]) {
    let mut next = 0usize;
    let end = decode(format, data, 64 * 1024, &mut |item| {
        let index = match &item {
            Item::Record { index, json } => {
                let _ = spendstream_schemas::ExpenseRecord::from_json(json);
                *index
            }
            Item::Reject { index, .. } => *index,
        };
        assert_eq!(index, next);
        next += 1;
        true
    });
    if let End::Malformed { index, .. } = end {
        assert_eq!(index, next);
    }
}
