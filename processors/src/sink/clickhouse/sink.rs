//! Writes enriched records to ClickHouse: one RowBinary insert per batch
//! into `expenses` (a `ReplacingMergeTree` by `version`), then what the
//! sink now holds per log partition into `spendstream_sink_offsets`.
//!
//! ClickHouse has no transaction across the two inserts. A crash between
//! them replays the batch: the rows are inserted again as the same
//! `(expense_id, version)`, which the table folds (and every view reads
//! through `FINAL`), so the effect is once. Where the server has it (22.2
//! and later), each insert also carries a deduplication token derived from
//! the log positions it covers, so a replicated table drops the copy at once.

use super::ClickHouseConfig;
use crate::Result;
use crate::sink::{Row as EnrichedRow, Sink, SinkBatch, Written};
use crate::transform::replay::app_id;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use spendstream_log::Partition;
use spendstream_schemas::EnrichedRecordOf;
use spendstream_schemas::clickhouse::{EXPENSES_TABLE, MAX_DATE, SINK_OFFSETS_TABLE};
use std::collections::BTreeMap;
use std::time::Duration;

/// One `expenses` row in RowBinary: the columns of
/// `spendstream_schemas::clickhouse::expenses_columns`, in order.
#[derive(Row, Serialize)]
struct ExpenseRow<'a> {
    expense_id: String,
    tenant_id: &'a str,
    month: String,
    version: i64,
    source: &'a str,
    external_id: &'a str,
    account_id: &'a str,
    status: &'static str,
    related_external_id: Option<&'a str>,
    /// Days since 1970-01-01.
    transaction_date: u16,
    /// Seconds since the epoch.
    posted_at: Option<u32>,
    amount_minor: i64,
    currency: &'static str,
    billed_amount_minor: Option<i64>,
    billed_currency: Option<&'static str>,
    merchant_name: Option<&'a str>,
    merchant_normalized: Option<&'a str>,
    merchant_mcc: Option<i16>,
    category: &'static str,
    employee_id: Option<&'a str>,
    memo: Option<&'a str>,
    metadata: Option<String>,
    batch_id: &'a str,
    ingested_at: u32,
    processed_at: u32,
    log_partition: i32,
    log_offset: i64,
    base_amount_minor: Option<i64>,
    base_currency: Option<&'a str>,
    fx_rate: Option<&'a str>,
    fx_rate_date: Option<u16>,
}

#[derive(Row, Serialize)]
struct OffsetRow {
    app_id: String,
    committed_offset: i64,
    updated_at: u32,
}

#[derive(Row, Deserialize)]
struct HeldRow {
    app_id: String,
    committed_offset: i64,
}

fn epoch_days(date: NaiveDate) -> Option<u16> {
    let days = date.signed_duration_since(NaiveDate::default()).num_days();
    u16::try_from(days).ok()
}

fn epoch_seconds(t: DateTime<Utc>) -> Option<u32> {
    u32::try_from(t.timestamp()).ok()
}

