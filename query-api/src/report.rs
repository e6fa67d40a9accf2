//! `GET /v1/reports/spend`: spend grouped by one dimension and currency,
//! counting only the latest version of each expense. By day, week or month
//! the answer is a time series with a zero row for every period without
//! spend; by any other dimension it is ranked by amount, and `top=N` keeps
//! the first N groups.
//!
//! A computed answer is kept in the [`AnswerCache`](crate::cache::AnswerCache) under the table
//! version it read: the pages after the first are read from it (a cursor
//! names the version its first page read, so paging stays on one snapshot
//! while the answer is kept), and a repeated report on an unchanged table is
//! not recomputed.

use crate::cache::Key;
use crate::current::Ask;
use crate::etag::{etag, matches, not_modified, with_tag};
use crate::format::Format;
use crate::{Error, QueryState, Result};
use axum::Json;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{
    Array, ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use spendstream_http::{ApiError, Auth, ErrorBody};
use spendstream_schemas::{Category, Currency, Status, format_minor};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use tracing::instrument;

/// Dimensions a report can group by: day, week (labelled by its Monday)
/// and month answer a time series ordered by period, with a zero row for
/// each period and currency without spend; the others are ranked by amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Category,
    Merchant,
    Account,
    Employee,
    Currency,
    Day,
    /// ISO weeks, labelled by their Monday.
    Week,
    Month,
}

impl GroupBy {
    /// The lake expression whose latest value is grouped (trusted text:
    /// from this enum). Periods group by day in SQL and are bucketed here.
    fn column(&self) -> &'static str {
        match self {
            GroupBy::Category => "category",
            GroupBy::Merchant => "COALESCE(merchant_normalized, merchant_name)",
            GroupBy::Account => "account_id",
            GroupBy::Employee => "employee_id",
            GroupBy::Currency => "currency",
            GroupBy::Day | GroupBy::Week | GroupBy::Month => "transaction_date",
        }
    }

    /// The period of a time series, if this is one.
    fn period(&self) -> Option<Period> {
        match self {
            GroupBy::Day => Some(Period::Day),
            GroupBy::Week => Some(Period::Week),
            GroupBy::Month => Some(Period::Month),
            _ => None,
        }
    }
}

/// The step of a time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    /// The first day of the period holding `date`.
    fn start(self, date: NaiveDate) -> NaiveDate {
        match self {
            Period::Day => date,
            Period::Week => date.week(chrono::Weekday::Mon).first_day(),
            Period::Month => date.with_day(1).unwrap_or(date),
        }
    }

    /// The first day of the period after the one starting at `start`.
    fn next(self, start: NaiveDate) -> Option<NaiveDate> {
        match self {
            Period::Day => start.succ_opt(),
            Period::Week => start.checked_add_days(chrono::Days::new(7)),
            Period::Month => start.checked_add_months(chrono::Months::new(1)),
        }
    }

    /// The label of the period starting at `start`: the day, the week's
    /// Monday (`YYYY-MM-DD`), or the month (`YYYY-MM`, as the lake's
    /// partitions are named).
    fn label(self, start: NaiveDate) -> String {
        match self {
            Period::Day | Period::Week => start.to_string(),
            Period::Month => start.format("%Y-%m").to_string(),
        }
    }
}

/// The most periods a time series may hold (27 years of days).
pub const MAX_PERIODS: usize = 10_000;

/// The most rows (periods × currencies) a time series may hold.
pub const MAX_SERIES_ROWS: usize = 100_000;

/// Years a `from` or `to` may name.
const YEARS: std::ops::RangeInclusive<i32> = 1900..=2200;

/// Changes when the same rows are written differently (CSV formula
/// defusing), so caches keyed on an older tag do not keep the old bytes.
const ANSWER_REVISION: &str = "2";

fn range_too_large() -> ApiError {
    ApiError::bad_request(
        "range_too_large",
        format!(
            "a time series holds at most {MAX_PERIODS} periods and {MAX_SERIES_ROWS} rows; narrow `from` and `to`, filter currencies, or group by a longer period"
        ),
    )
}

/// Query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SpendParams {
    pub group_by: GroupBy,
    /// First transaction date included (YYYY-MM-DD).
    pub from: Option<NaiveDate>,
    /// Last transaction date included (YYYY-MM-DD).
    pub to: Option<NaiveDate>,
    /// Comma-separated statuses, or `all`; default `posted,pending`.
    pub status: Option<String>,
    /// Rows per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<usize>,
    /// The previous page's `next_cursor` (bound to the same query).
    pub cursor: Option<String>,
    /// Only the first N groups by amount (every currency of each), in one
    /// answer (not with periods, `limit` or `cursor`).
    #[param(minimum = 1, maximum = 1000)]
    pub top: Option<usize>,
    /// Comma-separated categories.
    pub category: Option<String>,
    /// One account id.
    pub account: Option<String>,
    /// One employee id.
    pub employee: Option<String>,
    /// Comma-separated ISO 4217 codes; or `base`: every amount in the
    /// tenant's base currency, one row per group (docs/fx.md).
    pub currency: Option<String>,
    /// Least amount included, in minor units of the record's currency: what
    /// the record counts as (a reversal negative, however it was signed).
    pub min_amount_minor: Option<i64>,
    /// Greatest amount included, in minor units, likewise.
    pub max_amount_minor: Option<i64>,
}

