//! The Spendstream data contract, v1: record types, money and currencies,
//! validation rules and their error codes, identity, the Arrow schema of the
//! lake and the JSON Schema of an ingested record. No I/O lives here.

pub mod category;
pub mod currency;
pub mod enriched;
pub mod envelope;
pub mod error;
pub mod identity;
pub mod money;
pub mod pan;
pub mod record;

pub use category::Category;
pub use currency::Currency;
pub use enriched::{EnrichedRecord, arrow_schema, to_record_batch};
pub use envelope::{ENVELOPE_VERSION, Envelope, EnvelopeWriter};
pub use error::{ErrorCode, RecordError};
pub use identity::{expense_id, identity_key, valid_tenant_id};
pub use money::{Money, format_minor};
pub use record::{ExpenseRecord, Status};

/// JSON Schema (draft 2020-12) of one ingested record, contract v1.
pub const RECORD_JSON_SCHEMA: &str = include_str!("../expense.v1.schema.json");

#[cfg(test)]
mod tests {
    #[test]
    fn json_schema_lists_every_field() {
        let schema: serde_json::Value = serde_json::from_str(super::RECORD_JSON_SCHEMA).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for field in super::record::FIELDS {
            assert!(
                props.contains_key(*field),
                "{field} missing from the JSON Schema"
            );
        }
        assert_eq!(props.len(), super::record::FIELDS.len());
    }
}