fn last_day() -> NaiveDate {
    let (y, m, d) = MAX_DATE;
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

/// Why ClickHouse cannot hold `e` (a date past its types' range), if it
/// cannot: checked without building the row.
fn out_of_range<S>(e: &EnrichedRecordOf<S>) -> Option<String> {
    let r = &e.record;
    let last = last_day();
    if r.transaction_date > last {
        return Some(format!(
            "transaction_date {} is after {last}, the last day its Date type holds",
            r.transaction_date
        ));
    }
    [
        ("posted_at", r.posted_at),
        ("ingested_at", Some(e.ingested_at)),
        ("processed_at", Some(e.processed_at)),
    ]
    .into_iter()
    .find_map(|(name, t)| {
        let t = t.filter(|t| t.date_naive() > last)?;
        Some(format!(
            "{name} {t} is after {last}, the last day its DateTime type holds"
        ))
    })
}

impl<'a> ExpenseRow<'a> {
    /// The row, or why ClickHouse cannot hold it.
    fn of<S: AsRef<str>>(e: &'a EnrichedRecordOf<S>) -> std::result::Result<Self, String> {
        if let Some(reason) = out_of_range(e) {
            return Err(reason);
        }
        let r = &e.record;
        let seconds = |t: DateTime<Utc>| epoch_seconds(t).unwrap_or_default();
        // All four base columns, or none (a rate date before 1970 has no
        // ClickHouse Date).
        let base = e
            .base
            .as_ref()
            .and_then(|b| Some((b, epoch_days(b.rate_date)?)));
        Ok(Self {
            expense_id: e.expense_id.hyphenated().to_string(),
            tenant_id: e.tenant_id.as_ref(),
            month: e.month(),
            version: e.version,
            source: r.source.as_ref(),
            external_id: r.external_id.as_ref(),
            account_id: r.account_id.as_ref(),
            status: r.status.as_str(),
            related_external_id: r.related_external_id.as_ref().map(AsRef::as_ref),
            transaction_date: epoch_days(r.transaction_date).unwrap_or_default(),
            posted_at: r.posted_at.map(seconds),
            amount_minor: r.amount.minor,
            currency: r.amount.currency.code(),
            billed_amount_minor: r.billed.map(|m| m.minor),
            billed_currency: r.billed.map(|m| m.currency.code()),
            merchant_name: r.merchant_name.as_ref().map(AsRef::as_ref),
            merchant_normalized: e.merchant_normalized.as_deref(),
            // MCCs are 0..=9999, so they always fit.
            merchant_mcc: r.merchant_mcc.map(|m| m as i16),
            category: e.category.as_str(),
            employee_id: r.employee_id.as_ref().map(AsRef::as_ref),
            memo: r.memo.as_ref().map(AsRef::as_ref),
            metadata: (!r.metadata.is_empty())
                .then(|| spendstream_schemas::enriched::metadata_json(&r.metadata)),
            batch_id: e.batch_id.as_ref(),
            ingested_at: seconds(e.ingested_at),
            processed_at: seconds(e.processed_at),
            log_partition: e.log_partition,
            log_offset: e.log_offset,
            base_amount_minor: base.map(|(b, _)| b.minor),
            base_currency: base.map(|(b, _)| b.currency.as_str()),
            fx_rate: base.map(|(b, _)| b.rate.as_str()),
            fx_rate_date: base.map(|(_, day)| day),
        })
    }
}

/// The ClickHouse sink of one consumer group on one log.
pub struct ClickHouseSink {
    config: ClickHouseConfig,
    client: clickhouse::Client,
    group: String,
    log_id: String,
    /// Whether the server takes `insert_deduplication_token` (22.2+).
    dedup_token: bool,
}

impl ClickHouseSink {
    /// Connects (asks the server's version) for `group` on the log `log_id`.
    pub async fn connect(
        config: ClickHouseConfig,
        group: impl Into<String>,
        log_id: impl Into<String>,
    ) -> Result<Self> {
        let client = config.client();
        let version = server_version(&client).await?;
        let dedup_token = version >= (22, 2);
        tracing::info!(
            version = %format!("{}.{}", version.0, version.1),
            dedup_token,
            "ClickHouse sink ready."
        );
        Ok(Self {
            config,
            client,
            group: group.into(),
            log_id: log_id.into(),
            dedup_token,
        })
    }

    fn app_id(&self, partition: Partition) -> String {
        app_id(&self.group, &self.log_id, partition)
    }

    /// The database this sink writes.
    pub fn database(&self) -> &str {
        &self.config.database
    }
}

/// What the sink holds of these app ids. A literal tuple: ClickHouse 18.16
/// takes no array on the right of `IN`, and the client binds a list as one.
fn held_sql(ids: &[String]) -> String {
    let list: Vec<String> = ids.iter().map(|id| sql_string(id)).collect();
    format!(
        "SELECT app_id, max(committed_offset) AS committed_offset FROM {SINK_OFFSETS_TABLE} \
         WHERE app_id IN ({}) GROUP BY app_id",
        list.join(", ")
    )
}

const VERSION_SQL: &str = "SELECT version() AS v";

/// The rows of one ingest batch, each expense version once (a retried
/// insert not merged yet counts once). Literals, not binds: ClickHouse
/// 18.16 has no server-side parameters.
fn batch_rows_sql(tenant: &str, batch_id: &str) -> String {
    format!(
        "SELECT uniqExact(expense_id, version) AS n FROM {} WHERE tenant_id = {} AND batch_id = {}",
        spendstream_schemas::clickhouse::EXPENSES_TABLE,
        sql_string(tenant),
        sql_string(batch_id)
    )
}

/// How many rows of batch `batch_id` of `tenant` the ClickHouse sink holds
/// (for `GET /v1/batches/{id}`).
pub async fn batch_rows(config: &ClickHouseConfig, tenant: &str, batch_id: &str) -> Result<u64> {
    #[derive(Row, Deserialize)]
    struct Count {
        n: u64,
    }
    Ok(config
        .client()
        .query(&batch_rows_sql(tenant, batch_id))
        .fetch_one::<Count>()
        .await?
        .n)
}

/// Every query the sink and the migrations send besides the migrations'
/// own statements, with example values in place of their binds, for the
/// test suite to run on current ClickHouse (18.16 runs them for real).
/// RowBinary inserts are left out: the format is the same everywhere.
pub fn example_queries() -> Vec<String> {
    let bind = |sql: &str, values: &[&str]| {
        values
            .iter()
            .fold(sql.to_string(), |sql, v| sql.replacen('?', v, 1))
    };
    vec![
        VERSION_SQL.to_string(),
        held_sql(&["g-0123abcd-0".into(), "g-0123abcd-1".into()]),
        batch_rows_sql("acme", "6f1c2f0e-5a8b-4d3e-9c1a-2b3c4d5e6f70"),
        bind(
            super::migrate::EXISTS_SQL,
            &["currentDatabase()", "'schema_migrations'"],
        ),
        super::migrate::recorded_sql(),
        bind(
            super::migrate::RECORD_SQL,
            &["1", "'expenses and sink offsets'", "'abc'"],
        ),
    ]
}

/// `text` as a ClickHouse string literal.
fn sql_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The server's `major.minor`.
pub async fn server_version(client: &clickhouse::Client) -> Result<(u32, u32)> {
    #[derive(Row, Deserialize)]
    struct Version {
        v: String,
    }
    let v = client.query(VERSION_SQL).fetch_one::<Version>().await?.v;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

#[async_trait]
impl Sink for ClickHouseSink {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn stage(&self) -> &'static str {
        "sink_clickhouse"
    }

    async fn committed(&self, partitions: &[Partition]) -> Result<BTreeMap<Partition, i64>> {
        timed(self.config.timeout, self.held(partitions)).await
    }

    fn refuses(&self, row: &EnrichedRow<'_>) -> Option<String> {
        out_of_range(row)
    }

    async fn write(&self, batch: SinkBatch<'_>) -> Result<Written> {
        timed(self.config.timeout, self.write_batch(batch)).await
    }

    async fn ready(&self) -> Result<()> {
        timed(self.config.timeout, async {
            self.client.query("SELECT 1").execute().await?;
            Ok(())
        })
        .await
    }
}

/// `op` within `limit`, else a (transient) timeout: a server that hangs
/// must not hold the processor without a retry, nor `/readyz` forever.
async fn timed<T>(limit: Duration, op: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, op)
        .await
        .unwrap_or(Err(crate::Error::ClickHouse(
            clickhouse::error::Error::TimedOut,
        )))
}

