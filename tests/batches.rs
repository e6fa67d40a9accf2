//! `GET /v1/batches/{id}` on the real parts (embedded log, local lake,
//! ClickHouse): a batch is `accepted` while no processor runs, then
//! `visible` with exact counts per sink and dead letters once one does;
//! another tenant gets 404 for it.

mod common;

use common::Deadline;
use serde_json::Value;
use spendstream::{Roles, Running};
use spendstream_http::Role;
use std::path::Path;
use std::time::Duration;

async fn start(dir: &Path, clickhouse: &str, roles: Roles) -> (Running, String) {
    let settings = spendstream::Settings {
        roles,
        clickhouse_url: Some(clickhouse.to_string()),
        ..common::settings(dir)
    };
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    (running, base)
}

async fn status(base: &str, token: &str, batch: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/batches/{batch}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_moves_from_accepted_to_visible_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let clickhouse = common::clickhouse_url();
    // A first batch through every role makes the lake and the ClickHouse
    // tables.
    let (running, base) = start(dir.path(), &clickhouse, Roles::ALL).await;
    let model = common::ingest(&base, 0, 10).await;
    common::wait_for_totals(&base, &model).await;
    running.shutdown().await.unwrap();

    // No processor: the batch is accepted and nowhere else yet.
    let edge = Roles {
        ingest: true,
        process: false,
        query: true,
    };
    let (running, base) = start(dir.path(), &clickhouse, edge).await;
    let (body, _) = common::acme_records(100, 5);
    // One record ClickHouse's Date cannot hold (it becomes a dead letter of
    // that sink; the lake takes it), one the edge rejects.
    let body = format!(
        "{body}{}\n{{\"source\":\"s\"}}\n",
        r#"{"source":"s","external_id":"far","account_id":"a","transaction_date":"2150-01-01","amount_minor":5,"currency":"USD"}"#
    );
    let answer: Value = common::post_ndjson(&reqwest::Client::new(), &base, body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 6, "{answer}");
    let batch = answer["batch_id"].as_str().unwrap().to_string();
    let ingest_token = common::token("acme", &[Role::Ingest]);
    let (code, seen) = status(&base, &ingest_token, &batch).await;
    assert_eq!(code, 200, "{seen}");
    assert_eq!(seen["status"], "accepted", "{seen}");
    assert_eq!(seen["accepted"], 6);
    assert_eq!(seen["rejected"], 1);
    assert_eq!(seen["rejected_by_code"]["missing_field"], 1);
    assert_eq!(seen["sinks"]["lake"], 0);
    assert_eq!(seen["dead_letters"], 0);
    assert_eq!(seen["visible_at"], Value::Null);
    // Another tenant's token, whatever its roles, does not see it.
    let (code, other) = status(
        &base,
        &common::token("globex", &[Role::Read, Role::Ingest, Role::Admin]),
        &batch,
    )
    .await;
    assert_eq!((code, other["error"].as_str()), (404, Some("not_found")));
    // Nor does a token of neither role; nor is a made-up id found.
    assert_eq!(
        status(&base, &common::token("acme", &[Role::Admin]), &batch)
            .await
            .0,
        403
    );
    assert_eq!(status(&base, &ingest_token, "not-a-batch").await.0, 404);
    let made_up = uuid::Uuid::new_v4().to_string();
    assert_eq!(status(&base, &ingest_token, &made_up).await.0, 404);
    running.shutdown().await.unwrap();

    // The processors run: it becomes visible, counted exactly.
    let (running, base) = start(dir.path(), &clickhouse, Roles::ALL).await;
    let read_token = common::token("acme", &[Role::Read]);
    let mut poll = Deadline::new(Duration::from_secs(120), Duration::from_millis(100));
    let seen = loop {
        let (code, seen) = status(&base, &read_token, &batch).await;
        assert_eq!(code, 200, "{seen}");
        if seen["status"] == "visible" && seen["sinks"]["clickhouse"] == 5 {
            break seen;
        }
        poll.tick(format_args!("batch {seen}")).await;
    };
    assert_eq!(seen["sinks"]["lake"], 6, "{seen}");
    assert_eq!(seen["dead_letters"], 1, "{seen}");
    assert_eq!(seen["accepted"], 6);
    let time = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(seen[field].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{field} of {seen}: {e}"))
    };
    assert!(time("visible_at") > time("answered_at"), "{seen}");
    running.shutdown().await.unwrap();
}
