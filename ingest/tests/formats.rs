//! The bank-file samples in `samples/` (written from each format's public
//! specification) decode to the records their `.expected.ndjson` files hold,
//! and every record validates; cut and damaged copies of them decode to
//! dense indices and a clean end, never a panic.
//!
//! `SPENDSTREAM_WRITE_SAMPLES=1 cargo test -p spendstream-ingest --test formats`
//! writes the expected files anew (read the diff before committing it).

use proptest::prelude::*;
use serde_json::Value;
use spendstream_ingest::decode::{End, Format, Item, decode};
use spendstream_schemas::ExpenseRecord;
use std::path::PathBuf;

const SAMPLES: [(&str, Format); 4] = [
    ("camt053.xml", Format::Camt053),
    ("bai2.txt", Format::Bai2),
    ("ofx1.ofx", Format::Ofx),
    ("ofx2.ofx", Format::Ofx),
];

/// The repository's samples, from the package directory the test runner
/// gives (a binary built in another checkout sharing the target directory
/// must read this checkout's files), else the one at build time.
fn samples() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from)
        .join("../samples")
}

fn decode_all(format: Format, body: &[u8], max_record: usize) -> (Vec<Item>, End) {
    let mut items = Vec::new();
    let end = decode(format, body, max_record, &mut |item| {
        items.push(item);
        true
    });
    (items, end)
}

/// Indices dense from 0, and a malformed end just past the last item.
fn consistent(items: &[Item], end: &End) -> Result<(), TestCaseError> {
    for (i, item) in items.iter().enumerate() {
        let index = match item {
            Item::Record { index, .. } | Item::Reject { index, .. } => *index,
        };
        prop_assert_eq!(index, i);
        if let Item::Record { json, .. } = item {
            // Validation of whatever was framed never panics either.
            let _ = ExpenseRecord::from_json(json);
        }
    }
    if let End::Malformed { index, .. } = end {
        prop_assert_eq!(*index, items.len());
    }
    Ok(())
}

#[test]
fn the_samples_give_the_expected_records() {
    for (name, format) in SAMPLES {
        let body = std::fs::read(samples().join(name)).unwrap();
        let (items, end) = decode_all(format, &body, 64 * 1024);
        assert_eq!(end, End::Complete, "{name}");
        let got: Vec<Value> = items
            .iter()
            .map(|item| match item {
                Item::Record { json, index } => {
                    if let Err(e) = ExpenseRecord::from_json(json) {
                        panic!("{name} entry {index} does not validate: {e:?}\n{json}");
                    }
                    serde_json::from_str(json).unwrap()
                }
                Item::Reject { index, error } => panic!("{name} entry {index}: {error:?}"),
            })
            .collect();
        let expected_path = samples().join(format!("{name}.expected.ndjson"));
        if std::env::var_os("SPENDSTREAM_WRITE_SAMPLES").is_some() {
            let text: String = got.iter().map(|v| format!("{v}\n")).collect();
            std::fs::write(&expected_path, text).unwrap();
            continue;
        }
        let expected: Vec<Value> = std::fs::read_to_string(&expected_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), expected.len(), "{name}: number of records");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "{name}: record {i}");
        }
    }
}

#[test]
fn a_sample_read_a_byte_at_a_time_gives_the_same_items() {
    for (name, format) in SAMPLES {
        let body = std::fs::read(samples().join(name)).unwrap();
        let (whole, _) = decode_all(format, &body, 64 * 1024);
        let mut items = Vec::new();
        let reader = std::io::BufReader::with_capacity(1, &body[..]);
        let end = decode(format, reader, 64 * 1024, &mut |item| {
            items.push(item);
            true
        });
        assert_eq!(end, End::Complete, "{name}");
        assert_eq!(format!("{items:?}"), format!("{whole:?}"), "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A sample cut anywhere: what comes out before the cut is what the
    /// whole file gives (the last item may be the cut entry itself), and
    /// the end is clean.
    #[test]
    fn a_cut_sample_yields_a_prefix(which in 0usize..4, cut in 0usize..8192) {
        let (name, format) = SAMPLES[which];
        let body = std::fs::read(samples().join(name)).unwrap();
        let (whole, _) = decode_all(format, &body, 64 * 1024);
        let cut = cut % (body.len() + 1);
        let (items, end) = decode_all(format, &body[..cut], 64 * 1024);
        consistent(&items, &end)?;
        prop_assert!(items.len() <= whole.len());
        let settled = items.len().saturating_sub(1);
        prop_assert_eq!(format!("{:?}", &items[..settled]), format!("{:?}", &whole[..settled]));
    }

    /// A sample with bytes overwritten, inserted or removed, read under a
    /// small record limit: no panic, dense indices, a clean end.
    #[test]
    fn a_damaged_sample_decodes_consistently(
        which in 0usize..4,
        edits in proptest::collection::vec((0usize..8192, any::<u8>(), 0u8..3), 1..12),
        max_record in prop_oneof![Just(64usize), Just(512), Just(64 * 1024)],
    ) {
        let (name, format) = SAMPLES[which];
        let mut body = std::fs::read(samples().join(name)).unwrap();
        for (at, byte, op) in edits {
            let at = at % (body.len() + 1);
            match op {
                0 if at < body.len() => body[at] = byte,
                1 => body.insert(at, byte),
                _ if at < body.len() => {
                    body.remove(at);
                }
                _ => {}
            }
        }
        let (items, end) = decode_all(format, &body, max_record);
        consistent(&items, &end)?;
    }
}
