//! Test support (feature `testing`): buckets on the S3 server the test
//! script starts (moto, in `SPENDSTREAM_TEST_S3`), and private moto servers
//! for tests that stop one (`SPENDSTREAM_TEST_MOTO` names the binary).

use crate::{Lake, LakeOptions};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The test secret key: distinctive, so tests can check that no log line
/// or error ever prints it.
pub const SECRET_KEY: &str = "spendstream-test-secret-never-printed";
const ACCESS_KEY: &str = "spendstream-test-key";
const REGION: &str = "us-east-1";

/// The S3 endpoint of the test script's moto server.
pub fn endpoint() -> String {
    std::env::var("SPENDSTREAM_TEST_S3")
        .expect(
            "SPENDSTREAM_TEST_S3 is not set: run the tests with scripts/test, which starts moto",
        )
        .trim_end_matches('/')
        .to_string()
}

/// A new, empty bucket of its own on an S3 endpoint.
#[derive(Debug, Clone)]
pub struct TestBucket {
    pub endpoint: String,
    pub name: String,
}

impl TestBucket {
    /// A bucket on the test script's moto server.
    pub async fn create() -> Self {
        Self::create_at(&endpoint()).await
    }

    /// A bucket on the server at `endpoint`, made with a plain PUT (the
    /// only thing object_store cannot do).
    pub async fn create_at(endpoint: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!(
            "t-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let answer = reqwest::Client::new()
            .put(format!("{endpoint}/{name}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test S3 server at {endpoint}: {e}"));
        assert!(
            answer.status().is_success(),
            "creating bucket {name} answered {}",
            answer.status()
        );
        Self {
            endpoint: endpoint.to_string(),
            name,
        }
    }

    /// The lake URL of `prefix` in this bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// object_store settings reaching this server (what `AWS_*` gives a
    /// process).
    pub fn storage(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_access_key_id", ACCESS_KEY),
            ("aws_secret_access_key", SECRET_KEY),
            ("aws_region", REGION),
            ("aws_allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Default lake options on this server.
    pub fn options(&self) -> LakeOptions {
        LakeOptions {
            storage: self.storage(),
            ..LakeOptions::default()
        }
    }

    /// The environment a `spendstream` process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The bucket as an object store (keys relative to the bucket).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        let mut builder = AmazonS3Builder::new().with_bucket_name(&self.name);
        for (key, value) in self.storage() {
            builder = builder.with_config(key.parse().expect("a valid S3 option"), value);
        }
        Arc::new(builder.build().expect("a valid S3 store"))
    }

    /// Every key under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt as _;
        let prefix = object_store::path::Path::from(prefix);
        let mut keys: Vec<String> = self
            .store()
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .expect("listing the test bucket");
        keys.sort();
        keys
    }
}

/// A moto server of a test's own, which the test may pause (`SIGSTOP`) and
/// resume; killed when dropped.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts `$SPENDSTREAM_TEST_MOTO` on a free port and waits until it
    /// answers.
    pub async fn start() -> Self {
        let binary = std::env::var("SPENDSTREAM_TEST_MOTO").expect(
            "SPENDSTREAM_TEST_MOTO is not set: run the tests with scripts/test, which installs moto",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if client.get(&moto.endpoint).send().await.is_ok() {
                return moto;
            }
            assert!(Instant::now() < deadline, "moto did not come up in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Freezes the server: connections are accepted but never answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rows in `lake` and distinct `(expense_id, version)` pairs among them:
/// equal when no record was written twice.
pub async fn rows_and_distinct(lake: &Lake) -> (i64, i64) {
    use datafusion::arrow::array::Int64Array;
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("expenses", lake.table_provider(&ctx).await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT CAST(COUNT(*) AS BIGINT) AS total_rows, CAST((SELECT COUNT(*) FROM (SELECT DISTINCT expense_id, version FROM expenses)) AS BIGINT) AS distinct_rows FROM expenses")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let col = |i: usize| {
        batches[0]
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    (col(0), col(1))
}

/// A record of `tenant` (source `s`, account `a`, EUR) as processors write
/// it, at log partition 0 and offset `offset`, which is also its version.
pub fn record(
    tenant: &str,
    ext: &str,
    amount: &str,
    date: &str,
    offset: i64,
) -> spendstream_schemas::EnrichedRecord {
    let raw = format!(
        r#"{{"source":"s","external_id":"{ext}","account_id":"a","transaction_date":"{date}","amount":"{amount}","currency":"EUR"}}"#
    );
    let now = chrono::Utc::now();
    spendstream_schemas::EnrichedRecord {
        expense_id: spendstream_schemas::expense_id(tenant, "s", ext),
        tenant_id: tenant.into(),
        version: offset,
        record: spendstream_schemas::ExpenseRecord::from_json(&raw)
            .expect("the test record is valid"),
        category: spendstream_schemas::Category::Other,
        merchant_normalized: None,
        batch_id: "b".into(),
        ingested_at: now,
        processed_at: now,
        log_partition: 0,
        log_offset: offset,
        base: None,
    }
}
