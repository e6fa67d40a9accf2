//! `POST /v1/sql`: one read-only statement over the caller's tenant.
//!
//! Isolation is in the plan, not in the SQL text. Each request gets a
//! session of its own whose catalog holds only three views, `expenses` (every
//! row version of the tenant) and `expenses_latest` (the latest version of
//! each of its expenses); both are plans that filter the lake scan by the
//! tenant, and the lake table itself is never registered, so no name
//! reaches another tenant's rows. On top of that:
//! - DDL, DML, `COPY`, `SET` and other statements are refused
//!   ([`SQLOptions`]), and so are `EXPLAIN` (its plan lists the table's
//!   files) and recursive CTEs; URL tables are off (DataFusion's default);
//! - the plan is checked: every table scan must be one of the tenant's
//!   views' scans of the lake or an `information_schema` table, so a table
//!   function or anything registered later cannot slip in;
//! - each query has a time limit, a memory pool of its own, and a cap on
//!   the rows it returns; breaking one is a 422 with a code, never a crash.

use crate::QueryState;
use crate::current::CurrentState;
use crate::format::Format;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, new_empty_array};
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{MemTable, ViewTable};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spendstream_http::{ApiError, Auth, ErrorBody};
use spendstream_lake::Lake;
use std::sync::Arc;
use std::time::Duration;
use tracing::instrument;

/// The name the lake scan carries inside the views' plans. It is never
/// registered in a tenant's session.
const BASE: &str = "spendstream_lake_base";

/// The name of the tenant's superseded row versions inside the
/// `expenses_latest` view's plan (from the current state). Never
/// registered in a tenant's session either.
const SUPERSEDED: &str = "spendstream_superseded";

/// Functions left out of tenant sessions: their output grows with an
/// argument, not with the data, and outside the query's memory pool.
const AMPLIFIERS: [&str; 9] = [
    "generate_series",
    "range",
    "repeat",
    "lpad",
    "rpad",
    "array_repeat",
    "array_resize",
    "list_resize",
    "overlay",
];

/// Limits of one SQL query.
#[derive(Debug, Clone)]
pub struct SqlLimits {
    /// Longest a query may run (planning and execution).
    pub timeout: Duration,
    /// Memory the query's operators may hold (sorts, joins, aggregates).
    pub memory_bytes: usize,
    /// Most rows returned.
    pub max_rows: usize,
    /// Most bytes of Arrow data returned.
    pub max_result_bytes: usize,
    /// Longest statement text.
    pub max_sql_bytes: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            max_rows: 100_000,
            max_result_bytes: 64 << 20,
            max_sql_bytes: 64 << 10,
        }
    }
}

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    pub sql: String,
}

/// A result column.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SqlColumn {
    pub name: String,
    /// The Arrow type, e.g. `Int64`, `Utf8`, `Decimal128(38, 0)`.
    pub r#type: String,
}

/// The answer: columns, then rows as arrays in column order. Integers and
/// booleans are JSON numbers and booleans; decimals (money), dates and
/// everything else are strings, exactly as DataFusion prints them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SqlResult {
    pub columns: Vec<SqlColumn>,
    pub rows: Vec<Vec<Value>>,
}

#[utoipa::path(
    post,
    path = "/v1/sql",
    summary = "One read-only SQL statement over the caller's tenant",
    description = "The session holds three views, `expenses` (every row version of the tenant), `expenses_latest` (the latest version of each expense) and `expenses_counted` (the latest rows that count in reports under the lifecycle rules, with counted_amount_minor and counted_base_amount_minor), plus `information_schema`. DDL, DML, COPY, SET, EXPLAIN, recursive CTEs, file and URL tables are refused.",
    security(("bearer" = [])),
    request_body(content = SqlRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The result, in the format Accept asks for: application/json (default), text/csv, application/vnd.apache.arrow.stream or application/vnd.apache.parquet.", content((SqlResult = "application/json"), (String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"), (Vec<u8> = "application/vnd.apache.parquet"))),
        (status = 400, description = "invalid_body, invalid_sql, statement_not_allowed", body = ErrorBody),
        (status = 401, description = "No or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the read role.", body = ErrorBody),
        (status = 413, description = "payload_too_large: the statement is longer than the limit.", body = ErrorBody),
        (status = 422, description = "query_timeout, query_memory_exceeded, result_too_large, query_failed, unsupported_result_type", body = ErrorBody),
        (status = 503, description = "The lake is unavailable.", body = ErrorBody),
        (status = 500, description = "internal (logged with the request id).", body = ErrorBody),
        (status = 406, description = "not_acceptable: no media type of Accept is available.", body = ErrorBody),
        (status = 429, description = "quota_exceeded: this tenant is over its rate limit (reports and SQL share one bucket per tenant); Retry-After. With a rate limit, every answer carries RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset.", body = ErrorBody),
    ),
)]
#[instrument(skip_all, fields(tenant = %auth.tenant()))]
pub async fn sql(
    state: State<QueryState>,
    auth: Auth,
    headers: HeaderMap,
    body: Result<Json<SqlRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    crate::query_route(state, auth, "sql", |state, auth| {
        sql_answer(state, auth, headers, body)
    })
    .await
}

