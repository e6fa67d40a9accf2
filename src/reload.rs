//! A document read again while the process runs (the JWKS, the rate limits
//! file): applied when its bytes change; one that cannot be read or used
//! leaves the previous one in force.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where a document comes from and what to do with it.
pub struct Followed<R, A> {
    /// What it is, for log lines ("the JWKS").
    pub what: &'static str,
    /// The `stage` of `spendstream_errors_total` its failures count under.
    pub stage: &'static str,
    /// Its path or URL.
    pub source: String,
    /// The bytes in force (read at start-up).
    pub loaded: Vec<u8>,
    /// Reads `source`.
    pub read: R,
    /// Puts changed bytes in force, or says why they cannot be.
    pub apply: A,
}

/// Every `every`, reads the document when `due()` says so, and applies it
/// when it changed, until `stop`. Failures are counted, and logged once
/// per run of failures.
pub async fn follow<R, Fut, A>(
    mut doc: Followed<R, A>,
    every: Duration,
    mut due: impl FnMut() -> bool,
    stop: CancellationToken,
) where
    R: Fn(String) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<u8>>>,
    A: Fn(&[u8]) -> Result<(), String>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !due() {
            continue;
        }
        let (kind, error) = match (doc.read)(doc.source.clone()).await {
            Ok(bytes) if bytes == doc.loaded => {
                failing = false;
                continue;
            }
            Ok(bytes) => match (doc.apply)(&bytes) {
                Ok(()) => {
                    info!(source = %doc.source, "Loaded the changed {}.", doc.what);
                    doc.loaded = bytes;
                    failing = false;
                    continue;
                }
                // A half-written file: tried again next time.
                Err(e) => ("invalid", e),
            },
            Err(e) => ("read", format!("{e:#}")),
        };
        spendstream_schemas::metrics::error(doc.stage, kind);
        if !failing {
            warn!(source = %doc.source, error = %error, "The {} cannot be used; the previous one stays in force.", doc.what);
        }
        failing = true;
    }
}

/// A file's bytes.
pub async fn read_file(path: String) -> anyhow::Result<Vec<u8>> {
    Ok(tokio::fs::read(path).await?)
}
