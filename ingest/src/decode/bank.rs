//! What the bank-file decoders (CAMT.053, BAI2, OFX) share: an entry mapped
//! onto the record contract's field names, handed on as the JSON object the
//! other formats give, so validation is the same for every format. The
//! mapping of each format is in `docs/formats.md`.

use super::Item;
use serde_json::{Map, Value};
use spendstream_schemas::pan::mask_pans;
use spendstream_schemas::{ErrorCode, RecordError};

/// One entry of a bank file, as record fields.
pub struct BankEntry {
    fields: Map<String, Value>,
    metadata: Map<String, Value>,
}

impl BankEntry {
    /// An entry of `source` (the format's name: `camt053`, `bai2`, `ofx`).
    pub fn new(source: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("source".into(), Value::String(source.into()));
        Self {
            fields,
            metadata: Map::new(),
        }
    }

    /// Sets a record field; blank values are left out.
    pub fn set(&mut self, field: &'static str, value: &str) {
        let value = value.trim();
        if !value.is_empty() {
            self.fields
                .insert(field.into(), Value::String(value.into()));
        }
    }

    /// Sets a metadata entry; blank values are left out.
    pub fn meta(&mut self, key: &'static str, value: &str) {
        let value = value.trim();
        if !value.is_empty() {
            self.metadata
                .insert(key.into(), Value::String(value.into()));
        }
    }

    /// The entry as record `index`.
    pub fn item(mut self, index: usize) -> Item {
        if !self.metadata.is_empty() {
            self.fields
                .insert("metadata".into(), Value::Object(self.metadata));
        }
        Item::Record {
            index,
            json: Value::Object(self.fields).to_string(),
        }
    }
}

/// An account number as records carry it: a card number among its digits
/// is masked to its last four (OFX credit-card statements name the card).
pub fn account(raw: &str) -> String {
    mask_pans(raw.trim()).into_owned()
}

/// The record's `external_id`: the bank's reference, under the account it
/// belongs to (banks make references unique per account, not across them).
pub fn external_id(account: &str, reference: &str) -> String {
    format!("{}/{}", account, reference.trim())
}

/// A decimal amount's text with its sign turned: `12.30` → `-12.30`,
/// `-5` → `5`, `+5` → `-5`. Nothing is parsed: validation reads the result
/// as it reads any amount.
pub fn negate(amount: &str) -> String {
    let amount = amount.trim();
    match amount.as_bytes().first() {
        Some(b'-') => amount[1..].to_string(),
        Some(b'+') => format!("-{}", &amount[1..]),
        _ => format!("-{amount}"),
    }
}

/// The rejection of entry `index`.
pub fn reject(index: usize, code: ErrorCode, field: Option<&'static str>, message: String) -> Item {
    Item::Reject {
        index,
        error: RecordError::new(code, field, message),
    }
}

/// The rejection of an entry whose text is not in the file's encoding.
pub fn bad_text(index: usize) -> Item {
    reject(
        index,
        ErrorCode::InvalidField,
        None,
        "the entry holds text that is not in the file's encoding (UTF-8 unless the file declares another)".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negation_is_textual() {
        assert_eq!(negate(" 12.30 "), "-12.30");
        assert_eq!(negate("-5"), "5");
        assert_eq!(negate("+5"), "-5");
    }

    #[test]
    fn card_numbers_in_account_ids_are_masked() {
        assert_eq!(account("4111111111111111"), "************1111");
        assert_eq!(
            account(" DE89370400440532013000 "),
            "DE89370400440532013000"
        );
    }
}
