//! `spendstream`: parses configuration and starts the requested roles.

use anyhow::{Context, bail};
use clap::Parser;
use spendstream::cli::{Cli, Command, LogFormat, ServeArgs};
use spendstream::secret::{self, Origin};
use spendstream::{Roles, Settings};
use spendstream_http::Role;
use spendstream_ingest::IngestConfig;
use spendstream_processors::ProcessorConfig;
use std::io::IsTerminal;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SPENDSTREAM_LOG_LEVEL")
        .unwrap_or_else(|_| EnvFilter::new(
            "info,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn,delta_kernel=warn,datafusion=warn",
        ));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line that names the setting and the cause.
            eprintln!("spendstream: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => {
            let demo = args.demo;
            serve(args.serve, Roles::ALL, true, demo).await
        }
        Command::Ingest(args) => serve(args, Roles::INGEST, false, false).await,
        Command::Process(args) => serve(args, Roles::PROCESS, false, false).await,
        Command::Query(args) => serve(args, Roles::QUERY, false, false).await,
        Command::Token(args) => {
            let (keys, _) = secret::load(&args.data_dir, false)?;
            let roles = args
                .roles
                .iter()
                .map(|r| r.parse::<Role>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("--role")?;
            if !spendstream_schemas::valid_tenant_id(&args.tenant) {
                bail!("--tenant must be 1 to 64 of A-Z a-z 0-9 _ . -");
            }
            println!(
                "{}",
                secret::mint(
                    &keys,
                    &args.tenant,
                    &roles,
                    chrono::Duration::days(args.ttl_days)
                )
            );
            Ok(())
        }
    }
}

async fn serve(
    args: ServeArgs,
    roles: Roles,
    create_secret: bool,
    demo: bool,
) -> anyhow::Result<()> {
    let (keys, origin) = secret::load(&args.data_dir, create_secret)?;
    let settings = Settings {
        roles,
        listen: args.listen,
        log_url: args.log_url(),
        log_options: args.kafka_options.clone(),
        lake_url: args.lake_url(),
        keys: keys.clone(),
        ingest: IngestConfig {
            max_body_bytes: args.max_body_bytes,
            ..IngestConfig::default()
        },
        processor: ProcessorConfig {
            group: args.group.clone(),
            max_batch_records: args.batch_max_records.max(1),
            max_batch_wait: Duration::from_millis(args.batch_max_wait_ms),
        },
        compact_interval: Duration::from_secs(args.compact_interval_secs),
        log_retention: Duration::from_secs(args.log_retention_hours * 3600),
    };
    let running = spendstream::start(settings).await?;
    let addr = running.addr;
    // Always printed, with the bound address (so `--listen 127.0.0.1:0`
    // is usable by scripts and tests).
    println!(
        "Spendstream is up on http://{addr} (data in {}).",
        args.data_dir.display()
    );
    if create_secret && origin != Origin::Env && origin != Origin::File {
        let token = secret::mint(
            &keys,
            "demo",
            &[Role::Ingest, Role::Read],
            chrono::Duration::days(30),
        );
        if origin == Origin::Created {
            println!(
                "Created a JWT secret in {}.",
                args.data_dir.join("jwt-secret").display()
            );
        }
        println!(
            "A token for tenant `demo` (roles ingest, read; 30 days):\n\nexport TOKEN={token}\n"
        );
    }
    if demo {
        let token = secret::mint(
            &keys,
            "demo",
            &[Role::Ingest, Role::Read],
            chrono::Duration::hours(1),
        );
        let stats = running
            .stats
            .clone()
            .context("the demo needs the processors")?;
        if let Err(e) = spendstream::demo::run(addr, &token, &stats).await {
            eprintln!("The demo failed: {e:#}");
        }
    }
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
