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
    let mut columns = Columns::with_capacity(records.len());
    for record in records {
        columns.append(record)?;
    }
    columns.finish()
}

/// Items grouped by an equal key, the groups numbered in the order they
/// first appear (the lake's partitions of a batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// Each item's group.
    pub group_of: Vec<u32>,
    /// Each group's first item.
    pub first: Vec<usize>,
    /// Each group's number of items.
    pub sizes: Vec<usize>,
    /// Runs of one key: as many as groups when each group's items are
    /// together.
    pub runs: usize,
}

impl Groups {
    /// Groups `keys`, comparing each with the one before first: items
    /// come in runs of one key, so most cost no hash.
    pub fn of<K: Eq + std::hash::Hash + Copy>(keys: impl ExactSizeIterator<Item = K>) -> Self {
        let mut groups = Groups {
            group_of: Vec::with_capacity(keys.len()),
            first: Vec::new(),
            sizes: Vec::new(),
            runs: 0,
        };
        let mut numbers: std::collections::HashMap<K, u32> = std::collections::HashMap::new();
        let mut previous: Option<(K, u32)> = None;
        for (i, key) in keys.enumerate() {
            let group = match previous {
                Some((last, group)) if last == key => group,
                _ => {
                    groups.runs += 1;
                    let next = groups.first.len() as u32;
                    let group = *numbers.entry(key).or_insert(next);
                    if group == next {
                        groups.first.push(i);
                        groups.sizes.push(0);
                    }
                    group
                }
            };
            groups.sizes[group as usize] += 1;
            groups.group_of.push(group);
            previous = Some((key, group));
        }
        groups
    }
}

/// Converts records into one Arrow batch per group, each group's records
/// in their order: record `i` is in group `group_of[i]`, of `sizes.len()`
/// groups of `sizes` records (see [`Groups`]). The records are read once, in order (the
/// lake sink groups its rows by partition this way: a copy of a whole
/// batch by partition was 5–7% of a processor's CPU, and building one in
/// partition order, jumping between rows, cost more than that).
pub fn to_record_batches<S: AsRef<str>>(
    records: &[EnrichedRecordOf<S>],
    group_of: &[u32],
    sizes: &[usize],
) -> Result<Vec<RecordBatch>, ArrowError> {
    if records.len() != group_of.len() {
        return Err(ArrowError::InvalidArgumentError(
            "a group for every record".into(),
        ));
    }
    let mut groups: Vec<Columns> = sizes.iter().map(|n| Columns::with_capacity(*n)).collect();
    for (record, group) in records.iter().zip(group_of) {
        groups
            .get_mut(*group as usize)
            .ok_or_else(|| ArrowError::InvalidArgumentError("a group past the last".into()))?
            .append(record)?;
    }
    groups.into_iter().map(Columns::finish).collect()
}

