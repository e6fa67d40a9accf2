//! `spendstream`: parses configuration and starts the requested roles.

use anyhow::{Context, bail};
use clap::Parser;
use spendstream::cli::{Cli, Command, ImportArgs, LakeCommand, ServeArgs};
use spendstream::secret::{self, Origin};
use spendstream::{Roles, Settings};
use spendstream_http::{Role, ServerLimits};
use spendstream_ingest::IngestConfig;
use spendstream_processors::ProcessorConfig;
use std::io::IsTerminal;
use std::time::Duration;

fn main() -> std::process::ExitCode {
    tune_malloc();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(async_main()),
        Err(error) => {
            eprintln!("spendstream: starting the async runtime failed: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc malloc settings the binary runs with unless the operator set
/// them (docs/benchmarks.md, issue 13, measured through `up`'s 2M-record
/// load):
/// - two arenas: by default glibc makes up to 8 per core and keeps freed
///   memory in each (peak RSS 1,295 MiB with the default, 617 with two, at
///   the same records/s);
/// - a fixed mmap threshold of 16 MiB: by default it rises to the size of
///   any large block freed (up to 32 MiB), after which a batch's large
///   buffers come from the arenas and their freed space stays resident
///   (peak RSS 497–585 MiB with the default, 468–497 with 16 MiB, in runs
///   of similar records/s on a busy machine).
const MALLOC_SETTINGS: [(&str, &str); 2] = [
    ("MALLOC_ARENA_MAX", "2"),
    ("MALLOC_MMAP_THRESHOLD_", "16777216"),
];

/// Applies [`MALLOC_SETTINGS`]. glibc reads them only at start (and
/// `mallopt` would need `unsafe`, which the workspace forbids), so the
/// process runs itself again with the missing ones set, before anything
/// else happens; same PID, arguments and descriptors. An operator's own
/// values win, and when the re-run fails this one goes on with glibc's
/// defaults.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let missing: Vec<_> = MALLOC_SETTINGS
            .iter()
            .filter(|(name, _)| std::env::var_os(name).is_none())
            .collect();
        if !missing.is_empty()
            && let Ok(exe) = std::env::current_exe()
        {
            use std::os::unix::process::CommandExt;
            let mut args = std::env::args_os();
            let mut again = std::process::Command::new(exe);
            if let Some(name) = args.next() {
                again.arg0(name);
            }
            again.args(args).envs(missing.iter().copied().copied());
            // Returns only when it failed.
            let _ = again.exec();
        }
    }
}

async fn async_main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let service = match &cli.command {
        Command::Ingest(_) => "spendstream-ingest",
        Command::Process(_) => "spendstream-process",
        Command::Query(_) => "spendstream-query",
        _ => "spendstream",
    };
    let telemetry = match spendstream::telemetry::init(cli.log_format, service) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("spendstream: {error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = run(cli.command).await;
    telemetry.shutdown().await;
    match result {
        Ok(code) => code,
        Err(error) => {
            // One line that names the setting and the cause.
            eprintln!("spendstream: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    if let Command::Import(args) = command {
        return import(args).await;
    }
    run_service(command)
        .await
        .map(|()| std::process::ExitCode::SUCCESS)
}

/// `spendstream import`: exit status 0 when everything was accepted (or
/// `--allow-rejects`), 2 when records were rejected, 1 when it failed.
async fn import(args: ImportArgs) -> anyhow::Result<std::process::ExitCode> {
    let format = match args.format.as_str() {
        "auto" => None,
        name => Some(spendstream::import::format_named(name).with_context(|| {
            format!("--format {name}: use auto, ndjson, json, csv, camt053, bai2 or ofx")
        })?),
    };
    let options = spendstream::import::Options {
        files: args.files.clone(),
        url: args.url,
        token: args.token,
        format,
        chunk_records: args.chunk_records,
        concurrency: args.concurrency,
        max_retries: args.max_retries,
        progress: args.progress,
        wait: args
            .wait
            .then(|| Duration::from_secs(args.wait_timeout_secs)),
        wait_url: args.wait_url,
    };
    let summary = spendstream::import::run(&options).await?;
    println!("{}", spendstream::import::describe(&summary, &args.files));
    Ok(if summary.rejected() > 0 && !args.allow_rejects {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

async fn run_service(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => {
            let up = Up {
                demo: args.demo,
                token_ttl: Duration::from_secs(args.token_ttl_hours.saturating_mul(3600)),
            };
            serve(args.serve, Roles::ALL, Some(up)).await
        }
        Command::Ingest(args) => serve(args, Roles::INGEST, None).await,
        Command::Process(args) => serve(args, Roles::PROCESS, None).await,
        Command::Query(args) => serve(args, Roles::QUERY, None).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Lake(command) => lake(command).await,
        Command::Import(args) => import(args).await.map(drop),
        Command::Fx(spendstream::cli::FxCommand::Load(args)) => fx_load(args).await,
        Command::Token(args) => {
            let (keys, _) = secret::load(&args.data_dir, false)?;
            let keys = keys
                .with_audience(args.jwt_audience.clone())
                .with_issuer(args.jwt_issuer.clone())
                .with_tenant_claim(&args.jwt_tenant_claim);
            let roles = args
                .roles
                .iter()
                .map(|r| r.parse::<Role>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("--role")?;
            if !spendstream_schemas::valid_tenant_id(&args.tenant) {
                bail!("--tenant must be 1 to 64 of A-Z a-z 0-9 _ . -");
            }
            if args.ttl_hours == 0 {
                bail!("--ttl-hours must be at least 1");
            }
            let claims = secret::claims(
                &keys,
                &args.tenant,
                &roles,
                Duration::from_secs(args.ttl_hours.saturating_mul(3600)),
            );
            println!("{}", keys.sign(&claims));
            // On stderr, so `TOKEN=$(spendstream token …)` stays the token.
            eprintln!(
                "jti {} (to revoke it: POST /v1/admin/revocations), expires at {}",
                claims.jti.as_deref().unwrap_or_default(),
                chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// `spendstream migrate`: applies (or, with `--dry-run`, lists) the pending
/// ClickHouse migrations; `--print-sql` prints every statement.
async fn migrate(args: spendstream::cli::MigrateArgs) -> anyhow::Result<()> {
    use spendstream_processors::sink::clickhouse;
    if args.print_sql {
        println!(
            "{};",
            spendstream_schemas::clickhouse::create_migrations_table()
        );
        for migration in spendstream_schemas::clickhouse::migrations() {
            println!("-- {} {}", migration.version, migration.name);
            for statement in &migration.statements {
                println!("{statement};");
            }
        }
        return Ok(());
    }
    let url = args
        .clickhouse
        .context("--clickhouse (or SPENDSTREAM_CLICKHOUSE) is required")?;
    let mut config = clickhouse::ClickHouseConfig::from_url(&url)
        .map_err(anyhow::Error::msg)
        .context("--clickhouse")?;
    config.user = std::env::var("SPENDSTREAM_CLICKHOUSE_USER").ok();
    config.password = secret::clickhouse_password()?;
    let at = format!("{}/{}", config.url, config.database);
    let report = clickhouse::migrate(&config, args.dry_run)
        .await
        .map_err(|e| anyhow::anyhow!("{}", spendstream_schemas::error::Chain(&e)))
        .with_context(|| format!("ClickHouse at {at}"))?;
    let verb = if args.dry_run {
        "Would apply"
    } else {
        "Applied"
    };
    if report.pending.is_empty() {
        println!(
            "ClickHouse at {at} is up to date (migrations {:?}).",
            report.applied
        );
    }
    for migration in &report.pending {
        println!(
            "{verb} migration {} ({}).",
            migration.version, migration.name
        );
        if args.dry_run {
            for statement in &migration.statements {
                println!("{statement};");
            }
        }
    }
    Ok(())
}

/// A code the flags' parser already checked.
fn currency(code: &str) -> anyhow::Result<spendstream_schemas::Currency> {
    spendstream_schemas::Currency::from_code(code)
        .with_context(|| format!("`{code}` is not an ISO 4217 currency code"))
}

/// `spendstream fx load`: the operator's rates, into the state store.
async fn fx_load(args: spendstream::cli::FxLoadArgs) -> anyhow::Result<()> {
    let scope = match &args.tenant {
        Some(t) if !spendstream_schemas::valid_tenant_id(t) => {
            bail!("--tenant must be 1 to 64 of A-Z a-z 0-9 _ . -")
        }
        Some(t) => t.clone(),
        None => spendstream_state::FX_SCOPE_ALL.to_string(),
    };
    let text = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let url = args
        .state_url
        .clone()
        .unwrap_or_else(|| format!("embedded://{}", args.data_dir.join("state").display()));
    let state = spendstream_state::StateTarget::parse(&url)?
        .open()
        .await
        .with_context(|| {
            format!(
                "cannot open the state store (--state {})",
                spendstream_state::redact(&url)
            )
        })?;
    let loaded = spendstream::fx::load(state.fx.as_ref(), &scope, &text)
        .await
        .map_err(|e| anyhow::anyhow!("{}", spendstream_schemas::error::Chain(&e)))
        .with_context(|| format!("{} was not loaded", args.file.display()))?;
    let whom = match &args.tenant {
        Some(t) => format!("tenant {t}"),
        None => "every tenant".into(),
    };
    println!(
        "Loaded {} days of rates for {whom}: {} days held, {} to {}, currencies {}.",
        loaded.days_loaded,
        loaded.days_held,
        loaded.first_day.map_or("-".into(), |d| d.to_string()),
        loaded.last_day.map_or("-".into(), |d| d.to_string()),
        loaded.currencies.join(" "),
    );
    if !loaded.ignored.is_empty() {
        println!(
            "Skipped the columns of currencies ISO 4217 no longer lists: {}.",
            loaded.ignored.join(" ")
        );
    }
    Ok(())
}

/// `spendstream lake compact|vacuum`.
async fn lake(command: LakeCommand) -> anyhow::Result<()> {
    let open = |args: &spendstream::cli::LakeArgs| {
        let url = args.lake_url();
        async move {
            spendstream_lake::Lake::open_existing(&url, Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("{}", spendstream_schemas::error::Chain(&e)))
                .with_context(|| {
                    format!(
                        "cannot open the lake (--lake {})",
                        spendstream_lake::redact(&url)
                    )
                })
        }
    };
    match command {
        LakeCommand::Compact(args) => {
            let stats = open(&args).await?.compact().await.map_err(|e| {
                anyhow::anyhow!(
                    "compacting failed: {}",
                    spendstream_schemas::error::Chain(&e)
                )
            })?;
            println!(
                "Compacted {} partitions: {} files replaced by {}.",
                stats.partitions, stats.files_removed, stats.files_added
            );
            if stats.conflicts > 0 {
                println!(
                    "{} partitions were being compacted by another process; run again to retry them.",
                    stats.conflicts
                );
            }
        }
        LakeCommand::Vacuum(args) => {
            if args.retain < spendstream::app::MIN_VACUUM_RETAIN && !args.allow_short_retention {
                bail!(
                    "--retain under 1h can delete files a running query or an uncommitted write still needs; \
                     add --allow-short-retention if nothing uses the table"
                );
            }
            let stats = open(&args.lake)
                .await?
                .vacuum(args.retain, args.full, args.dry_run)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("vacuum failed: {}", spendstream_schemas::error::Chain(&e))
                })?;
            let verb = if stats.dry_run {
                "Would delete"
            } else {
                "Deleted"
            };
            println!("{verb} {} files.", stats.files.len());
            if stats.dry_run {
                for file in &stats.files {
                    println!("{file}");
                }
            }
        }
    }
    Ok(())
}

/// What only `up` does besides serving.
struct Up {
    demo: bool,
    /// Lifetime of the `demo` token it prints.
    token_ttl: Duration,
}

async fn serve(args: ServeArgs, roles: Roles, up: Option<Up>) -> anyhow::Result<()> {
    // Checked before the secret is loaded or made: a wrong setting must not
    // leave anything behind. The stand-in key is replaced below, unused.
    let stand_in = spendstream_http::JwtKeys::new(&[0; 32]).map_err(anyhow::Error::msg)?;
    let mut settings = Settings {
        roles,
        listen: args.listen,
        log_url: args.log_url(),
        log_options: args.kafka_options.clone(),
        log_unsafe_options: args.unsafe_kafka_options.clone(),
        lake_url: args.lake_url(),
        state_url: args.state_url(),
        jwks: args.jwt_jwks.clone(),
        rate_limits: spendstream_state::rate::Limits {
            requests_per_sec: args.rate_limit_requests_per_sec,
            records_per_sec: args.rate_limit_records_per_sec,
            burst_secs: args.rate_limit_burst_secs,
        },
        rate_limits_file: args.rate_limits_file.clone(),
        lake_options: spendstream_lake::LakeOptions {
            read_refresh: Duration::from_millis(args.lake_refresh_ms),
            checkpoint_interval: args.lake_checkpoint_interval,
            ..Default::default()
        },
        keys: stand_in,
        ingest: IngestConfig {
            max_body_bytes: args.max_body_bytes,
            max_decompressed_bytes: args.max_decompressed_bytes,
            max_record_bytes: args.max_record_bytes,
            max_rejected_listed: args.max_rejected_listed,
            max_concurrent_requests: args.max_concurrent_requests,
            max_concurrent_requests_per_tenant: args.max_concurrent_requests_per_tenant,
            body_idle_timeout: Duration::from_secs(args.body_idle_timeout_secs),
            body_timeout: Duration::from_secs(args.body_timeout_secs),
            body_min_bytes_per_sec: args.body_min_bytes_per_sec,
            append_timeout: Duration::from_secs(args.append_timeout_secs),
            ..IngestConfig::default()
        },
        processor: ProcessorConfig {
            group: args.group.clone(),
            max_batch_records: args.batch_max_records,
            max_batch_wait: Duration::from_millis(args.batch_max_wait_ms),
        },
        server: ServerLimits {
            header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
            max_connections: args.max_connections,
            drain_timeout: Duration::from_secs(args.shutdown_grace_secs),
        },
        operator_tenant: args.operator_tenant.clone(),
        sql_limits: spendstream_query_api::sql::SqlLimits {
            timeout: Duration::from_secs(args.sql_timeout_secs),
            memory_bytes: args.sql_memory_mb.saturating_mul(1 << 20),
            max_rows: args.sql_max_rows,
            ..Default::default()
        },
        report_cache_rows: args.report_cache_rows,
        report_state_rows: args.report_state_rows,
        pg_listen: args.pg_listen.0,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        clickhouse_url: args.clickhouse.clone(),
        clickhouse_user: std::env::var("SPENDSTREAM_CLICKHOUSE_USER").ok(),
        clickhouse_password: secret::clickhouse_password()?.map(spendstream::app::Password),
        migrate: args.migrate,
        compact_interval: Duration::from_secs(args.compact_interval_secs),
        base_currencies: spendstream_processors::transform::fx::BaseCurrencies {
            default: currency(&args.base_currency)?,
            tenants: args
                .tenant_base_currencies
                .iter()
                .map(|(t, c)| Ok((t.clone(), currency(c)?)))
                .collect::<anyhow::Result<_>>()?,
        },
        vacuum_retain: Duration::from_secs(args.vacuum_retain_hours.saturating_mul(3600)),
        log_retention: Duration::from_secs(args.log_retention_hours.saturating_mul(3600)),
    };
    settings.validate().map_err(anyhow::Error::msg)?;
    if up.as_ref().is_some_and(|up| up.token_ttl.is_zero()) {
        bail!("--token-ttl-hours must be at least 1");
    }
    let (keys, origin) = secret::load(&args.data_dir, up.is_some())?;
    let keys = keys
        .with_audience(args.jwt_audience.clone())
        .with_issuer(args.jwt_issuer.clone())
        .with_tenant_claim(&args.jwt_tenant_claim);
    settings.keys = keys.clone();
    let running = spendstream::start(settings).await?;
    let addr = running.addr;
    let https = running.https;
    if let Some(up) = &up {
        if origin == Origin::Created {
            println!(
                "Created a JWT secret in {}.",
                args.data_dir.join("jwt-secret").display()
            );
        }
        // A bearer token on every start would end up in container logs:
        // only when the secret is new (the first run) or a person watches.
        let fresh_or_watched = origin == Origin::Created || std::io::stdout().is_terminal();
        if fresh_or_watched && origin != Origin::Env && origin != Origin::File {
            let token = secret::mint(&keys, "demo", &[Role::Ingest, Role::Read], up.token_ttl);
            println!(
                "A token for tenant `demo` (roles ingest, read; {} hours):\n\nexport TOKEN={token}\n",
                up.token_ttl.as_secs() / 3600
            );
        }
    }
    // Always printed, last, with the bound address (so `--listen
    // 127.0.0.1:0` is usable by scripts and tests, which wait for it).
    println!(
        "Spendstream is up on {}://{addr} (data in {}).",
        if https { "https" } else { "http" },
        args.data_dir.display()
    );
    let Some(up) = up else {
        return wait_for_signal(running).await;
    };
    if up.demo {
        let token = secret::mint(
            &keys,
            "demo",
            &[Role::Ingest, Role::Read],
            Duration::from_secs(3600),
        );
        let stats = running
            .stats
            .clone()
            .context("the demo needs the processors")?;
        if let Err(e) = spendstream::demo::run(addr, &token, &stats).await {
            eprintln!("The demo failed: {e:#}");
        }
    }
    wait_for_signal(running).await
}

/// Runs until SIGINT or SIGTERM, then stops in order.
async fn wait_for_signal(running: spendstream::Running) -> anyhow::Result<()> {
    let stop = running.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Stopping.");
        stop.cancel();
    });
    running.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
