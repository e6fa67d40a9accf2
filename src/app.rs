//! Starts the roles of Spendstream (ingest, processors, query) in this
//! process on one listener, and stops them in order. The whole
//! configuration is checked first, without touching anything, so a mistake
//! is one line naming the setting before any file or connection is opened.

use anyhow::Context;
use backon::Retryable;
use spendstream_http::ops::ReadyCheck;
use spendstream_http::{JwtKeys, ServerLimits};
use spendstream_ingest::{IngestConfig, IngestState};
use spendstream_lake::{Lake, LakeOptions};
use spendstream_log::{Log, LogTarget, redact_url};
use spendstream_processors::sink::Sink;
use spendstream_processors::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use spendstream_processors::sink::lake::LakeSinkConfig;
use spendstream_processors::transform::fx::{BaseCurrencies, FxSource};
use spendstream_processors::{Processor, ProcessorConfig, ProcessorStats};
use spendstream_query_api::QueryState;
use spendstream_query_api::current::CurrentState;
use spendstream_query_api::sql::SqlLimits;
use spendstream_state::{BatchStore, FxStore, IdempotencyStore, RevocationStore, StateTarget};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The OpenAPI document of every route, generated from the handlers and
/// their types (each service crate documents its own routes); a copy is
/// kept in `docs/openapi.json`, checked by a test.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = ApiDoc::openapi();
    doc.merge(spendstream_ingest::IngestApi::openapi());
    doc.merge(spendstream_query_api::QueryApi::openapi());
    doc.merge(spendstream_http::ops::OpsApi::openapi());
    doc
}

/// [`openapi`] as JSON text, built once.
pub fn openapi_json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
            + "\n"
    })
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Spendstream",
        description = "High-volume expense ingestion and spend reports. The tenant comes from the bearer token (a JWT: HS256 with the server's secret, or RS256/ES256/EdDSA by the identity provider's JWKS; claims tenant, roles, exp).",
    ),
    paths(openapi_document, crate::revocations::revoke, crate::revocations::list, crate::batches::batch, crate::fx::get_rates, crate::fx::put_rates),
    components(schemas(crate::batches::BatchStatus, crate::fx::FxLoaded, crate::fx::FxRatesHeld)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The `bearer` security scheme the operations name.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    summary = "This document",
    responses(
        (status = 200, description = "OpenAPI 3.1."),
    ),
)]
async fn openapi_document() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
}

/// Which roles run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub process: bool,
    pub query: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        ingest: true,
        process: true,
        query: true,
    };
    pub const INGEST: Roles = Roles {
        ingest: true,
        process: false,
        query: false,
    };
    pub const PROCESS: Roles = Roles {
        ingest: false,
        process: true,
        query: false,
    };
    pub const QUERY: Roles = Roles {
        ingest: false,
        process: false,
        query: true,
    };
}

/// Everything `start` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub roles: Roles,
    pub listen: SocketAddr,
    pub log_url: String,
    /// librdkafka properties for a Kafka log (checked: none may weaken
    /// delivery).
    pub log_options: Vec<(String, String)>,
    /// librdkafka properties applied without that check.
    pub log_unsafe_options: Vec<(String, String)>,
    pub lake_url: String,
    /// Where ingest and query nodes keep what they must agree on
    /// (idempotency keys, revoked tokens): `embedded://<dir>` or
    /// `redis://host:port` (ADR 0011).
    pub state_url: String,
    /// S3 settings on top of the `AWS_*` environment, read freshness,
    /// checkpoint interval.
    pub lake_options: LakeOptions,
    pub keys: JwtKeys,
    /// The identity provider's JWKS (a file or URL), for RS256, ES256 and
    /// EdDSA tokens.
    pub jwks: Option<String>,
    /// Every tenant's ingest rate limits (0: none) …
    pub rate_limits: spendstream_state::rate::Limits,
    /// … and per-tenant overrides, from a JSON file read again on change.
    pub rate_limits_file: Option<std::path::PathBuf>,
    pub ingest: IngestConfig,
    pub processor: ProcessorConfig,
    pub server: ServerLimits,
    /// Tenant whose admins see dead letters without a tenant.
    pub operator_tenant: Option<String>,
    /// Limits of `POST /v1/sql`.
    pub sql_limits: SqlLimits,
    /// Rows of report answers kept in memory (0: none).
    pub report_cache_rows: usize,
    /// Entries (expenses and superseded versions) the reports' current state holds (0: none;
    /// reports then read the lake for each computed answer).
    pub report_state_rows: usize,
    /// The Postgres wire endpoint's address (query role; None: off).
    pub pg_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key: the Postgres endpoint then
    /// requires TLS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// ClickHouse HTTP URL: a second sink of the processors when set.
    pub clickhouse_url: Option<String>,
    /// ClickHouse credentials (from the environment or a file).
    pub clickhouse_user: Option<String>,
    pub clickhouse_password: Option<Password>,
    /// Apply pending ClickHouse migrations at start-up instead of refusing.
    pub migrate: bool,
    /// How often the lake is compacted and vacuumed (0: never), by the one
    /// process holding the maintenance lease.
    pub compact_interval: Duration,
    /// How long vacuum keeps files compaction replaced, and uploads no
    /// commit references.
    pub vacuum_retain: Duration,
    /// How long log records every group has processed are kept (embedded
    /// log; 0: forever).
    pub log_retention: Duration,
    /// Each tenant's base currency, which processors convert to.
    pub base_currencies: BaseCurrencies,
}

