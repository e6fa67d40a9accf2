//! The enriched record processors write to the sinks, and its Arrow form.

use crate::category::Category;
use crate::record::ExpenseRecordOf;
use arrow::array::{
    ArrayRef, Date32Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use std::sync::{Arc, LazyLock};
use uuid::Uuid;

/// A record after validation and enrichment: one row of the lake.
pub type EnrichedRecord = EnrichedRecordOf<String>;

/// An enriched record, the text it was sent with held as `S`: processors
/// borrow it from the log entries of the batch they write
/// (`Cow<str>`), so a row costs no copy of its fields before the sinks'.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound(deserialize = "S: serde::Deserialize<'de> + Ord"))]
pub struct EnrichedRecordOf<S> {
    pub expense_id: Uuid,
    pub tenant_id: S,
    /// Monotonic per expense: see [`record_version`].
    pub version: i64,
    pub record: ExpenseRecordOf<S>,
    pub category: Category,
    pub merchant_normalized: Option<String>,
    pub batch_id: S,
    pub ingested_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
    pub log_partition: i32,
    pub log_offset: i64,
    /// The amount in the tenant's base currency, when a rate was known
    /// (`docs/fx.md`); `None` says no rate was, never a guess.
    #[serde(default)]
    pub base: Option<BaseAmount>,
}

/// An amount converted to a tenant's base currency, and what at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseAmount {
    /// Minor units of `currency`.
    pub minor: i64,
    /// ISO 4217 code of the base currency.
    pub currency: String,
    /// Units of the base currency per unit of the record's, as exact
    /// decimal text.
    pub rate: String,
    /// The day of the rates used.
    pub rate_date: NaiveDate,
}

/// Bits of a version that hold the log offset; the bits above hold the
/// log's generation.
pub const VERSION_OFFSET_BITS: u32 = 44;
/// Most generations a lake can number (2^19 logs).
pub const MAX_GENERATION: u32 = (1 << (63 - VERSION_OFFSET_BITS)) - 1;

/// The version of a record read at `offset` of a log of `generation`:
/// `generation · 2^44 + offset`. Within one log, offsets order the versions
/// of an expense (one key, one partition, in order); a log that replaces
/// another (a wiped log, a move to Kafka) gets a higher generation from the
/// lake, so its records are newer than anything the old log wrote even
/// though its offsets start again at 0. Offsets past 2^44 (17.6 trillion
/// records in one partition) saturate rather than spill into the
/// generation.
pub fn record_version(generation: u32, offset: i64) -> i64 {
    let offset = offset.clamp(0, (1 << VERSION_OFFSET_BITS) - 1);
    (i64::from(generation.min(MAX_GENERATION)) << VERSION_OFFSET_BITS) | offset
}

impl<S> EnrichedRecordOf<S> {
    /// The month partition value, `YYYY-MM` of the transaction date.
    pub fn month(&self) -> String {
        month_of(self.record.transaction_date)
    }

    /// The row with its text converted by `f` (see
    /// [`ExpenseRecordOf::map_text`]).
    pub fn map_text<T: Ord>(self, mut f: impl FnMut(S) -> T) -> EnrichedRecordOf<T> {
        EnrichedRecordOf {
            expense_id: self.expense_id,
            tenant_id: f(self.tenant_id),
            version: self.version,
            record: self.record.map_text(&mut f),
            category: self.category,
            merchant_normalized: self.merchant_normalized,
            batch_id: f(self.batch_id),
            ingested_at: self.ingested_at,
            processed_at: self.processed_at,
            log_partition: self.log_partition,
            log_offset: self.log_offset,
            base: self.base,
        }
    }
}

pub fn month_of(date: NaiveDate) -> String {
    let mut out = String::with_capacity(7);
    let _ = write_month(&mut out, date);
    out
}

