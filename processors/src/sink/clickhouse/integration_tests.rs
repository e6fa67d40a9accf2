//! The ClickHouse sink against a real server: `SPENDSTREAM_TEST_CLICKHOUSE`
//! (scripts/test starts Debian's clickhouse-server and sets it). Each test
//! works in a database of its own.

use super::{ClickHouseConfig, ClickHouseSink, migrate, status};
use crate::sink::{Row as EnrichedRow, Sink, SinkBatch};
use chrono::Utc;
use clickhouse::Row;
use serde::Deserialize;
use spendstream_schemas::{Category, EnrichedRecord, ExpenseRecord, expense_id, record_version};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A fresh database on the test server.
fn config() -> ClickHouseConfig {
    let url = std::env::var("SPENDSTREAM_TEST_CLICKHOUSE").expect(
        "SPENDSTREAM_TEST_CLICKHOUSE is not set: run the tests with scripts/test, which starts ClickHouse",
    );
    let mut config = ClickHouseConfig::from_url(&url).unwrap();
    config.database = format!("spendstream_test_{}", uuid::Uuid::new_v4().simple());
    config
}

async fn drop_database(config: &ClickHouseConfig) {
    let _ = config
        .server_client()
        .query(&format!("DROP DATABASE IF EXISTS {}", config.database))
        .execute()
        .await;
}

fn record(tenant: &str, ext: &str, minor: i64, date: &str, offset: i64) -> EnrichedRow<'static> {
    let raw = format!(
        r#"{{"source":"s","external_id":"{ext}","account_id":"a","transaction_date":"{date}","amount_minor":{minor},"currency":"USD","merchant_name":"SQ *BLUE BOTTLE","merchant_mcc":"5814","posted_at":"2026-03-02T10:11:12Z","metadata":{{"k":"v"}}}}"#
    );
    let now = Utc::now();
    EnrichedRecord {
        expense_id: expense_id(tenant, "s", ext),
        tenant_id: tenant.into(),
        version: record_version(1, offset),
        record: ExpenseRecord::from_json(&raw).unwrap(),
        category: Category::from_mcc(5814),
        merchant_normalized: Some("Blue Bottle".into()),
        batch_id: "b".into(),
        ingested_at: now,
        processed_at: now,
        log_partition: 0,
        log_offset: offset,
        base: None,
    }
    .map_text(Cow::Owned)
}

#[derive(Row, Deserialize, Debug, PartialEq)]
struct Totals {
    n: u64,
    total: i64,
}

async fn latest_totals(config: &ClickHouseConfig, tenant: &str) -> Totals {
    config
        .client()
        .query("SELECT count() AS n, sum(amount_minor) AS total FROM expenses_latest WHERE tenant_id = ?")
        .bind(tenant)
        .fetch_one::<Totals>()
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_apply_once_even_twice_at_once_and_edits_are_noticed() {
    let config = config();
    let dry = migrate(&config, true).await.unwrap();
    assert_eq!(dry.applied, Vec::<u32>::new());
    assert_eq!(
        dry.pending.len(),
        spendstream_schemas::clickhouse::migrations().len()
    );
    // Nothing was created by the dry run.
    assert!(status(&config).await.unwrap().applied.is_empty());
    let (a, b) = tokio::join!(migrate(&config, false), migrate(&config, false));
    a.unwrap();
    b.unwrap();
    let after = status(&config).await.unwrap();
    assert!(after.pending.is_empty(), "{after:?}");
    let all = spendstream_schemas::clickhouse::migrations().len() as u32;
    assert_eq!(after.applied, (1..=all).collect::<Vec<_>>());
    assert!(migrate(&config, false).await.unwrap().pending.is_empty());
    // A migration recorded with other statements is refused loudly.
    config
        .client()
        .query("INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (2, 'x', 'edited', now() + 5)")
        .execute()
        .await
        .unwrap();
    let error = status(&config).await.unwrap_err().to_string();
    assert!(error.contains("migration 2"), "{error}");
    drop_database(&config).await;
}

/// The table the migrations make has the lake's columns, in order, with
/// the types the sink writes.
#[tokio::test]
async fn the_migrated_table_has_the_columns_of_the_lake() {
    let config = config();
    migrate(&config, false).await.unwrap();
    #[derive(Row, Deserialize)]
    struct Column {
        name: String,
        #[serde(rename = "type")]
        ty: String,
    }
    let columns: Vec<(String, String)> = config
        .client()
        .query("SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'expenses'")
        .fetch_all::<Column>()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.ty))
        .collect();
    assert_eq!(columns, spendstream_schemas::clickhouse::expenses_columns());
    drop_database(&config).await;
}

