//! The ingest routes in-process (`tower::ServiceExt::oneshot`) against a
//! real embedded log: status codes, error bodies, partial bodies, limits,
//! and that a 202 means the records are in the log.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use spendstream_http::{Claims, JwtKeys};
use spendstream_ingest::{InFlight, IngestConfig, IngestState};
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
        ..Claims::default()
    })
}

/// The embedded state store in `dir`, as `spendstream up` opens it.
async fn state_store(dir: &std::path::Path) -> Arc<dyn spendstream_state::IdempotencyStore> {
    Arc::new(
        spendstream_state::SqliteState::open(&dir.join("state").join("state.sqlite3"))
            .await
            .unwrap(),
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: EmbeddedLog,
    app: axum::Router,
}

async fn fixture(config: IngestConfig) -> Fixture {
    fixture_with(config, None).await
}

/// [`fixture`] with this idempotency store instead of the embedded one.
async fn fixture_with(
    config: IngestConfig,
    idempotency: Option<Arc<dyn spendstream_state::IdempotencyStore>>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(2)).await.unwrap();
    let dyn_log: Arc<dyn Log> = Arc::new(log.clone());
    let idempotency = match idempotency {
        Some(store) => store,
        None => state_store(dir.path()).await,
    };
    let app = spendstream_http::finish(spendstream_ingest::router(IngestState::new(
        keys(),
        &dyn_log,
        idempotency,
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

/// `post` as tenant `acme` with the ingest role and no extra headers.
async fn post_ingest(
    app: &axum::Router,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    post(
        app,
        Some(&token(&["ingest"])),
        content_type,
        &[],
        body.into(),
    )
    .await
}

/// The ingest state on `log` and `idempotency` whose appends go to
/// `producer` (a stand-in for the log's own) within `append_timeout`.
fn state_with_producer(
    log: &EmbeddedLog,
    idempotency: Arc<dyn spendstream_state::IdempotencyStore>,
    producer: Arc<dyn LogProducer>,
    append_timeout: std::time::Duration,
) -> IngestState {
    IngestState {
        keys: keys(),
        committer: spendstream_ingest::Committer::spawn(producer, 100, append_timeout),
        log: Arc::new(log.clone()),
        idempotency,
        in_flight: Arc::new(InFlight::new(8, 8)),
        config: Arc::new(IngestConfig::default()),
        operator_tenant: None,
        rate: None,
        batches: None,
        detached: Default::default(),
    }
}

async fn logged(log: &EmbeddedLog) -> i64 {
    log.end_offsets().await.unwrap().iter().sum()
}

#[tokio::test]
async fn auth_is_required_and_role_checked() {
    let f = fixture(IngestConfig::default()).await;
    let (s, body, _) = post(&f.app, None, "application/x-ndjson", &[], GOOD.into()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "missing_token");
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
    let (s, body, headers) = post_ingest(&f.app, "application/x-ndjson", body).await;
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
    let (s, body, _) = post_ingest(&f.app, "text/csv", csv).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["error"], "amount_precision");
    assert_eq!(logged(&f.log).await, 3);
}

#[tokio::test]
async fn a_body_that_breaks_midway_reports_what_was_accepted() {
    let f = fixture(IngestConfig::default()).await;
    let body = format!("[{GOOD},{},{{\"source\":", GOOD.replace("e1", "e2"));
    let (s, body, _) = post_ingest(&f.app, "application/json", body).await;
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
        max_record_bytes: 1000,
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
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(2)).await.unwrap();
    let idempotency = state_store(dir.path()).await;
    let state = state_with_producer(
        &log,
        idempotency.clone(),
        Arc::new(Refusing),
        std::time::Duration::from_secs(5),
    );
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
        idempotency
            .claim(
                "acme",
                "k-503",
                "check",
                std::time::Duration::from_secs(600)
            )
            .await
            .unwrap(),
        spendstream_state::Claim::Acquired
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
async fn too_many_requests_in_flight_are_shed_429_per_tenant_503_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), Some(2)).await.unwrap());
    let state = IngestState::new(
        keys(),
        &log,
        state_store(dir.path()).await,
        IngestConfig {
            max_concurrent_requests: 3,
            max_concurrent_requests_per_tenant: 2,
            ..IngestConfig::default()
        },
    );
    let app = spendstream_http::finish(spendstream_ingest::router(state.clone()));
    let t = token(&["ingest"]);
    // Stand in for requests in flight by holding slots.
    let acme = [
        state.in_flight.try_acquire("acme").unwrap(),
        state.in_flight.try_acquire("acme").unwrap(),
    ];
    let (s, body, headers) = post(&app, Some(&t), "application/x-ndjson", &[], GOOD.into()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(headers["retry-after"], "1");
    let globex = token_for("globex", &["ingest"]);
    let as_globex = || {
        post(
            &app,
            Some(&globex),
            "application/x-ndjson",
            &[],
            GOOD.into(),
        )
    };
    // Another tenant is still served while acme is at its share...
    assert_eq!(as_globex().await.0, StatusCode::ACCEPTED);
    // ...until the edge as a whole is full.
    let other = state.in_flight.try_acquire("initech").unwrap();
    let (s, body, headers) = as_globex().await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "unavailable");
    assert_eq!(headers["retry-after"], "1");
    drop((acme, other));
    let (s, _, _) = post(&app, Some(&t), "application/x-ndjson", &[], GOOD.into()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
}

