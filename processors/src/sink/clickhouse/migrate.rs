//! Applies the ClickHouse migrations of `spendstream_schemas::clickhouse`:
//! creates the database and the `schema_migrations` table, runs each
//! pending migration's (idempotent) statements and records it. Two
//! processes migrating at once both run the same `IF NOT EXISTS`
//! statements and record the same rows, which the table's engine folds: the
//! result is the same as one run.

use crate::{Error, Result};
use backon::{ExponentialBuilder, Retryable};
use clickhouse::Row;
use serde::Deserialize;
use spendstream_schemas::clickhouse::{
    MIGRATIONS_TABLE, Migration, create_migrations_table, migrations,
};
use std::collections::BTreeMap;
use std::time::Duration;

use super::ClickHouseConfig;

/// What a migration run found, or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions already recorded.
    pub applied: Vec<u32>,
    /// Migrations not recorded yet (applied now, unless a dry run).
    pub pending: Vec<Migration>,
}

#[derive(Row, Deserialize)]
struct Recorded {
    version: u32,
    checksum: String,
}

/// Whether a table exists (binds: database, table).
pub(super) const EXISTS_SQL: &str =
    "SELECT count() AS n FROM system.tables WHERE database = ? AND name = ?";
/// Binds: version, name, checksum.
pub(super) const RECORD_SQL: &str =
    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, now())";

/// The recorded migrations, the newest record of each.
pub(super) fn recorded_sql() -> String {
    format!(
        "SELECT version, argMax(checksum, applied_at) AS checksum FROM {MIGRATIONS_TABLE} GROUP BY version"
    )
}

/// The recorded migrations (empty when the table or database is missing).
async fn recorded(config: &ClickHouseConfig) -> Result<BTreeMap<u32, String>> {
    #[derive(Row, Deserialize)]
    struct Exists {
        n: u64,
    }
    let exists = config
        .server_client()
        .query(EXISTS_SQL)
        .bind(config.database.as_str())
        .bind(MIGRATIONS_TABLE)
        .fetch_one::<Exists>()
        .await?;
    if exists.n == 0 {
        return Ok(BTreeMap::new());
    }
    let rows = config
        .client()
        .query(&recorded_sql())
        .fetch_all::<Recorded>()
        .await?;
    Ok(rows.into_iter().map(|r| (r.version, r.checksum)).collect())
}

/// Compares the database with the migrations this build knows. A recorded
/// migration whose statements changed since is an error: it will not be
/// applied again, and the database differs from what the code expects.
pub async fn status(config: &ClickHouseConfig) -> Result<MigrationReport> {
    let recorded = recorded(config).await?;
    let mut pending = Vec::new();
    for migration in migrations() {
        match recorded.get(&migration.version) {
            Some(checksum) if *checksum != migration.checksum() => {
                return Err(Error::MigrationChanged {
                    version: migration.version,
                    name: migration.name,
                });
            }
            Some(_) => {}
            None => pending.push(migration),
        }
    }
    let known = migrations().len() as u32;
    if let Some(newer) = recorded.keys().find(|v| **v > known) {
        return Err(Error::MigrationsAhead {
            version: *newer,
            known,
        });
    }
    Ok(MigrationReport {
        applied: recorded.keys().copied().collect(),
        pending,
    })
}

/// Runs the statements of `migration`, in order.
async fn apply(client: &clickhouse::Client, migration: &Migration) -> Result<()> {
    for statement in &migration.statements {
        match client.query(statement).execute().await {
            Ok(()) => {}
            // 18.16 has no `ADD COLUMN IF NOT EXISTS`: a column another run
            // (or a run that stopped midway) added is done. (Code 44,
            // "column with this name already exists", on 18.16 and current
            // servers alike.)
            Err(e)
                if statement.contains(" ADD COLUMN ")
                    && e.to_string().contains("Code: 44")
                    && e.to_string().contains("already exists") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Applies the pending migrations, in order; with `dry_run`, only reports
/// them.
pub async fn migrate(config: &ClickHouseConfig, dry_run: bool) -> Result<MigrationReport> {
    if !dry_run {
        config
            .server_client()
            .query(&format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                config.database
            ))
            .execute()
            .await?;
        config
            .client()
            .query(&create_migrations_table())
            .execute()
            .await?;
    }
    let report = status(config).await?;
    if dry_run {
        return Ok(report);
    }
    let client = config.client();
    for migration in &report.pending {
        // A migration that makes views again (drop, then create) can meet
        // another process doing the same: a view it creates finds the one
        // it reads dropped a moment ago (code 60). Its statements are
        // idempotent, so it runs again, whole, until a pass meets no one.
        (|| apply(&client, migration))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_times(8)
                    .with_jitter(),
            )
            .when(
                |e| matches!(e, Error::ClickHouse(inner) if inner.to_string().contains("Code: 60")),
            )
            .await?;
        client
            .query(RECORD_SQL)
            .bind(migration.version)
            .bind(migration.name)
            .bind(migration.checksum())
            .execute()
            .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "Applied a ClickHouse migration."
        );
    }
    Ok(report)
}
