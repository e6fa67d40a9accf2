//! Fuzzes the csv body decoder and the validation of what it frames: no
//! input may panic, and indices must stay dense.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendstream_ingest::decode::{End, Format, Item, decode};

fuzz_target!(|data: &[u8]| {
    let mut next = 0usize;
    let end = decode(Format::Csv, data, &mut |item| {
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
});