fn token_for(tenant: &str, roles: &[&str]) -> String {
    keys().sign(&Claims {
        tenant: tenant.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: chrono::Utc::now().timestamp() + 600,
        ..Claims::default()
    })
}

fn gzip_with_mtime(bytes: &[u8], mtime: u32) -> Vec<u8> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(mtime)
        .write(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

/// The response lists a bounded number of rejections, counts all of them
/// by code, and says it cut the list.
#[tokio::test]
async fn a_body_of_many_bad_records_gets_a_bounded_answer_with_exact_counts() {
    let f = fixture(IngestConfig {
        max_rejected_listed: 10,
        ..IngestConfig::default()
    })
    .await;
    let mut body = format!("{GOOD}\n");
    for i in 0..3_000 {
        if i % 3 == 0 {
            body.push_str(&GOOD.replace("USD", "ABC").replace("e1", &format!("c{i}")));
        } else {
            body.push('1');
        }
        body.push('\n');
    }
    let (s, body, _) = post_ingest(&f.app, "application/x-ndjson", body.into_bytes()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"].as_array().unwrap().len(), 10);
    assert_eq!(body["rejected_total"], 3_000);
    assert_eq!(body["rejected_by_code"]["invalid_currency"], 1_000);
    assert_eq!(body["rejected_by_code"]["invalid_json"], 2_000);
    assert_eq!(body["rejected_truncated"], true);
}

/// Oversized records are rejected one by one in every format; the others
/// around them go through.
#[tokio::test]
async fn an_oversized_record_is_rejected_and_the_rest_accepted() {
    let f = fixture(IngestConfig {
        max_record_bytes: 400,
        ..IngestConfig::default()
    })
    .await;
    let big = GOOD.replace(
        "\"account_id\":\"a\"",
        &format!("\"memo\":\"{}\",\"account_id\":\"a\"", "m".repeat(500)),
    );
    let json = format!("[{GOOD},{big},{}]", GOOD.replace("e1", "e3"));
    let (s, body, _) = post_ingest(&f.app, "application/json", json).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["error"], "record_too_large");
    // One object as the whole body.
    let (s, body, _) = post_ingest(&f.app, "application/json", big).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["rejected"][0]["error"], "record_too_large");
}

/// The same payload gzipped twice (gzip stores a time) is the same request:
/// the retry gets the first answer back.
#[tokio::test]
async fn the_same_payload_compressed_again_is_the_same_request() {
    let f = fixture(IngestConfig::default()).await;
    let t = token(&["ingest"]);
    let body = format!("{GOOD}\n{}\n", GOOD.replace("e1", "e2"));
    let key = [
        ("idempotency-key", "gz-twice"),
        ("content-encoding", "gzip"),
    ];
    let (s1, b1, _) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &key,
        gzip_with_mtime(body.as_bytes(), 1_700_000_000),
    )
    .await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{b1}");
    let (s2, b2, h2) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &key,
        gzip_with_mtime(body.as_bytes(), 1_700_000_123),
    )
    .await;
    assert_eq!((s2, &b2), (s1, &b1));
    assert_eq!(h2["idempotent-replayed"], "true");
    // Sent uncompressed it is still the same content.
    let (s3, _, h3) = post(
        &f.app,
        Some(&t),
        "application/x-ndjson",
        &[("idempotency-key", "gz-twice")],
        body.into(),
    )
    .await;
    assert_eq!(s3, StatusCode::ACCEPTED);
    assert_eq!(h3["idempotent-replayed"], "true");
    assert_eq!(logged(&f.log).await, 2, "a replay wrote to the log");
}

