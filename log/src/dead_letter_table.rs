//! Dead letters in a SQLite table: the embedded log's store itself, and the
//! Kafka backend's on-disk index of its dead-letter topic (so listing never
//! needs every letter in memory).

use crate::open_files::Held;
use crate::{DeadLetter, Error, LetterScope, Position, Replayed, Result, StoredDeadLetter};
use rusqlite::{Connection, params};
use spendstream_state::sqlite::now_ms;
use std::sync::Arc;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT,
    group_name TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    replayed_at INTEGER,
    replay_partition INTEGER,
    replay_offset INTEGER,
    UNIQUE (group_name, partition, offset)
);
CREATE INDEX IF NOT EXISTS dead_letters_by_tenant ON dead_letters (tenant_id, id);
";

/// One letter to insert: its id when the caller assigns them (the Kafka
/// index uses the letter's place in the topic), and when it was made.
pub(crate) struct Row {
    pub id: Option<i64>,
    pub created_at_ms: i64,
    pub letter: DeadLetter,
}

/// The `dead_letters` table of one SQLite database.
#[derive(Clone)]
pub(crate) struct DeadLetterTable {
    conn: Arc<Held>,
}

impl DeadLetterTable {
    /// Wraps a connection whose database has [`SCHEMA`] applied.
    pub fn new(conn: Held) -> Self {
        Self {
            conn: Arc::new(conn),
        }
    }

    /// Runs `f` on the connection in a blocking task.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock())).await?
    }

    /// Inserts letters; one already stored for the same (group, partition,
    /// offset) is kept and the new copy ignored.
    pub fn insert(conn: &Connection, rows: &[Row]) -> Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT OR IGNORE INTO dead_letters
             (id, tenant_id, group_name, partition, offset, code, message, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for row in rows {
            let l = &row.letter;
            stmt.execute(params![
                row.id,
                l.tenant_id,
                l.group,
                l.partition,
                l.offset,
                l.code,
                l.message,
                l.payload,
                row.created_at_ms
            ])?;
        }
        Ok(())
    }

    pub async fn put(&self, letters: Vec<DeadLetter>) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let created_at_ms = now_ms();
        let rows: Vec<Row> = letters
            .into_iter()
            .map(|letter| Row {
                id: None,
                created_at_ms,
                letter,
            })
            .collect();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            Self::insert(&tx, &rows)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn list(
        &self,
        scope: LetterScope<'_>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>> {
        let tenant = match scope {
            LetterScope::Tenant(t) => Some(t.to_string()),
            LetterScope::Unattributed => None,
        };
        self.with(move |conn| {
            select(
                conn,
                "tenant_id IS ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                tenant.as_deref(),
                after_id,
                limit as i64,
            )
        })
        .await
    }

    pub async fn get(&self, tenant_id: &str, id: i64) -> Result<Option<StoredDeadLetter>> {
        let tenant = tenant_id.to_string();
        self.with(move |conn| {
            Ok(select(
                conn,
                "tenant_id = ?1 AND id = ?2 AND ?3 = 1",
                Some(&tenant),
                id,
                1,
            )?
            .pop())
        })
        .await
    }

    /// Records a replay (the first one wins: a letter is replayed once).
    pub fn set_replayed(
        conn: &Connection,
        tenant_id: &str,
        id: i64,
        at_ms: i64,
        position: Position,
    ) -> Result<()> {
        conn.execute(
            "UPDATE dead_letters SET replayed_at = ?3, replay_partition = ?4, replay_offset = ?5
             WHERE tenant_id = ?1 AND id = ?2 AND replayed_at IS NULL",
            params![tenant_id, id, at_ms, position.partition, position.offset],
        )?;
        Ok(())
    }

    pub async fn mark_replayed(&self, tenant_id: &str, id: i64, position: Position) -> Result<()> {
        let tenant = tenant_id.to_string();
        self.with(move |conn| Self::set_replayed(conn, &tenant, id, now_ms(), position))
            .await
    }
}

/// Letters matching `filter` (SQL over `?1` tenant, `?2`, `?3`; trusted text
/// from this module only).
fn select(
    conn: &Connection,
    filter: &'static str,
    tenant: Option<&str>,
    a: i64,
    b: i64,
) -> Result<Vec<StoredDeadLetter>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, created_at, tenant_id, group_name, partition, offset, code, message,
                payload, replayed_at, replay_partition, replay_offset
         FROM dead_letters WHERE {filter}"
    ))?;
    let rows = stmt.query_map(params![tenant, a, b], |r| {
        let replayed = match (r.get::<_, Option<i64>>(9)?, r.get(10)?, r.get(11)?) {
            (Some(at_ms), Some(partition), Some(offset)) => Some(Replayed {
                at_ms,
                position: Position { partition, offset },
            }),
            _ => None,
        };
        Ok(StoredDeadLetter {
            id: r.get(0)?,
            created_at_ms: r.get(1)?,
            letter: DeadLetter {
                tenant_id: r.get(2)?,
                group: r.get(3)?,
                partition: r.get(4)?,
                offset: r.get(5)?,
                code: r.get(6)?,
                message: r.get(7)?,
                payload: r.get(8)?,
            },
            replayed,
        })
    })?;
    rows.collect::<Result<Vec<_>, _>>().map_err(Error::from)
}
