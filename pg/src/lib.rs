//! The Postgres wire endpoint: the same tenant-scoped, read-only SQL as
//! `POST /v1/sql`, for BI tools and `psql`.
//!
//! Built on `datafusion-postgres`, which has no authentication and shares
//! one session across connections; here each connection is its own:
//! - the startup asks for a cleartext password, which is a Spendstream
//!   bearer token: it must verify, carry the `read` role, name the tenant
//!   the startup's `user` names, and the database must be `spendstream`
//!   (anything else ends the connection with `FATAL`, before any query);
//! - the connection gets the tenant's session (the three views over the lake
//!   and the catalogs, nothing else), rebuilt when the lake has moved, so a
//!   long-lived BI connection sees new data;
//! - a guard runs before every statement of both protocols: queries are
//!   planned and checked exactly as over HTTP (no DDL, DML, `COPY`, no
//!   scan but the views, `information_schema` and `pg_catalog`, no
//!   Cartesian join), `SET` may not touch engine options, and any other
//!   statement is refused;
//! - each statement runs within the time limit (SQLSTATE 57014), its
//!   operators within the session's memory pool;
//! - a connection must log in within [`LOGIN_TIMEOUT`], and a tenant holds
//!   at most [`MAX_CONNECTIONS_PER_TENANT`] of the endpoint's
//!   [`MAX_CONNECTIONS`] (SQLSTATE 53300 past it).
//!
//! With a certificate, connections must use TLS.

mod connections;
mod guard;
mod handlers;

use datafusion_postgres::pgwire;
use handlers::Handlers;
use spendstream_http::JwtKeys;
use spendstream_lake::Lake;
use spendstream_query_api::current::CurrentState;
use spendstream_query_api::sql::SqlLimits;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The database name clients must ask for.
pub const DATABASE: &str = "spendstream";

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Connections one tenant may hold at once (a quarter of the endpoint's).
pub const MAX_CONNECTIONS_PER_TENANT: usize = MAX_CONNECTIONS / 4;

/// Time from connecting to logging in; a connection still silent then is
/// closed, giving its slot back.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint serves and how.
#[derive(Clone)]
pub struct PgConfig {
    pub keys: JwtKeys,
    pub lake: Arc<Lake>,
    /// The reports' current state: sessions read `expenses_latest` as the
    /// lake minus the versions it knows are superseded.
    pub current: Option<Arc<CurrentState>>,
    pub limits: SqlLimits,
    /// With TLS (reloaded on change), plaintext connections are refused.
    pub tls: Option<spendstream_http::tls::Tls>,
}

/// Accepts connections on `listener` until `stop` is cancelled; each is
/// served on a task of its own.
pub async fn serve(listener: TcpListener, config: PgConfig, stop: CancellationToken) {
    let tls = config.tls.clone();
    let handlers = Arc::new(Handlers::new(config));
    let registry = handlers.registry();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: go on after a
                    // pause rather than spin.
                    tracing::warn!(error = %e, "Could not accept a Postgres connection.");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "Refused a Postgres connection: too many open.");
            continue;
        };
        let tls = tls.as_ref().map(spendstream_http::tls::Tls::acceptor);
        let (handlers, stop) = (handlers.clone(), stop.clone());
        let (open, logged_in) = registry.open(peer);
        tokio::spawn(async move {
            let (_slot, _open) = (slot, open);
            let served = pgwire::tokio::process_socket(socket, tls, handlers);
            tokio::pin!(served);
            let ended = |served: Result<(), std::io::Error>| {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "A Postgres connection ended with an error.");
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                result = &mut served => return ended(result),
                login = tokio::time::timeout(LOGIN_TIMEOUT, logged_in) => {
                    if !matches!(login, Ok(Ok(()))) {
                        tracing::warn!(%peer, timeout = ?LOGIN_TIMEOUT, "Closed a Postgres connection that did not log in in time.");
                        return;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                result = served => ended(result),
            }
        });
    }
}

/// The protocol Postgres clients that open TLS directly
/// (`sslnegotiation=direct`) ask for.
pub const ALPN: &[u8] = b"postgresql";
