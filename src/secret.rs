//! The JWT signing secret: from `SPENDSTREAM_JWT_SECRET`, from the file
//! `SPENDSTREAM_JWT_SECRET_FILE` names, or (single-machine use) created once
//! in the data directory.

use anyhow::{Context, bail};
use spendstream_http::{JwtKeys, Role};
use std::path::Path;

const FILE_NAME: &str = "jwt-secret";

/// Where the secret came from, so `up` can say whether it made one.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    Env,
    File,
    Created,
    DataDir,
}

/// Loads the secret; with `create`, makes one in `data_dir` when none is set.
pub fn load(data_dir: &Path, create: bool) -> anyhow::Result<(JwtKeys, Origin)> {
    if let Ok(secret) = std::env::var("SPENDSTREAM_JWT_SECRET") {
        let keys = JwtKeys::new(secret.trim().as_bytes())
            .map_err(anyhow::Error::msg)
            .context("SPENDSTREAM_JWT_SECRET")?;
        return Ok((keys, Origin::Env));
    }
    if let Ok(path) = std::env::var("SPENDSTREAM_JWT_SECRET_FILE") {
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("SPENDSTREAM_JWT_SECRET_FILE: cannot read {path}"))?;
        let keys = JwtKeys::new(secret.trim().as_bytes())
            .map_err(anyhow::Error::msg)
            .context("SPENDSTREAM_JWT_SECRET_FILE")?;
        return Ok((keys, Origin::File));
    }
    let path = data_dir.join(FILE_NAME);
    if path.exists() {
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let keys = JwtKeys::new(secret.trim().as_bytes()).map_err(anyhow::Error::msg)?;
        return Ok((keys, Origin::DataDir));
    }
    if !create {
        bail!(
            "no JWT secret: set SPENDSTREAM_JWT_SECRET (or SPENDSTREAM_JWT_SECRET_FILE), or run `spendstream up` once to create {}",
            path.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, &secret)?;
    let keys = JwtKeys::new(secret.as_bytes()).map_err(anyhow::Error::msg)?;
    Ok((keys, Origin::Created))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot create {}", path.display()))
}

/// Mints a token for `tenant` with `roles`, valid for `ttl`. `claims_for`
/// adds `iat` and the keys' audience and issuer, so the token passes the
/// same keys' checks.
pub fn mint(keys: &JwtKeys, tenant: &str, roles: &[Role], ttl: std::time::Duration) -> String {
    keys.sign(&claims(keys, tenant, roles, ttl))
}

/// The claims [`mint`] signs (with a fresh `jti`).
pub fn claims(
    keys: &JwtKeys,
    tenant: &str,
    roles: &[Role],
    ttl: std::time::Duration,
) -> spendstream_http::Claims {
    // A ttl past `i64::MAX` seconds means "never expires"; `claims_for`
    // saturates the sum with `now` the same way.
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let now = chrono::Utc::now().timestamp();
    keys.claims_for(tenant, roles, ttl_secs, now)
}

/// The ClickHouse password: `SPENDSTREAM_CLICKHOUSE_PASSWORD`, or the file
/// `SPENDSTREAM_CLICKHOUSE_PASSWORD_FILE` names (trailing newline dropped).
pub fn clickhouse_password() -> anyhow::Result<Option<String>> {
    if let Ok(password) = std::env::var("SPENDSTREAM_CLICKHOUSE_PASSWORD") {
        return Ok(Some(password));
    }
    match std::env::var("SPENDSTREAM_CLICKHOUSE_PASSWORD_FILE") {
        Ok(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("SPENDSTREAM_CLICKHOUSE_PASSWORD_FILE: cannot read {path}")
            })?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
        }
        Err(_) => Ok(None),
    }
}