/// The filters of a report besides status and dates, checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub categories: Vec<Category>,
    pub currencies: Vec<String>,
    /// `currency=base`: totals of the base-currency amounts.
    pub in_base: bool,
    pub account: Option<String>,
    pub employee: Option<String>,
    pub min_amount_minor: Option<i64>,
    pub max_amount_minor: Option<i64>,
}

impl Filters {
    fn parse(p: &SpendParams) -> Result<Self, ApiError> {
        let invalid = |m: String| ApiError::bad_request("invalid_query", m);
        let list = |text: &Option<String>| -> Vec<String> {
            text.iter()
                .flat_map(|t| t.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let categories = list(&p.category)
            .iter()
            .map(|c| {
                c.parse::<Category>()
                    .map_err(|_| invalid(format!("unknown category `{c}`")))
            })
            .collect::<Result<_, _>>()?;
        let in_base = list(&p.currency).iter().any(|c| c == "base");
        if in_base && list(&p.currency).len() > 1 {
            return Err(invalid(
                "`currency=base` stands alone: it asks every amount in the base currency".into(),
            ));
        }
        let currencies = list(&p.currency)
            .into_iter()
            .filter(|c| c != "base")
            .map(|c| {
                Currency::from_code(&c)
                    .map(|currency| currency.code().to_string())
                    .ok_or_else(|| invalid(format!("unknown currency `{c}`")))
            })
            .collect::<Result<_, _>>()?;
        let id = |name: &str, value: &Option<String>| -> Result<Option<String>, ApiError> {
            match value {
                Some(v) if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) => {
                    Err(invalid(format!(
                        "`{name}` must be 1 to 256 characters, no control characters"
                    )))
                }
                other => Ok(other.clone()),
            }
        };
        if let (Some(min), Some(max)) = (p.min_amount_minor, p.max_amount_minor)
            && min > max
        {
            return Err(invalid(
                "`min_amount_minor` is above `max_amount_minor`".into(),
            ));
        }
        Ok(Self {
            categories,
            currencies,
            in_base,
            account: id("account", &p.account)?,
            employee: id("employee", &p.employee)?,
            min_amount_minor: p.min_amount_minor,
            max_amount_minor: p.max_amount_minor,
        })
    }

    /// The SQL conditions on the latest version's columns.
    fn conditions(&self) -> Vec<String> {
        let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let list = |items: Vec<String>| items.join(", ");
        let mut out = Vec::new();
        if !self.categories.is_empty() {
            out.push(format!(
                "category IN ({})",
                list(self.categories.iter().map(|c| quoted(c.as_str())).collect())
            ));
        }
        if !self.currencies.is_empty() {
            out.push(format!(
                "currency IN ({})",
                list(self.currencies.iter().map(|c| quoted(c)).collect())
            ));
        }
        if let Some(account) = &self.account {
            out.push(format!("account_id = {}", quoted(account)));
        }
        if let Some(employee) = &self.employee {
            out.push(format!("employee_id = {}", quoted(employee)));
        }
        // What a record counts as (a reversal negated), however it was
        // signed when sent.
        if let Some(min) = self.min_amount_minor {
            out.push(format!("counted_amount_minor >= {min}"));
        }
        if let Some(max) = self.max_amount_minor {
            out.push(format!("counted_amount_minor <= {max}"));
        }
        out
    }
}

/// One report row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SpendRow {
    /// The group's value (null for records without one).
    #[schema(required)]
    pub group: Option<String>,
    pub currency: String,
    pub count: i64,
    /// Decimal string with the currency's exponent.
    pub amount: String,
    pub amount_minor: i128,
    /// The same total in the tenant's base currency, when every expense of
    /// the row had a rate (rows rank by it); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_amount_minor: Option<i128>,
    /// `currency=base`: expenses of the group without a base amount (no
    /// rate for their currency and date), left out of the total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unconverted: Option<i64>,
}

impl SpendRow {
    /// The row of `group` in `currency`: `count` expenses totalling `minor`.
    pub fn new(group: Option<String>, currency: String, count: i64, minor: i128) -> Self {
        let amount = format_minor(minor, exponent_of(&currency));
        Self {
            group,
            currency,
            count,
            amount,
            amount_minor: minor,
            base_currency: None,
            base_amount_minor: None,
            unconverted: None,
        }
    }
}

/// Totals of the expenses of one group, currency and base currency, as
/// the current state and the SQL report both count them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub group: Option<String>,
    pub currency: String,
    /// `None`: the expenses had no base amount.
    pub base_currency: Option<String>,
    pub count: i64,
    pub minor: i128,
    pub base_minor: i128,
}

/// One report row's totals while [`fold`] adds its parts.
#[derive(Default)]
struct RowTotals {
    count: i64,
    minor: i128,
    base: Option<String>,
    base_minor: i128,
    /// Expenses with a base amount.
    converted: i64,
    /// Whether they had more than one base currency.
    mixed: bool,
}

