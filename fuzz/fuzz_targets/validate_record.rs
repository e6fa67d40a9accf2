//! Fuzzes record validation: no input may panic, and an accepted record's
//! amount must format back to text that parses to the same minor units.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spendstream_schemas::{ExpenseRecord, Money};

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
    }
});
