//! The Spendstream data contract, v1: record types, money and currencies,
//! validation rules and their error codes, identity, the Arrow schema of the
//! lake and the JSON Schema of an ingested record. No I/O lives here.

pub mod category;
pub mod clickhouse;
pub mod currency;
pub mod enriched;
pub mod envelope;
pub mod error;
pub mod fx;
pub mod identity;
pub mod metrics;
pub mod money;
pub mod packed;
pub mod pan;
pub mod record;
pub mod trace;

pub use category::Category;
pub use currency::Currency;
pub use enriched::{
    BaseAmount, EnrichedRecord, EnrichedRecordOf, Groups, arrow_schema, record_version,
    to_record_batch, to_record_batches,
};
pub use envelope::{
    ENVELOPE_VERSION, Envelope, EnvelopeHead, EnvelopeWriter, JSON_ENVELOPE_VERSION,
};
pub use error::{ErrorCode, RecordError};
pub use identity::{expense_id, identity_key, valid_tenant_id};
pub use money::{Money, format_minor};
pub use packed::{
    PACKED_VERSION, PackedWriter, RULES_VERSION, UnpackError, Unpacked, unpack, unpack_borrowed,
    unpack_head,
};
pub use record::{ExpenseRecord, ExpenseRecordOf, RecordView, Status};

/// JSON Schema (draft 2020-12) of one ingested record, contract v1.
/// `tests/json_schema.rs` runs it through a validator beside
/// [`ExpenseRecord::from_json`] and lists what it cannot express.
pub const RECORD_JSON_SCHEMA: &str = include_str!("../expense.v1.schema.json");