/// The report rows of `parts`, ranked: per group and currency (with the
/// base total when every expense had one), or with `in_base` per group in
/// the base currency, counting the expenses without a base amount apart.
pub(crate) fn fold(parts: Vec<Part>, in_base: bool) -> Vec<SpendRow> {
    let mut rows: Vec<SpendRow> = if in_base {
        // The base currency the tenant's converted expenses have most.
        let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
        for part in &parts {
            if let Some(base) = &part.base_currency {
                *seen.entry(base.as_str()).or_default() += part.count;
            }
        }
        let main = seen
            .iter()
            .max_by_key(|(code, n)| (**n, std::cmp::Reverse(**code)))
            .map(|(code, _)| code.to_string());
        let mut by: BTreeMap<(Option<String>, String), (i64, i128, i64)> = BTreeMap::new();
        for part in &parts {
            let Some(base) = part.base_currency.clone().or_else(|| main.clone()) else {
                continue;
            };
            let row = by.entry((part.group.clone(), base)).or_default();
            if part.base_currency.is_some() {
                row.0 += part.count;
                row.1 += part.base_minor;
            } else {
                row.2 += part.count;
            }
        }
        // Nothing converted at all: one row per group saying so.
        if main.is_none() {
            for part in &parts {
                let row = by.entry((part.group.clone(), String::new())).or_default();
                row.2 += part.count;
            }
        }
        by.into_iter()
            .map(
                |((group, currency), (count, minor, unconverted))| SpendRow {
                    unconverted: Some(unconverted),
                    ..SpendRow::new(group, currency, count, minor)
                },
            )
            .collect()
    } else {
        let mut by: BTreeMap<(Option<String>, String), RowTotals> = BTreeMap::new();
        for part in parts {
            let row = by.entry((part.group, part.currency)).or_default();
            row.count += part.count;
            row.minor += part.minor;
            if let Some(base) = part.base_currency {
                // Two base currencies in one row: no one base total.
                row.mixed |= row.base.as_ref().is_some_and(|b| *b != base);
                row.base = Some(base);
                row.base_minor += part.base_minor;
                row.converted += part.count;
            }
        }
        by.into_iter()
            .map(|((group, currency), row)| {
                let whole = row.converted == row.count && !row.mixed;
                SpendRow {
                    base_currency: row.base.filter(|_| whole),
                    base_amount_minor: whole.then_some(row.base_minor),
                    ..SpendRow::new(group, currency, row.count, row.minor)
                }
            })
            .collect()
    };
    rows.sort_by(compare_rows);
    rows
}

/// A page of a report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SpendReport {
    pub group_by: GroupBy,
    pub rows: Vec<SpendRow>,
    /// The next page's cursor; null on the last page.
    #[schema(required)]
    pub next_cursor: Option<String>,
}

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

fn parse_statuses(text: Option<&str>) -> Result<Vec<Status>, ApiError> {
    match text.map(str::trim) {
        None | Some("") => Ok(vec![Status::Posted, Status::Pending]),
        Some("all") => Ok(Status::ALL.to_vec()),
        Some(list) => list
            .split(',')
            .map(|s| {
                s.trim().parse::<Status>().map_err(|()| {
                    ApiError::bad_request("invalid_query", format!("unknown status `{}`", s.trim()))
                })
            })
            .collect(),
    }
}

/// A cursor names the row to start at, the table version the first page
/// read and a fingerprint of the query it belongs to, so it cannot be
/// replayed against another query.
fn fingerprint(p: &SpendParams, statuses: &[Status], filters: &Filters) -> u64 {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        p.group_by, p.from, p.to, statuses, filters, p.top
    );
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn encode_cursor(offset: usize, fp: u64, version: u64) -> String {
    B64.encode(format!("v2:{offset}:{fp:x}:{version}"))
}

/// The offset and the table version a cursor names.
fn decode_cursor(cursor: &str, fp: u64) -> Result<(usize, u64), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "the cursor is not valid for this query");
    let text = B64
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = text.split(':');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("v2"), Some(offset), Some(f), Some(version), None) if f == format!("{fp:x}") => Ok((
            offset.parse().map_err(|_| bad())?,
            version.parse().map_err(|_| bad())?,
        )),
        _ => Err(bad()),
    }
}

/// A report request, checked.
struct Request {
    params: SpendParams,
    statuses: Vec<Status>,
    filters: Filters,
    fp: u64,
}