impl Settings {
    /// Every role on the embedded log and local lake under `data_dir`, with
    /// the default limits (what `spendstream up` runs without flags, but on
    /// a port the system picks).
    pub fn defaults(keys: JwtKeys, data_dir: &std::path::Path) -> Self {
        Self {
            roles: Roles::ALL,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_url: format!("embedded://{}", data_dir.join("log").display()),
            log_options: Vec::new(),
            log_unsafe_options: Vec::new(),
            lake_url: format!("file://{}", data_dir.join("lake").display()),
            state_url: format!("embedded://{}", data_dir.join("state").display()),
            lake_options: LakeOptions::default(),
            keys,
            jwks: None,
            rate_limits: Default::default(),
            rate_limits_file: None,
            ingest: IngestConfig::default(),
            processor: ProcessorConfig::default(),
            server: ServerLimits::default(),
            operator_tenant: None,
            sql_limits: SqlLimits::default(),
            report_cache_rows: spendstream_query_api::DEFAULT_REPORT_CACHE_ROWS,
            report_state_rows: spendstream_query_api::current::DEFAULT_REPORT_STATE_ROWS,
            pg_listen: None,
            tls: None,
            clickhouse_url: None,
            clickhouse_user: None,
            clickhouse_password: None,
            migrate: false,
            compact_interval: Duration::from_secs(600),
            vacuum_retain: Duration::from_secs(168 * 3600),
            log_retention: Duration::from_secs(168 * 3600),
            base_currencies: BaseCurrencies::default(),
        }
    }

    /// The lake's configuration (no I/O).
    pub fn lake(&self) -> LakeSinkConfig {
        LakeSinkConfig {
            url: self.lake_url.clone(),
            options: self.lake_options.clone(),
        }
    }

    /// The ClickHouse sink's configuration, when one is set (no I/O).
    pub fn clickhouse(&self) -> Result<Option<ClickHouseConfig>, String> {
        let Some(url) = &self.clickhouse_url else {
            return Ok(None);
        };
        let mut config =
            ClickHouseConfig::from_url(url).map_err(|e| format!("--clickhouse: {e}"))?;
        config.user = self.clickhouse_user.clone();
        config.password = self.clickhouse_password.as_ref().map(|p| p.0.clone());
        Ok(Some(config))
    }

