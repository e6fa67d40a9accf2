//! The identity provider's public keys (`--jwt-jwks`): a JWKS file, or the
//! provider's JWKS URL, read at start-up and again when it changes, so a
//! rotated key is accepted without a restart (ADR 0012).

use anyhow::Context as _;
use spendstream_http::auth::{Jwks, KeySet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a JWKS file is read again (it is small; comparing its bytes
/// also catches a rewrite within one mtime tick).
pub const FILE_EVERY: Duration = Duration::from_secs(2);
/// How often a JWKS URL is fetched again.
pub const URL_EVERY: Duration = Duration::from_secs(300);
/// How soon a URL is fetched again after a token named an unknown `kid`
/// (the provider may have rotated): no more often than this.
pub const URL_ON_UNKNOWN_KID: Duration = Duration::from_secs(10);
/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

fn is_url(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

/// The document's bytes.
async fn read(source: &str) -> anyhow::Result<Vec<u8>> {
    if is_url(source) {
        let response = reqwest::Client::new()
            .get(source)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await?
            .error_for_status()?;
        Ok(response.bytes().await?.to_vec())
    } else {
        Ok(tokio::fs::read(source).await?)
    }
}

/// Reads and parses `source` once (at start-up: an error stops the start).
pub async fn load(source: &str) -> anyhow::Result<(KeySet, Vec<u8>)> {
    let bytes = read(source)
        .await
        .with_context(|| format!("cannot read the JWKS (--jwt-jwks {source})"))?;
    let set = KeySet::parse(&bytes)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot use the JWKS (--jwt-jwks {source})"))?;
    Ok((set, bytes))
}

/// Reads `source` again (a file every [`FILE_EVERY`]; a URL every
/// [`URL_EVERY`], or [`URL_ON_UNKNOWN_KID`] after a token named a key the
/// set lacks) and replaces `jwks` when the document changed. A document
/// that cannot be read or used leaves the previous keys in force.
pub async fn follow(source: String, mut loaded: Vec<u8>, jwks: Jwks, stop: CancellationToken) {
    let mut every = tokio::time::interval(FILE_EVERY.min(URL_ON_UNKNOWN_KID));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fetched = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if is_url(&source) {
            let since = fetched.elapsed();
            let rotated = since >= URL_ON_UNKNOWN_KID && jwks.take_unknown_kid();
            if !rotated && since < URL_EVERY {
                continue;
            }
            fetched = Instant::now();
        }
        let bytes = match read(&source).await {
            Ok(bytes) if bytes == loaded => {
                failing = false;
                continue;
            }
            Ok(bytes) => bytes,
            Err(e) => {
                spendstream_schemas::metrics::error("jwks", "read");
                if !failing {
                    warn!(jwks = %source, error = %e, "Reading the JWKS failed; its previous keys stay in force.");
                }
                failing = true;
                continue;
            }
        };
        match KeySet::parse(&bytes) {
            Ok(set) => {
                info!(jwks = %source, keys = set.len(), "Loaded the changed JWKS.");
                jwks.replace(set);
                loaded = bytes;
                failing = false;
            }
            // A half-written file: tried again next time.
            Err(e) => {
                spendstream_schemas::metrics::error("jwks", "invalid");
                if !failing {
                    warn!(jwks = %source, error = %e, "The JWKS changed but cannot be used; its previous keys stay in force.");
                }
                failing = true;
            }
        }
    }
}
