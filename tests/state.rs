//! The edge's shared state (`--state`): idempotency keys agreed on by every
//! ingest node, on the embedded SQLite file and on the real Redis that
//! scripts/test starts (`SPENDSTREAM_TEST_REDIS`), and what the edge does
//! while Redis is down.

mod common;

use common::{Backend, Deadline};
use reqwest::StatusCode;
use spendstream::{Roles, Running, Settings};
use spendstream_http::Role;
use std::path::Path;
use std::time::Duration;

fn redis_url() -> String {
    std::env::var("SPENDSTREAM_TEST_REDIS").expect(
        "SPENDSTREAM_TEST_REDIS is not set: run the tests with scripts/test, which starts redis-server",
    )
}

/// An ingest-only node on `backend`'s log with its state at `state_url`.
fn ingest_node(backend: &Backend, dir: &Path, state_url: &str) -> Settings {
    let mut settings = common::settings_without_clickhouse(dir);
    if let Backend::Kafka(kafka) = backend {
        settings.log_url = kafka.url();
    }
    Settings {
        roles: Roles::INGEST,
        state_url: state_url.to_string(),
        // All 50 requests of the test below may be in flight at once.
        ingest: spendstream_ingest::IngestConfig {
            max_concurrent_requests_per_tenant: 64,
            ..settings.ingest.clone()
        },
        ..settings
    }
}

/// Records written to the log so far (every partition's end).
async fn log_records(running: &Running) -> i64 {
    let log = running.log.as_ref().unwrap();
    log.end_offsets().await.unwrap().iter().sum()
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    body: &str,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut request = client
        .post(format!("{base}/v1/expenses"))
        .bearer_auth(common::token("acme", &[Role::Ingest]))
        .header("content-type", "application/x-ndjson")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.text().await.unwrap())
}

