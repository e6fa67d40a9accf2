//! Helpers for the end-to-end tests: start Spendstream in-process on a real
//! socket, mint tokens, read whole reports, poll with deadlines.
#![allow(dead_code)]

use serde_json::Value;
use spendstream::{Roles, Running, Settings};
use spendstream_http::{JwtKeys, Role};
use spendstream_ingest::IngestConfig;
use spendstream_processors::ProcessorConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

pub fn keys() -> JwtKeys {
    JwtKeys::new(SECRET).unwrap()
}

pub fn token(tenant: &str, roles: &[Role]) -> String {
    spendstream::secret::mint(&keys(), tenant, roles, chrono::Duration::hours(1))
}

pub fn settings(dir: &Path) -> Settings {
    Settings {
        roles: Roles::ALL,
        listen: "127.0.0.1:0".parse().unwrap(),
        log_url: format!("embedded://{}", dir.join("log").display()),
        lake_url: format!("file://{}", dir.join("lake").display()),
        keys: keys(),
        ingest: IngestConfig {
            chunk_records: 500,
            ..IngestConfig::default()
        },
        processor: ProcessorConfig {
            group: "test-group".into(),
            max_batch_records: 5_000,
            max_batch_wait: Duration::from_millis(200),
        },
        compact_interval: Duration::ZERO,
        log_retention: Duration::ZERO,
    }
}

pub async fn start(dir: &Path) -> Running {
    spendstream::start(settings(dir)).await.unwrap()
}

/// Polling with a deadline, the one way these tests wait: look, and if the
/// condition does not hold yet, `tick` (which fails the test once the
/// deadline passed) before looking again.
pub struct Deadline {
    until: Instant,
    every: tokio::time::Interval,
}

impl Deadline {
    pub fn new(within: Duration, every: Duration) -> Self {
        let mut every = tokio::time::interval(every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            until: Instant::now() + within,
            every,
        }
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.until
    }

    /// Fails with `what` past the deadline; otherwise waits one interval.
    pub async fn tick(&mut self, what: impl std::fmt::Display) {
        assert!(!self.expired(), "gave up waiting: {what}");
        self.every.tick().await;
    }
}

/// Waits until the processors handled `n` records (written or dead-lettered).
pub async fn wait_processed(running: &Running, n: u64) {
    let stats = running.stats.clone().unwrap();
    let mut poll = Deadline::new(Duration::from_secs(120), Duration::from_millis(50));
    loop {
        let done =
            stats.written.load(Ordering::Relaxed) + stats.dead_lettered.load(Ordering::Relaxed);
        if done >= n {
            return;
        }
        poll.tick(format_args!("processors handled {done} of {n} records"))
            .await;
    }
}

/// Every row of a report, following cursors. Key: (group, currency) →
/// (count, amount_minor, amount text).
pub async fn report(
    base: &str,
    token: &str,
    query: &str,
) -> BTreeMap<(Option<String>, String), (i64, i128, String)> {
    let client = reqwest::Client::new();
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/reports/spend?{query}&limit=7");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = client.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let body: Value = resp.json().await.unwrap();
        for row in body["rows"].as_array().unwrap() {
            let key = (
                row["group"].as_str().map(str::to_string),
                row["currency"].as_str().unwrap().to_string(),
            );
            let minor: i128 = row["amount_minor"].to_string().parse().unwrap();
            let prev = out.insert(
                key,
                (
                    row["count"].as_i64().unwrap(),
                    minor,
                    row["amount"].as_str().unwrap().to_string(),
                ),
            );
            assert!(prev.is_none(), "a group appeared on two pages");
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}