/// Writes `YYYY-MM` of `date` (the month partition value) to `out`:
/// digit by digit for years 0 to 9999 (a formatter per row cost 1.4% of
/// a processor's CPU), through the formatter for any other.
fn write_month(out: &mut impl std::fmt::Write, date: NaiveDate) -> std::fmt::Result {
    let (year, month) = (date.year(), date.month());
    let Ok(year @ 0..=9999) = u32::try_from(year) else {
        return write!(out, "{year:04}-{month:02}");
    };
    let digit = |n: u32| char::from(b'0' + (n % 10) as u8);
    for c in [
        digit(year / 1000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        '-',
        digit(month / 10),
        digit(month),
    ] {
        out.write_char(c)?;
    }
    Ok(())
}

/// Partition columns of the lake table, in order.
pub const PARTITION_COLUMNS: [&str; 2] = ["tenant_id", "month"];

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("expense_id", DataType::Utf8, false),
        Field::new("tenant_id", DataType::Utf8, false),
        Field::new("month", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("external_id", DataType::Utf8, false),
        Field::new("account_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("related_external_id", DataType::Utf8, true),
        Field::new("transaction_date", DataType::Date32, false),
        Field::new("posted_at", ts(), true),
        Field::new("amount_minor", DataType::Int64, false),
        Field::new("currency", DataType::Utf8, false),
        Field::new("billed_amount_minor", DataType::Int64, true),
        Field::new("billed_currency", DataType::Utf8, true),
        Field::new("merchant_name", DataType::Utf8, true),
        Field::new("merchant_normalized", DataType::Utf8, true),
        Field::new("merchant_mcc", DataType::Int16, true),
        Field::new("category", DataType::Utf8, false),
        Field::new("employee_id", DataType::Utf8, true),
        Field::new("memo", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("ingested_at", ts(), false),
        Field::new("processed_at", ts(), false),
        Field::new("log_partition", DataType::Int32, false),
        Field::new("log_offset", DataType::Int64, false),
        // Added in 0.14 (FX): nullable, so tables made before get them as
        // nulls (`Lake::open` adds them).
        Field::new("base_amount_minor", DataType::Int64, true),
        Field::new("base_currency", DataType::Utf8, true),
        Field::new("fx_rate", DataType::Utf8, true),
        Field::new("fx_rate_date", DataType::Date32, true),
    ]))
});

/// The Arrow schema of [`EnrichedRecord`] rows.
pub fn arrow_schema() -> SchemaRef {
    SCHEMA.clone()
}

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// A record's metadata as the JSON object text the sinks store.
pub fn metadata_json<S: AsRef<str>>(metadata: &std::collections::BTreeMap<S, S>) -> String {
    /// The map serialized as its text, without a copy of it.
    struct Text<'a, S>(&'a std::collections::BTreeMap<S, S>);
    impl<S: AsRef<str>> serde::Serialize for Text<'_, S> {
        fn serialize<Z: serde::Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
            z.collect_map(self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        }
    }
    serde_json::to_string(&Text(metadata)).unwrap_or_default()
}