    /// Checks every setting of every role this process runs, without any
    /// I/O; the error is one line naming the setting. Returns the parsed
    /// log, when one is needed.
    pub fn validate(&self) -> Result<Option<LogTarget>, String> {
        let Settings {
            roles,
            log_url,
            log_options,
            log_unsafe_options,
            ingest,
            processor,
            server,
            operator_tenant,
            ..
        } = self;
        let log = if roles.ingest || roles.process {
            Some(
                LogTarget::parse(log_url, log_options, log_unsafe_options)
                    .map_err(|e| format!("--log: {e}"))?,
            )
        } else {
            None
        };
        if roles.process || roles.query {
            self.lake().validate()?;
            if self.vacuum_retain < MIN_VACUUM_RETAIN {
                return Err("--vacuum-retain-hours must be at least 1".into());
            }
        }
        if roles.ingest {
            ingest.validate()?;
        }
        if let Some(jwks) = &self.jwks {
            crate::jwks::check(jwks)?;
        }
        if roles.ingest || roles.query {
            StateTarget::parse(&self.state_url).map_err(|e| e.to_string())?;
            self.rate_limits.validate().map_err(|e| {
                format!("--rate-limit-requests-per-sec, --rate-limit-records-per-sec, --rate-limit-burst-secs: {e}")
            })?;
        }
        if roles.process {
            processor.validate()?;
            self.clickhouse()?;
        }
        if roles.ingest
            && let Some(LogTarget::Kafka(kafka)) = &log
            && kafka.message_timeout() >= ingest.append_timeout
        {
            return Err(format!(
                "the Kafka option message.timeout.ms ({} ms) must be shorter than --append-timeout-secs ({} s): \
                 otherwise a failed delivery is answered as a timeout, without its reason",
                kafka.message_timeout().as_millis(),
                ingest.append_timeout.as_secs()
            ));
        }
        if roles.query {
            let limits = &self.sql_limits;
            if limits.timeout.is_zero() {
                return Err("--sql-timeout-secs must be at least 1".into());
            }
            if limits.memory_bytes == 0 {
                return Err("--sql-memory-mb must be at least 1".into());
            }
            if limits.max_rows == 0 {
                return Err("--sql-max-rows must be at least 1".into());
            }
        }
        if server.header_read_timeout.is_zero() {
            return Err("--header-read-timeout-secs must be at least 1".into());
        }
        if server.drain_timeout.is_zero() || server.drain_timeout > MAX_SHUTDOWN_GRACE {
            return Err("--shutdown-grace-secs must be 1 to 3600".into());
        }
        if server.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if let Some(tenant) = operator_tenant
            && !spendstream_schemas::valid_tenant_id(tenant)
        {
            return Err("--operator-tenant must be 1 to 64 of A-Z a-z 0-9 _ . -".into());
        }
        Ok(log)
    }
}

/// The longest `--shutdown-grace-secs`.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);

/// A password that never prints (`Settings` is `Debug`).
#[derive(Clone)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A started Spendstream.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The Postgres wire endpoint's bound address, when it runs.
    pub pg_addr: Option<SocketAddr>,
    pub stats: Option<Arc<ProcessorStats>>,
    pub lake: Option<Arc<Lake>>,
    pub log: Option<Arc<dyn Log>>,
    /// The state store (ingest and query roles).
    pub state: Option<spendstream_state::State>,
    /// Whether the HTTP listener serves HTTPS (`--tls-cert`).
    pub https: bool,
    stop: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Keyed ingest requests finishing after their client left.
    detached: tokio_util::task::TaskTracker,
    /// How long stopping may take (`ServerLimits::drain_timeout`).
    grace: Duration,
}

impl Running {
    /// A token that stops everything when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until a task ends (it should not) or `stop` is cancelled, then
    /// stops the rest: the HTTP server drains, processors finish their batch.
    /// Whatever has not stopped within the grace period is dropped: a
    /// request still in flight gets its connection closed (it was not
    /// answered, so the client resends it), a processor batch a sink could
    /// not take stays uncommitted and is read again on the next start.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        tokio::select! {
            _ = self.stop.cancelled() => {}
            Some(done) = self.tasks.join_next() => {
                if let Err(e) = flatten(done) {
                    first_error = Some(e);
                }
                self.stop.cancel();
            }
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(done)) => {
                    if let Err(e) = flatten(done) {
                        first_error.get_or_insert(e);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        unfinished = self.tasks.len(),
                        grace = ?self.grace,
                        "The grace period is over: stopping what is left without waiting. \
                         Uncommitted processor batches are read again on the next start."
                    );
                    self.tasks.shutdown().await;
                    break;
                }
            }
        }
        // The listener is closed: no request starts, and those that
        // outlived their client store their answers before the end.
        self.detached.close();
        if tokio::time::timeout_at(deadline, self.detached.wait())
            .await
            .is_err()
        {
            warn!(
                unfinished = self.detached.len(),
                "The grace period is over with ingest requests still storing their answers: their idempotency keys are freed when they go stale."
            );
        }
        // A read a stopped processor left running in a blocking thread
        // still holds the log: an embedded log's directory is whole (its
        // write-ahead file folded in) only once that ends too.
        if let Some(log) = self.log.take() {
            let closed = log.closed();
            drop(log);
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                warn!("The grace period is over with the log still open.");
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.wait().await
    }
}

fn flatten(done: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    done.context("a Spendstream task panicked")?
}

