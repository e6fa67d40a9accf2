//! Knowing when a log's SQLite files are closed. A blocking task keeps its
//! connection after the future that awaited it is dropped (a processor
//! stopping mid-read), so dropping the log's handles is not enough: a copy
//! of the directory taken then could miss a write-ahead file SQLite has not
//! folded in yet.

use futures::future::BoxFuture;
use rusqlite::Connection;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// What holds one log's files open: every [`Held`] connection of it.
#[derive(Clone)]
pub(crate) struct OpenFiles(Arc<watch::Sender<()>>);

impl OpenFiles {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(()).0))
    }

    /// Wraps a connection to this log's files.
    pub fn hold(&self, conn: Connection) -> Held {
        Held {
            conn: Mutex::new(conn),
            _open: Some(self.0.subscribe()),
        }
    }

    /// Resolves once every connection [`OpenFiles::hold`] wrapped is
    /// dropped (at once if none is left).
    pub fn closed(&self) -> BoxFuture<'static, ()> {
        let sender = self.0.clone();
        Box::pin(async move { sender.closed().await })
    }
}

/// A connection, shared by blocking tasks, that counts as holding its log
/// open while it lives.
pub(crate) struct Held {
    conn: Mutex<Connection>,
    _open: Option<watch::Receiver<()>>,
}

impl Held {
    /// A connection no one waits on (the Kafka backend's local index).
    pub fn untracked(conn: Connection) -> Self {
        Self {
            conn: Mutex::new(conn),
            _open: None,
        }
    }

    /// The connection; a panic in an earlier holder does not make it
    /// unusable (SQLite rolled back whatever that holder left open).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}