async fn sql_answer(
    State(state): State<QueryState>,
    auth: Auth,
    headers: HeaderMap,
    body: Result<Json<SqlRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    let limits = &state.sql_limits;
    let format = Format::negotiate(&headers)?;
    check_length(&request.sql, limits)?;
    // No ETag: a POST is not answered 304 (RFC 9110), and a statement may
    // read the clock or random numbers, so equal text is not an equal answer.
    // One time limit over opening the session (reading the lake state) and
    // the query.
    let result = within_time(limits, async {
        let (ctx, _version) =
            tenant_session(&state.lake, state.current.as_ref(), auth.tenant(), limits).await?;
        run(ctx, &request.sql, limits).await
    })
    .await?;
    let body = result.render(format)?;
    Ok((
        [
            (header::CONTENT_TYPE, format.media_type()),
            (header::VARY, "accept"),
        ],
        body,
    )
        .into_response())
}

/// Runs `sql` for `tenant` within every limit of `limits` (reading the
/// lake alone, without a reports' current state).
pub async fn answer(
    lake: &Arc<Lake>,
    tenant: &str,
    sql: &str,
    limits: &SqlLimits,
) -> Result<SqlResult, ApiError> {
    check_length(sql, limits)?;
    within_time(limits, async {
        let (ctx, _) = tenant_session(lake, None, tenant, limits).await?;
        run(ctx, sql, limits).await
    })
    .await?
    .to_json()
}

fn check_length(sql: &str, limits: &SqlLimits) -> Result<(), ApiError> {
    if sql.len() > limits.max_sql_bytes {
        return Err(ApiError::PayloadTooLarge {
            limit: limits.max_sql_bytes,
        });
    }
    Ok(())
}

/// `work` within the limits' time (422 `query_timeout` past it).
pub async fn within_time<T>(
    limits: &SqlLimits,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| {
            unprocessable(
                "query_timeout",
                format!(
                    "the query ran longer than {} ms",
                    limits.timeout.as_millis()
                ),
            )
        })?
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::Unprocessable {
        code,
        message: message.into(),
    }
}

/// Runs `sql` in the tenant session `ctx` within `limits` (but the time
/// limit, which the callers apply).
async fn run(ctx: SessionContext, sql: &str, limits: &SqlLimits) -> Result<Batches, ApiError> {
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| refused_or_invalid(&e))?;
    check_statement(&ctx, &plan, Catalogs::InformationSchema)?;
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| execution_error(&e))?;
    let schema = frame.schema().inner().clone();
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| execution_error(&e))?;
    let mut batches = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| execution_error(&e))?;
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
        if rows > limits.max_rows || bytes > limits.max_result_bytes {
            return Err(unprocessable(
                "result_too_large",
                format!(
                    "the result has more than {} rows or {} bytes: aggregate, filter or add LIMIT",
                    limits.max_rows, limits.max_result_bytes
                ),
            ));
        }
        batches.push(batch);
    }
    Ok(Batches { schema, batches })
}

/// A query's result as Arrow.
pub struct Batches {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Batches {
    /// As JSON columns and rows.
    pub fn to_json(&self) -> Result<SqlResult, ApiError> {
        Ok(SqlResult {
            columns: self
                .schema
                .fields()
                .iter()
                .map(|f| SqlColumn {
                    name: f.name().clone(),
                    r#type: f.data_type().to_string(),
                })
                .collect(),
            rows: to_json_rows(&self.batches)?,
        })
    }

