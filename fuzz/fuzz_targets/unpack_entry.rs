//! Fuzzes reading a packed log entry (envelope version 2) from any bytes:
//! no input may panic, and what reads packs again to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendstream_schemas::{PackedWriter, unpack, unpack_head};

fuzz_target!(|data: &[u8]| {
    let head = unpack_head(data);
    let Ok(entry) = unpack(data) else {
        return;
    };
    let (head, rules) = head.expect("an entry that reads has a head that reads");
    assert_eq!((&head, rules), (&entry.head, entry.rules));
    let again = PackedWriter::with_rules(
        entry.rules,
        &entry.head.tenant_id,
        &entry.head.batch_id,
        &entry.head.request_id,
        entry.head.ingested_at_us,
    )
    .write(&entry.record);
    // Names are written as the record holds them (a lower-case currency
    // code reads as upper case), so the second packing is the canonical one.
    assert_eq!(
        unpack(&again).expect("a repacked entry reads").record,
        entry.record
    );
});