/// Converts records into one Arrow batch of [`arrow_schema`].
pub fn to_record_batch<S: AsRef<str>>(
    records: &[EnrichedRecordOf<S>],
) -> Result<RecordBatch, ArrowError> {
    let n = records.len();
    let s = |cap: usize| StringBuilder::with_capacity(n, n * cap);
    let (mut expense_id, mut tenant, mut month, mut source, mut external_id) =
        (s(36), s(16), s(7), s(16), s(24));
    let (mut account, mut status, mut related, mut currency, mut billed_currency) =
        (s(16), s(8), s(8), s(3), s(3));
    let (mut merchant, mut merchant_norm, mut category, mut employee, mut memo) =
        (s(24), s(24), s(12), s(12), s(16));
    let (mut metadata, mut batch, mut base_currency, mut fx_rate) = (s(16), s(36), s(3), s(14));
    let mut base_amount = Int64Builder::with_capacity(n);
    let mut fx_date = Date32Builder::with_capacity(n);
    let mut version = Int64Builder::with_capacity(n);
    let mut date = Date32Builder::with_capacity(n);
    let mut posted = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut amount = Int64Builder::with_capacity(n);
    let mut billed = Int64Builder::with_capacity(n);
    let mut mcc = Int16Builder::with_capacity(n);
    let mut ingested = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut processed = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);

    for e in records {
        let r = &e.record;
        // Written into the builders, not through a string each.
        expense_id.append_value(
            e.expense_id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer()),
        );
        tenant.append_value(e.tenant_id.as_ref());
        write_month(&mut month, r.transaction_date)
            .map_err(|error| ArrowError::ExternalError(Box::new(error)))?;
        month.append_value("");
        version.append_value(e.version);
        source.append_value(r.source.as_ref());
        external_id.append_value(r.external_id.as_ref());
        account.append_value(r.account_id.as_ref());
        status.append_value(r.status.as_str());
        related.append_option(r.related_external_id.as_ref().map(AsRef::as_ref));
        date.append_value(r.transaction_date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE);
        posted.append_option(r.posted_at.map(|t| t.timestamp_micros()));
        amount.append_value(r.amount.minor);
        currency.append_value(r.amount.currency.code());
        billed.append_option(r.billed.map(|m| m.minor));
        billed_currency.append_option(r.billed.map(|m| m.currency.code()));
        merchant.append_option(r.merchant_name.as_ref().map(AsRef::as_ref));
        merchant_norm.append_option(e.merchant_normalized.as_deref());
        // MCCs are 0..=9999, so they always fit.
        mcc.append_option(r.merchant_mcc.map(|m| m as i16));
        category.append_value(e.category.as_str());
        employee.append_option(r.employee_id.as_ref().map(AsRef::as_ref));
        memo.append_option(r.memo.as_ref().map(AsRef::as_ref));
        if r.metadata.is_empty() {
            metadata.append_null();
        } else {
            metadata.append_value(metadata_json(&r.metadata));
        }
        batch.append_value(e.batch_id.as_ref());
        ingested.append_value(e.ingested_at.timestamp_micros());
        processed.append_value(e.processed_at.timestamp_micros());
        partition.append_value(e.log_partition);
        offset.append_value(e.log_offset);
        let base = e.base.as_ref();
        base_amount.append_option(base.map(|b| b.minor));
        base_currency.append_option(base.map(|b| b.currency.as_str()));
        fx_rate.append_option(base.map(|b| b.rate.as_str()));
        fx_date
            .append_option(base.map(|b| b.rate_date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE));
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(expense_id.finish()),
        Arc::new(tenant.finish()),
        Arc::new(month.finish()),
        Arc::new(version.finish()),
        Arc::new(source.finish()),
        Arc::new(external_id.finish()),
        Arc::new(account.finish()),
        Arc::new(status.finish()),
        Arc::new(related.finish()),
        Arc::new(date.finish()),
        Arc::new(posted.finish()),
        Arc::new(amount.finish()),
        Arc::new(currency.finish()),
        Arc::new(billed.finish()),
        Arc::new(billed_currency.finish()),
        Arc::new(merchant.finish()),
        Arc::new(merchant_norm.finish()),
        Arc::new(mcc.finish()),
        Arc::new(category.finish()),
        Arc::new(employee.finish()),
        Arc::new(memo.finish()),
        Arc::new(metadata.finish()),
        Arc::new(batch.finish()),
        Arc::new(ingested.finish()),
        Arc::new(processed.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(base_amount.finish()),
        Arc::new(base_currency.finish()),
        Arc::new(fx_rate.finish()),
        Arc::new(fx_date.finish()),
    ];
    RecordBatch::try_new(arrow_schema(), columns)
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn a_later_generation_outranks_any_offset_of_an_earlier_one() {
        assert_eq!(record_version(0, 7), 7);
        assert!(record_version(2, 0) > record_version(1, (1 << 44) - 1));
        assert!(record_version(1, 5) < record_version(1, 6));
        assert!(record_version(MAX_GENERATION, (1 << 44) - 1) > 0);
        assert_eq!(
            record_version(1, i64::MAX),
            record_version(1, (1 << 44) - 1)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExpenseRecord;

    #[test]
    fn months_are_written_as_the_formatter_writes_them() {
        for (year, month) in [(0, 1), (9, 12), (99, 5), (999, 10), (2026, 2), (9999, 12)] {
            let date = NaiveDate::from_ymd_opt(year, month, 1).unwrap();
            assert_eq!(month_of(date), format!("{year:04}-{month:02}"));
        }
        for year in [-1, 10_000] {
            let date = NaiveDate::from_ymd_opt(year, 3, 1).unwrap();
            assert_eq!(month_of(date), format!("{year:04}-03"));
        }
    }

    #[test]
    fn batch_matches_schema() {
        let raw = r#"{"source":"s","external_id":"e","account_id":"a","transaction_date":"2026-02-03","amount":"1.00","currency":"EUR","merchant_mcc":"5812"}"#;
        let record = ExpenseRecord::from_json(raw).unwrap();
        let now = Utc::now();
        let e = EnrichedRecord {
            expense_id: crate::identity::expense_id("t", "s", "e"),
            tenant_id: "t".into(),
            version: 7,
            record,
            category: Category::Restaurants,
            merchant_normalized: None,
            batch_id: "b".into(),
            ingested_at: now,
            processed_at: now,
            log_partition: 1,
            log_offset: 7,
            base: Some(BaseAmount {
                minor: 108,
                currency: "USD".into(),
                rate: "1.0812".into(),
                rate_date: NaiveDate::from_ymd_opt(2026, 2, 2).unwrap(),
            }),
        };
        assert_eq!(e.month(), "2026-02");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<EnrichedRecord>(&json).unwrap(), e);
        let batch = to_record_batch(&[e.clone(), e.clone()]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), arrow_schema());
        // Columns written into their builders without a string each.
        for (column, want) in [
            ("month", "2026-02".to_string()),
            ("expense_id", e.expense_id.to_string()),
        ] {
            let values = batch
                .column_by_name(column)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            assert_eq!(
                (values.value(0), values.value(1)),
                (&*want, &*want),
                "{column}"
            );
        }
        let dates = batch
            .column_by_name("transaction_date")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Date32Array>()
            .unwrap();
        assert_eq!(dates.value_as_date(0), NaiveDate::from_ymd_opt(2026, 2, 3));
    }
}
