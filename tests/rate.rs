//! Per-tenant rate limits of ingest: exact `RateLimit-*` headers and 429s
//! under a scripted load on two nodes sharing Redis, overrides read again
//! when their file changes, and a tenant over its limit costing another
//! tenant nothing.

mod common;

use common::{Backend, Deadline};
use reqwest::StatusCode;
use spendstream::{Roles, Running, Settings};
use spendstream_http::Role;
use std::path::Path;
use std::time::{Duration, Instant};

fn redis_url() -> String {
    std::env::var("SPENDSTREAM_TEST_REDIS").expect(
        "SPENDSTREAM_TEST_REDIS is not set: run the tests with scripts/test, which starts redis-server",
    )
}

/// Tenant names of their own: buckets of earlier runs on the same Redis
/// must not count.
fn tenant(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn node(backend: &Backend, dir: &Path, overrides: &Path) -> Running {
    let mut settings = common::settings_without_clickhouse(dir);
    if let Backend::Kafka(kafka) = backend {
        settings.log_url = kafka.url();
    }
    let settings = Settings {
        roles: Roles::INGEST,
        state_url: redis_url(),
        rate_limits_file: Some(overrides.to_path_buf()),
        ..settings
    };
    spendstream::start(settings).await.unwrap()
}

fn write_overrides(path: &Path, tenants: serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::json!({ "tenants": tenants }).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Answer {
    status: StatusCode,
    error: Option<String>,
    /// `RateLimit-Limit`, `-Remaining`, `-Reset`, and `Retry-After`.
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
}

async fn post(client: &reqwest::Client, base: &str, tenant: &str, records: usize) -> Answer {
    let body: String = (0..records)
        .map(|i| {
            format!(
                r#"{{"source":"s","external_id":"r{i}","account_id":"a","transaction_date":"2026-11-27","amount_minor":100,"currency":"USD"}}"#
            ) + "\n"
        })
        .collect();
    let response = client
        .post(format!("{base}/v1/expenses"))
        .bearer_auth(common::token(tenant, &[Role::Ingest]))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let (limit, remaining, reset, retry_after) = (
        header("ratelimit-limit"),
        header("ratelimit-remaining"),
        header("ratelimit-reset"),
        header("retry-after"),
    );
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    Answer {
        status,
        error: body["error"].as_str().map(str::to_owned),
        limit,
        remaining,
        reset,
        retry_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_429s_are_exact_over_two_nodes_and_overrides_reload() {
    let backend = Backend::kafka();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let overrides = dirs[0].path().join("rate-limits.json");
    let (acme, initech, globex) = (tenant("acme"), tenant("initech"), tenant("globex"));
    // acme: 5 requests in a bucket, one more every 20 s. initech: 10
    // records in a bucket, one more every 100 s.
    write_overrides(
        &overrides,
        serde_json::json!({
            acme.clone(): {"requests_per_sec": 0.05, "burst_secs": 100},
            initech.clone(): {"records_per_sec": 0.01, "burst_secs": 1000},
        }),
    );
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(node(&backend, dir.path(), &overrides).await);
    }
    let bases: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.addr)).collect();
    let client = reqwest::Client::new();

    // Alternating between the nodes: one bucket, counted down exactly.
    let mut remaining = Vec::new();
    for i in 0..5 {
        let a = post(&client, &bases[i % 2], &acme, 1).await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_eq!(a.limit, Some(5));
        assert!(a.reset.is_some_and(|r| r > 0 && r <= 100), "{:?}", a.reset);
        remaining.push(a.remaining.unwrap());
    }
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    for i in 0..3 {
        let a = post(&client, &bases[i % 2], &acme, 1).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(a.error.as_deref(), Some("quota_exceeded"));
        assert_eq!((a.limit, a.remaining), (Some(5), Some(0)));
        assert!(
            a.retry_after.is_some_and(|r| (19..=20).contains(&r)),
            "{:?}",
            a.retry_after
        );
    }
    // A tenant without limits gets no headers and no 429.
    let a = post(&client, &bases[0], &globex, 1).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!((a.limit, a.remaining), (None, None));

    // Records are charged once accepted: 12 of 10 leaves a debt of 2.
    let a = post(&client, &bases[0], &initech, 12).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!((a.limit, a.remaining), (Some(10), Some(10)));
    let a = post(&client, &bases[1], &initech, 1).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!((a.limit, a.remaining), (Some(10), Some(0)));
    assert!(
        a.retry_after.is_some_and(|r| (299..=300).contains(&r)),
        "{:?}",
        a.retry_after
    );

    // Raised in the file: both nodes admit acme again within seconds.
    write_overrides(
        &overrides,
        serde_json::json!({ acme.clone(): {"requests_per_sec": 1000} }),
    );
    for base in &bases {
        let mut deadline = Deadline::new(Duration::from_secs(10), Duration::from_millis(200));
        while post(&client, base, &acme, 1).await.status != StatusCode::ACCEPTED {
            deadline.tick("the raised limit to apply").await;
        }
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// Latencies (sorted) of `n` one-record requests of `tenant`, one every
/// `every`; panics on any answer but 202.
async fn steady(base: &str, tenant: &str, n: usize, every: Duration) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let mut ticks = tokio::time::interval(every);
    let mut took = Vec::new();
    for _ in 0..n {
        ticks.tick().await;
        let started = Instant::now();
        let a = post(&client, base, tenant, 1).await;
        took.push(started.elapsed());
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.error);
    }
    took.sort();
    took
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

/// One tenant sends ten times its limit; another, within its limits at a
/// steady rate, sees no 429 or 503 and a p99 within 2× of running alone
/// (with 5 ms of floor: a sub-millisecond p99 doubles with any scheduling
/// jitter on two cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_limit_costs_another_tenant_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = dir.path().join("rate-limits.json");
    let (noisy, quiet) = (tenant("noisy"), tenant("quiet"));
    write_overrides(
        &overrides,
        serde_json::json!({
            noisy.clone(): {"requests_per_sec": 20, "burst_secs": 1},
            quiet.clone(): {"requests_per_sec": 100, "records_per_sec": 10000},
        }),
    );
    // On Kafka (the in-process mock): the embedded log's fsync jitter on a
    // shared disk would be measured instead of the edge.
    let backend = Backend::kafka();
    let running = node(&backend, dir.path(), &overrides).await;
    let base = format!("http://{}", running.addr);
    let every = Duration::from_millis(25);
    // The noisy tenant's four senders, switched on and off so the quiet
    // tenant is measured alone and beside it in turns: whatever else loads
    // the machine meanwhile falls on both.
    let noisy_on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut hammers = Vec::new();
    for _ in 0..4 {
        let (base, noisy, stop, on) = (base.clone(), noisy.clone(), stop.clone(), noisy_on.clone());
        hammers.push(tokio::spawn(async move {
            // 4 × 50/s = 200/s, ten times its limit.
            let client = reqwest::Client::new();
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            let mut refused = 0;
            while !stop.is_cancelled() {
                ticks.tick().await;
                if on.load(std::sync::atomic::Ordering::Relaxed)
                    && post(&client, &base, &noisy, 1).await.status == StatusCode::TOO_MANY_REQUESTS
                {
                    refused += 1;
                }
            }
            refused
        }));
    }
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        noisy_on.store(false, std::sync::atomic::Ordering::Relaxed);
        alone.extend(steady(&base, &quiet, 30, every).await);
        noisy_on.store(true, std::sync::atomic::Ordering::Relaxed);
        beside.extend(steady(&base, &quiet, 30, every).await);
    }
    stop.cancel();
    let mut refused = 0;
    for h in hammers {
        refused += h.await.unwrap();
    }
    assert!(
        refused > 100,
        "the noisy tenant was refused only {refused} times"
    );
    alone.sort();
    beside.sort();
    let (alone, beside) = (p99(&alone), p99(&beside));
    eprintln!(
        "quiet tenant's p99: {alone:?} alone, {beside:?} beside the noisy one ({refused} of its requests refused)"
    );
    let floor = Duration::from_millis(5);
    assert!(
        beside <= 2 * alone.max(floor),
        "p99 beside the noisy tenant {beside:?}, alone {alone:?}"
    );
    running.shutdown().await.unwrap();
}

