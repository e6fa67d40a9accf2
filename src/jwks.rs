//! The identity provider's public keys (`--jwt-jwks`): a JWKS file, or the
//! provider's JWKS URL, read at start-up and again when it changes, so a
//! rotated key is accepted without a restart (ADR 0012).

use anyhow::Context as _;
use spendstream_http::auth::{Jwks, KeySet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a JWKS file is read again (it is small; comparing its bytes
/// also catches a rewrite within one mtime tick); a URL is looked at as
/// often, to see whether it is due.
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
        crate::reload::read_file(source.to_owned()).await
    }
}

/// Whether `source` may be read: a file, an `https://` URL, or plain
/// `http://` to a loopback address only (anyone on the path of a plain
/// fetch could publish keys and sign tokens for any tenant).
pub fn check(source: &str) -> Result<(), String> {
    let Some(rest) = source.strip_prefix("http://") else {
        return Ok(());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    if matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
        Ok(())
    } else {
        Err(format!(
            "--jwt-jwks {source}: fetch the JWKS over https:// (plain http only from a loopback address)"
        ))
    }
}

/// Reads and parses `source` once (at start-up: an error stops the start).
pub async fn load(source: &str) -> anyhow::Result<(KeySet, Vec<u8>)> {
    check(source).map_err(anyhow::Error::msg)?;
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
pub async fn follow(source: String, loaded: Vec<u8>, jwks: Jwks, stop: CancellationToken) {
    let url = is_url(&source);
    let mut fetched = Instant::now();
    let keys = jwks.clone();
    let due = move || {
        if !url {
            return true;
        }
        let since = fetched.elapsed();
        let rotated = since >= URL_ON_UNKNOWN_KID && jwks.take_unknown_kid();
        if rotated || since >= URL_EVERY {
            fetched = Instant::now();
            return true;
        }
        false
    };
    let doc = crate::reload::Followed {
        what: "JWKS",
        stage: "jwks",
        source,
        loaded,
        read: |source: String| async move { read(&source).await },
        apply: |bytes: &[u8]| KeySet::parse(bytes).map(|set| keys.replace(set)),
    };
    crate::reload::follow(doc, FILE_EVERY, due, stop).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_only_from_loopback() {
        for ok in [
            "/etc/spendstream/jwks.json",
            "https://id.example.com/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ] {
            assert!(super::check(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://id.example.com/jwks",
            "http://127.0.0.1.evil.example/jwks",
        ] {
            assert!(super::check(bad).is_err(), "{bad}");
        }
    }
}