    /// The body in `format`.
    fn render(&self, format: Format) -> Result<Vec<u8>, ApiError> {
        match format {
            Format::Json => serde_json::to_vec(&self.to_json()?).map_err(ApiError::internal),
            other => other.encode(&self.schema, &self.batches),
        }
    }
}

/// A session whose catalog holds only `tenant`'s three views, with the
/// limits' memory pool, and the lake table version the views read. With
/// the reports' `current` state, `expenses_latest` is the tenant's rows
/// minus the versions the state knows are superseded; without it (or when
/// the state is off or at another version) the highest version per
/// expense is found by a query over every version.
pub async fn tenant_session(
    lake: &Arc<Lake>,
    current: Option<&Arc<CurrentState>>,
    tenant: &str,
    limits: &SqlLimits,
) -> Result<(SessionContext, u64), ApiError> {
    if !spendstream_schemas::valid_tenant_id(tenant) {
        // The token layer guarantees this; the literal below relies on it.
        return Err(ApiError::internal(format!(
            "tenant id `{tenant}` is not valid"
        )));
    }
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .build_arc()
        .map_err(ApiError::internal)?;
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("spendstream", "public");
    config.options_mut().execution.enable_recursive_ctes = false;
    config.options_mut().sql_parser.recursion_limit =
        datafusion::common::config::ConfigNonZeroUsize::try_new(30).map_err(ApiError::internal)?;
    let ctx = SessionContext::new_with_config_rt(config, runtime.clone());
    remove_amplifiers(&ctx);

    // The views are planned in a scratch session that knows the lake under
    // BASE; the tenant's session only ever sees the finished plans.
    // The provider is made for the tenant's session: its object store is
    // registered where the query runs.
    let scratch = SessionContext::new();
    let (version, base) = lake
        .versioned_table_provider(&ctx)
        .await
        .map_err(crate::Error::from)?;
    scratch
        .register_table(BASE, base.clone())
        .map_err(ApiError::internal)?;
    // The versions that are not their expense's latest: what the state
    // knows at exactly the provider's version, or else found in the lake
    // (one query, under the tenant's memory pool). Either way the views
    // are the tenant's rows minus these, so no view holds a whole table
    // in a hash join's build side.
    let superseded = match current {
        Some(current) => current.superseded(lake, tenant, version).await,
        None => None,
    };
    let superseded = match superseded {
        Some(batch) => batch,
        // Bounded by the query time limit wherever the session is opened
        // (a Postgres login too).
        None => within_time(limits, superseded_in_lake(runtime, base, tenant)).await?,
    };
    let table = MemTable::try_new(superseded.schema(), vec![vec![superseded]])
        .map_err(ApiError::internal)?;
    scratch
        .register_table(SUPERSEDED, Arc::new(table))
        .map_err(ApiError::internal)?;
    let all = format!("SELECT * FROM {BASE} WHERE tenant_id = '{tenant}'");
    // The superseded versions on the left: the side a hash join builds
    // from, whatever statistics the scan has.
    let latest = format!(
        "SELECT e.* FROM {SUPERSEDED} s
         RIGHT ANTI JOIN {BASE} e
           ON e.expense_id = s.expense_id AND e.version = s.version
         WHERE e.tenant_id = '{tenant}'"
    );
    let counted = counted_sql(&latest);
    for (name, text) in [
        ("expenses", all),
        ("expenses_latest", latest),
        ("expenses_counted", counted),
    ] {
        let plan = scratch
            .state()
            .create_logical_plan(&text)
            .await
            .map_err(ApiError::internal)?;
        ctx.register_table(name, Arc::new(ViewTable::new(plan, None)))
            .map_err(ApiError::internal)?;
    }
    Ok((ctx, version))
}

/// The views of a tenant session.
const VIEWS: [&str; 3] = ["expenses", "expenses_latest", "expenses_counted"];

/// Every (expense, version) of `tenant` in `base` that a higher version of
/// the same expense supersedes. The highest version per expense is a hash
/// aggregate over the tenant's ids (the one step that holds every expense
/// at once); only expenses with several versions are joined back, so the
/// join's build side is as small as the number of corrected expenses.
async fn superseded_in_lake(
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    base: Arc<dyn datafusion::catalog::TableProvider>,
    tenant: &str,
) -> Result<RecordBatch, ApiError> {
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
    ctx.register_table(BASE, base).map_err(ApiError::internal)?;
    let sql = format!(
        "SELECT x.expense_id, x.version
         FROM (
           SELECT expense_id, MAX(version) AS latest_version
           FROM {BASE} WHERE tenant_id = '{tenant}'
           GROUP BY expense_id HAVING COUNT(*) > 1
         ) d
         JOIN {BASE} x ON x.expense_id = d.expense_id AND x.version < d.latest_version
         WHERE x.tenant_id = '{tenant}'"
    );
    // Out of memory is the caller's to hear; anything else is ours (this
    // SQL is not theirs).
    let failed = |e: DataFusionError| match execution_error(&e) {
        memory @ ApiError::Unprocessable {
            code: "query_memory_exceeded",
            ..
        } => memory,
        _ => ApiError::internal(e),
    };
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    // As the state's batch: Utf8 ids (a text view from the scan) and
    // Int64 versions.
    let column = |i: usize, to: &DataType| -> Result<ArrayRef, ApiError> {
        let parts = batches
            .iter()
            .map(|b| cast(b.column(i), to))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::internal)?;
        if parts.is_empty() {
            return Ok(new_empty_array(to));
        }
        concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>()).map_err(ApiError::internal)
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("expense_id", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![column(0, &DataType::Utf8)?, column(1, &DataType::Int64)?],
    )
    .map_err(ApiError::internal)
}

