//! Command-line interface: every flag has a `SPENDSTREAM_*` environment
//! equivalent and a default that works on one machine with nothing
//! installed.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "spendstream",
    version,
    about = "High-volume expense ingestion: HTTP edge, durable log, processors, lake, reports."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log output: `text` for people, `json` for machines; `auto` picks text
    /// on a terminal.
    #[arg(
        long,
        env = "SPENDSTREAM_LOG_FORMAT",
        default_value = "auto",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run ingest, processors and query in one process (embedded defaults).
    Up(UpArgs),
    /// Run only the HTTP ingest edge.
    Ingest(ServeArgs),
    /// Run only the processors (log → lake).
    Process(ServeArgs),
    /// Run only the query API.
    Query(ServeArgs),
    /// Mint a bearer token.
    Token(TokenArgs),
    /// Apply the pending ClickHouse migrations (idempotent; safe to run
    /// from two processes at once).
    Migrate(MigrateArgs),
    /// Maintain the lake table: compaction and vacuum (safe while
    /// Spendstream runs).
    #[command(subcommand)]
    Lake(LakeCommand),
    /// Push files of records (NDJSON, JSON, CSV, CAMT.053, BAI2, OFX; gzip
    /// too) to an edge in chunks, resumably: run the same command again
    /// after an interruption and nothing is sent twice.
    Import(ImportArgs),
    /// Exchange rates for amounts in each tenant's base currency
    /// (docs/fx.md).
    #[command(subcommand)]
    Fx(FxCommand),
}

#[derive(Debug, Subcommand)]
pub enum FxCommand {
    /// Load a rates file (the ECB reference-rate CSV layout) into the state
    /// the processors read: for every tenant, or with `--tenant` for one
    /// (whose own rates win where they have one). Each rate replaces the
    /// same day's rate of its currency, the others are kept; a file with a
    /// bad line is refused whole, naming it.
    Load(FxLoadArgs),
}

#[derive(Debug, Args)]
pub struct FxLoadArgs {
    /// The rates file (`eurofxref-hist.csv` as the ECB publishes it).
    pub file: PathBuf,
    /// Where the default embedded state lives.
    #[arg(long, env = "SPENDSTREAM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The state store the processors read (`--state` of `up`/`process`).
    /// Default: `embedded://<data-dir>/state`.
    #[arg(long = "state", env = "SPENDSTREAM_STATE")]
    pub state_url: Option<String>,
    /// Load the rates of this tenant only.
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files to import, one after the other.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The edge's base URL.
    #[arg(long, env = "SPENDSTREAM_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A bearer token with the ingest role.
    #[arg(long, env = "SPENDSTREAM_TOKEN", hide_env_values = true)]
    pub token: String,
    /// `auto` (from each file's name, else its first bytes), or one of
    /// ndjson, json, csv, camt053, bai2, ofx.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Entries a request carries. Part of each chunk's idempotency key: a
    /// resumed import keeps the size its checkpoint was made with.
    #[arg(long, default_value_t = 5000)]
    pub chunk_records: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Retries of one chunk (no connection, 408, 409, 429, 502, 503, 504)
    /// before the import stops.
    #[arg(long, default_value_t = 10)]
    pub max_retries: usize,
    /// Exit 0 even when records were rejected (otherwise the exit status
    /// is 2).
    #[arg(long)]
    pub allow_rejects: bool,
    /// Progress on standard error: a redrawn line on a terminal, plain
    /// lines otherwise (`auto`), or `bar`, `lines`, `none`.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: crate::import::ProgressMode,
    /// Finish only once reports count every record sent (asks
    /// `GET /v1/batches/{id}`; fails after `--wait-timeout-secs`).
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits before it fails.
    #[arg(long, default_value_t = 600)]
    pub wait_timeout_secs: u64,
    /// Where `--wait` asks (a query node); `--url` unless given.
    #[arg(long)]
    pub wait_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum LakeCommand {
    /// Rewrite every tenant × month partition of more than one file into
    /// files clustered by `expense_id, version`. Ingest and queries carry
    /// on; no report changes.
    Compact(LakeArgs),
    /// Delete files the table no longer reads: those compaction replaced
    /// longer than `--retain` ago, and with `--full` also uploads no commit
    /// references (writers killed before committing).
    Vacuum(VacuumArgs),
}

#[derive(Debug, Args)]
pub struct LakeArgs {
    /// Where the default local lake lives.
    #[arg(long, env = "SPENDSTREAM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Lake URL: `file://<dir>` or `s3://bucket/prefix`. Default:
    /// `file://<data-dir>/lake`.
    #[arg(long = "lake", env = "SPENDSTREAM_LAKE")]
    pub lake_url: Option<String>,
}

impl LakeArgs {
    pub fn lake_url(&self) -> String {
        self.lake_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("lake").display()))
    }
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    #[command(flatten)]
    pub lake: LakeArgs,
    /// Keep files removed or written less than this long ago: `7d`, `12h`,
    /// `30m`. It must outlast the longest query and the longest
    /// upload-to-commit of a writer, or a running query or a commit loses
    /// its files.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub retain: std::time::Duration,
    /// Also delete files no commit references (lists the whole table).
    #[arg(long)]
    pub full: bool,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow `--retain` under one hour (only when nothing writes or reads
    /// the table).
    #[arg(long)]
    pub allow_short_retention: bool,
}

