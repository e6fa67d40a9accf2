//! The pgwire handlers: token startup, per-connection tenant sessions, the
//! guard, time limits.

use crate::connections::Registry;
use crate::{DATABASE, MAX_CONNECTIONS_PER_TENANT, PgConfig, guard};
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager,
    METADATA_DATABASE, METADATA_USER, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use spendstream_http::{ApiError, Role};
use spendstream_query_api::metrics::query_done;
use spendstream_query_api::sql::{SqlLimits, execution_error, remove_amplifiers, tenant_session};
use std::fmt::Debug;
use std::sync::Arc;

/// A prepared statement as `datafusion-postgres` keeps it.
type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// An error the client sees, with its SQLSTATE.
fn pg_error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.into(),
        code.into(),
        message.into(),
    )))
}

/// A refusal or failure of ours as a Postgres error: the SQLSTATE for the
/// class, and our code first in the message.
pub fn to_pg(error: ApiError) -> PgWireError {
    let code = match error.code() {
        "statement_not_allowed" => "42501",
        "invalid_sql" => "42601",
        "query_timeout" => "57014",
        "query_memory_exceeded" => "53200",
        "result_too_large" | "payload_too_large" => "54000",
        "query_failed" => "22000",
        _ => "XX000",
    };
    let message = match &error {
        ApiError::Internal(inner) => {
            tracing::error!(error = %inner, "A Postgres statement failed.");
            "internal error; see the server log".to_string()
        }
        other => other.to_string(),
    };
    pg_error("ERROR", code, format!("{}: {message}", error.code()))
}

/// `datafusion-postgres`' own failures (parsing, planning, execution) by
/// cause, as over HTTP: a statement that does not parse is the client's
/// (42601), not an internal error.
fn classify(error: PgWireError) -> PgWireError {
    match error {
        PgWireError::ApiError(inner) => {
            if let Some(e) = inner.downcast_ref::<DataFusionError>() {
                return to_pg(execution_error(e));
            }
            let message = inner.to_string();
            if message.contains("sql parser error") || message.contains("ParserError") {
                return pg_error("ERROR", "42601", format!("invalid_sql: {message}"));
            }
            PgWireError::ApiError(inner)
        }
        other => other,
    }
}

/// `response` with its rows capped at the limits' rows and bytes (then
/// 54000 `result_too_large`, as over HTTP) and its row errors classified.
fn capped(response: Response, limits: &SqlLimits) -> Response {
    let (max_rows, max_bytes) = (limits.max_rows, limits.max_result_bytes);
    match response {
        Response::Query(mut query) => {
            let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
            let (mut seen, mut bytes) = (0usize, 0usize);
            query.data_rows = Box::pin(rows.map(move |row| {
                let row = row.map_err(classify)?;
                seen += 1;
                bytes += row.data.len();
                if seen > max_rows || bytes > max_bytes {
                    return Err(to_pg(ApiError::Unprocessable {
                        code: "result_too_large",
                        message: format!(
                            "the result has more than {max_rows} rows or {max_bytes} bytes: aggregate, filter or add LIMIT"
                        ),
                    }));
                }
                Ok(row)
            }));
            Response::Query(query)
        }
        other => other,
    }
}

/// The session of an authenticated connection, kept in its extensions.
struct TenantSession {
    tenant: String,
    /// When the login token expires (seconds since the epoch): the
    /// connection ends then.
    expires: i64,
    /// The lake version the views read.
    version: u64,
    service: Arc<DfSessionService>,
}

/// Refuses a statement the guard refuses; runs before `datafusion-postgres`'
/// own hooks.
struct Guard;

#[async_trait]
impl QueryHook for Guard {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        guard::check(statement, ctx)
            .await
            .err()
            .map(|e| Err(to_pg(e)))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        guard::check(statement, ctx)
            .await
            .err()
            .map(|e| Err(to_pg(e)))
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        // Checked when parsed.
        None
    }
}