/// Opens the backends the roles need, binds the listener and starts every
/// role. Returns once the server accepts connections.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let target = settings.validate().map_err(anyhow::Error::msg)?;
    let clickhouse = settings.clickhouse().map_err(anyhow::Error::msg)?;
    // Counted by GET /v1/batches/{id} where this process writes it.
    let clickhouse_for_batches = clickhouse.clone().filter(|_| settings.roles.process);
    crate::metrics::install();
    let lake_config = settings.lake();
    let Settings {
        roles,
        listen,
        log_url,
        lake_url,
        state_url,
        keys,
        jwks,
        rate_limits,
        rate_limits_file,
        ingest,
        processor,
        server,
        operator_tenant,
        report_cache_rows,
        report_state_rows,
        sql_limits,
        pg_listen,
        tls,
        migrate,
        compact_interval,
        vacuum_retain,
        log_retention,
        base_currencies,
        ..
    } = settings;
    // Printed in logs and errors: never with their credentials.
    let log_url = redact_url(&log_url);
    let lake_url = spendstream_lake::redact(&lake_url);
    let grace = server.drain_timeout;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();

    // The identity provider's keys, read now (a JWKS that cannot be used
    // stops the start) and again when they change.
    let keys = match jwks {
        Some(source) => {
            let (set, bytes) = crate::jwks::load(&source).await?;
            let keys = keys.with_jwks(set);
            let (jwks, stop) = (keys.jwks().clone(), stop.clone());
            tasks.spawn(async move {
                crate::jwks::follow(source, bytes, jwks, stop).await;
                Ok(())
            });
            keys
        }
        None => keys,
    };

    // Before the log: an unreachable Redis must not leave a new log behind.
    // Idempotency keys (ingest), exchange rates (processors) and
    // revocations (every role that checks tokens): read once now, so no
    // revoked token passes while starting.
    let state = if roles.ingest || roles.query || roles.process {
        let target = StateTarget::parse(&state_url)?;
        let context = || {
            format!(
                "cannot open the state store (--state {})",
                spendstream_state::redact(&state_url)
            )
        };
        let state = target.open().await.with_context(context)?;
        crate::revocations::sync(state.revocations.as_ref(), keys.revocations())
            .await
            .with_context(context)?;
        let (store, into, stop) = (
            state.revocations.clone(),
            keys.revocations().clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            crate::revocations::follow(store, into, stop).await;
            Ok(())
        });
        Some(state)
    } else {
        None
    };
    let state_url = state.as_ref().map(|s| s.url.clone());
    // Rate limits of ingest and the query API: the flags' defaults,
    // overridden per tenant by the file (read now, and again when it
    // changes).
    let rate = match &state {
        Some(state) => {
            let policy = spendstream_state::rate::Policy::new(rate_limits);
            if let Some(path) = rate_limits_file {
                let source = path.display().to_string();
                let loaded = crate::reload::read_file(source.clone())
                    .await
                    .with_context(|| format!("cannot read --rate-limits-file {source}"))?;
                let tenants = spendstream_state::rate::Policy::parse_overrides(&loaded)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("cannot use --rate-limits-file {source}"))?;
                policy.replace_overrides(tenants);
                let (doc, stop) = (
                    crate::reload::Followed {
                        what: "rate limits file",
                        stage: "rate_limits",
                        source,
                        loaded,
                        read: crate::reload::read_file,
                        apply: {
                            let policy = policy.clone();
                            move |bytes: &[u8]| {
                                spendstream_state::rate::Policy::parse_overrides(bytes)
                                    .map(|tenants| policy.replace_overrides(tenants))
                            }
                        },
                    },
                    stop.clone(),
                );
                tasks.spawn(async move {
                    crate::reload::follow(doc, crate::jwks::FILE_EVERY, || true, stop).await;
                    Ok(())
                });
            }
            Some(spendstream_http::rate::RateLimits {
                limiter: state.limiter.clone(),
                policy,
            })
        }
        _ => None,
    };
    let log = match target {
        Some(target) => Some(
            target
                .open()
                .await
                .with_context(|| format!("cannot open the log (--log {log_url})"))?,
        ),
        None => None,
    };
    let lake = if roles.process || roles.query {
        Some(
            lake_config
                .open()
                .await
                .map_err(|e| anyhow::anyhow!("{}", spendstream_schemas::error::Chain(&e)))
                .with_context(|| format!("cannot open the lake (--lake {lake_url})"))?,
        )
    } else {
        None
    };

    let mut stats = None;
    let mut sink_checks: Vec<(&'static str, ReadyCheck)> = Vec::new();
    if roles.process
        && let (Some(log), Some(lake)) = (&log, &lake)
    {
        let mut more: Vec<Arc<dyn Sink>> = Vec::new();
        if let Some(config) = clickhouse {
            more.push(Arc::new(
                clickhouse_sink(config, migrate, &processor.group, log.log_id()).await?,
            ));
        }
        let mut p = Processor::new(processor, log.clone(), lake.clone(), more);
        if let Some(state) = &state {
            p = p.with_fx(FxSource::new(state.fx.clone(), base_currencies));
        }
        for sink in p.sinks().iter().skip(1) {
            let sink = sink.clone();
            sink_checks.push((
                sink.name(),
                Arc::new(move || {
                    let sink = sink.clone();
                    Box::pin(async move {
                        sink.ready()
                            .await
                            .map_err(|e| spendstream_schemas::error::Chain(&e).to_string())
                    })
                }),
            ));
        }
        let consumer = p
            .join()
            .await
            .map_err(|e| anyhow::anyhow!("{}", spendstream_schemas::error::Chain(&e)))
            .context("the processors cannot start")?;
        stats = Some(p.stats());
        let processor_stop = stop.clone();
        tasks.spawn(async move {
            p.run_with(consumer, processor_stop)
                .await
                .context("processor failed")
        });
        if !log_retention.is_zero() {
            let log = log.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                trim_log_periodically(log, log_retention, stop).await;
                Ok(())
            });
        }
        if !compact_interval.is_zero() {
            let lake = lake.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                maintain_periodically(lake, compact_interval, vacuum_retain, stop).await;
                Ok(())
            });
        }
    }

    // The reports' current state, shared by HTTP and the Postgres endpoint:
    // read now, then each commit's files as they come (ADR 0009).
    let detached = tokio_util::task::TaskTracker::new();
    let report_state = match (&lake, roles.query && report_state_rows > 0) {
        (Some(lake), true) => {
            let state = Arc::new(CurrentState::new(report_state_rows));
            state.follow(lake, Duration::from_secs(1));
            Some(state)
        }
        _ => None,
    };
    let router = router(
        roles,
        &keys,
        log.as_ref(),
        lake.as_ref(),
        RouteOptions {
            ingest,
            operator_tenant,
            sql_limits: sql_limits.clone(),
            report_cache_rows,
            report_state: report_state.clone(),
            idempotency: state.as_ref().map(|s| s.idempotency.clone()),
            revocations: state.as_ref().map(|s| s.revocations.clone()),
            fx: state.as_ref().map(|s| s.fx.clone()),
            rate,
            batches: state.as_ref().map(|s| s.batches.clone()),
            clickhouse: clickhouse_for_batches,
            detached: detached.clone(),
        },
        sink_checks,
    );

    let mut pg_addr = None;
    if roles.query
        && let (Some(pg_listen), Some(lake)) = (pg_listen, lake.as_ref())
    {
        let tls = load_tls(tls.as_ref(), spendstream_pg::ALPN)?;
        if tls.is_none() && !pg_listen.ip().is_loopback() {
            tracing::warn!(%pg_listen, "The Postgres endpoint listens beyond this machine without TLS: tokens travel in the clear. Give --tls-cert and --tls-key.");
        }
        let listener = tokio::net::TcpListener::bind(pg_listen)
            .await
            .with_context(|| format!("cannot listen on {pg_listen} (--pg-listen)"))?;
        let bound = listener.local_addr()?;
        pg_addr = Some(bound);
        let config = spendstream_pg::PgConfig {
            keys: keys.clone(),
            lake: lake.clone(),
            current: report_state,
            limits: sql_limits,
            tls,
        };
        let stop = stop.clone();
        tasks.spawn(async move {
            spendstream_pg::serve(listener, config, stop).await;
            Ok(())
        });
        info!(addr = %bound, database = spendstream_pg::DATABASE, "The Postgres wire endpoint is listening.");
    }

    let http_tls = load_tls(tls.as_ref(), b"http/1.1")?;
    let https = http_tls.is_some();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let addr = listener.local_addr()?;
    {
        let stop = stop.clone();
        tasks.spawn(async move {
            spendstream_http::serve(listener, router, server, http_tls, async move {
                stop.cancelled().await
            })
            .await
            .context("the HTTP server failed")
        });
    }
    info!(%addr, ?roles, log = %log_url, lake = %lake_url, state = ?state_url, "Spendstream is listening.");
    Ok(Running {
        addr,
        pg_addr,
        stats,
        lake,
        log,
        state,
        https,
        stop,
        tasks,
        detached,
        grace,
    })
}