/// An ISO 4217 code, upper-cased.
fn parse_currency(text: &str) -> Result<String, String> {
    spendstream_schemas::Currency::from_code(text)
        .map(|c| c.code().to_string())
        .ok_or_else(|| format!("`{text}` is not an ISO 4217 currency code"))
}

/// `tenant=EUR`.
fn parse_tenant_currency(text: &str) -> Result<(String, String), String> {
    let (tenant, code) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not tenant=CURRENCY"))?;
    if !spendstream_schemas::valid_tenant_id(tenant) {
        return Err(format!("`{tenant}` is not a tenant id"));
    }
    Ok((tenant.to_string(), parse_currency(code)?))
}

/// `90s`, `30m`, `12h`, `7d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: use s, m, h or d (e.g. 7d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`: use s, m, h or d"
            ));
        }
    };
    Ok(std::time::Duration::from_secs(
        number.saturating_mul(seconds),
    ))
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// ClickHouse HTTP URL, `http://host:8123[/database]`; user and password
    /// from SPENDSTREAM_CLICKHOUSE_USER and SPENDSTREAM_CLICKHOUSE_PASSWORD
    /// (or SPENDSTREAM_CLICKHOUSE_PASSWORD_FILE).
    #[arg(long, env = "SPENDSTREAM_CLICKHOUSE")]
    pub clickhouse: Option<String>,
    /// Print what would be applied, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print every migration's statements and exit, without connecting.
    #[arg(long)]
    pub print_sql: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Load the bundled sample card feed through the API and print a report.
    #[arg(long)]
    pub demo: bool,
    /// Hours the `demo` token printed at start-up stays valid. It is printed
    /// only when `up` made a new secret or runs on a terminal.
    #[arg(long, env = "SPENDSTREAM_TOKEN_TTL_HOURS", default_value_t = 8)]
    pub token_ttl_hours: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where the embedded log, the lake and the generated JWT secret live.
    #[arg(long, env = "SPENDSTREAM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// HTTP listen address.
    #[arg(long, env = "SPENDSTREAM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Postgres wire listen address of the query role (database
    /// `spendstream`, user = tenant, password = a token with role read), or
    /// `off`.
    #[arg(long, env = "SPENDSTREAM_PG_LISTEN", default_value = "127.0.0.1:5433", value_parser = parse_listen_or_off)]
    pub pg_listen: ListenOrOff,
    /// PEM certificate chain for TLS (with --tls-key): the HTTP listener
    /// serves HTTPS only and the Postgres endpoint refuses plaintext
    /// connections. Both files are loaded again within seconds when they
    /// change (a renewed certificate needs no restart).
    #[arg(long, env = "SPENDSTREAM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SPENDSTREAM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log URL: `embedded://<dir>[?partitions=N]` or
    /// `kafka://host:port[,host:port][?prefix=&partitions=&replication=&compression=&state=]`.
    /// Default: `embedded://<data-dir>/log`.
    #[arg(long = "log", env = "SPENDSTREAM_LOG")]
    pub log_url: Option<String>,
    /// Where nodes keep what they must agree on (idempotency keys, revoked
    /// tokens, exchange rates): `embedded://<dir>` (one machine)
    /// or `redis://[:password@]host:port[/db]` (every node behind a load
    /// balancer). Default: `embedded://<data-dir>/state`.
    #[arg(long = "state", env = "SPENDSTREAM_STATE")]
    pub state_url: Option<String>,
    /// A librdkafka property for every Kafka client, `name=value` (repeat the
    /// flag; the environment variable takes a comma-separated list).
    #[arg(
        long = "kafka-option",
        env = "SPENDSTREAM_KAFKA_OPTIONS",
        value_delimiter = ',',
        value_parser = parse_kafka_option
    )]
    pub kafka_options: Vec<(String, String)>,
    /// A librdkafka property applied without the check that refuses options
    /// weakening delivery (`acks`, `enable.idempotence`, manual commits…):
    /// only when you accept losing or duplicating records.
    #[arg(
        long = "unsafe-kafka-option",
        env = "SPENDSTREAM_UNSAFE_KAFKA_OPTIONS",
        value_delimiter = ',',
        value_parser = parse_kafka_option
    )]
    pub unsafe_kafka_options: Vec<(String, String)>,
    /// Lake URL: `file://<dir>` or `s3://bucket/prefix` (S3 settings from
    /// the usual AWS_* environment: AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    /// AWS_ALLOW_HTTP, AWS_VIRTUAL_HOSTED_STYLE_REQUEST). Default:
    /// `file://<data-dir>/lake`.
    #[arg(long = "lake", env = "SPENDSTREAM_LAKE")]
    pub lake_url: Option<String>,
    /// Milliseconds the query API may serve the lake state it loaded before
    /// looking for new commits (one LIST of the log per period, not per
    /// request).
    #[arg(long, env = "SPENDSTREAM_LAKE_REFRESH_MS", default_value_t = 250)]
    pub lake_refresh_ms: u64,
    /// Commits between two checkpoints of a lake table this process creates.
    #[arg(
        long,
        env = "SPENDSTREAM_LAKE_CHECKPOINT_INTERVAL",
        default_value_t = 100
    )]
    pub lake_checkpoint_interval: u32,
    /// Seconds one `POST /v1/sql` query may run (422 query_timeout).
    #[arg(long, env = "SPENDSTREAM_SQL_TIMEOUT_SECS", default_value_t = 30)]
    pub sql_timeout_secs: u64,
    /// MiB of memory one SQL query's operators may hold (422
    /// query_memory_exceeded).
    #[arg(long, env = "SPENDSTREAM_SQL_MEMORY_MB", default_value_t = 256)]
    pub sql_memory_mb: usize,
    /// Most rows one SQL query returns (422 result_too_large).
    #[arg(long, env = "SPENDSTREAM_SQL_MAX_ROWS", default_value_t = 100_000)]
    pub sql_max_rows: usize,
    /// Rows of computed report answers kept in memory, so later pages and
    /// repeats on an unchanged table are not recomputed (about 150 bytes
    /// each; 0 keeps none).
    #[arg(long, env = "SPENDSTREAM_REPORT_CACHE_ROWS", default_value_t = spendstream_query_api::DEFAULT_REPORT_CACHE_ROWS)]
    pub report_cache_rows: usize,
    /// Entries of the query service's in-memory current state: the latest
    /// version of each expense (about 70 bytes, 82 with base-currency
    /// amounts), each superseded version and lifecycle link (about 40) and
    /// each ingest request (about 50), read once and then only from the
    /// files each commit adds. Past it reports and SQL read the lake for
    /// each answer (0: always).
    #[arg(long, env = "SPENDSTREAM_REPORT_STATE_ROWS", default_value_t = spendstream_query_api::current::DEFAULT_REPORT_STATE_ROWS)]
    pub report_state_rows: usize,
    /// Hours the periodic vacuum keeps files compaction replaced (readers
    /// that time-travel need them).
    #[arg(long, env = "SPENDSTREAM_VACUUM_RETAIN_HOURS", default_value_t = 168)]
    pub vacuum_retain_hours: u64,
    /// ClickHouse HTTP URL, `http://host:8123[/database]`: the processors
    /// write it as a second sink. User and password from
    /// SPENDSTREAM_CLICKHOUSE_USER and SPENDSTREAM_CLICKHOUSE_PASSWORD (or
    /// SPENDSTREAM_CLICKHOUSE_PASSWORD_FILE), never from the URL.
    #[arg(long, env = "SPENDSTREAM_CLICKHOUSE")]
    pub clickhouse: Option<String>,
    /// Apply pending ClickHouse migrations at start-up instead of refusing
    /// to start.
    #[arg(long, env = "SPENDSTREAM_MIGRATE")]
    pub migrate: bool,
    /// Consumer group of the processors.
    #[arg(
        long,
        env = "SPENDSTREAM_GROUP",
        default_value = "spendstream-processors"
    )]
    pub group: String,
    /// Most records per processor batch (one lake commit).
    #[arg(long, env = "SPENDSTREAM_BATCH_MAX_RECORDS", default_value_t = 50_000)]
    pub batch_max_records: usize,
    /// Longest a processor batch stays open, in milliseconds.
    #[arg(long, env = "SPENDSTREAM_BATCH_MAX_WAIT_MS", default_value_t = 250)]
    pub batch_max_wait_ms: u64,
    /// Largest request body on the wire, in bytes.
    #[arg(long, env = "SPENDSTREAM_MAX_BODY_BYTES", default_value_t = 256 << 20)]
    pub max_body_bytes: usize,
    /// Largest request body after gzip decompression, in bytes.
    #[arg(long, env = "SPENDSTREAM_MAX_DECOMPRESSED_BYTES", default_value_t = 1 << 30)]
    pub max_decompressed_bytes: usize,
    /// Largest single record (NDJSON line, JSON element, CSV row), in bytes.
    #[arg(long, env = "SPENDSTREAM_MAX_RECORD_BYTES", default_value_t = 1 << 20)]
    pub max_record_bytes: usize,
    /// Rejected records listed by index in one response (all are counted).
    #[arg(long, env = "SPENDSTREAM_MAX_REJECTED_LISTED", default_value_t = 1_000)]
    pub max_rejected_listed: usize,
    /// Ingest requests in flight at once (503 past it).
    #[arg(
        long,
        env = "SPENDSTREAM_MAX_CONCURRENT_REQUESTS",
        default_value_t = 256
    )]
    pub max_concurrent_requests: usize,
    /// Ingest requests in flight at once for one tenant (429 past it).
    #[arg(
        long,
        env = "SPENDSTREAM_MAX_CONCURRENT_REQUESTS_PER_TENANT",
        default_value_t = 32
    )]
    pub max_concurrent_requests_per_tenant: usize,
    /// Seconds a request body may pause before the request gets 408.
    #[arg(long, env = "SPENDSTREAM_BODY_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    pub body_idle_timeout_secs: u64,
    /// Seconds a whole request body may take before the request gets 408.
    #[arg(long, env = "SPENDSTREAM_BODY_TIMEOUT_SECS", default_value_t = 600)]
    pub body_timeout_secs: u64,
    /// Least average rate of a request body, bytes/s, checked once the idle
    /// timeout has passed (408 below it; 0: off).
    #[arg(
        long,
        env = "SPENDSTREAM_BODY_MIN_BYTES_PER_SEC",
        default_value_t = 1024
    )]
    pub body_min_bytes_per_sec: u64,
    /// Seconds to wait for the log to confirm an append before answering 503.
    #[arg(long, env = "SPENDSTREAM_APPEND_TIMEOUT_SECS", default_value_t = 30)]
    pub append_timeout_secs: u64,
    /// Seconds a connection may take to send a request head (also the idle
    /// keep-alive limit) before it is closed.
    #[arg(
        long,
        env = "SPENDSTREAM_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 15
    )]
    pub header_read_timeout_secs: u64,
    /// Seconds a stop (SIGTERM, SIGINT) may take: requests in flight finish
    /// and processors commit their batch within it; what is left then is
    /// dropped (unanswered requests, an uncommitted batch read again on the
    /// next start) and the process exits.
    #[arg(long, env = "SPENDSTREAM_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// HTTP connections open at once; more are closed as they arrive.
    #[arg(long, env = "SPENDSTREAM_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Tenant whose admins may list dead letters that carry no tenant.
    #[arg(long, env = "SPENDSTREAM_OPERATOR_TENANT")]
    pub operator_tenant: Option<String>,
    /// Required `aud` claim of bearer tokens (and set in minted ones).
    #[arg(long, env = "SPENDSTREAM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim of bearer tokens (and set in minted ones).
    #[arg(long, env = "SPENDSTREAM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The identity provider's public keys: a JWKS file or its `https://`
    /// URL. RS256, ES256 and EdDSA tokens are then accepted when signed by
    /// the key their `kid` names; the set is read again when it changes (a
    /// file every 2 s, a URL every 5 min or soon after an unknown `kid`).
    #[arg(long, env = "SPENDSTREAM_JWT_JWKS")]
    pub jwt_jwks: Option<String>,
    /// The claim that names the tenant (identity providers differ:
    /// `org_id`, `tid`, …).
    #[arg(long, env = "SPENDSTREAM_JWT_TENANT_CLAIM", default_value = "tenant", value_parser = parse_tenant_claim)]
    pub jwt_tenant_claim: String,
    /// Each tenant's requests per second, to ingest and (apart) to reports
    /// and SQL, shared by every node on `--state redis://` (0: no limit).
    /// Over it: 429 `quota_exceeded` with `Retry-After`.
    #[arg(
        long,
        env = "SPENDSTREAM_RATE_LIMIT_REQUESTS_PER_SEC",
        default_value_t = 0.0
    )]
    pub rate_limit_requests_per_sec: f64,
    /// Each tenant's accepted records per second (0: no limit).
    #[arg(
        long,
        env = "SPENDSTREAM_RATE_LIMIT_RECORDS_PER_SEC",
        default_value_t = 0.0
    )]
    pub rate_limit_records_per_sec: f64,
    /// Seconds of rate a tenant may spend at once after a pause.
    #[arg(long, env = "SPENDSTREAM_RATE_LIMIT_BURST_SECS", default_value_t = 2.0)]
    pub rate_limit_burst_secs: f64,
    /// Per-tenant limits overriding the three above, a JSON file
    /// (`{"tenants": {"acme": {"requests_per_sec": 50, "records_per_sec":
    /// 20000, "burst_secs": 2}}}`) read again when it changes.
    #[arg(long, env = "SPENDSTREAM_RATE_LIMITS_FILE")]
    pub rate_limits_file: Option<PathBuf>,
    /// Hours the embedded log keeps records every consumer group has
    /// processed (0: forever).
    #[arg(long, env = "SPENDSTREAM_LOG_RETENTION_HOURS", default_value_t = 168)]
    pub log_retention_hours: u64,
    /// Seconds between lake compactions (0: never).
    #[arg(long, env = "SPENDSTREAM_COMPACT_INTERVAL_SECS", default_value_t = 600)]
    pub compact_interval_secs: u64,
    /// The currency processors convert every record to (docs/fx.md), with
    /// the rates loaded by `spendstream fx load` or `PUT
    /// /v1/admin/fx-rates`.
    #[arg(long, env = "SPENDSTREAM_BASE_CURRENCY", default_value = "USD", value_parser = parse_currency)]
    pub base_currency: String,
    /// A tenant's own base currency, `tenant=EUR` (repeat the flag; the
    /// environment variable takes a comma-separated list).
    #[arg(
        long = "tenant-base-currency",
        env = "SPENDSTREAM_TENANT_BASE_CURRENCIES",
        value_delimiter = ',',
        value_parser = parse_tenant_currency
    )]
    pub tenant_base_currencies: Vec<(String, String)>,
}

