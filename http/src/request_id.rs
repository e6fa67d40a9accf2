//! Request ids: taken from `x-request-id` when the caller sends a sane one,
//! made up otherwise; echoed in the response, on the request's span and in
//! every error body. The request's span continues the caller's W3C
//! `traceparent` when traces are exported.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST: (String, Option<std::net::SocketAddr>);
}

/// The id of the request this task is serving, or `-` outside one.
pub fn current_request_id() -> String {
    REQUEST
        .try_with(|(id, _)| id.clone())
        .unwrap_or_else(|_| "-".to_string())
}

/// The remote address of the request this task is serving, when the
/// server recorded one (`ConnectInfo`).
pub fn current_remote() -> Option<std::net::SocketAddr> {
    REQUEST.try_with(|(_, remote)| *remote).ok().flatten()
}

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Middleware: assigns the id, runs the request inside its span and scope.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let traceparent = request
        .headers()
        .get(spendstream_schemas::trace::TRACEPARENT);
    spendstream_schemas::trace::continue_trace(&span, traceparent.and_then(|v| v.to_str().ok()));
    let remote = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let mut response = REQUEST
        .scope((id.clone(), remote), next.run(request).instrument(span))
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, v);
    }
    response
}

/// Spawns `future` as a task of its own that keeps this request's id,
/// remote address and span: for work that must run to its end even when
/// the client goes away and the request's own future is dropped.
pub fn spawn_detached<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let scope = REQUEST.try_with(|s| s.clone()).ok();
    let future = future.instrument(tracing::Span::current());
    tokio::spawn(async move {
        match scope {
            Some(scope) => REQUEST.scope(scope, future).await,
            None => future.await,
        }
    })
}

/// The request id, as a request extension for handlers.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);