impl Request {
    fn parse(params: SpendParams) -> Result<Self, ApiError> {
        let invalid = |m: &str| ApiError::bad_request("invalid_query", m);
        let statuses = parse_statuses(params.status.as_deref())?;
        let filters = Filters::parse(&params)?;
        if let (Some(from), Some(to)) = (params.from, params.to)
            && from > to
        {
            return Err(invalid("`from` is after `to`"));
        }
        if [params.from, params.to]
            .iter()
            .flatten()
            .any(|d| !YEARS.contains(&d.year()))
        {
            return Err(invalid(&format!(
                "`from` and `to` must be in the years {} to {}",
                YEARS.start(),
                YEARS.end()
            )));
        }
        // A range too long to fill is refused before any query runs.
        if let (Some(period), Some(from), Some(to)) =
            (params.group_by.period(), params.from, params.to)
            && periods_between(period, from, to) > MAX_PERIODS
        {
            return Err(range_too_large());
        }
        if let Some(top) = params.top {
            if params.group_by.period().is_some() {
                return Err(invalid(
                    "`top` ranks groups by amount; a time series is ordered by period",
                ));
            }
            if params.limit.is_some() || params.cursor.is_some() {
                return Err(invalid(
                    "`top` answers in one page: leave out `limit` and `cursor`",
                ));
            }
            if !(1..=MAX_LIMIT).contains(&top) {
                return Err(invalid(&format!("`top` must be 1 to {MAX_LIMIT}")));
            }
        }
        let fp = fingerprint(&params, &statuses, &filters);
        Ok(Self {
            params,
            statuses,
            filters,
            fp,
        })
    }