impl ServeArgs {
    /// The log URL; a Kafka URL without `state=` keeps its node-local
    /// dead-letter index under the data directory.
    pub fn log_url(&self) -> String {
        match &self.log_url {
            None => format!("embedded://{}", self.data_dir.join("log").display()),
            Some(url) if url.starts_with("kafka://") && !url.contains("state=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}state={}", self.data_dir.join("state").display())
            }
            Some(url) => url.clone(),
        }
    }

    pub fn state_url(&self) -> String {
        self.state_url
            .clone()
            .unwrap_or_else(|| format!("embedded://{}", self.data_dir.join("state").display()))
    }

    pub fn lake_url(&self) -> String {
        LakeArgs {
            data_dir: self.data_dir.clone(),
            lake_url: self.lake_url.clone(),
        }
        .lake_url()
    }
}

fn parse_kafka_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("expected name=value, got `{text}`")),
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Tenant the token acts for.
    #[arg(long)]
    pub tenant: String,
    /// Roles: ingest, read, admin (repeat the flag).
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// Hours until the token expires.
    #[arg(long, default_value_t = 24)]
    pub ttl_hours: u64,
    /// `aud` claim to set (the audience the servers require, if any).
    #[arg(long, env = "SPENDSTREAM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// `iss` claim to set (the issuer the servers require, if any).
    #[arg(long, env = "SPENDSTREAM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The claim to write the tenant in (the servers' --jwt-tenant-claim).
    #[arg(long, env = "SPENDSTREAM_JWT_TENANT_CLAIM", default_value = "tenant", value_parser = parse_tenant_claim)]
    pub jwt_tenant_claim: String,
    /// Where `up` keeps its generated secret (when SPENDSTREAM_JWT_SECRET is unset).
    #[arg(long, env = "SPENDSTREAM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// A claim name to read the tenant from: not empty, and not a claim the
