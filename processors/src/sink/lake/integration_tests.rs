//! The lake sink against a real Delta table, in a directory and on S3
//! (moto): replays write nothing twice, what it holds is read back per
//! partition, and a batch of dead letters only still records its offsets.

use super::{LakeSink, LakeSinkConfig};
use crate::sink::{Row, Sink, SinkBatch};
use chrono::Utc;
use spendstream_schemas::{Category, EnrichedRecord, ExpenseRecord, expense_id, record_version};
use std::borrow::Cow;
use std::collections::BTreeMap;

pub(super) fn record(ext: &str, partition: i32, offset: i64) -> Row<'static> {
    let raw = format!(
        r#"{{"source":"s","external_id":"{ext}","account_id":"a","transaction_date":"2026-03-01","amount_minor":100,"currency":"USD"}}"#
    );
    let now = Utc::now();
    EnrichedRecord {
        expense_id: expense_id("acme", "s", ext),
        tenant_id: "acme".into(),
        version: record_version(1, offset),
        record: ExpenseRecord::from_json(&raw).unwrap(),
        category: Category::Other,
        merchant_normalized: None,
        batch_id: "b".into(),
        ingested_at: now,
        processed_at: now,
        log_partition: partition,
        log_offset: offset,
        base: None,
    }
    .map_text(Cow::Owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_write_nothing_twice_and_offsets_are_held_per_partition_on_file() {
    let dir = tempfile::tempdir().unwrap();
    replays_write_nothing_twice(LakeSinkConfig {
        url: format!("file://{}", dir.path().join("lake").display()),
        options: Default::default(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_write_nothing_twice_and_offsets_are_held_per_partition_on_s3() {
    let bucket = spendstream_lake::testing::TestBucket::create().await;
    replays_write_nothing_twice(LakeSinkConfig {
        url: bucket.url("expenses"),
        options: bucket.options(),
    })
    .await;
}

async fn replays_write_nothing_twice(config: LakeSinkConfig) {
    config.validate().unwrap();
    let sink = LakeSink::new(config.open().await.unwrap(), "g", "log-1");
    assert!(sink.committed(&[0, 1]).await.unwrap().is_empty());
    sink.ready().await.unwrap();

    let rows = vec![record("a", 0, 0), record("b", 0, 1), record("c", 1, 0)];
    let last = BTreeMap::from([(0, 1), (1, 0)]);
    let batch = SinkBatch {
        rows: &rows,
        last: &last,
    };
    for expected in [3, 0, 0] {
        assert_eq!(sink.write(batch).await.unwrap().rows, expected);
    }
    assert_eq!(sink.committed(&[0, 1, 2]).await.unwrap(), last);

    // A batch of partition 2 that held only dead letters still moves it.
    let letters_only = BTreeMap::from([(2, 5)]);
    sink.write(SinkBatch {
        rows: &[],
        last: &letters_only,
    })
    .await
    .unwrap();
    assert_eq!(sink.committed(&[2]).await.unwrap(), letters_only);
}

#[test]
fn urls_are_checked_without_io() {
    let check = |url: &str| {
        LakeSinkConfig {
            url: url.into(),
            options: Default::default(),
        }
        .validate()
    };
    assert!(check("s3://bucket/prefix").is_ok());
    assert!(check("gs://bucket").is_err());
    let err = check("s3://key:secret@bucket/p").unwrap_err();
    assert!(
        err.starts_with("--lake") && !err.contains("secret"),
        "{err}"
    );
}