/// A body stream that yields `first`, then fails as a dropped connection
/// does, or never ends.
fn stream_body(first: &'static str, then: Option<&'static str>) -> Body {
    use futures::StreamExt;
    let head =
        futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(first)) });
    match then {
        Some(error) => Body::from_stream(head.chain(futures::stream::once(async move {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                error,
            ))
        }))),
        None => Body::from_stream(head.chain(futures::stream::pending())),
    }
}

async fn send(app: &axum::Router, t: &str, key: &str, body: Body) -> (StatusCode, Value) {
    let req = Request::post("/v1/expenses")
        .header("content-type", "application/x-ndjson")
        .header("authorization", format!("Bearer {t}"))
        .header("idempotency-key", key)
        .body(body)
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A body cut off midway is never stored as the key's answer: 400
/// `body_incomplete`, and the retry with the whole body runs.
#[tokio::test]
async fn a_body_cut_off_midway_is_not_the_final_answer_for_its_key() {
    let f = fixture(IngestConfig::default()).await;
    let t = token(&["ingest"]);
    let first = Box::leak(format!("{GOOD}\n{{\"source\":\"s\",").into_boxed_str());
    let (s, body) = send(
        &f.app,
        &t,
        "cut",
        stream_body(first, Some("connection reset")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "body_incomplete");
    assert_eq!(body["accepted"], 1);
    let whole = format!("{GOOD}\n{}\n", GOOD.replace("e1", "e2"));
    let (s, body) = send(&f.app, &t, "cut", Body::from(whole)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2);
}

/// A body that stops arriving gets 408 once the idle timeout passed; the
/// key is free for the retry.
#[tokio::test]
async fn a_stalled_body_gets_408_and_frees_its_key() {
    let f = fixture(IngestConfig {
        body_idle_timeout: std::time::Duration::from_secs(1),
        body_timeout: std::time::Duration::from_secs(2),
        ..IngestConfig::default()
    })
    .await;
    let t = token(&["ingest"]);
    let started = std::time::Instant::now();
    let (s, body) = send(&f.app, &t, "slow", stream_body(GOOD, None)).await;
    assert_eq!(s, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(body["error"], "body_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let (s, _) = send(&f.app, &t, "slow", Body::from(format!("{GOOD}\n"))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
}

/// A body that trickles (a byte every tenth of a second: never idle for
/// long) is cut off once its average rate is below the least rate, long
/// before the total timeout.
#[tokio::test]
async fn a_trickling_body_is_cut_off_by_the_least_rate() {
    let f = fixture(IngestConfig {
        body_idle_timeout: std::time::Duration::from_secs(1),
        body_timeout: std::time::Duration::from_secs(60),
        body_min_bytes_per_sec: 100,
        ..IngestConfig::default()
    })
    .await;
    let trickle = futures::stream::unfold(0u32, |i| async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")),
            i + 1,
        ))
    });
    let started = std::time::Instant::now();
    let (s, body) = send(
        &f.app,
        &token(&["ingest"]),
        "trickle",
        Body::from_stream(trickle),
    )
    .await;
    assert_eq!(s, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "cut off only after {:?}",
        started.elapsed()
    );
}

/// A client that goes away mid-request (its future is dropped) does not
/// leave its key "in progress": the honest retry runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_midway_releases_its_idempotency_key() {
    let f = fixture(IngestConfig::default()).await;
    let t = token(&["ingest"]);
    // The body's first poll tells us the handler holds the claim.
    let (polled_tx, polled_rx) = tokio::sync::oneshot::channel::<()>();
    let polled_tx = std::sync::Mutex::new(Some(polled_tx));
    let body = Body::from_stream(futures::stream::poll_fn(move |_| {
        if let Some(tx) = polled_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        std::task::Poll::<Option<Result<bytes::Bytes, std::io::Error>>>::Pending
    }));
    let app = f.app.clone();
    let t2 = t.clone();
    let request = tokio::spawn(async move { send(&app, &t2, "gone", body).await });
    tokio::time::timeout(std::time::Duration::from_secs(10), polled_rx)
        .await
        .expect("the handler never read the body")
        .unwrap();
    request.abort();
    let _ = request.await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, body) = send(&f.app, &t, "gone", Body::from(format!("{GOOD}\n"))).await;
        if s == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(s, StatusCode::CONFLICT, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned claim was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `done` until it holds, failing with `never` after 10 s.
async fn wait_until(never: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{never}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A producer whose appends wait for a gate: requests stay in flight.
/// `entered` counts the appends that reached the gate.
struct Gated(tokio::sync::Semaphore, std::sync::atomic::AtomicUsize);

#[async_trait]
impl LogProducer for Gated {
    async fn append(&self, records: Vec<Record>) -> spendstream_log::Result<Vec<Position>> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _permit = self.0.acquire().await;
        Ok(vec![
            Position {
                partition: 0,
                offset: 0
            };
            records.len()
        ])
    }
}

/// CPU time so far of this process's threads named `name`, in clock ticks
/// (utime + stime): the test's own runtime, whatever else runs alongside.
fn cpu_ticks_of_threads(name: &str) -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.len() > 12 {
            ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        }
    }
    ticks
}