    fn key(&self, version: u64, tenant: &str) -> Key {
        Key {
            version,
            tenant: tenant.to_string(),
            query: self.fp,
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/reports/spend",
    summary = "Spend grouped by a dimension and currency",
    security(("bearer" = [])),
    params(
        SpendParams,
        ("If-None-Match" = Option<String>, Header, description = "An ETag of an earlier answer: 304 while the lake table is unchanged."),
    ),
    responses(
        (status = 200, description = "One page, in the format Accept asks for: application/json (default), text/csv, application/vnd.apache.arrow.stream or application/vnd.apache.parquet; non-JSON pages hold the rows (group, currency, count, amount, amount_minor) and the next cursor in the Spendstream-Next-Cursor header.", content((SpendReport = "application/json"), (String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"), (Vec<u8> = "application/vnd.apache.parquet")), headers(("ETag" = String, description = "Weak tag of the lake table version and the request."), ("Spendstream-Next-Cursor" = String, description = "CSV, Arrow and Parquet answers: the cursor of the next page, when there is one."))),
        (status = 400, description = "invalid_query, invalid_cursor, range_too_large (a time series of more than 10000 periods or 100000 rows)", body = ErrorBody),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the read role.", body = ErrorBody),
        (status = 503, description = "The lake is unavailable.", body = ErrorBody),
        (status = 500, description = "internal: the query failed for a reason no retry fixes (logged with the request id).", body = ErrorBody),
        (status = 304, description = "Not modified: the lake table has not changed since the answer tagged with If-None-Match (the ETag header repeats the tag)."),
        (status = 406, description = "not_acceptable: no media type of Accept is available.", body = ErrorBody),
        (status = 429, description = "quota_exceeded: this tenant is over its rate limit (reports and SQL share one bucket per tenant); Retry-After. With a rate limit, every answer carries RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset.", body = ErrorBody),
        (status = 422, description = "query_memory_exceeded: the report needs more memory than one query may hold (--sql-memory-mb); query_timeout: it ran longer than --sql-timeout-secs.", body = ErrorBody),
    ),
)]
#[instrument(skip_all, fields(tenant = %auth.tenant()))]
pub async fn spend(
    state: State<QueryState>,
    auth: Auth,
    headers: HeaderMap,
    params: Result<Query<SpendParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    crate::query_route(state, auth, "report", |state, auth| {
        spend_answer(state, auth, headers, params)
    })
    .await
}

async fn spend_answer(
    State(state): State<QueryState>,
    auth: Auth,
    headers: HeaderMap,
    params: Result<Query<SpendParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let request = Request::parse(params)?;
    let params = &request.params;
    let limit = match params.top {
        Some(_) => usize::MAX,
        None => spendstream_http::page_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    let format = Format::negotiate(&headers)?;
    let (start, pinned) = match &params.cursor {
        Some(c) => {
            let (offset, version) = decode_cursor(c, request.fp)?;
            (offset, Some(version))
        }
        None => (0, None),
    };
    let tenant = auth.tenant();
    let tag_of = |version: u64| {
        etag(
            version,
            &[
                tenant,
                &format!("{:x}", request.fp),
                &start.to_string(),
                &limit.to_string(),
                format.media_type(),
                ANSWER_REVISION,
            ],
        )
    };
    // A cursor's pages come from the snapshot its first page read while
    // that answer is kept; otherwise from the newest table.
    let current = state.lake.version().await.map_err(Error::from)?;
    let cached = pinned
        .and_then(|v| Some((v, state.reports.get(&request.key(v, tenant))?)))
        .or_else(|| Some((current, state.reports.get(&request.key(current, tenant))?)));
    let version = cached.as_ref().map_or(current, |(v, _)| *v);
    if matches(&headers, &tag_of(version)) {
        return Ok(not_modified(&tag_of(version)));
    }
    let (version, rows) = match cached {
        Some(hit) => hit,
        None => {
            // One time limit over catching up or opening a session, and
            // the report.
            let (version, rows) = crate::sql::within_time(&state.sql_limits, async {
                let ask = Ask {
                    group_by: params.group_by,
                    statuses: &request.statuses,
                    from: params.from,
                    to: params.to,
                    filters: &request.filters,
                };
                if let Some(current) = &state.current
                    && let Some(found) = current.spend_rows(&state.lake, tenant, &ask).await
                {
                    return Ok(found);
                }
                // The tenant's session of `POST /v1/sql`: its
                // `expenses_latest` view holds only the tenant's rows
                // (isolation in the plan, not in this SQL text), and its
                // memory pool bounds the report.
                let (ctx, version) =
                    crate::sql::tenant_session(&state.lake, None, tenant, &state.sql_limits)
                        .await?;
                let rows = spend_rows(&ctx, params, &request.statuses, &request.filters).await?;
                Ok((version, rows))
            })
            .await?;
            let rows = answer(rows, &request)?;
            let rows = Arc::new(rows);
            state
                .reports
                .insert(request.key(version, tenant), rows.clone());
            (version, rows)
        }
    };
    let tag = tag_of(version);
    let end = start.saturating_add(limit).min(rows.len());
    let next_cursor = (end < rows.len()).then(|| encode_cursor(end, request.fp, version));
    let page = rows.get(start..end).map(<[_]>::to_vec).unwrap_or_default();
    let response = if format == Format::Json {
        Json(SpendReport {
            group_by: params.group_by,
            rows: page,
            next_cursor,
        })
        .into_response()
    } else {
        // Rows as a table; the next page's cursor in a header.
        let (schema, batch) = rows_as_batch(&page)?;
        let mut response = (
            [(header::CONTENT_TYPE, format.media_type())],
            format.encode(&schema, &[batch])?,
        )
            .into_response();
        if let Some(cursor) = next_cursor.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(NEXT_CURSOR, cursor);
        }
        response
    };
    let mut response = with_tag(response, &tag);
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(response)
}

/// The whole answer to `request`: ranked rows (the first `top` groups when
/// asked), or a time series with its gaps filled.
fn answer(rows: Vec<SpendRow>, request: &Request) -> Result<Vec<SpendRow>, ApiError> {
    let params = &request.params;
    Ok(match (params.group_by.period(), params.top) {
        (Some(period), _) => time_series(
            rows,
            period,
            params.from,
            params.to,
            &request.filters.currencies,
            request.filters.in_base,
        )?,
        (None, Some(top)) => top_groups(rows, top),
        (None, None) => rows,
    })
}

/// The rows of the first `n` distinct groups of ranked `rows` (a group
/// spent in several currencies keeps each of its rows).
fn top_groups(rows: Vec<SpendRow>, n: usize) -> Vec<SpendRow> {
    let mut groups = HashSet::new();
    rows.into_iter()
        .filter(|row| {
            groups.contains(&row.group) || (groups.len() < n && groups.insert(row.group.clone()))
        })
        .collect()
}

/// The periods from the one holding `from` to the one holding `to`.
fn periods_between(period: Period, from: NaiveDate, to: NaiveDate) -> usize {
    let days = usize::try_from((to - from).num_days()).unwrap_or(0);
    match period {
        Period::Day => days + 1,
        Period::Week => {
            let weeks = (period.start(to) - period.start(from)).num_days() / 7;
            usize::try_from(weeks).unwrap_or(0) + 1
        }
        Period::Month => {
            let months = (to.year() - from.year()) * 12 + to.month() as i32 - from.month() as i32;
            usize::try_from(months).unwrap_or(0) + 1
        }
    }
}

/// Day rows (`group` = `YYYY-MM-DD`) bucketed into `period`s, one row per
/// period and currency from `from` (or the first spend) to `to` (or the
/// last), zero where nothing was spent, ordered by period then currency.
/// The currencies are those spent plus those the filter names.
/// With `in_base` (`currency=base`) each row says how many expenses had no
/// base amount.
fn time_series(
    days: Vec<SpendRow>,
    period: Period,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    currencies: &[String],
    in_base: bool,
) -> Result<Vec<SpendRow>, ApiError> {
    let mut sums: BTreeMap<(NaiveDate, String), (i64, i128, Option<i64>)> = BTreeMap::new();
    for row in days {
        let day = row
            .group
            .as_deref()
            .and_then(|g| NaiveDate::parse_from_str(g, "%Y-%m-%d").ok())
            .ok_or_else(|| ApiError::internal(format!("a day row is labelled {:?}", row.group)))?;
        let sum = sums.entry((period.start(day), row.currency)).or_default();
        sum.0 += row.count;
        sum.1 += row.amount_minor;
        if let Some(n) = row.unconverted {
            sum.2 = Some(sum.2.unwrap_or_default() + n);
        }
    }
    let codes: BTreeSet<String> = sums
        .keys()
        .map(|(_, c)| c.clone())
        .chain(currencies.iter().cloned())
        .collect();
    let first = from
        .map(|d| period.start(d))
        .or_else(|| sums.keys().next().map(|(d, _)| *d));
    let last = to
        .map(|d| period.start(d))
        .or_else(|| sums.keys().next_back().map(|(d, _)| *d));
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Vec::new());
    };
    if codes.is_empty() {
        return Ok(Vec::new());
    }
    if periods_between(period, first, last).saturating_mul(codes.len()) > MAX_SERIES_ROWS {
        return Err(range_too_large());
    }
    let mut rows = Vec::new();
    let mut at = Some(first);
    let mut periods = 0;
    while let Some(start) = at.filter(|d| *d <= last) {
        periods += 1;
        if periods > MAX_PERIODS {
            return Err(range_too_large());
        }
        for code in &codes {
            let (count, minor, unconverted) = sums
                .get(&(start, code.clone()))
                .copied()
                .unwrap_or_default();
            rows.push(SpendRow {
                unconverted: unconverted.or(in_base.then_some(0)),
                ..SpendRow::new(Some(period.label(start)), code.clone(), count, minor)
            });
        }
        at = period.next(start);
    }
    Ok(rows)
}

/// The header that carries the next page's cursor in CSV, Arrow and
/// Parquet answers.
pub const NEXT_CURSOR: &str = "spendstream-next-cursor";

/// Report rows as one Arrow batch: `group`, `currency`, `count`, `amount`
/// (decimal text in the currency's exponent), `amount_minor` (exact).
fn rows_as_batch(rows: &[SpendRow]) -> Result<(SchemaRef, RecordBatch), ApiError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("group", DataType::Utf8, true),
        Field::new("currency", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("amount", DataType::Utf8, false),
        Field::new("amount_minor", DataType::Decimal128(38, 0), false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.group.clone()).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.currency.clone()).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.count).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.amount.clone()).collect::<Vec<_>>(),
        )),
        Arc::new(
            Decimal128Array::from(rows.iter().map(|r| r.amount_minor).collect::<Vec<_>>())
                .with_precision_and_scale(38, 0)
                .map_err(ApiError::internal)?,
        ),
    ];
    let (schema, columns) = if rows.iter().any(|r| r.unconverted.is_some()) {
        // `currency=base`: what each row left out.
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("unconverted", DataType::Int64, false));
        let mut columns = columns;
        columns.push(Arc::new(Int64Array::from(
            rows.iter()
                .map(|r| r.unconverted.unwrap_or_default())
                .collect::<Vec<_>>(),
        )));
        (Arc::new(Schema::new(fields)), columns)
    } else {
        (schema, columns)
    };
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(ApiError::internal)?;
    Ok((schema, batch))
}

