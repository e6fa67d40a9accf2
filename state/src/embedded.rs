//! The embedded backend: one SQLite file under the data directory.

use crate::sqlite::{connect, now_ms};
use crate::{
    BATCH_RETENTION, BatchRecord, BatchStore, Claim, FxStore, IDEMPOTENCY_RETENTION,
    IdempotencyStore, Result, Revocation, RevocationStore,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency (
    tenant_id TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    fingerprint TEXT,
    status INTEGER,
    body BLOB,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (updated_at);
CREATE TABLE IF NOT EXISTS batches (
    tenant_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    record TEXT NOT NULL,
    answered_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, batch_id)
);
CREATE INDEX IF NOT EXISTS batches_by_age ON batches (answered_at);
CREATE TABLE IF NOT EXISTS fx_rates (
    scope TEXT PRIMARY KEY,
    csv TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    tenant_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, jti)
);
";

/// The state in one SQLite database (WAL, `synchronous=FULL`): for one
/// machine, where every ingest process opens the same file.
#[derive(Clone)]
pub struct SqliteState {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteState")
    }
}

impl SqliteState {
    /// Opens (creating if needed) the store in the database file `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let conn = connect(&path)?;
            conn.execute_batch(SCHEMA)?;
            Ok(Self {
                conn: Arc::new(Mutex::new(conn)),
            })
        })
        .await?
    }
}

#[async_trait]
impl IdempotencyStore for SqliteState {
    async fn claim(
        &self,
        tenant: &str,
        key: &str,
        owner: &str,
        stale_after: Duration,
    ) -> Result<Claim> {
        let conn = self.conn.clone();
        let (tenant, key, owner) = (tenant.to_string(), key.to_string(), owner.to_string());
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            // Forget completed keys past retention (cheap with the index).
            tx.execute(
                "DELETE FROM idempotency WHERE updated_at < ?1",
                [now - IDEMPOTENCY_RETENTION.as_millis() as i64],
            )?;
            let row: Option<(String, Option<String>, Option<u16>, Option<Vec<u8>>, i64)> = tx
                .query_row(
                    "SELECT state, fingerprint, status, body, updated_at FROM idempotency
                     WHERE tenant_id = ?1 AND key = ?2",
                    params![tenant, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let claim = match row {
                Some((state, Some(fingerprint), Some(status), Some(body), _))
                    if state == "done" =>
                {
                    Claim::Completed {
                        fingerprint,
                        status,
                        body,
                    }
                }
                Some((_, _, _, _, updated)) if now - updated < stale_after.as_millis() as i64 => {
                    Claim::InProgress
                }
                _ => {
                    tx.execute(
                        "INSERT INTO idempotency (tenant_id, key, state, owner, updated_at)
                         VALUES (?1, ?2, 'running', ?3, ?4)
                         ON CONFLICT (tenant_id, key) DO UPDATE SET
                           state = 'running', owner = excluded.owner, fingerprint = NULL,
                           status = NULL, body = NULL, updated_at = excluded.updated_at",
                        params![tenant, key, owner, now],
                    )?;
                    Claim::Acquired
                }
            };
            tx.commit()?;
            Ok(claim)
        })
        .await?
    }

    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        owner: &str,
        fingerprint: &str,
        status: u16,
        body: &[u8],
    ) -> Result<()> {
        let conn = self.conn.clone();
        let (tenant, key, owner, fingerprint, body) = (
            tenant.to_string(),
            key.to_string(),
            owner.to_string(),
            fingerprint.to_string(),
            body.to_vec(),
        );
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute(
                "UPDATE idempotency SET state = 'done', fingerprint = ?4, status = ?5, body = ?6,
                   updated_at = ?7
                 WHERE tenant_id = ?1 AND key = ?2 AND state = 'running' AND owner = ?3",
                params![tenant, key, owner, fingerprint, status, body, now_ms()],
            )?;
            Ok(())
        })
        .await?
    }

    async fn release(&self, tenant: &str, key: &str, owner: &str) -> Result<()> {
        let conn = self.conn.clone();
        let (tenant, key, owner) = (tenant.to_string(), key.to_string(), owner.to_string());
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute(
                "DELETE FROM idempotency
                 WHERE tenant_id = ?1 AND key = ?2 AND state = 'running' AND owner = ?3",
                params![tenant, key, owner],
            )?;
            Ok(())
        })
        .await?
    }
}