/// While the last append is in flight, the handler waits; it does not spin
/// on the closed decoder channel.
#[test]
fn a_request_waiting_for_its_append_does_not_spin() {
    const THREADS: &str = "spin-check";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREADS)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), Some(2)).await.unwrap();
        let gate = Arc::new(Gated(tokio::sync::Semaphore::new(0), Default::default()));
        let state = state_with_producer(
            &log,
            state_store(dir.path()).await,
            gate.clone(),
            std::time::Duration::from_secs(30),
        );
        let app = spendstream_http::finish(spendstream_ingest::router(state));
        let request =
            tokio::spawn(async move { post_ingest(&app, "application/x-ndjson", GOOD).await });
        // The decoder has sent its one chunk once the append waits at the
        // gate.
        wait_until("the append never started", || {
            gate.1.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
        .await;
        let before = cpu_ticks_of_threads(THREADS);
        let waited = std::time::Instant::now();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let used = cpu_ticks_of_threads(THREADS) - before;
        // Clock ticks are 1/100 s; a spinning thread uses about 100 a second.
        assert!(
            used * 1000 < 100 * waited.elapsed().as_millis() as u64 / 4,
            "the runtime burnt {used} ticks of CPU in {:?} while one request waited",
            waited.elapsed()
        );
        gate.0.add_permits(1);
        let (s, _, _) = request.await.unwrap();
        assert_eq!(s, StatusCode::ACCEPTED);
    });
}