/// A batch of [`arrow_schema`] being built.
struct Columns {
    expense_id: StringBuilder,
    tenant: StringBuilder,
    month: StringBuilder,
    version: Int64Builder,
    source: StringBuilder,
    external_id: StringBuilder,
    account: StringBuilder,
    status: StringBuilder,
    related: StringBuilder,
    date: Date32Builder,
    posted: TimestampMicrosecondBuilder,
    amount: Int64Builder,
    currency: StringBuilder,
    billed: Int64Builder,
    billed_currency: StringBuilder,
    merchant: StringBuilder,
    merchant_norm: StringBuilder,
    mcc: Int16Builder,
    category: StringBuilder,
    employee: StringBuilder,
    memo: StringBuilder,
    metadata: StringBuilder,
    batch: StringBuilder,
    ingested: TimestampMicrosecondBuilder,
    processed: TimestampMicrosecondBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    base_amount: Int64Builder,
    base_currency: StringBuilder,
    fx_rate: StringBuilder,
    fx_date: Date32Builder,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        let s = |cap: usize| StringBuilder::with_capacity(n, n * cap);
        let utc = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        Self {
            expense_id: s(36),
            tenant: s(16),
            month: s(7),
            version: Int64Builder::with_capacity(n),
            source: s(16),
            external_id: s(24),
            account: s(16),
            status: s(8),
            related: s(8),
            date: Date32Builder::with_capacity(n),
            posted: utc(),
            amount: Int64Builder::with_capacity(n),
            currency: s(3),
            billed: Int64Builder::with_capacity(n),
            billed_currency: s(3),
            merchant: s(24),
            merchant_norm: s(24),
            mcc: Int16Builder::with_capacity(n),
            category: s(12),
            employee: s(12),
            memo: s(16),
            metadata: s(16),
            batch: s(36),
            ingested: utc(),
            processed: utc(),
            partition: Int32Builder::with_capacity(n),
            offset: Int64Builder::with_capacity(n),
            base_amount: Int64Builder::with_capacity(n),
            base_currency: s(3),
            fx_rate: s(14),
            fx_date: Date32Builder::with_capacity(n),
        }
    }

    fn append<S: AsRef<str>>(&mut self, e: &EnrichedRecordOf<S>) -> Result<(), ArrowError> {
        let r = &e.record;
        // Written into the builders, not through a string each.
        self.expense_id.append_value(
            e.expense_id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer()),
        );
        self.tenant.append_value(e.tenant_id.as_ref());
        write_month(&mut self.month, r.transaction_date)
            .map_err(|error| ArrowError::ExternalError(Box::new(error)))?;
        self.month.append_value("");
        self.version.append_value(e.version);
        self.source.append_value(r.source.as_ref());
        self.external_id.append_value(r.external_id.as_ref());
        self.account.append_value(r.account_id.as_ref());
        self.status.append_value(r.status.as_str());
        self.related
            .append_option(r.related_external_id.as_ref().map(AsRef::as_ref));
        self.date
            .append_value(r.transaction_date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE);
        self.posted
            .append_option(r.posted_at.map(|t| t.timestamp_micros()));
        self.amount.append_value(r.amount.minor);
        self.currency.append_value(r.amount.currency.code());
        self.billed.append_option(r.billed.map(|m| m.minor));
        self.billed_currency
            .append_option(r.billed.map(|m| m.currency.code()));
        self.merchant
            .append_option(r.merchant_name.as_ref().map(AsRef::as_ref));
        self.merchant_norm
            .append_option(e.merchant_normalized.as_deref());
        // MCCs are 0..=9999, so they always fit.
        self.mcc.append_option(r.merchant_mcc.map(|m| m as i16));
        self.category.append_value(e.category.as_str());
        self.employee
            .append_option(r.employee_id.as_ref().map(AsRef::as_ref));
        self.memo.append_option(r.memo.as_ref().map(AsRef::as_ref));
        if r.metadata.is_empty() {
            self.metadata.append_null();
        } else {
            self.metadata.append_value(metadata_json(&r.metadata));
        }
        self.batch.append_value(e.batch_id.as_ref());
        self.ingested.append_value(e.ingested_at.timestamp_micros());
        self.processed
            .append_value(e.processed_at.timestamp_micros());
        self.partition.append_value(e.log_partition);
        self.offset.append_value(e.log_offset);
        let base = e.base.as_ref();
        self.base_amount.append_option(base.map(|b| b.minor));
        self.base_currency
            .append_option(base.map(|b| b.currency.as_str()));
        self.fx_rate.append_option(base.map(|b| b.rate.as_str()));
        self.fx_date
            .append_option(base.map(|b| b.rate_date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE));
        Ok(())
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.expense_id.finish()),
            Arc::new(self.tenant.finish()),
            Arc::new(self.month.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.external_id.finish()),
            Arc::new(self.account.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.related.finish()),
            Arc::new(self.date.finish()),
            Arc::new(self.posted.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.billed.finish()),
            Arc::new(self.billed_currency.finish()),
            Arc::new(self.merchant.finish()),
            Arc::new(self.merchant_norm.finish()),
            Arc::new(self.mcc.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.employee.finish()),
            Arc::new(self.memo.finish()),
            Arc::new(self.metadata.finish()),
            Arc::new(self.batch.finish()),
            Arc::new(self.ingested.finish()),
            Arc::new(self.processed.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.base_amount.finish()),
            Arc::new(self.base_currency.finish()),
            Arc::new(self.fx_rate.finish()),
            Arc::new(self.fx_date.finish()),
        ];
        RecordBatch::try_new(arrow_schema(), columns)
    }
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

        // By group: each group's batch is the batch of its records, in
        // their order.
        let records: Vec<EnrichedRecord> = (0..7)
            .map(|i| EnrichedRecord {
                log_offset: i,
                ..e.clone()
            })
            .collect();
        let group_of = [1, 0, 1, 1, 2, 0, 1];
        let groups = Groups::of(['b', 'a', 'b', 'b', 'c', 'a', 'b'].into_iter());
        assert_eq!(
            groups,
            Groups {
                group_of: vec![0, 1, 0, 0, 2, 1, 0],
                first: vec![0, 1, 4],
                sizes: vec![4, 2, 1],
                runs: 6,
            }
        );
        let batches = to_record_batches(&records, &group_of, &[2, 4, 1]).unwrap();
        assert_eq!(batches.len(), 3);
        for (group, batch) in batches.iter().enumerate() {
            let members: Vec<EnrichedRecord> = records
                .iter()
                .zip(group_of)
                .filter(|(_, g)| *g as usize == group)
                .map(|(r, _)| r.clone())
                .collect();
            assert_eq!(batch, &to_record_batch(&members).unwrap(), "group {group}");
        }
        assert!(to_record_batches(&records, &group_of[1..], &[2, 4, 1]).is_err());
        assert!(to_record_batches(&records, &group_of, &[2, 4]).is_err());
    }
}