/// `expenses_counted`: the latest rows (`latest`, a query) that count in
/// reports under the lifecycle rules of `docs/lifecycle.md`, with what each
/// counts as in `counted_amount_minor`. A declined row never counts; a
/// pending row another row names in `related_external_id` (same source)
/// was superseded; a reversal of a pending row released it (neither
/// counts), and one of a declined or reversed row reverses nothing; any
/// other reversal takes its amount back (minus its absolute value, however
/// the importer signed it). The rows that do not count are gathered in
/// `left_out` (by expense id) and the latest rows are streamed past it.
pub(crate) fn counted_sql(latest: &str) -> String {
    // Every join builds its hash table from a small side (the named ids,
    // the reversals' targets, the rows left out), never from the latest
    // rows themselves, so a tenant's whole table is only ever streamed.
    format!(
        "WITH l AS ({latest}),
         linked AS (
           SELECT DISTINCT source AS link_source, related_external_id AS link_id FROM l
           WHERE related_external_id IS NOT NULL AND related_external_id <> external_id
         ),
         reversed AS (
           SELECT DISTINCT source AS reversed_source, related_external_id AS reversed_id FROM l
           WHERE status = 'reversed'
             AND related_external_id IS NOT NULL AND related_external_id <> external_id
         ),
         released AS (
           SELECT DISTINCT reversed.reversed_source AS released_source,
                  reversed.reversed_id AS released_id
           FROM reversed JOIN l
             ON l.source = reversed.reversed_source AND l.external_id = reversed.reversed_id
           WHERE l.status IN ('pending', 'declined', 'reversed')
         ),
         left_out AS (
           SELECT l.expense_id AS left_out_id
           FROM linked JOIN l ON l.source = linked.link_source AND l.external_id = linked.link_id
           WHERE l.status = 'pending'
           UNION ALL
           SELECT l.expense_id AS left_out_id
           FROM released JOIN l
             ON l.source = released.released_source AND l.related_external_id = released.released_id
           WHERE l.status = 'reversed' AND l.related_external_id <> l.external_id
         )
         SELECT l.*,
                CASE WHEN l.status = 'reversed' AND l.amount_minor > 0 THEN -l.amount_minor
                     ELSE l.amount_minor END
                  AS counted_amount_minor,
                CASE WHEN l.status = 'reversed' AND l.base_amount_minor > 0 THEN -l.base_amount_minor
                     ELSE l.base_amount_minor END
                  AS counted_base_amount_minor
         FROM left_out RIGHT ANTI JOIN l ON l.expense_id = left_out.left_out_id
         WHERE l.status <> 'declined'"
    )
}

/// The catalog schemas a tenant session may read besides its views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catalogs {
    InformationSchema,
    /// `information_schema` and `pg_catalog` (the Postgres wire endpoint,
    /// whose clients read it to list tables).
    WithPgCatalog,
}

/// Whether the planned statement `plan` may run in the tenant session
/// `ctx`: no DDL, DML or other statements, no scan but the tenant's views
/// and `catalogs`, no `EXPLAIN`, no join without an equality condition.
pub fn check_statement(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    catalogs: Catalogs,
) -> Result<(), ApiError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| ApiError::bad_request("statement_not_allowed", e.strip_backtrace()))?;
    check_plan(plan, catalogs)?;
    let optimized = ctx
        .state()
        .optimize(plan)
        .map_err(|e| execution_error(&e))?;
    check_joins(&optimized)
}