/// 50 requests at once with one Idempotency-Key, spread over `nodes`: the
/// body reaches the log once; every other request is told the key is in use
/// (409) or gets the first answer back, marked as a replay.
async fn fifty_at_once_write_once(nodes: &[Running]) {
    let (body, model) = common::acme_records(0, 3);
    // Keys of earlier runs on the same Redis must not answer for this one.
    let key = format!(
        "batch-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let before = log_records(&nodes[0]).await;
    let client = reqwest::Client::new();
    let requests = (0..50).map(|i| {
        let (client, body, key) = (client.clone(), body.clone(), key.clone());
        let base = format!("http://{}", nodes[i % nodes.len()].addr);
        tokio::spawn(async move { post(&client, &base, Some(&key), &body).await })
    });
    let mut first = Vec::new();
    let mut replays = Vec::new();
    for request in requests.collect::<Vec<_>>() {
        let (status, headers, text) = request.await.unwrap();
        match status {
            StatusCode::ACCEPTED if headers.get("idempotent-replayed").is_some() => {
                replays.push(text)
            }
            StatusCode::ACCEPTED => first.push(text),
            StatusCode::CONFLICT => assert!(text.contains("idempotency_key_in_use"), "{text}"),
            other => panic!("{other}: {text}"),
        }
    }
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(replays.iter().all(|r| *r == first[0]), "{replays:?}");
    assert_eq!(log_records(&nodes[0]).await - before, model.len() as i64);
    // Afterwards every node answers with the first answer and writes nothing.
    for node in nodes {
        let (status, headers, text) =
            post(&client, &format!("http://{}", node.addr), Some(&key), &body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(text, first[0]);
    }
    assert_eq!(log_records(&nodes[0]).await - before, model.len() as i64);
}

/// Two ingest nodes behind a load balancer: one log, one Redis.
async fn two_nodes(backend: &Backend, dirs: &[tempfile::TempDir; 2]) -> [Running; 2] {
    let redis = redis_url();
    let mut nodes = Vec::new();
    for dir in dirs {
        let settings = ingest_node(backend, dir.path(), &redis);
        nodes.push(spendstream::start(settings).await.unwrap());
    }
    nodes.try_into().unwrap_or_else(|_| unreachable!())
}

/// Two ingest nodes behind a load balancer: one Kafka log, one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_fifty_times_over_two_nodes_sharing_redis_writes_once() {
    let backend = Backend::kafka();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes = two_nodes(&backend, &dirs).await;
    fifty_at_once_write_once(&nodes).await;
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// The same on one machine: the embedded log and the embedded state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_fifty_times_on_the_embedded_state_writes_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("embedded://{}", dir.path().join("state").display());
    let node = spendstream::start(ingest_node(&Backend::Embedded, dir.path(), &state))
        .await
        .unwrap();
    let nodes = [node];
    fifty_at_once_write_once(&nodes).await;
    let [node] = nodes;
    node.shutdown().await.unwrap();
}

/// A redis-server of this test's own, on `port`, that it can stop.
struct OwnRedis {
    child: std::process::Child,
}

impl OwnRedis {
    async fn start(port: u16, dir: &Path) -> Self {
        let server = std::env::var("SPENDSTREAM_TEST_REDIS_SERVER")
            .expect("SPENDSTREAM_TEST_REDIS_SERVER is not set: run the tests with scripts/test");
        let child = std::process::Command::new(server)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut deadline = Deadline::new(Duration::from_secs(20), Duration::from_millis(50));
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            deadline.tick("redis-server to listen").await;
        }
        Self { child }
    }

    fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis down: a request with an Idempotency-Key gets 503 and Retry-After
/// and writes nothing (applying it without its key could apply it twice);
/// one without a key is accepted. When Redis is back the edge uses it again
/// by itself, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_for_keyed_requests_and_the_edge_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = OwnRedis::start(port, dir.path()).await;
    let node = spendstream::start(ingest_node(
        &Backend::Embedded,
        dir.path(),
        &format!("redis://127.0.0.1:{port}"),
    ))
    .await
    .unwrap();
    let base = format!("http://{}", node.addr);
    let client = reqwest::Client::new();
    let (body, _) = common::acme_records(0, 2);
    let (status, _, text) = post(&client, &base, Some("before"), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");

    redis.stop();
    let written = log_records(&node).await;
    for _ in 0..3 {
        let (status, headers, text) = post(&client, &base, Some("during"), &body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("\"unavailable\""), "{text}");
        assert_eq!(headers["retry-after"], "1");
    }
    assert_eq!(log_records(&node).await, written);
    let (status, _, text) = post(&client, &base, None, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(log_records(&node).await, written + 2);

    // Back (empty: the keys it held are gone with it).
    let _redis = OwnRedis::start(port, dir.path()).await;
    let mut deadline = Deadline::new(Duration::from_secs(30), Duration::from_millis(200));
    let first = loop {
        let (status, headers, text) = post(&client, &base, Some("during"), &body).await;
        match status {
            StatusCode::ACCEPTED => {
                assert!(headers.get("idempotent-replayed").is_none());
                break text;
            }
            StatusCode::SERVICE_UNAVAILABLE => deadline.tick("the edge to use Redis again").await,
            other => panic!("{other}: {text}"),
        }
    };
    let (status, headers, text) = post(&client, &base, Some("during"), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(text, first);
    assert_eq!(log_records(&node).await, written + 4);
    node.shutdown().await.unwrap();
}

/// A token revoked through one node is refused by both within 2 s (401
/// `token_revoked`); another token of the same tenant goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_both_nodes_within_2_s() {
    let backend = Backend::kafka();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes = two_nodes(&backend, &dirs).await;
    let bases: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.addr)).collect();
    let client = reqwest::Client::new();
    let keys = common::keys();
    let claims =
        spendstream::secret::claims(&keys, "acme", &[Role::Ingest], Duration::from_secs(3600));
    let leaked = keys.sign(&claims);
    let other = common::token("acme", &[Role::Ingest]);
    let admin = common::token("acme", &[Role::Admin]);
    let (body, _) = common::acme_records(0, 1);
    let send = |base: &str, token: &str| {
        client
            .post(format!("{base}/v1/expenses"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
    };
    for base in &bases {
        assert_eq!(
            send(base, &leaked).await.unwrap().status(),
            StatusCode::ACCEPTED
        );
    }
    let revoke = |token: &str, request: serde_json::Value| {
        client
            .post(format!("{}/v1/admin/revocations", bases[0]))
            .bearer_auth(token)
            .json(&request)
            .send()
    };
    let jti = claims.jti.clone().unwrap();
    let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap();
    // Admins only, and only a future expiry.
    let refused = revoke(
        &other,
        serde_json::json!({"jti": jti, "expires_at": expires_at}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let past = revoke(
        &admin,
        serde_json::json!({"jti": jti, "expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await
    .unwrap();
    assert_eq!(past.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        past.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_expiry"
    );

    let answer = revoke(
        &admin,
        serde_json::json!({"jti": jti, "expires_at": expires_at}),
    )
    .await
    .unwrap();
    let revoked_at = std::time::Instant::now();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["jti"], jti.as_str());
    assert_eq!(answer["tenant"], "acme");
    for base in &bases {
        let mut deadline = Deadline::new(
            Duration::from_secs(2).saturating_sub(revoked_at.elapsed()),
            Duration::from_millis(50),
        );
        loop {
            let response = send(base, &leaked).await.unwrap();
            if response.status() == StatusCode::UNAUTHORIZED {
                let error: serde_json::Value = response.json().await.unwrap();
                assert_eq!(error["error"], "token_revoked");
                break;
            }
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            deadline
                .tick(format!("{base} to refuse the revoked token"))
                .await;
        }
        assert_eq!(
            send(base, &other).await.unwrap().status(),
            StatusCode::ACCEPTED
        );
    }
    // Listed on the other node, for this tenant only.
    let listed: serde_json::Value = client
        .get(format!("{}/v1/admin/revocations", bases[1]))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed.as_array().unwrap();
    assert!(
        listed.iter().any(|r| r["jti"] == jti.as_str()),
        "{listed:?}"
    );
    assert!(listed.iter().all(|r| r["tenant"] == "acme"), "{listed:?}");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_counts_are_kept_per_tenant_on_both_backends() {
    use spendstream_state::{BATCH_RETENTION, BatchRecord, StateTarget};
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for url in [format!("embedded://{}", dir.path().display()), redis_url()] {
        let state = StateTarget::parse(&url).unwrap().open().await.unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let record = BatchRecord {
            tenant: "acme".into(),
            batch_id: id.clone(),
            accepted: 3,
            rejected: 1,
            rejected_by_code: [("invalid_json".to_string(), 1)].into(),
            answered_at_ms: now,
        };
        state.batches.put_batch(&record).await.unwrap();
        assert_eq!(
            state.batches.batch("acme", &id).await.unwrap(),
            Some(record.clone()),
            "{url}"
        );
        assert_eq!(
            state.batches.batch("globex", &id).await.unwrap(),
            None,
            "{url}"
        );
        assert_eq!(
            state.batches.batch("acme", "other").await.unwrap(),
            None,
            "{url}"
        );
    }
    // The embedded store forgets a batch past retention.
    let state = StateTarget::parse(&format!("embedded://{}", dir.path().display()))
        .unwrap()
        .open()
        .await
        .unwrap();
    let old = spendstream_state::BatchRecord {
        tenant: "acme".into(),
        batch_id: "old".into(),
        accepted: 1,
        rejected: 0,
        rejected_by_code: Default::default(),
        answered_at_ms: now - BATCH_RETENTION.as_millis() as i64 - 1000,
    };
    state.batches.put_batch(&old).await.unwrap();
    assert_eq!(state.batches.batch("acme", "old").await.unwrap(), None);
}