/// Every row of the report over the rows `ctx` holds as `expenses_counted`
/// (a tenant session's view: the latest version of each expense that counts
/// under the lifecycle rules), sorted by amount (exactly, across exponents)
/// descending, then group and currency.
pub async fn spend_rows(
    ctx: &SessionContext,
    params: &SpendParams,
    statuses: &[Status],
    filters: &Filters,
) -> Result<Vec<SpendRow>> {
    let sql = spend_sql(params, statuses, filters);
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut parts = Vec::new();
    for batch in batches {
        let text = |i: usize| -> Result<StringArray> {
            let col = cast(batch.column(i), &DataType::Utf8)
                .map_err(datafusion::error::DataFusionError::from)?;
            col.as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| Error::Shape(format!("column {i} is not text")))
        };
        let decimal = |i: usize| -> Result<Decimal128Array> {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .cloned()
                .ok_or_else(|| Error::Shape(format!("column {i} is not Decimal128")))
        };
        let groups = text(0)?;
        let currencies = text(1)?;
        let bases = text(2)?;
        let counts = batch
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Shape("count is not Int64".into()))?;
        let (totals, base_totals) = (decimal(4)?, decimal(5)?);
        for i in 0..batch.num_rows() {
            parts.push(Part {
                group: (!groups.is_null(i)).then(|| groups.value(i).to_string()),
                currency: currencies.value(i).to_string(),
                base_currency: (!bases.is_null(i)).then(|| bases.value(i).to_string()),
                count: counts.value(i),
                minor: totals.value(i),
                base_minor: if base_totals.is_null(i) {
                    0
                } else {
                    base_totals.value(i)
                },
            });
        }
    }
    Ok(fold(parts, filters.in_base))
}

fn exponent_of(code: &str) -> u8 {
    Currency::from_code(code).map_or(2, |c| c.exponent())
}