/// Most monthly partitions one insert touches: current ClickHouse refuses
/// an insert into more than `max_partitions_per_insert_block` (100).
const MONTHS_PER_INSERT: usize = 90;

/// The rows split into groups of at most [`MONTHS_PER_INSERT`] months, in
/// their order within each month.
fn by_months<'a, S>(
    rows: &[(usize, &'a EnrichedRecordOf<S>)],
) -> Vec<Vec<(usize, &'a EnrichedRecordOf<S>)>> {
    let mut months: BTreeMap<String, Vec<(usize, &'a EnrichedRecordOf<S>)>> = BTreeMap::new();
    for row in rows {
        months.entry(row.1.month()).or_default().push(*row);
    }
    let mut groups = Vec::new();
    let mut group = Vec::new();
    for (i, (_, rows)) in months.into_iter().enumerate() {
        if i > 0 && i % MONTHS_PER_INSERT == 0 {
            groups.push(std::mem::take(&mut group));
        }
        group.extend(rows);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// The deduplication token of an insert of these rows: the same log
/// positions make the same token, so a replayed insert is recognised.
fn insert_token<S>(rows: &[(usize, &EnrichedRecordOf<S>)]) -> String {
    let mut ranges: BTreeMap<i32, (i64, i64, usize)> = BTreeMap::new();
    for (_, r) in rows {
        let e = ranges
            .entry(r.log_partition)
            .or_insert((r.log_offset, r.log_offset, 0));
        e.0 = e.0.min(r.log_offset);
        e.1 = e.1.max(r.log_offset);
        e.2 += 1;
    }
    ranges
        .iter()
        .map(|(p, (lo, hi, n))| format!("{p}:{lo}-{hi}#{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// ClickHouse exception codes that mean "this data", not "this table" or
/// "this moment": the rows of such an insert are isolated.
const DATA_ERROR_CODES: &[u32] = &[6, 27, 38, 41, 53, 69, 70, 72, 117, 321, 469];

fn is_data_error(error: &crate::Error) -> bool {
    match error {
        crate::Error::ClickHouse(clickhouse::error::Error::BadResponse(message)) => {
            crate::error::exception_code(message).is_some_and(|c| DATA_ERROR_CODES.contains(&c))
        }
        _ => false,
    }
}

/// Inserts `rows` with `insert`; when the server refuses the data, halves
/// the rows until each refused row is alone, inserts the rest, and returns
/// the refused ones (positions in `rows`) with the server's reason. When
/// every row is refused the table, not the data, is wrong: that error is
/// returned instead.
async fn isolate<'a, T, F, Fut>(rows: &'a [T], mut insert: F) -> Result<Vec<(usize, String)>>
where
    F: FnMut(Vec<(usize, &'a T)>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut refused = Vec::new();
    let mut first_error = None;
    let mut stack = vec![(0, rows.len())];
    while let Some((from, to)) = stack.pop() {
        let part: Vec<(usize, &'a T)> = (from..to).map(|i| (i, &rows[i])).collect();
        match insert(part).await {
            Ok(()) => {}
            Err(e) if is_data_error(&e) && to - from == 1 => {
                refused.push((from, spendstream_schemas::error::Chain(&e).to_string()));
                first_error.get_or_insert(e);
            }
            Err(e) if is_data_error(&e) => {
                let mid = from + (to - from) / 2;
                stack.push((mid, to));
                stack.push((from, mid));
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if !rows.is_empty() && refused.len() == rows.len() {
        return Err(
            first_error.unwrap_or(crate::Error::ClickHouseRow("every row was refused".into()))
        );
    }
    refused.sort_by_key(|(i, _)| *i);
    Ok(refused)
}

impl ClickHouseSink {
    async fn held(&self, partitions: &[Partition]) -> Result<BTreeMap<Partition, i64>> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let ids: Vec<String> = partitions.iter().map(|p| self.app_id(*p)).collect();
        let rows = self
            .client
            .query(&held_sql(&ids))
            .fetch_all::<HeldRow>()
            .await?;
        Ok(partitions
            .iter()
            .zip(ids)
            .filter_map(|(p, id)| {
                rows.iter()
                    .find(|r| r.app_id == id)
                    .map(|r| (*p, r.committed_offset))
            })
            .collect())
    }

    /// One insert of `rows` into `expenses`.
    async fn insert(&self, rows: &[(usize, &EnrichedRow<'_>)]) -> Result<()> {
        let mut insert = self.client.insert::<ExpenseRow<'_>>(EXPENSES_TABLE).await?;
        if self.dedup_token {
            insert = insert.with_setting("insert_deduplication_token", insert_token(rows));
        }
        for (_, record) in rows {
            // `refuses` kept anything out of range out of the batch.
            let row = ExpenseRow::of(record).map_err(crate::Error::ClickHouseRow)?;
            insert.write(&row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    async fn write_batch(&self, batch: SinkBatch<'_>) -> Result<Written> {
        let partitions: Vec<Partition> = batch.last.keys().copied().collect();
        let held = self.held(&partitions).await?;
        let fresh: Vec<(usize, &EnrichedRow<'_>)> = batch
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                held.get(&(r.log_partition as Partition))
                    .is_none_or(|v| r.log_offset > *v)
            })
            .collect();
        let pending: Vec<(Partition, i64)> = batch
            .last
            .iter()
            .filter(|(p, last)| held.get(p).is_none_or(|h| h < last))
            .map(|(p, last)| (*p, *last))
            .collect();
        if pending.is_empty() {
            return Ok(Written { rows: 0 });
        }
        let mut refused = Vec::new();
        for group in by_months(&fresh) {
            let bad = isolate(&group, |part| async move {
                let rows: Vec<(usize, &EnrichedRow<'_>)> =
                    part.into_iter().map(|(_, r)| *r).collect();
                self.insert(&rows).await
            })
            .await?;
            refused.extend(bad.into_iter().map(|(i, reason)| (group[i].0, reason)));
        }
        if !refused.is_empty() {
            // Nothing is recorded as held: the processor stores these as
            // dead letters, then writes the batch again without them.
            return Err(crate::Error::RowsRefused {
                sink: "clickhouse",
                rows: refused,
            });
        }
        if !fresh.is_empty() {
            crate::failpoint("after_clickhouse_insert");
        }
        let now = epoch_seconds(Utc::now()).unwrap_or_default();
        let mut offsets = self.client.insert::<OffsetRow>(SINK_OFFSETS_TABLE).await?;
        for (partition, last) in &pending {
            offsets
                .write(&OffsetRow {
                    app_id: self.app_id(*partition),
                    committed_offset: *last,
                    updated_at: now,
                })
                .await?;
        }
        offsets.end().await?;
        Ok(Written { rows: fresh.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spendstream_schemas::EnrichedRecord;

    fn rec(month: u32, partition: i32, offset: i64) -> EnrichedRecord {
        let raw = format!(
            r#"{{"source":"s","external_id":"e{offset}","account_id":"a","transaction_date":"20{:02}-{:02}-01","amount_minor":1,"currency":"USD"}}"#,
            10 + month / 12,
            1 + month % 12
        );
        EnrichedRecord {
            expense_id: spendstream_schemas::expense_id("t", "s", "e"),
            tenant_id: "t".into(),
            version: offset,
            record: spendstream_schemas::ExpenseRecord::from_json(&raw).unwrap(),
            category: spendstream_schemas::Category::Other,
            merchant_normalized: None,
            batch_id: "b".into(),
            ingested_at: Utc::now(),
            processed_at: Utc::now(),
            log_partition: partition,
            log_offset: offset,
            base: None,
        }
    }

    #[test]
    fn the_row_has_the_columns_the_migrations_make_in_their_order() {
        let columns: Vec<String> = spendstream_schemas::clickhouse::expenses_columns()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(ExpenseRow::COLUMN_NAMES, columns);
    }

    #[test]
    fn inserts_touch_at_most_90_months_and_keep_every_row() {
        let rows: Vec<EnrichedRecord> = (0..200).map(|m| rec(m, 0, i64::from(m))).collect();
        let indexed: Vec<(usize, &EnrichedRecord)> = rows.iter().enumerate().collect();
        let groups = by_months(&indexed);
        assert_eq!(groups.len(), 3);
        let mut seen: Vec<usize> = groups.iter().flatten().map(|(i, _)| *i).collect();
        seen.sort();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        for g in &groups {
            let months: std::collections::BTreeSet<String> =
                g.iter().map(|(_, r)| r.month()).collect();
            assert!(months.len() <= MONTHS_PER_INSERT);
        }
    }

    #[test]
    fn the_dedup_token_names_the_log_positions() {
        let rows = [rec(0, 0, 5), rec(0, 0, 7), rec(1, 3, 2)];
        let indexed: Vec<(usize, &EnrichedRecord)> = rows.iter().enumerate().collect();
        assert_eq!(insert_token(&indexed), "0:5-7#2,3:2-2#1");
        assert_eq!(insert_token(&indexed), insert_token(&indexed));
    }

    fn data_error() -> crate::Error {
        crate::Error::ClickHouse(clickhouse::error::Error::BadResponse(
            "Code: 117, e.displayText() = DB::Exception: Incorrect data".into(),
        ))
    }

    #[tokio::test]
    async fn refused_rows_are_isolated_and_the_rest_inserted() {
        let rows: Vec<u32> = (0..100).collect();
        let inserted = std::sync::Mutex::new(Vec::new());
        let refused = isolate(&rows, |part| {
            let bad = part.iter().any(|(_, v)| **v == 13 || **v == 77);
            if !bad {
                inserted
                    .lock()
                    .unwrap()
                    .extend(part.iter().map(|(_, v)| **v));
            }
            async move { if bad { Err(data_error()) } else { Ok(()) } }
        })
        .await
        .unwrap();
        assert_eq!(
            refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![13, 77]
        );
        assert!(refused[0].1.contains("Incorrect data"));
        let mut inserted = inserted.into_inner().unwrap();
        inserted.sort();
        assert_eq!(
            inserted,
            (0..100)
                .filter(|v| *v != 13 && *v != 77)
                .collect::<Vec<_>>()
        );
        // Every row refused: the table is wrong, not the data.
        let all = isolate(&rows, |_| async { Err(data_error()) }).await;
        assert!(all.is_err());
        // Other errors are not isolated.
        let timeout = isolate(&rows, |_| async {
            Err(crate::Error::ClickHouse(clickhouse::error::Error::TimedOut))
        })
        .await;
        assert!(matches!(timeout, Err(e) if e.is_transient()));
    }

    #[test]
    fn string_literals_are_escaped() {
        assert_eq!(sql_string("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(sql_string("g-0123-4"), "'g-0123-4'");
    }
}