/// The certificate and key of `--tls-cert`/`--tls-key` for a listener
/// offering `alpn`, reloaded when the files change.
fn load_tls(
    files: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    alpn: &[u8],
) -> anyhow::Result<Option<spendstream_http::tls::Tls>> {
    let Some((cert, key)) = files else {
        return Ok(None);
    };
    let tls = spendstream_http::tls::Tls::load(cert, key, &[alpn])
        .context("cannot use --tls-cert/--tls-key")?;
    tls.reload_on_change();
    Ok(Some(tls))
}

/// Connects the ClickHouse sink after checking (or, with `migrate`,
/// applying) the database's migrations.
async fn clickhouse_sink(
    config: ClickHouseConfig,
    migrate: bool,
    group: &str,
    log_id: &str,
) -> anyhow::Result<ClickHouseSink> {
    let at = format!("{}/{}", config.url, config.database);
    let chain = |e: spendstream_processors::Error| {
        anyhow::anyhow!("{}", spendstream_schemas::error::Chain(&e))
    };
    // ClickHouse may be starting too (a fresh deployment): ride out a
    // transient failure for a while before giving up with its cause.
    let patience = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(Duration::from_secs(60)));
    let report = (|| async {
        if migrate {
            spendstream_processors::sink::clickhouse::migrate(&config, false).await
        } else {
            spendstream_processors::sink::clickhouse::status(&config).await
        }
    })
    .retry(patience)
    .when(spendstream_processors::Error::is_transient)
    .notify(|e, d| {
        warn!(error = %spendstream_schemas::error::Chain(e), retry_in = ?d, "ClickHouse does not answer yet.")
    })
    .await
    .map_err(chain)
    .with_context(|| format!("ClickHouse at {at}"))?;
    if !migrate && !report.pending.is_empty() {
        let pending: Vec<String> = report
            .pending
            .iter()
            .map(|m| m.version.to_string())
            .collect();
        return Err(chain(spendstream_processors::Error::MigrationsBehind {
            pending: pending.join(", "),
        }))
        .with_context(|| format!("ClickHouse at {at}"));
    }
    ClickHouseSink::connect(config, group, log_id)
        .await
        .map_err(chain)
        .with_context(|| format!("ClickHouse at {at}"))
}