/// A log error no retry can fix is a 500 (logged), not a 503 inviting
/// retries forever.
#[tokio::test]
async fn a_permanent_log_error_is_500_not_503() {
    struct Mismatched;
    #[async_trait]
    impl LogProducer for Mismatched {
        async fn append(&self, _: Vec<Record>) -> spendstream_log::Result<Vec<Position>> {
            Err(spendstream_log::Error::PartitionMismatch {
                path: "log".into(),
                existing: 8,
                requested: 4,
            })
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(2)).await.unwrap();
    let state = state_with_producer(
        &log,
        state_store(dir.path()).await,
        Arc::new(Mismatched),
        std::time::Duration::from_secs(5),
    );
    let app = spendstream_http::finish(spendstream_ingest::router(state));
    let (s, body, headers) = post_ingest(&app, "application/x-ndjson", GOOD).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"], "internal");
    assert!(headers.get("retry-after").is_none());
}

/// The state store down (Redis unreachable): a request with an
/// Idempotency-Key gets 503 and `Retry-After` and writes nothing, since
/// applying it without its key could apply it twice; one without a key
/// does not need the store and is accepted.
#[tokio::test]
async fn a_state_store_failure_is_503_and_writes_nothing() {
    #[derive(Debug)]
    struct Down;
    #[async_trait]
    impl spendstream_state::IdempotencyStore for Down {
        async fn claim(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: std::time::Duration,
        ) -> spendstream_state::Result<spendstream_state::Claim> {
            Err(spendstream_state::Error::Timeout(
                spendstream_state::OPERATION_TIMEOUT,
            ))
        }
        async fn complete(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: &str,
            _: u16,
            _: &[u8],
        ) -> spendstream_state::Result<()> {
            unreachable!("nothing was claimed")
        }
        async fn release(&self, _: &str, _: &str, _: &str) -> spendstream_state::Result<()> {
            // The guard releases a claim whose answer was lost.
            Ok(())
        }
    }
    let Fixture { log, app, .. } =
        fixture_with(IngestConfig::default(), Some(Arc::new(Down))).await;
    let t = token(&["ingest"]);
    let (s, body, headers) = post(
        &app,
        Some(&t),
        "application/x-ndjson",
        &[("idempotency-key", "k-down")],
        GOOD.into(),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(log.end_offsets().await.unwrap(), vec![0, 0]);
    let (s, body, _) = post(&app, Some(&t), "application/x-ndjson", &[], GOOD.into()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(log.end_offsets().await.unwrap().iter().sum::<i64>(), 1);
}

#[tokio::test]
async fn bank_files_are_taken_by_content_type() {
    let f = fixture(IngestConfig::default()).await;
    // The runner's package directory first: see `samples()` in formats.rs.
    let samples = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        )
        .join("../samples");
    let mut total = 0;
    for (name, content_type, records) in [
        ("camt053.xml", "application/vnd.iso20022.camt.053+xml", 4),
        ("bai2.txt", "application/x-bai2", 5),
        ("ofx1.ofx", "application/x-ofx", 3),
        ("ofx2.ofx", "application/vnd.intu.qfx", 3),
    ] {
        let body = std::fs::read(samples.join(name)).unwrap();
        let (s, answer, _) = post_ingest(&f.app, content_type, body).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: {answer}");
        assert_eq!(answer["accepted"], records, "{name}: {answer}");
        total += records;
        assert_eq!(logged(&f.log).await, total, "{name}");
    }
    // A file of another kind under a bank format's type is refused whole,
    // with the format's own code.
    for (content_type, code) in [
        ("text/xml", "invalid_camt053"),
        ("text/x-bai2", "invalid_bai2"),
        ("application/ofx", "invalid_ofx"),
    ] {
        let (s, answer, _) = post_ingest(&f.app, content_type, GOOD).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{content_type}: {answer}");
        assert_eq!(answer["error"], code, "{answer}");
    }
    // Entries that cannot be records are rejected by index; the rest go in.
    let bai2 = "01,B,C,260302,0600,1,,,2/\n02,C,B,1,260302,2359,USD,2/\n03,1,USD/\n\
                16,475,100,0,R1/\n16,475,1x0,0,R2/\n16,475,100,0,/\n16,475,300,0,R4/\n99/\n";
    let (s, answer, _) = post_ingest(&f.app, "application/x-bai2", bai2).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"][0]["index"], 1);
    assert_eq!(answer["rejected"][0]["error"], "invalid_amount");
    assert_eq!(answer["rejected"][1]["index"], 2);
    assert_eq!(answer["rejected"][1]["error"], "missing_field");
    assert_eq!(answer["rejected"][1]["field"], "external_id");
}

/// A producer that appends (counting the records) only once its gate
/// opens, and says when an append is waiting.
struct CountingGate {
    gate: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicBool,
    appended: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl LogProducer for CountingGate {
    async fn append(&self, records: Vec<Record>) -> spendstream_log::Result<Vec<Position>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.waiting.store(true, SeqCst);
        let _permit = self.gate.acquire().await;
        self.appended.fetch_add(records.len(), SeqCst);
        Ok(vec![
            Position {
                partition: 0,
                offset: 0
            };
            records.len()
        ])
    }
}

/// A client that goes away after its whole body is in (its future is
/// dropped while the append runs) does not make its retry append again:
/// the answer is stored for the key all the same, and the retry gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_after_its_body_still_gets_its_answer_stored() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(2)).await.unwrap();
    let producer = Arc::new(CountingGate {
        gate: tokio::sync::Semaphore::new(0),
        waiting: false.into(),
        appended: 0.into(),
    });
    let state = state_with_producer(
        &log,
        state_store(dir.path()).await,
        producer.clone(),
        std::time::Duration::from_secs(30),
    );
    let app = spendstream_http::finish(spendstream_ingest::router(state));
    let t = token(&["ingest"]);
    let body = format!("{GOOD}\n");
    let request = {
        let (app, t, body) = (app.clone(), t.clone(), body.clone());
        tokio::spawn(async move { send(&app, &t, "once", Body::from(body)).await })
    };
    wait_until("the append never started", || producer.waiting.load(SeqCst)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The client goes away while its records are being appended.
    request.abort();
    let _ = request.await;
    producer.gate.add_permits(100);
    loop {
        let (s, answer) = send(&app, &t, "once", Body::from(body.clone())).await;
        if s == StatusCode::ACCEPTED {
            assert_eq!(answer["accepted"], 1, "{answer}");
            break;
        }
        assert_eq!(s, StatusCode::CONFLICT, "{answer}");
        assert!(
            std::time::Instant::now() < deadline,
            "the key stayed in progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        producer.appended.load(SeqCst),
        1,
        "the retry appended the record again"
    );
}
