//! Fuzzes record validation: no input may panic, an accepted record's
//! amount must format back to text that parses to the same minor units,
//! and an accepted record survives the log (packed and read back) and its
//! wire form (sent again as JSON) unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendstream_schemas::{ExpenseRecord, Money, PackedWriter, RecordView, unpack};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(record) = ExpenseRecord::from_json(text) {
        let money = record.amount;
        assert_eq!(
            Money::parse(&money.to_decimal_string(), money.currency),
            Ok(money)
        );
        // What the edge writes: the view it validated, packed.
        let view = RecordView::from_json(text).expect("the view accepts what the record does");
        let packed = PackedWriter::new("t", "b", "r", 0).write(&view);
        assert_eq!(
            unpack(&packed).expect("a packed record reads").record,
            record
        );
        assert_eq!(ExpenseRecord::from_json(&record.to_wire_json()), Ok(record));
    }
});
