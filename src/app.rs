//! Starts the roles of Spendstream (ingest, processors, query) in this
//! process on one listener, and stops them in order.

use anyhow::Context;
use spendstream_http::JwtKeys;
use spendstream_http::ops::ReadyCheck;
use spendstream_ingest::{IngestConfig, IngestState};
use spendstream_lake::Lake;
use spendstream_log::Log;
use spendstream_processors::{Processor, ProcessorConfig, ProcessorStats};
use spendstream_query_api::QueryState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The OpenAPI document of every route (kept in `docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

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
    /// librdkafka properties for a Kafka log (ignored by the embedded one).
    pub log_options: Vec<(String, String)>,
    pub lake_url: String,
    pub keys: JwtKeys,
    pub ingest: IngestConfig,
    pub processor: ProcessorConfig,
    /// How often the lake is compacted (0: never).
    pub compact_interval: Duration,
    /// How long log records every group has processed are kept (embedded
    /// log; 0: forever).
    pub log_retention: Duration,
}

/// A started Spendstream.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    pub stats: Option<Arc<ProcessorStats>>,
    pub lake: Option<Arc<Lake>>,
    pub log: Option<Arc<dyn Log>>,
    stop: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// A token that stops everything when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until a task ends (it should not) or `stop` is cancelled, then
    /// stops the rest: the HTTP server drains, processors finish their batch.
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
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = flatten(done) {
                first_error.get_or_insert(e);
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
    let Settings {
        roles,
        listen,
        log_url,
        log_options,
        lake_url,
        keys,
        ingest,
        processor,
        compact_interval,
        log_retention,
    } = settings;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let log = if roles.ingest || roles.process {
        Some(
            spendstream_log::open_with(&log_url, &log_options)
                .await
                .with_context(|| format!("cannot open the log (--log {log_url})"))?,
        )
    } else {
        None
    };
    let lake = if roles.process || roles.query {
        Some(Arc::new(Lake::open(&lake_url).await.with_context(
            || format!("cannot open the lake (--lake {lake_url})"),
        )?))
    } else {
        None
    };

    let mut checks: Vec<(&'static str, ReadyCheck)> = Vec::new();
    let mut router = axum::Router::new();
    if let Some(log) = &log {
        let l = log.clone();
        checks.push((
            "log",
            Arc::new(move || {
                let l = l.clone();
                Box::pin(async move { l.ping().await.map_err(|e| e.to_string()) })
            }),
        ));
    }
    if let Some(lake) = &lake {
        let l = lake.clone();
        checks.push((
            "lake",
            Arc::new(move || {
                let l = l.clone();
                Box::pin(async move {
                    l.txn_version("readyz")
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        ));
    }
    if roles.ingest
        && let Some(log) = &log
    {
        router = router.merge(spendstream_ingest::router(IngestState::new(
            keys.clone(),
            log,
            ingest,
        )));
    }
    if roles.query
        && let Some(lake) = &lake
    {
        router = router.merge(spendstream_query_api::router(QueryState {
            keys: keys.clone(),
            lake: lake.clone(),
        }));
    }
    let router = router.route(
        "/v1/openapi.json",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                OPENAPI,
            )
        }),
    );
    let router = spendstream_http::finish(router.merge(spendstream_http::ops::router(checks)));

    let mut stats = None;
    if roles.process
        && let (Some(log), Some(lake)) = (&log, &lake)
    {
        let p = Processor::new(processor, log.clone(), lake.clone());
        stats = Some(p.stats());
        let processor_stop = stop.clone();
        tasks.spawn(async move {
            p.run_until_stopped(processor_stop)
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
                compact_periodically(lake, compact_interval, stop).await;
                Ok(())
            });
        }
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let addr = listener.local_addr()?;
    {
        let stop = stop.clone();
        tasks.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .context("the HTTP server failed")
        });
    }
    info!(%addr, ?roles, log = %log_url, lake = %lake_url, "Spendstream is listening.");
    Ok(Running {
        addr,
        stats,
        lake,
        log,
        stop,
        tasks,
    })
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
            Err(error) => warn!(error = %error, "Trimming the log failed; will try again."),
        }
    }
}

async fn compact_periodically(lake: Arc<Lake>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Files younger than an hour stay: a query may still be reading them.
        match lake.compact(Duration::from_secs(3600)).await {
            Ok(stats) => info!(
                files_added = stats.files_added,
                files_removed = stats.files_removed,
                "Compacted the lake."
            ),
            Err(error) => warn!(error = %error, "Compacting the lake failed; will try again."),
        }
    }
}
