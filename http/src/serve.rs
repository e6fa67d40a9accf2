//! The HTTP server: an axum router on hyper's HTTP/1.1 server with the
//! limits `axum::serve` does not set. A client that sends nothing, sends its
//! request head slowly, or idles on a keep-alive connection is cut off after
//! `header_read_timeout` (the timer starts as soon as the server waits for a
//! head: HTTP/1 only, because protocol sniffing for HTTP/2 would wait for
//! bytes without a timer); past `max_connections` (never more than the
//! process may open files for) new connections are closed at once instead
//! of piling up; shutdown lets requests in flight finish, up to
//! `drain_timeout`.

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tower::Layer as _;

/// The router with the connection's peer address as `ConnectInfo`.
type PeerRouter =
    axum::middleware::AddExtension<axum::Router, axum::extract::ConnectInfo<std::net::SocketAddr>>;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

/// Connection-level limits of the server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Longest wait for a complete request head, counted from when the
    /// server starts waiting for it (so also for an idle keep-alive
    /// connection).
    pub header_read_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Longest shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(15),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` (HTTPS with `tls`) until `shutdown`
/// resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ServerLimits,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let max_connections = connection_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(max_connections));
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather
                    // than spin, then go on.
                    warn!(%error, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED_TOTAL.name).increment(1);
            debug!(%peer, "Too many connections; closed a new one.");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The peer's address reaches handlers (and the audit log) as
        // `ConnectInfo`, as `axum::serve` gives it.
        // (Wrapping the router as one service, as `axum::serve` does, not
        // `Router::layer`, which would rebuild every route per connection.)
        let service = TowerToHyperService::new(
            axum::Extension(axum::extract::ConnectInfo(peer)).layer(router.clone()),
        );
        let builder = builder.clone();
        let closing = closing_rx.clone();
        let acceptor = tls.as_ref().map(crate::tls::Tls::acceptor);
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(&builder, stream, service, closing, peer).await,
                // The handshake gets the time a request head gets.
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, stream, service, closing, peer).await;
                        }
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed."),
                        Err(_) => debug!(%peer, "TLS handshake took too long."),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        info!(
            open = max_connections - slots.available_permits(),
            "Stopped waiting for open connections to finish."
        );
    }
    Ok(())
}

/// Serves one connection until it ends, or, once `closing` says so, lets
/// its request in flight finish.
async fn serve_connection<I>(
    builder: &http1::Builder,
    io: I,
    service: TowerToHyperService<PeerRouter>,
    mut closing: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                debug!(%peer, %error, "Connection ended with an error.");
            }
        }
        // (The watch guard must not live across the await below.)
        _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// File descriptors kept for everything but client connections (the log,
/// the lake, Kafka sockets, files being read).
const RESERVED_FDS: usize = 256;

/// `wanted`, lowered to what the open-files limit allows: past it `accept`
/// fails for everyone, which a cap must prevent, not cause.
fn connection_cap(wanted: usize) -> usize {
    let Some(limit) = open_files_limit() else {
        return wanted;
    };
    let allowed = limit.saturating_sub(RESERVED_FDS).max(16);
    if wanted > allowed {
        warn!(
            wanted,
            allowed,
            open_files_limit = limit,
            "--max-connections is above what the open-files limit allows; using the lower \
             value (raise `ulimit -n` to allow more)."
        );
        return allowed;
    }
    wanted
}

/// The soft limit on open files, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