/// verifier reads for itself.
fn parse_tenant_claim(name: &str) -> Result<String, String> {
    const OWN: [&str; 8] = ["exp", "nbf", "iat", "aud", "iss", "jti", "sub", "roles"];
    if name.is_empty() || OWN.contains(&name) {
        return Err(format!(
            "the tenant claim must be a claim of its own, not empty or one of {}",
            OWN.join(", ")
        ));
    }
    Ok(name.to_owned())
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOrOff(pub Option<SocketAddr>);

fn parse_listen_or_off(text: &str) -> Result<ListenOrOff, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(ListenOrOff(None));
    }
    text.parse()
        .map(|addr| ListenOrOff(Some(addr)))
        .map_err(|e| format!("`{text}` is neither host:port nor off: {e}"))
}

/// The options of `spendstream <command>` (and the global ones) as the
/// Markdown table of `docs/runbooks/configuration.md`: flag, environment
/// variable, default, what it does.
pub fn reference_table(command: &str) -> String {
    use clap::CommandFactory;
    let cli = Cli::command();
    let sub = cli
        .get_subcommands()
        .find(|c| c.get_name() == command)
        .unwrap_or_else(|| panic!("no command {command}"));
    let mut table = String::from(
        "| Flag | Environment | Default | What it does |\n| --- | --- | --- | --- |\n",
    );
    for arg in cli.get_arguments().chain(sub.get_arguments()) {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| format!("`{}`", v.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(", ");
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        table.push_str(&format!("| `--{long}` | {env} | {default} | {help} |\n"));
    }
    table
}

#[cfg(test)]
mod tests {
    /// `docs/runbooks/configuration.md` lists every option of `up` (which
    /// has every option of `ingest`, `process` and `query`) as the code
    /// declares it; on a change, paste the table this prints.
    #[test]
    fn the_configuration_reference_is_the_code() {
        crate::assert_generated_table(
            "docs/runbooks/configuration.md",
            include_str!("../docs/runbooks/configuration.md"),
            "<!-- options of `spendstream up`: generated by `src/cli.rs`, checked by its tests -->",
            &super::reference_table("up"),
        );
    }
}
