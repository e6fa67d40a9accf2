//! How every SQLite file of Spendstream is opened and its errors judged
//! (the embedded state here, the embedded log and dead-letter indexes in
//! the log crate).

use rusqlite::Connection;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Opens a SQLite file the way every store needs it.
pub fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsynced at every commit; an acknowledged write
    // survives power loss, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Whether the same statement may succeed later (busy, locked, out of disk
/// or memory), as opposed to a mistake no retry fixes.
pub fn is_transient(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match error {
        rusqlite::Error::SqliteFailure(e, _) => matches!(
            e.code,
            C::DatabaseBusy | C::DatabaseLocked | C::DiskFull | C::SystemIoFailure | C::OutOfMemory
        ),
        _ => false,
    }
}