/// Refuses every plan that reads anything but the tenant's views (whose
/// scans carry the lake under [`BASE`]) and `catalogs`, and `EXPLAIN`,
/// whose text lists the table's files.
fn check_plan(plan: &LogicalPlan, catalogs: Catalogs) -> Result<(), ApiError> {
    let mut refused: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        let verdict = match node {
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => {
                Some("EXPLAIN is not available".to_string())
            }
            LogicalPlan::TableScan(scan) if !allowed_scan(&scan.table_name, catalogs) => {
                Some(format!(
                    "`{}` is not one of your tables (expenses, expenses_latest, expenses_counted)",
                    scan.table_name
                ))
            }
            _ => None,
        };
        if verdict.is_some() {
            refused = verdict;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(ApiError::internal)?;
    match refused {
        Some(message) => Err(ApiError::bad_request("statement_not_allowed", message)),
        None => Ok(()),
    }
}

/// Removes the functions that build a large value from a small argument:
/// they allocate outside the memory pool, so a one-line query could exhaust
/// the process. (Again after anything that registers functions.)
pub fn remove_amplifiers(ctx: &SessionContext) {
    for name in AMPLIFIERS {
        ctx.deregister_udf(name);
        ctx.deregister_udtf(name);
    }
}

/// Refuses joins without an equality condition. A Cartesian product (or a
/// join on inequalities only) produces its rows in a loop that does not
/// give the CPU back: cancelled at the time limit, it would go on burning
/// a core long after the caller got its 422.
fn check_joins(plan: &LogicalPlan) -> Result<(), ApiError> {
    let mut product = false;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Join(join) = node
            && join.on.is_empty()
        {
            product = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(ApiError::internal)?;
    if product {
        return Err(ApiError::bad_request(
            "statement_not_allowed",
            "joins need an equality condition (`a JOIN b ON a.x = b.y`); Cartesian products are not available",
        ));
    }
    Ok(())
}

fn allowed_scan(name: &TableReference, catalogs: Catalogs) -> bool {
    match name {
        TableReference::Bare { table } => {
            table.as_ref() == BASE
                || table.as_ref() == SUPERSEDED
                || VIEWS.contains(&table.as_ref())
        }
        TableReference::Partial { schema, table } | TableReference::Full { schema, table, .. } => {
            schema.as_ref() == "information_schema"
                || (catalogs == Catalogs::WithPgCatalog && schema.as_ref() == "pg_catalog")
                || (schema.as_ref() == "public" && VIEWS.contains(&table.as_ref()))
        }
    }
}

/// A planning failure: a statement the options refuse (400
/// `statement_not_allowed`) or SQL that does not plan (400 `invalid_sql`).
pub fn refused_or_invalid(e: &DataFusionError) -> ApiError {
    let message = e.strip_backtrace();
    if statement_refused(&message) {
        return ApiError::bad_request("statement_not_allowed", message);
    }
    execution_error(e)
}

fn statement_refused(message: &str) -> bool {
    [
        "DDL not supported",
        "DML not supported",
        "Statement not supported",
        "Unsupported SQL statement",
        "Recursive CTEs are not enabled",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// An execution failure, by cause.
pub fn execution_error(e: &DataFusionError) -> ApiError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => unprocessable(
            "query_memory_exceeded",
            "the query needs more memory than one query may hold: aggregate or filter more",
        ),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => {
            ApiError::bad_request("invalid_sql", e.strip_backtrace())
        }
        DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => {
            unprocessable("query_failed", e.strip_backtrace())
        }
        _ => ApiError::internal(DataFusionError::Execution(e.strip_backtrace())),
    }
}

/// Rows as JSON arrays.
fn to_json_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<Value>>, ApiError> {
    let options = FormatOptions::default().with_null("");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::internal)?;
        for i in 0..batch.num_rows() {
            let mut row = Vec::with_capacity(batch.num_columns());
            for (column, formatter) in batch.columns().iter().zip(&formatters) {
                row.push(json_value(column.as_ref(), formatter, i));
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn json_value(column: &dyn Array, formatter: &ArrayFormatter<'_>, i: usize) -> Value {
    if column.is_null(i) {
        return Value::Null;
    }
    let text = formatter.value(i).to_string();
    match column.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => text
            .parse::<serde_json::Number>()
            .map_or(Value::String(text), Value::Number),
        DataType::Boolean => Value::Bool(text == "true"),
        _ => Value::String(text),
    }
}