#[async_trait]
impl RevocationStore for SqliteState {
    async fn revoke(&self, revocation: &Revocation) -> Result<()> {
        let conn = self.conn.clone();
        let r = revocation.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute(
                "INSERT INTO revocations (tenant_id, jti, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id, jti) DO UPDATE SET expires_at = excluded.expires_at",
                params![r.tenant, r.jti, r.expires_at],
            )?;
            Ok(())
        })
        .await?
    }

    async fn revoked(&self, now: i64) -> Result<Vec<Revocation>> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute("DELETE FROM revocations WHERE expires_at <= ?1", [now])?;
            let mut stmt = conn.prepare_cached(
                "SELECT tenant_id, jti, expires_at FROM revocations ORDER BY tenant_id, jti",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Revocation {
                    tenant: r.get(0)?,
                    jti: r.get(1)?,
                    expires_at: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?
    }
}

#[async_trait]
impl BatchStore for SqliteState {
    async fn put_batch(&self, batch: &BatchRecord) -> Result<()> {
        let conn = self.conn.clone();
        let batch = batch.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            let now = now_ms();
            // Forget batches past retention (cheap with the index).
            conn.execute(
                "DELETE FROM batches WHERE answered_at < ?1",
                [now - BATCH_RETENTION.as_millis() as i64],
            )?;
            conn.execute(
                "INSERT INTO batches (tenant_id, batch_id, record, answered_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id, batch_id) DO UPDATE SET record = excluded.record, answered_at = excluded.answered_at",
                params![
                    batch.tenant,
                    batch.batch_id,
                    serde_json::to_string(&batch).unwrap_or_default(),
                    batch.answered_at_ms
                ],
            )?;
            Ok(())
        })
        .await?
    }

    async fn batch(&self, tenant: &str, batch_id: &str) -> Result<Option<BatchRecord>> {
        let conn = self.conn.clone();
        let (tenant, batch_id) = (tenant.to_string(), batch_id.to_string());
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            let record: Option<String> = conn
                .query_row(
                    "SELECT record FROM batches WHERE tenant_id = ?1 AND batch_id = ?2 AND answered_at >= ?3",
                    params![tenant, batch_id, now_ms() - BATCH_RETENTION.as_millis() as i64],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(record.and_then(|r| serde_json::from_str(&r).ok()))
        })
        .await?
    }
}

#[async_trait]
impl FxStore for SqliteState {
    async fn put_fx_rates(&self, scope: &str, csv: &str) -> Result<()> {
        let conn = self.conn.clone();
        let (scope, csv) = (scope.to_string(), csv.to_string());
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute(
                "INSERT INTO fx_rates (scope, csv, version)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(version), 0) + 1 FROM fx_rates))
                 ON CONFLICT (scope) DO UPDATE SET csv = excluded.csv, version = excluded.version",
                params![scope, csv],
            )?;
            Ok(())
        })
        .await?
    }

    async fn fx_rates(&self, scope: &str) -> Result<Option<String>> {
        let conn = self.conn.clone();
        let scope = scope.to_string();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            Ok(conn
                .query_row("SELECT csv FROM fx_rates WHERE scope = ?1", [scope], |r| {
                    r.get(0)
                })
                .optional()?)
        })
        .await?
    }

    async fn fx_version(&self) -> Result<u64> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            let version: i64 =
                conn.query_row("SELECT COALESCE(MAX(version), 0) FROM fx_rates", [], |r| {
                    r.get(0)
                })?;
            Ok(version.max(0) as u64)
        })
        .await?
    }
}