async fn trim_log_periodically(log: Arc<dyn Log>, retention: Duration, stop: CancellationToken) {
    let every = (retention / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match log.enforce_retention(retention).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "Trimmed processed records from the log."),
            Err(error) => {
                spendstream_schemas::metrics::error("log_retention", error.kind());
                warn!(
                    error = %spendstream_schemas::error::Chain(&error),
                    "Trimming the log failed; will try again."
                )
            }
        }
    }
}

/// Vacuum never keeps less than this: a query may still read a replaced
/// file, a writer may still be between its upload and its commit.
pub const MIN_VACUUM_RETAIN: Duration = Duration::from_secs(3600);

/// Every `every`, if this process holds the lake's maintenance lease (one
/// process of all sharing the table does), compacts the lake and vacuums
/// the files compaction replaced more than `retain` ago; once a day also
/// the uploads no commit references.
async fn maintain_periodically(
    lake: Arc<Lake>,
    every: Duration,
    retain: Duration,
    stop: CancellationToken,
) {
    let owner = i64::from_ne_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or_default(),
    );
    let mut last_full: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let full = last_full.is_none_or(|at| at.elapsed() >= Duration::from_secs(86_400));
        match maintain_once(&lake, owner, every, retain, full).await {
            Ok(true) if full => last_full = Some(std::time::Instant::now()),
            Ok(_) => {}
            Err(error) => {
                spendstream_schemas::metrics::error("compaction", error.kind());
                warn!(
                    error = %spendstream_schemas::error::Chain(&error),
                    "Maintaining the lake failed; will try again."
                )
            }
        }
    }
}

/// One maintenance round; false when another process holds the lease.
async fn maintain_once(
    lake: &Lake,
    owner: i64,
    every: Duration,
    retain: Duration,
    full: bool,
) -> spendstream_lake::Result<bool> {
    // The lease outlives one period, so the leader keeps it while it runs.
    if !lake.try_lead(owner, every.saturating_mul(3)).await? {
        return Ok(false);
    }
    let compacted = lake.compact().await?;
    let vacuumed = lake.vacuum(retain, full, false).await?;
    info!(
        partitions = compacted.partitions,
        files_added = compacted.files_added,
        files_removed = compacted.files_removed,
        conflicts = compacted.conflicts,
        vacuumed = vacuumed.files.len(),
        full,
        "Compacted and vacuumed the lake."
    );
    Ok(true)
}