/// Rows with a base total first, descending by it (rows of different base
/// currencies, after a tenant's base changed, by the code first); then the
/// others, descending by amount in major units. Amounts of different currencies
/// compare exactly by scaling both to the larger exponent. Ties by group,
/// then currency.
pub(crate) fn compare_rows(a: &SpendRow, b: &SpendRow) -> Ordering {
    let by_major = |(am, ac): (i128, &str), (bm, bc): (i128, &str)| {
        let (ea, eb) = (exponent_of(ac), exponent_of(bc));
        let max = ea.max(eb);
        let scale = |v: i128, e: u8| v.saturating_mul(10i128.pow(u32::from(max - e)));
        scale(bm, eb).cmp(&scale(am, ea))
    };
    let base = |r: &SpendRow| Some((r.base_amount_minor?, r.base_currency.clone()?));
    match (base(a), base(b)) {
        // Within one base currency by amount; after a change of base,
        // each base currency's rows together, by its code.
        (Some((am, ac)), Some((bm, bc))) => ac.cmp(&bc).then_with(|| bm.cmp(&am)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| by_major((a.amount_minor, &a.currency), (b.amount_minor, &b.currency)))
    .then_with(|| a.group.cmp(&b.group))
    .then_with(|| a.currency.cmp(&b.currency))
}

/// The report query. Every interpolated value is trusted or quoted: dates,
/// statuses, categories, currencies and amounts are parsed values, the
/// group expression comes from [`GroupBy`], account and employee ids are
/// quoted string literals. No tenant: the session's view holds only one.
fn spend_sql(params: &SpendParams, statuses: &[Status], filters: &Filters) -> String {
    let status_list = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conditions = vec![format!("status IN ({status_list})")];
    if let Some(from) = params.from {
        conditions.push(format!("transaction_date >= DATE '{from}'"));
    }
    if let Some(to) = params.to {
        conditions.push(format!("transaction_date <= DATE '{to}'"));
    }
    conditions.extend(filters.conditions());
    let group = params.group_by.column();
    format!(
        "SELECT {group} AS g, currency, base_currency AS b, CAST(COUNT(*) AS BIGINT) AS n,
                SUM(CAST(counted_amount_minor AS DECIMAL(38, 0))) AS total,
                SUM(CAST(counted_base_amount_minor AS DECIMAL(38, 0))) AS base_total
         FROM expenses_counted
         WHERE {filters}
         GROUP BY {group}, currency, base_currency",
        filters = conditions.join(" AND "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &str, currency: &str, minor: i128) -> SpendRow {
        SpendRow::new(Some(group.into()), currency.into(), 1, minor)
    }

    fn part(
        group: &str,
        currency: &str,
        base: Option<&str>,
        count: i64,
        minor: i128,
        base_minor: i128,
    ) -> Part {
        Part {
            group: Some(group.into()),
            currency: currency.into(),
            base_currency: base.map(str::to_string),
            count,
            minor,
            base_minor,
        }
    }

    #[test]
    fn rows_rank_by_base_amount_and_fold_into_the_base_currency() {
        let parts = vec![
            part("tokyo", "JPY", Some("USD"), 1, 1_000, 675),
            part("home", "USD", Some("USD"), 2, 5_000, 5_000),
            // Half converted: no base total for the row, ranked after.
            part("zurich", "CHF", Some("USD"), 1, 1_000, 1_150),
            part("zurich", "CHF", None, 1, 99_000, 0),
            // Two base currencies in one row: no base total either.
            part("mixed", "EUR", Some("USD"), 1, 100, 108),
            part("mixed", "EUR", Some("GBP"), 1, 100, 86),
        ];
        let ranked = fold(parts.clone(), false);
        let order: Vec<_> = ranked
            .iter()
            .map(|r| (r.group.clone().unwrap(), r.base_amount_minor))
            .collect();
        assert_eq!(
            order,
            [
                ("home".into(), Some(5_000)),
                ("tokyo".into(), Some(675)),
                ("zurich".into(), None),
                ("mixed".into(), None),
            ]
        );
        let in_base = fold(parts, true);
        let rows: Vec<_> = in_base
            .iter()
            .map(|r| {
                (
                    r.group.clone().unwrap(),
                    r.currency.as_str(),
                    r.count,
                    r.amount_minor,
                    r.unconverted,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("home".into(), "USD", 2, 5_000, Some(0)),
                ("zurich".into(), "USD", 1, 1_150, Some(1)),
                ("tokyo".into(), "USD", 1, 675, Some(0)),
                ("mixed".into(), "USD", 1, 108, Some(0)),
                ("mixed".into(), "GBP", 1, 86, Some(0)),
            ]
        );
        // Nothing converted: each group says how many, with no currency.
        let none = fold(vec![part("z", "CHF", None, 3, 300, 0)], true);
        assert_eq!(
            (
                none[0].currency.as_str(),
                none[0].count,
                none[0].unconverted
            ),
            ("", 0, Some(3))
        );
    }

    #[test]
    fn sorts_exactly_across_exponents() {
        let mut rows = [
            row("a", "JPY", 1000),   // 1000
            row("b", "USD", 100001), // 1000.01
            row("c", "BHD", 999999), // 999.999
            row("d", "USD", 100000), // 1000.00 ties with JPY 1000: by group
        ];
        rows.sort_by(compare_rows);
        let order: Vec<_> = rows.iter().map(|r| r.group.clone().unwrap()).collect();
        assert_eq!(order, ["b", "a", "d", "c"]);
    }

    fn day(date: &str, currency: &str, minor: i128) -> SpendRow {
        SpendRow::new(Some(date.into()), currency.into(), 1, minor)
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn series(rows: &[SpendRow]) -> Vec<(String, String, i64, String)> {
        rows.iter()
            .map(|r| {
                (
                    r.group.clone().unwrap(),
                    r.currency.clone(),
                    r.count,
                    r.amount.clone(),
                )
            })
            .collect()
    }

    fn t(group: &str, currency: &str, count: i64, amount: &str) -> (String, String, i64, String) {
        (group.into(), currency.into(), count, amount.into())
    }

    #[test]
    fn time_series_fill_gaps_with_zero_rows_per_currency() {
        let days = vec![
            day("2026-01-01", "USD", 100),
            day("2026-01-03", "USD", 250),
            day("2026-01-03", "JPY", 7),
        ];
        let by_day = time_series(days.clone(), Period::Day, None, None, &[], false).unwrap();
        assert_eq!(
            series(&by_day),
            [
                t("2026-01-01", "JPY", 0, "0"),
                t("2026-01-01", "USD", 1, "1.00"),
                t("2026-01-02", "JPY", 0, "0"),
                t("2026-01-02", "USD", 0, "0.00"),
                t("2026-01-03", "JPY", 1, "7"),
                t("2026-01-03", "USD", 1, "2.50"),
            ]
        );
        // A range wider than the data, and a currency the filter names
        // without spend in it.
        let eur = ["EUR".to_string()];
        let by_week = time_series(
            days.clone(),
            Period::Week,
            Some(date("2025-12-25")),
            Some(date("2026-01-06")),
            &eur,
            false,
        )
        .unwrap();
        let weeks: Vec<_> = by_week
            .iter()
            .filter(|r| r.currency == "USD")
            .map(|r| (r.group.clone().unwrap(), r.amount_minor))
            .collect();
        // 2025-12-22 and 2025-12-29 are Mondays; Jan 1 and 3 fall in the
        // week of Dec 29.
        assert_eq!(
            weeks,
            [
                ("2025-12-22".to_string(), 0),
                ("2025-12-29".to_string(), 350),
                ("2026-01-05".to_string(), 0),
            ]
        );
        assert_eq!(by_week.len(), 9, "three weeks × EUR, JPY, USD");
        let by_month = time_series(
            days,
            Period::Month,
            Some(date("2025-11-30")),
            Some(date("2026-01-01")),
            &[],
            false,
        )
        .unwrap();
        let months: Vec<_> = by_month
            .iter()
            .filter(|r| r.currency == "USD")
            .map(|r| (r.group.clone().unwrap(), r.count))
            .collect();
        assert_eq!(
            months,
            [
                ("2025-11".to_string(), 0),
                ("2025-12".to_string(), 0),
                ("2026-01".to_string(), 2),
            ]
        );
        // Nothing spent and no currency named: no rows.
        assert!(
            time_series(
                Vec::new(),
                Period::Day,
                Some(date("2026-01-01")),
                None,
                &[],
                false
            )
            .unwrap()
            .is_empty()
        );
        // Too many periods is refused, not allocated.
        let err = time_series(
            Vec::new(),
            Period::Day,
            Some(date("1900-01-01")),
            Some(date("2100-01-01")),
            &eur,
            false,
        )
        .unwrap_err();
        assert_eq!(err.code(), "range_too_large");
    }

    #[test]
    fn periods_between_counts_each_period_once() {
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        // Mondays 2026-01-05 and 2026-01-19: three weeks; mid-week ends too.
        assert_eq!(
            periods_between(Period::Week, d("2026-01-05"), d("2026-01-19")),
            3
        );
        assert_eq!(
            periods_between(Period::Week, d("2026-01-07"), d("2026-01-20")),
            3
        );
        assert_eq!(
            periods_between(Period::Week, d("2026-01-05"), d("2026-01-05")),
            1
        );
        assert_eq!(
            periods_between(Period::Day, d("2026-01-05"), d("2026-01-05")),
            1
        );
        assert_eq!(
            periods_between(Period::Month, d("2025-12-31"), d("2026-02-01")),
            3
        );
    }

    #[test]
    fn top_keeps_every_currency_of_the_first_groups() {
        let rows = vec![
            row("a", "USD", 900),
            row("b", "USD", 800),
            row("a", "EUR", 700),
            row("c", "USD", 600),
            row("b", "GBP", 500),
        ];
        let top: Vec<_> = top_groups(rows, 2)
            .into_iter()
            .map(|r| (r.group.unwrap(), r.currency))
            .collect();
        assert_eq!(
            top,
            [
                ("a".to_string(), "USD".to_string()),
                ("b".to_string(), "USD".to_string()),
                ("a".to_string(), "EUR".to_string()),
                ("b".to_string(), "GBP".to_string()),
            ]
        );
    }

    #[test]
    fn cursors_are_bound_to_their_query() {
        let fp = 42;
        let c = encode_cursor(100, fp, 7);
        assert_eq!(decode_cursor(&c, fp).unwrap(), (100, 7));
        assert!(decode_cursor(&c, 43).is_err());
        assert!(decode_cursor("garbage", fp).is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(
            parse_statuses(None).unwrap(),
            vec![Status::Posted, Status::Pending]
        );
        assert_eq!(parse_statuses(Some("all")).unwrap().len(), 4);
        assert_eq!(
            parse_statuses(Some("declined, reversed")).unwrap(),
            vec![Status::Declined, Status::Reversed]
        );
        assert!(parse_statuses(Some("settled")).is_err());
    }
}
