//! The ingest routes in-process (`tower::ServiceExt::oneshot`) against a
//! real embedded log: status codes, error bodies, partial bodies, limits,
//! and that a 202 means the records are in the log.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use spendstream_http::{Claims, JwtKeys};
use spendstream_ingest::{IngestConfig, IngestState};
use spendstream_log::embedded::EmbeddedLog;
use spendstream_log::{Log, LogProducer, Position, Record};
use std::sync::Arc;
use tower::ServiceExt;

const GOOD: &str = r#"{"source":"s","external_id":"e1","account_id":"a","transaction_date":"2026-03-01","amount":"1.00","currency":"USD"}"#;

fn keys() -> JwtKeys {
    JwtKeys::new(&[3u8; 32]).unwrap()
}

fn token(roles: &[&str]) -> String {
    keys().sign(&Claims {
        tenant: "acme".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: chrono::Utc::now().timestamp() + 600,
        sub: None,
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: EmbeddedLog,
    app: axum::Router,
}

async fn fixture(config: IngestConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(2)).await.unwrap();
    let dyn_log: Arc<dyn Log> = Arc::new(log.clone());
    let app = spendstream_http::finish(spendstream_ingest::router(IngestState::new(
        keys(),
        &dyn_log,
        config,
    )));
    Fixture {
        _dir: dir,
        log,
        app,
    }
}

async fn post(
    app: &axum::Router,
    token: Option<&str>,
    content_type: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut req = Request::post("/v1/expenses")
        .header("content-type", content_type)
        .header("x-request-id", "req-123");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

async fn logged(log: &EmbeddedLog) -> i64 {
    log.end_offsets().await.unwrap().iter().sum()
}

#[tokio::test]
async fn auth_is_required_and_role_checked() {
    let f = fixture(IngestConfig::default()).await;
    let (s, body, _) = post(&f.app, None, "application/x-ndjson", &[], GOOD.into()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthenticated");
    assert_eq!(body["request_id"], "req-123");
    let (s, _, _) = post(
        &f.app,
        Some("not.a.token"),
        "application/x-ndjson",
        &[],
        GOOD.into(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body, _) = post(
        &f.app,
        Some(&token(&["read"])),
        "application/x-ndjson",
        &[],
        GOOD.into(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
    assert_eq!(logged(&f.log).await, 0);
}

#[tokio::test]
async fn accepted_records_are_in_the_log_when_the_202_arrives() {
    let f = fixture(IngestConfig {
        chunk_records: 3,
        ..IngestConfig::default()
    })
    .await;
    let body = format!(
        "{GOOD}\nnot json\n{}\n\n{}\n",
        GOOD.replace("e1", "e2"),
        GOOD.replace("USD", "ABC")
    );
    let (s, body, headers) = post(
        &f.app,
        Some(&token(&["ingest"])),
        "application/x-ndjson",
        &[],
        body.into(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(headers["x-request-id"], "req-123");
    assert_eq!(body["accepted"], 2);
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (rejected[0]["index"].as_u64(), rejected[0]["error"].as_str()),
        (Some(1), Some("invalid_json"))
    );
    assert_eq!(
        (rejected[1]["index"].as_u64(), rejected[1]["error"].as_str()),
        (Some(3), Some("invalid_currency"))
    );
    assert_eq!(rejected[1]["field"], "currency");
    assert_eq!(logged(&f.log).await, 2);
}

#[tokio::test]
async fn gzip_json_and_csv_bodies() {
    let f = fixture(IngestConfig::default()).await;
    let json = format!("[{GOOD},{}]", GOOD.replace("e1", "e2"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, json.as_bytes()).unwrap();
    let (s, body, _) = post(
        &f.app,
        Some(&token(&["ingest"])),
        "application/json; charset=utf-8",
        &[("content-encoding", "gzip")],
        gz.finish().unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2);
    let csv = "source,external_id,account_id,transaction_date,amount,currency\ns,c1,a,2026-01-01,5.5,EUR\ns,c2,a,2026-01-01,5.555,EUR\n";
    let (s, body, _) = post(
        &f.app,
        Some(&token(&["ingest"])),
        "text/csv",
        &[],
        csv.into(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["error"], "amount_precision");
    assert_eq!(logged(&f.log).await, 3);
}

#[tokio::test]
async fn a_body_that_breaks_midway_reports_what_was_accepted() {
    let f = fixture(IngestConfig::default()).await;
    let body = format!("[{GOOD},{},{{\"source\":", GOOD.replace("e1", "e2"));
    let (s, body, _) = post(
        &f.app,
        Some(&token(&["ingest"])),
        "application/json",
        &[],
        body.into(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 2);
    assert_eq!(body["rejected"][0]["error"], "malformed_body");
    assert_eq!(logged(&f.log).await, 2);
}

#[tokio::test]
async fn unusable_bodies_get_400_415_422_413() {
    let f = fixture(IngestConfig {
        max_body_bytes: 1000,
        max_decompressed_bytes: 2000,
        ..IngestConfig::default()
    })
    .await;
    let t = token(&["ingest"]);
    let (s, body, _) = post(&f.app, Some(&t), "application/json", &[], b"hello".to_vec()).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let (s, body, _) = post(&f.app, Some(&t), "text/csv", &[], b"s,e1,a\n".to_vec()).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_csv_header"))
    );
    let (s, body, _) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &[],
        b"nope\nnada\n".to_vec(),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let (s, body, _) = post(&f.app, Some(&t), "text/plain", &[], GOOD.into()).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let (s, body, _) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &[],
        GOOD.replace("USD", "XXX").into(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["rejected"][0]["error"], "invalid_currency");
    let big = format!("{GOOD}\n").repeat(20);
    let (s, body, _) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &[("content-length", &big.len().to_string())],
        big.clone().into(),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    assert_eq!(logged(&f.log).await, 0);
    // A gzip bomb past the decompressed limit: what came before the cut is
    // reported, never hidden.
    let many: String = (0..100)
        .map(|i| format!("{}\n", GOOD.replace("e1", &format!("g{i}"))))
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, many.as_bytes()).unwrap();
    let (s, body, _) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &[("content-encoding", "gzip")],
        gz.finish().unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["accepted"].as_i64().unwrap(), logged(&f.log).await);
}

/// A producer that always fails: the log refusing must never become a 2xx.
struct Refusing;

#[async_trait]
impl LogProducer for Refusing {
    async fn append(&self, _records: Vec<Record>) -> spendstream_log::Result<Vec<Position>> {
        Err(spendstream_log::Error::Io(std::io::Error::other(
            "disk on fire",
        )))
    }
}

#[tokio::test]
async fn a_log_failure_is_503_with_retry_after() {
    let config = IngestConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(2)).await.unwrap();
    let state = IngestState {
        keys: keys(),
        committer: spendstream_ingest::Committer::spawn(
            Arc::new(Refusing),
            100,
            std::time::Duration::from_secs(5),
        ),
        log: Arc::new(log.clone()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(8)),
        config: Arc::new(config),
    };
    let app = spendstream_http::finish(spendstream_ingest::router(state));
    let (s, body, headers) = post(
        &app,
        Some(&token(&["ingest"])),
        "application/x-ndjson",
        &[("idempotency-key", "k-503")],
        GOOD.into(),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    // A failure worth retrying frees the key.
    assert_eq!(
        log.idempotency()
            .claim("acme", "k-503", std::time::Duration::from_secs(600))
            .await
            .unwrap(),
        spendstream_log::Claim::Acquired
    );
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(body["accepted"], 0);
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_and_write_nothing() {
    let f = fixture(IngestConfig::default()).await;
    let t = token(&["ingest"]);
    let body = format!("{GOOD}\n{}\n", GOOD.replace("USD", "ABC"));
    let key = [("idempotency-key", "import-2026-11-25-001")];
    let (s1, b1, _) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &key,
        body.clone().into(),
    )
    .await;
    assert_eq!(s1, StatusCode::ACCEPTED);
    assert_eq!(logged(&f.log).await, 1);
    let (s2, b2, h2) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &key,
        body.clone().into(),
    )
    .await;
    assert_eq!((s2, &b2), (s1, &b1));
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(logged(&f.log).await, 1, "a replay wrote to the log");

    // The same key with another body is refused.
    let (s, b, _) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &key,
        GOOD.replace("e1", "e9").into(),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );

    // A broken body is fingerprinted whole: its replay matches too.
    let broken = format!("[{GOOD},{{\"x\":");
    let k2 = [("idempotency-key", "k2")];
    let (s, _, _) = post(
        &f.app,
        Some(&t),
        "application/json",
        &k2,
        broken.clone().into(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (_, _, h) = post(&f.app, Some(&t), "application/json", &k2, broken.into()).await;
    assert_eq!(h["idempotent-replayed"], "true");

    // A 400 does not use the key up; keys are per tenant.
    let k3 = [("idempotency-key", "k3")];
    let (s, _, _) = post(&f.app, Some(&t), "application/json", &k3, b"nope".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, h) = post(
        &f.app,
        Some(&t),
        "application/json",
        &k3,
        GOOD.replace("e1", "e3").into(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(h.get("idempotent-replayed").is_none());
    let (s, b, _) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &[("idempotency-key", "bad key")],
        GOOD.into(),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_idempotency_key"))
    );
}

#[tokio::test]
async fn too_many_requests_in_flight_are_shed_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), Some(2)).await.unwrap());
    let state = IngestState::new(
        keys(),
        &log,
        IngestConfig {
            max_concurrent_requests: 1,
            ..IngestConfig::default()
        },
    );
    let app = spendstream_http::finish(spendstream_ingest::router(state.clone()));
    let t = token(&["ingest"]);
    // Stand in for a request in flight by holding the only permit.
    let permit = state.in_flight.clone().try_acquire_owned().unwrap();
    let (s, body, headers) = post(&app, Some(&t), "application/x-ndjson", &[], GOOD.into()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "unavailable");
    assert_eq!(headers["retry-after"], "1");
    drop(permit);
    let (s, _, _) = post(&app, Some(&t), "application/x-ndjson", &[], GOOD.into()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
}