/// How the routes behave: ingest's limits, the operator tenant, SQL limits,
/// the report cache's size.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    pub ingest: IngestConfig,
    pub operator_tenant: Option<String>,
    pub sql_limits: SqlLimits,
    pub report_cache_rows: usize,
    /// The reports' current state (None: reports read the lake).
    pub report_state: Option<Arc<CurrentState>>,
    /// Ingest's idempotency keys (`--state`; ingest needs them).
    pub idempotency: Option<Arc<dyn IdempotencyStore>>,
    /// Where admins revoke tokens (`--state`); the routes exist with it.
    pub revocations: Option<Arc<dyn RevocationStore>>,
    /// Where admins load their exchange rates (`--state`); the route
    /// exists with it.
    pub fx: Option<Arc<dyn FxStore>>,
    /// Per-tenant rate limits of ingest and of reports and SQL (none: no
    /// limits).
    pub rate: Option<spendstream_http::rate::RateLimits>,
    /// Where ingest keeps each request's counts and `GET /v1/batches/{id}`
    /// reads them (`--state`); the route exists with it and a lake.
    pub batches: Option<Arc<dyn BatchStore>>,
    /// ClickHouse, counted by `GET /v1/batches/{id}` when this process
    /// writes it.
    pub clickhouse: Option<ClickHouseConfig>,
    /// Keyed ingest requests finishing after their client left.
    pub detached: tokio_util::task::TaskTracker,
}

impl Default for RouteOptions {
    fn default() -> Self {
        Self {
            ingest: IngestConfig::default(),
            operator_tenant: None,
            sql_limits: SqlLimits::default(),
            report_cache_rows: spendstream_query_api::DEFAULT_REPORT_CACHE_ROWS,
            report_state: None,
            idempotency: None,
            revocations: None,
            fx: None,
            rate: None,
            batches: None,
            clickhouse: None,
            detached: tokio_util::task::TaskTracker::new(),
        }
    }
}