#[tokio::test]
async fn a_batch_written_three_times_counts_once_and_updates_win() {
    let config = config();
    migrate(&config, false).await.unwrap();
    let sink = ClickHouseSink::connect(config.clone(), "g", "log-1")
        .await
        .unwrap();
    let rows: Vec<EnrichedRow<'_>> = (0..50)
        .map(|i| record("acme", &format!("x{i}"), 100 + i, "2026-03-01", i))
        .collect();
    let last = BTreeMap::from([(0, 49)]);
    let batch = SinkBatch {
        rows: &rows,
        last: &last,
    };
    assert_eq!(sink.write(batch).await.unwrap().rows, 50);
    // Replays: the sink knows what it holds...
    assert_eq!(sink.write(batch).await.unwrap().rows, 0);
    assert_eq!(
        sink.committed(&[0, 1]).await.unwrap(),
        BTreeMap::from([(0, 49)])
    );
    // ...and a replay it does not know of (a crash between the insert and
    // the offsets) folds into the same versions.
    let other = ClickHouseSink::connect(config.clone(), "g2", "log-1")
        .await
        .unwrap();
    other.write(batch).await.unwrap();
    let want: i64 = (0..50).map(|i| 100 + i).sum();
    assert_eq!(
        latest_totals(&config, "acme").await,
        Totals { n: 50, total: want }
    );
    // A new version of one expense, with its date moved to another month
    // (another partition), replaces the old one.
    let update = vec![record("acme", "x0", 999, "2026-04-01", 50)];
    sink.write(SinkBatch {
        rows: &update,
        last: &BTreeMap::from([(0, 50)]),
    })
    .await
    .unwrap();
    assert_eq!(
        latest_totals(&config, "acme").await,
        Totals {
            n: 50,
            total: want - 100 + 999
        }
    );
    #[derive(Row, Deserialize)]
    struct Day {
        n: u64,
        total: i64,
    }
    let daily = config
        .client()
        .query("SELECT sum(expenses) AS n, sum(amount_minor) AS total FROM daily_spend WHERE tenant_id = 'acme'")
        .fetch_one::<Day>()
        .await
        .unwrap();
    assert_eq!((daily.n, daily.total), (50, want - 100 + 999));
    drop_database(&config).await;
}

#[tokio::test]
async fn every_field_round_trips_and_out_of_range_dates_are_refused() {
    let config = config();
    migrate(&config, false).await.unwrap();
    let sink = ClickHouseSink::connect(config.clone(), "g", "log-1")
        .await
        .unwrap();
    let row = record("acme", "rt", -1234, "2026-03-01", 7);
    sink.write(SinkBatch {
        rows: std::slice::from_ref(&row),
        last: &BTreeMap::from([(0, 7)]),
    })
    .await
    .unwrap();
    #[derive(Row, Deserialize, Debug)]
    struct Back {
        expense_id: String,
        version: i64,
        transaction_date: String,
        posted_at: String,
        amount_minor: i64,
        currency: String,
        merchant_mcc: Option<i16>,
        category: String,
        metadata: Option<String>,
        billed_amount_minor: Option<i64>,
    }
    let back = config
        .client()
        .query(
            "SELECT expense_id, version, toString(transaction_date) AS transaction_date, \
             toString(assumeNotNull(posted_at), 'UTC') AS posted_at, amount_minor, currency, merchant_mcc, category, \
             metadata, billed_amount_minor FROM expenses",
        )
        .fetch_one::<Back>()
        .await
        .unwrap();
    assert_eq!(back.expense_id, row.expense_id.hyphenated().to_string());
    assert_eq!(back.version, row.version);
    assert_eq!(back.transaction_date, "2026-03-01");
    assert_eq!(back.posted_at, "2026-03-02 10:11:12");
    assert_eq!((back.amount_minor, back.currency.as_str()), (-1234, "USD"));
    assert_eq!(back.merchant_mcc, Some(5814));
    assert_eq!(back.category, row.category.as_str());
    assert_eq!(back.metadata.as_deref(), Some(r#"{"k":"v"}"#));
    assert_eq!(back.billed_amount_minor, None);

    let far = record("acme", "far", 1, "2150-01-01", 8);
    let reason = sink.refuses(&far).expect("a date ClickHouse cannot hold");
    assert!(reason.contains("2105-12-31"), "{reason}");
    assert!(sink.refuses(&row).is_none());
    drop_database(&config).await;
}