/// Reports and SQL draw on a bucket of their own: a tenant's importer over
/// its limit does not stop its dashboards, and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_sql_have_a_bucket_apart_from_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = dir.path().join("rate-limits.json");
    let acme = tenant("acme");
    // Three requests in a bucket, one more every 20 s.
    write_overrides(
        &overrides,
        serde_json::json!({ acme.clone(): {"requests_per_sec": 0.05, "burst_secs": 60} }),
    );
    let settings = Settings {
        state_url: redis_url(),
        rate_limits_file: Some(overrides.clone()),
        ..common::settings_without_clickhouse(dir.path())
    };
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let read = common::token(&acme, &[Role::Read]);
    let report = || {
        client
            .get(format!("{base}/v1/reports/spend?group_by=category"))
            .bearer_auth(&read)
            .send()
    };
    let sql = || {
        client
            .post(format!("{base}/v1/sql"))
            .bearer_auth(&read)
            .json(&serde_json::json!({"sql": "SELECT 1 AS one"}))
            .send()
    };
    let remaining = |r: &reqwest::Response| {
        r.headers()
            .get("ratelimit-remaining")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let first = report().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(remaining(&first).as_deref(), Some("2"));
    let second = sql().await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(remaining(&second).as_deref(), Some("1"));
    assert_eq!(report().await.unwrap().status(), StatusCode::OK);
    let refused = sql().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(remaining(&refused).as_deref(), Some("0"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "quota_exceeded");
    // Ingest still has its own three.
    for left in [2, 1, 0] {
        let a = post(&client, &base, &acme, 1).await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_eq!(a.remaining, Some(left));
    }
    running.shutdown().await.unwrap();
}