/// The HTTP routes of the roles in `roles` (ingest on `log`, query on
/// `lake`), the operations routes with a readiness check per backend (and
/// the `more` checks: the processors' other sinks), and the shared layers.
/// Starts ingest's group-commit task.
pub fn router(
    roles: Roles,
    keys: &JwtKeys,
    log: Option<&Arc<dyn Log>>,
    lake: Option<&Arc<Lake>>,
    options: RouteOptions,
    more: Vec<(&'static str, ReadyCheck)>,
) -> axum::Router {
    let RouteOptions {
        ingest,
        operator_tenant,
        sql_limits,
        report_cache_rows,
        report_state,
        idempotency,
        revocations,
        fx,
        rate,
        batches,
        clickhouse,
        detached,
    } = options;
    let mut checks: Vec<(&'static str, ReadyCheck)> = Vec::new();
    let mut router = axum::Router::new();
    if let Some(log) = log {
        let l = log.clone();
        checks.push((
            "log",
            Arc::new(move || {
                let l = l.clone();
                Box::pin(async move {
                    l.ping()
                        .await
                        .map_err(|e| spendstream_schemas::error::Chain(&e).to_string())
                })
            }),
        ));
    }
    if let Some(lake) = lake {
        let l = lake.clone();
        checks.push((
            "lake",
            Arc::new(move || {
                let l = l.clone();
                Box::pin(async move {
                    l.ping()
                        .await
                        .map_err(|e| spendstream_schemas::error::Chain(&e).to_string())
                })
            }),
        ));
    }
    if roles.ingest
        && let (Some(log), Some(idempotency)) = (log, idempotency)
    {
        router = router.merge(spendstream_ingest::router(
            IngestState::new(keys.clone(), log, idempotency, ingest)
                .with_operator_tenant(operator_tenant)
                .with_rate_limits(rate.clone())
                .with_batches(batches.clone())
                .with_detached(detached),
        ));
    }
    if roles.query
        && let (Some(lake), Some(store)) = (lake, batches)
    {
        router = router.merge(crate::batches::router(crate::batches::BatchState {
            keys: keys.clone(),
            store,
            lake: lake.clone(),
            current: report_state.clone(),
            dead_letters: log.map(|l| l.dead_letters()),
            clickhouse,
            rate: rate.clone(),
        }));
    }
    if roles.query
        && let Some(lake) = lake
    {
        let state = QueryState::new(keys.clone(), lake.clone(), sql_limits, report_cache_rows)
            .with_report_state(report_state)
            .with_rate_limits(rate);
        router = router.merge(spendstream_query_api::router(state));
    }
    if let Some(store) = revocations {
        router = router.merge(crate::revocations::router(
            crate::revocations::RevocationState {
                keys: keys.clone(),
                store,
            },
        ));
    }
    if let Some(store) = fx {
        router = router.merge(crate::fx::router(crate::fx::FxState {
            keys: keys.clone(),
            store,
        }));
    }
    let router = router.route("/v1/openapi.json", axum::routing::get(openapi_document));
    checks.extend(more);
    spendstream_http::finish(router.merge(spendstream_http::ops::router(checks)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is the document the code generates. After a
    /// change to a route or its types, regenerate it with
    /// `SPENDSTREAM_WRITE_OPENAPI=1 cargo test -p spendstream --lib openapi`.
    #[test]
    fn docs_openapi_json_is_the_generated_document() {
        // The runner's package directory first (a binary built in another
        // checkout sharing the target directory), else the build's.
        let path = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("docs/openapi.json");
        let generated = openapi_json();
        if std::env::var_os("SPENDSTREAM_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, generated).unwrap();
        }
        let kept = std::fs::read_to_string(&path).unwrap();
        assert!(
            kept == generated,
            "docs/openapi.json differs from the generated document: run SPENDSTREAM_WRITE_OPENAPI=1 cargo test -p spendstream --lib openapi"
        );
    }

    fn settings() -> Settings {
        Settings::defaults(
            JwtKeys::new(&[1; 32]).unwrap(),
            std::path::Path::new("/nonexistent/data"),
        )
    }

    #[test]
    fn the_defaults_are_valid_without_touching_anything() {
        assert!(matches!(
            settings().validate(),
            Ok(Some(LogTarget::Embedded { .. }))
        ));
        assert!(!std::path::Path::new("/nonexistent").exists());
    }

    #[test]
    fn each_mistake_names_its_setting() {
        type Mistake = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(Mistake, &str)> = vec![
            (Box::new(|s| s.log_url = "kafka://".into()), "--log"),
            (Box::new(|s| s.lake_url = "s3:/x".into()), "--lake"),
            (
                Box::new(|s| s.lake_url = "s3://key:secret@bucket/p".into()),
                "--lake",
            ),
            (
                Box::new(|s| s.vacuum_retain = Duration::from_secs(60)),
                "--vacuum-retain-hours",
            ),
            (Box::new(|s| s.sql_limits.max_rows = 0), "--sql-max-rows"),
            (
                Box::new(|s| s.processor.max_batch_records = 0),
                "--batch-max-records",
            ),
            (
                Box::new(|s| s.ingest.max_rejected_listed = 0),
                "--max-rejected-listed",
            ),
            (
                Box::new(|s| s.server.header_read_timeout = Duration::ZERO),
                "--header-read-timeout-secs",
            ),
            (
                Box::new(|s| s.server.drain_timeout = Duration::ZERO),
                "--shutdown-grace-secs",
            ),
            (
                Box::new(|s| s.operator_tenant = Some("no spaces".into())),
                "--operator-tenant",
            ),
            (
                Box::new(|s| s.state_url = "memcached://h".into()),
                "--state",
            ),
            (
                Box::new(|s| s.state_url = "redis://:hunter2@h:port".into()),
                "--state",
            ),
            (
                Box::new(|s| {
                    s.log_url = "kafka://h:9092".into();
                    s.log_options = vec![("message.timeout.ms".into(), "30000".into())];
                }),
                "message.timeout.ms",
            ),
            (
                Box::new(|s| {
                    s.log_url = "kafka://h:9092".into();
                    s.log_options = vec![("enable.idempotence".into(), "false".into())];
                }),
                "enable.idempotence",
            ),
        ];
        for (mistake, flag) in cases {
            let mut s = settings();
            mistake(&mut s);
            let error = s.validate().unwrap_err();
            assert!(error.contains(flag), "{flag}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn only_the_roles_that_run_are_checked() {
        let mut s = settings();
        s.roles = Roles::QUERY;
        s.log_url = "nonsense".into();
        s.processor.max_batch_records = 0;
        assert!(matches!(s.validate(), Ok(None)));
        s.lake_url = "nonsense".into();
        assert!(s.validate().is_err());
    }
}