/// Every handler of the endpoint; the per-connection state lives in each
/// connection's session extensions.
pub struct Handlers {
    registry: Arc<Registry>,
    startup: Arc<Startup>,
    queries: Arc<Queries>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    pub fn new(config: PgConfig) -> Self {
        let config = Arc::new(config);
        let connections = Arc::new(ConnectionManager::new());
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.0 (Spendstream {})", env!("CARGO_PKG_VERSION"));
        let registry = Arc::new(Registry::new(MAX_CONNECTIONS_PER_TENANT));
        Self {
            registry: registry.clone(),
            startup: Arc::new(Startup {
                registry,
                config: config.clone(),
                pids: Arc::new(RandomPidSecretKeyGenerator::default()),
                connections: connections.clone(),
                parameters,
            }),
            queries: Arc::new(Queries {
                parser: Arc::new(TenantParser {
                    config: config.clone(),
                    any: DfSessionService::new(Arc::new(SessionContext::new())).query_parser(),
                }),
                config,
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

impl Handlers {
    /// Who holds the connections these handlers serve.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// A session for `tenant` over the newest lake: the views, `pg_catalog`,
/// the guard first among the hooks.
async fn open_session(
    config: &PgConfig,
    tenant: &str,
    expires: i64,
) -> PgWireResult<TenantSession> {
    let (ctx, version) = tenant_session(
        &config.lake,
        config.current.as_ref(),
        tenant,
        &config.limits,
    )
    .await
    .map_err(to_pg)?;
    setup_pg_catalog(&ctx, DATABASE, EmptyContextProvider)
        .map_err(|e| to_pg(ApiError::internal(e.to_string())))?;
    // pg_catalog registers functions of its own: take the amplifiers out again.
    remove_amplifiers(&ctx);
    // The user is the tenant (pg_catalog's functions say `postgres`):
    // `current_user`, `session_user`, and the owner psql lists.
    ctx.register_udf(user_function("session_user", vec![], tenant));
    ctx.register_udf(user_function(
        "pg_get_userbyid",
        vec![datafusion::arrow::datatypes::DataType::Int32],
        tenant,
    ));
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(Guard),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    Ok(TenantSession {
        tenant: tenant.to_string(),
        expires,
        version,
        service: Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks)),
    })
}

/// A function named `name` taking `args` whose value is always `user`.
fn user_function(
    name: &str,
    args: Vec<datafusion::arrow::datatypes::DataType>,
    user: &str,
) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    let user = user.to_string();
    create_udf(
        name,
        args,
        datafusion::arrow::datatypes::DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(user.clone()))))
        }),
    )
}

/// The connection's session, reopened first when the lake has moved.
async fn session<C: ClientInfo + ?Sized>(
    config: &PgConfig,
    client: &C,
) -> PgWireResult<Arc<TenantSession>> {
    let extensions = client.session_extensions();
    let current = extensions
        .get::<TenantSession>()
        .ok_or_else(|| pg_error("FATAL", "28000", "not authenticated"))?;
    if chrono::Utc::now().timestamp() >= current.expires {
        return Err(pg_error(
            "FATAL",
            "28000",
            "the login token has expired: connect again with a fresh one",
        ));
    }
    let version = config
        .lake
        .version()
        .await
        .map_err(|e| to_pg(ApiError::internal(e.to_string())))?;
    if version == current.version {
        return Ok(current);
    }
    extensions.insert(open_session(config, &current.tenant, current.expires).await?);
    extensions
        .get::<TenantSession>()
        .ok_or_else(|| pg_error("FATAL", "28000", "not authenticated"))
}

struct Startup {
    registry: Arc<Registry>,
    config: Arc<PgConfig>,
    pids: Arc<RandomPidSecretKeyGenerator>,
    connections: Arc<ConnectionManager>,
    parameters: DefaultServerParameterProvider,
}

