//! Crash tests against the real binary: the process is killed while the
//! processors are mid-batch (SIGKILL), or aborts in the window between the
//! lake commit and the offset commit; after a restart every accepted record
//! is in the reports exactly once.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `spendstream up` on port 0 and reads the bound address from the
/// line it prints, so parallel tests never race for a port.
fn spawn(dir: &Path, failpoint: Option<&str>) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spendstream"));
    cmd.args(["up", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--batch-max-records",
            "700",
            "--batch-max-wait-ms",
            "50",
            "--compact-interval-secs",
            "0",
        ])
        .env(
            "SPENDSTREAM_JWT_SECRET",
            std::str::from_utf8(common::SECRET).unwrap(),
        )
        .env("SPENDSTREAM_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match failpoint {
        Some(f) => cmd.env("SPENDSTREAM_FAILPOINT", f),
        None => cmd.env_remove("SPENDSTREAM_FAILPOINT"),
    };
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    // A thread, so a server that never prints cannot hang the test: the
    // receiver below waits with a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("Spendstream is up on ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server never said where it listens");
    Server { child, base }
}

async fn wait_healthy(server: &mut Server) {
    let mut poll = common::Deadline::new(Duration::from_secs(60), Duration::from_millis(50));
    loop {
        if let Ok(r) = reqwest::get(format!("{}/healthz", server.base)).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "the server exited during start-up"
        );
        poll.tick("the server did not start").await;
    }
}

/// A Prometheus counter's value (0 when not yet reported).
async fn counter(base: &str, name_and_labels: &str) -> f64 {
    let Ok(resp) = reqwest::get(format!("{base}/metrics")).await else {
        return -1.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_counts_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path(), None);
    wait_healthy(&mut server).await;
    let model = common::ingest(&server.base, 0, 30_000).await;

    // Kill while the processors are partway through: some written, not all.
    let mut poll = common::Deadline::new(Duration::from_secs(120), Duration::from_millis(5));
    loop {
        let written = counter(
            &server.base,
            "spendstream_processor_records_total{outcome=\"written\"}",
        )
        .await;
        if written > 0.0 && written < model.len() as f64 {
            break;
        }
        assert!(
            written < model.len() as f64,
            "processing finished before the kill; make the load larger"
        );
        poll.tick("processing never started").await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();

    let mut server = spawn(dir.path(), None);
    wait_healthy(&mut server).await;
    common::wait_for_totals(&server.base, &model).await;
    // Still exact once everything settled, with more records arriving.
    let more = common::ingest(&server.base, 30_000, 2_000).await;
    let mut all = model;
    all.extend(more);
    common::wait_for_totals(&server.base, &all).await;
    assert_eq!(
        common::lake_rows(dir.path()).await,
        (all.len() as i64, all.len() as i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_between_lake_commit_and_offset_commit_is_replayed_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path(), Some("after_lake_commit"));
    wait_healthy(&mut server).await;
    let model = common::ingest(&server.base, 0, 4_000).await;
    // The first lake commit aborts the process before its offsets commit.
    let mut poll = common::Deadline::new(Duration::from_secs(60), Duration::from_millis(20));
    while server.child.try_wait().unwrap().is_none() {
        poll.tick("the failpoint never fired").await;
    }

    let mut server = spawn(dir.path(), None);
    wait_healthy(&mut server).await;
    common::wait_for_totals(&server.base, &model).await;
    assert_eq!(
        common::lake_rows(dir.path()).await,
        (model.len() as i64, model.len() as i64)
    );
    // The batch the lake already held was detected and skipped.
    let skipped = counter(
        &server.base,
        "spendstream_processor_records_total{outcome=\"replay_skipped\"}",
    )
    .await;
    assert!(skipped > 0.0, "no replay was detected: {skipped}");
    let body: Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ready");
}