impl Startup {
    /// The tenant `token` may read as, if the startup's user and database
    /// match it.
    fn authorize<C: ClientInfo>(
        &self,
        client: &C,
        token: &str,
    ) -> Result<(String, i64), &'static str> {
        let claims = self
            .config
            .keys
            .verify(token)
            .map_err(|_| "the password is not a valid Spendstream token")?;
        if !claims.has(Role::Read) {
            return Err("the token lacks the read role");
        }
        let metadata = client.metadata();
        if metadata.get(METADATA_USER).map(String::as_str) != Some(claims.tenant.as_str()) {
            return Err("the user must be the token's tenant");
        }
        if metadata.get(METADATA_DATABASE).map(String::as_str) != Some(DATABASE) {
            return Err("the database must be spendstream");
        }
        Ok((claims.tenant, claims.exp))
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.config.tls.is_some() && !client.is_secure() {
                    // Before the token is sent in the clear.
                    refused(client, "TLS is required (sslmode=require)");
                    return Err(pg_error(
                        "FATAL",
                        "28000",
                        "this server requires TLS: connect with sslmode=require",
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let token = password.into_password()?.password;
                let (tenant, expires) = self.authorize(client, &token).map_err(|reason| {
                    refused(client, reason);
                    pg_error("FATAL", "28P01", format!("authentication failed: {reason}"))
                })?;
                if let Err(share) = self.registry.logged_in(client.socket_addr(), &tenant) {
                    refused(client, "the tenant holds its share of connections");
                    return Err(pg_error(
                        "FATAL",
                        "53300",
                        format!(
                            "too_many_connections: tenant `{tenant}` already holds {share} connections to this endpoint"
                        ),
                    ));
                }
                let session = open_session(&self.config, &tenant, expires).await?;
                client.session_extensions().insert(session);
                let (pid, key) = self.pids.generate(client);
                client.set_pid_and_secret_key(pid, key.clone());
                let (handle, registration) = self.connections.register(pid, key);
                client
                    .session_extensions()
                    .insert::<Arc<ConnectionHandle>>(handle);
                client
                    .session_extensions()
                    .insert::<ConnectionGuard>(registration);
                tracing::debug!(%tenant, peer = %client.socket_addr(), "Postgres connection authenticated.");
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The audit line of a refused connection: why, who it claimed to be, from
/// where; never the token.
fn refused<C: ClientInfo>(client: &C, reason: &str) {
    tracing::warn!(
        target: spendstream_http::audit::TARGET,
        event = "authentication_rejected",
        interface = "pg",
        reason,
        user = client.metadata().get(METADATA_USER).map(String::as_str).unwrap_or(""),
        remote = %client.socket_addr(),
        "Audit: refused a Postgres connection."
    );
}

/// Parses in the connection's session; parameter types and result schemas
/// depend only on the statement, so any parser answers them.
pub struct TenantParser {
    config: Arc<PgConfig>,
    any: Arc<Parser>,
}

#[async_trait]
impl QueryParser for TenantParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        check_length(&self.config, sql)?;
        one_statement(sql)?;
        let parse = async {
            let session = session(&self.config, client).await?;
            session
                .service
                .query_parser()
                .parse_sql(client, sql, types)
                .await
                .map_err(classify)
        };
        tokio::time::timeout(self.config.limits.timeout, parse)
            .await
            .map_err(|_| timed_out(&self.config))?
    }

    fn get_parameter_types(&self, statement: &DfStatement) -> PgWireResult<Vec<Type>> {
        self.any.get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &DfStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.any.get_result_schema(statement, format)
    }
}

/// A Parse message holds one statement (as in Postgres, 42601): the parser
/// underneath would plan the first and drop the rest unseen.
fn one_statement(sql: &str) -> PgWireResult<()> {
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    match datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql) {
        Ok(statements) if statements.len() > 1 => Err(pg_error(
            "ERROR",
            "42601",
            "invalid_sql: cannot insert multiple commands into a prepared statement",
        )),
        // Parse errors are the session parser's to report.
        _ => Ok(()),
    }
}

fn check_length(config: &PgConfig, sql: &str) -> PgWireResult<()> {
    let max = config.limits.max_sql_bytes;
    if sql.len() > max {
        return Err(to_pg(ApiError::PayloadTooLarge { limit: max }));
    }
    Ok(())
}

fn timed_out(config: &PgConfig) -> PgWireError {
    to_pg(ApiError::Unprocessable {
        code: "query_timeout",
        message: format!(
            "the statement ran longer than {} ms",
            config.limits.timeout.as_millis()
        ),
    })
}

/// Both protocols, each statement within the time limit (rows streamed to
/// the client included).
pub struct Queries {
    config: Arc<PgConfig>,
    parser: Arc<TenantParser>,
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        check_length(&self.config, &query.query)?;
        let started = std::time::Instant::now();
        let answer =
            tokio::time::timeout(self.config.limits.timeout, self._on_query(client, query))
                .await
                .map_err(|_| timed_out(&self.config))
                .and_then(|r| r.map_err(classify));
        query_done("pg", "sql", answer.is_ok(), started);
        answer
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(&self.config, client).await?;
        let responses =
            <DfSessionService as SimpleQueryHandler>::do_query(&session.service, client, query)
                .await
                .map_err(classify)?;
        Ok(responses
            .into_iter()
            .map(|r| capped(r, &self.config.limits))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = DfStatement;
    type QueryParser = TenantParser;

    fn query_parser(&self) -> Arc<TenantParser> {
        self.parser.clone()
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            self.config.limits.timeout,
            self._on_execute(client, message),
        )
        .await
        .map_err(|_| timed_out(&self.config))
        .and_then(|r| r.map_err(classify));
        query_done("pg", "sql", answer.is_ok(), started);
        answer
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<DfStatement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // A prepared statement's plan holds the table state of the session
        // it was parsed in: plan it again in the current one (through the
        // guard again), so a statement prepared once reads new data.
        let replanned = match &portal.statement.statement {
            (sql, Some(_)) => {
                let statement = self
                    .parser
                    .parse_sql(client, sql, &portal.statement.parameter_types)
                    .await?
                    .ok_or_else(|| to_pg(ApiError::internal("a statement planned to nothing")))?;
                let mut fresh = Portal::new_cursor(
                    portal.name.clone(),
                    Arc::new(StoredStatement::new(
                        portal.statement.id.clone(),
                        statement,
                        portal.statement.parameter_types.clone(),
                    )),
                );
                fresh.parameter_format = portal.parameter_format.clone();
                fresh.parameters = portal.parameters.clone();
                fresh.result_column_format = portal.result_column_format.clone();
                fresh.state = portal.state.clone();
                fresh
            }
            (_, None) => {
                let session = session(&self.config, client).await?;
                return <DfSessionService as ExtendedQueryHandler>::do_query(
                    &session.service,
                    client,
                    portal,
                    max_rows,
                )
                .await
                .map_err(classify);
            }
        };
        // The session the statement was just planned in (parsing reopened
        // it if the lake had moved).
        let session = session(&self.config, client).await?;
        <DfSessionService as ExtendedQueryHandler>::do_query(
            &session.service,
            client,
            &replanned,
            max_rows,
        )
        .await
        .map(|r| capped(r, &self.config.limits))
        .map_err(classify)
    }
}
