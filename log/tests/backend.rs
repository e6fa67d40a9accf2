//! The log contract, written once as generic scenario bodies and run against
//! every backend: the embedded log, and Kafka (librdkafka's mock cluster with
//! 3 brokers, or the broker in `SPENDSTREAM_TEST_KAFKA`).

use spendstream_log::kafka::testing::TestKafka;
use spendstream_log::{DeadLetter, LetterScope, Log, Record, embedded::EmbeddedLog};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rec(key: &str, value: &str) -> Record {
    Record {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        headers: vec![("batch_id".into(), "b1".into())].into(),
    }
}

async fn embedded(dir: &tempfile::TempDir) -> Arc<dyn Log> {
    Arc::new(EmbeddedLog::open(dir.path(), Some(4)).await.unwrap())
}

/// Polls until `want` records arrived or the deadline passed.
async fn drain(
    consumer: &mut dyn spendstream_log::LogConsumer,
    want: usize,
) -> Vec<spendstream_log::Consumed> {
    // Generous: a Kafka group needs a rebalance (seconds) before reading.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        out.extend(
            consumer
                .poll(1000, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    out
}

async fn same_key_same_partition_in_order(log: Arc<dyn Log>) {
    let producer = log.producer();
    let mut positions = Vec::new();
    for i in 0..5 {
        positions.extend(
            producer
                .append(vec![
                    rec("k1", &format!("v{i}")),
                    rec(&format!("other{i}"), "x"),
                ])
                .await
                .unwrap(),
        );
    }
    let k1: Vec<_> = positions.iter().step_by(2).collect();
    assert!(k1.iter().all(|p| p.partition == k1[0].partition));
    assert!(k1.windows(2).all(|w| w[0].offset < w[1].offset));

    let mut consumer = log.consumer("g").await.unwrap();
    let got = drain(consumer.as_mut(), 10).await;
    assert_eq!(got.len(), 10);
    let values: Vec<_> = got
        .iter()
        .filter(|c| c.key == b"k1".as_slice())
        .map(|c| String::from_utf8(c.value.to_vec()).unwrap())
        .collect();
    assert_eq!(values, ["v0", "v1", "v2", "v3", "v4"]);
    assert_eq!(
        got[0].headers.to_vec(),
        vec![("batch_id".to_string(), "b1".to_string())]
    );
    // Offsets per partition are dense from 0.
    let mut per: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for c in &got {
        per.entry(c.partition).or_default().push(c.offset);
    }
    for offsets in per.values() {
        assert_eq!(*offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    }
}

async fn resumes_from_commit_and_redelivers_uncommitted(log: Arc<dyn Log>) {
    let producer = log.producer();
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    producer
        .append(keys.iter().map(|k| rec(k, k)).collect())
        .await
        .unwrap();

    let mut c1 = log.consumer("g").await.unwrap();
    let first = drain(c1.as_mut(), 40).await;
    assert_eq!(first.len(), 40);
    // Commit only what sits below the middle of each partition.
    let mut commits: BTreeMap<u32, i64> = BTreeMap::new();
    for c in &first {
        let e = commits.entry(c.partition).or_insert(0);
        *e = (*e).max(c.offset + 1);
    }
    let half: Vec<(u32, i64)> = commits.iter().map(|(p, o)| (*p, o / 2)).collect();
    c1.commit(&half).await.unwrap();
    // A commit never moves a group backwards.
    c1.commit(&half.iter().map(|(p, _)| (*p, 0)).collect::<Vec<_>>())
        .await
        .unwrap();
    drop(c1);

    let mut c2 = log.consumer("g").await.unwrap();
    let expected: usize = commits
        .iter()
        .map(|(p, end)| (end - half.iter().find(|(q, _)| q == p).unwrap().1) as usize)
        .sum();
    let second = drain(c2.as_mut(), expected).await;
    assert_eq!(second.len(), expected);
    for c in &second {
        assert!(c.offset >= half.iter().find(|(p, _)| *p == c.partition).unwrap().1);
    }
    // Nothing more arrives.
    assert!(
        c2.poll(100, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );

    // Another group starts from the beginning.
    let mut other = log.consumer("other").await.unwrap();
    assert_eq!(drain(other.as_mut(), 40).await.len(), 40);
}

async fn concurrent_appends_get_unique_positions(log: Arc<dyn Log>) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let producer = log.producer();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..20 {
                out.extend(
                    producer
                        .append(vec![rec(&format!("t{t}-{i}"), "v")])
                        .await
                        .unwrap(),
                );
            }
            out
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for p in t.await.unwrap() {
            assert!(all.insert(p), "position {p:?} given twice");
        }
    }
    assert_eq!(all.len(), 160);
}

async fn consumer_wakes_on_append(log: Arc<dyn Log>) {
    let mut consumer = log.consumer("g").await.unwrap();
    let producer = log.producer();
    let waiter =
        tokio::spawn(async move { consumer.poll(10, Duration::from_secs(10)).await.unwrap() });
    producer.append(vec![rec("a", "1")]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
}

async fn dead_letters_are_idempotent_and_tenant_scoped(log: Arc<dyn Log>) {
    let store = log.dead_letters();
    let letter = |tenant: &str, offset| DeadLetter {
        tenant_id: Some(tenant.into()),
        group: "g".into(),
        partition: 1,
        offset,
        code: "invalid_currency".into(),
        message: "nope".into(),
        payload: b"{}".to_vec(),
    };
    let unattributed = DeadLetter {
        tenant_id: None,
        offset: 3,
        code: "invalid_envelope".into(),
        payload: b"\xff".to_vec(),
        ..letter("x", 0)
    };
    store
        .put(vec![letter("a", 1), letter("b", 2), unattributed])
        .await
        .unwrap();
    store.put(vec![letter("a", 1)]).await.unwrap();
    let a = store.list(LetterScope::Tenant("a"), 0, 10).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].letter.code, "invalid_currency");
    assert_eq!(a[0].letter.payload, b"{}");
    assert!(
        store
            .list(LetterScope::Tenant("a"), a[0].id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list(LetterScope::Tenant("b"), 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // A letter no tenant could be read from is kept and listed apart, for
    // operators; no tenant sees it.
    let orphans = store.list(LetterScope::Unattributed, 0, 10).await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].letter.tenant_id, None);
    assert_eq!(orphans[0].letter.payload, b"\xff");
    // Fetched one by one, per tenant; a replay is remembered.
    let id = a[0].id;
    assert!(store.get("b", id).await.unwrap().is_none());
    assert_eq!(store.get("a", id).await.unwrap().unwrap().replayed, None);
    let at = spendstream_log::Position {
        partition: 3,
        offset: 42,
    };
    store.mark_replayed("a", id, at).await.unwrap();
    assert_eq!(
        store
            .get("a", id)
            .await
            .unwrap()
            .unwrap()
            .replayed
            .unwrap()
            .position,
        at
    );
}

macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(super::embedded(&dir).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka() {
                let kafka = super::TestKafka::start(4).unwrap();
                super::$name(std::sync::Arc::new(kafka.open().await.unwrap())).await;
            }
        }
    )*};
}

/// A log keeps its identity across reopening, and its end offsets count
/// what was appended.
async fn identity_is_stable_and_end_offsets_count(log: Arc<dyn Log>) {
    let id = log.log_id().to_string();
    assert!(id.len() >= 16, "{id}");
    assert_eq!(log.end_offsets().await.unwrap(), vec![0; 4]);
    let positions = log
        .producer()
        .append((0..40).map(|i| rec(&format!("k{i}"), "v")).collect())
        .await
        .unwrap();
    let mut want = vec![0i64; 4];
    for p in positions {
        want[p.partition as usize] = want[p.partition as usize].max(p.offset + 1);
    }
    assert_eq!(log.end_offsets().await.unwrap(), want);
}

per_backend!(
    identity_is_stable_and_end_offsets_count,
    same_key_same_partition_in_order,
    resumes_from_commit_and_redelivers_uncommitted,
    concurrent_appends_get_unique_positions,
    consumer_wakes_on_append,
    dead_letters_are_idempotent_and_tenant_scoped,
);

#[tokio::test]
async fn embedded_retention_keeps_what_any_group_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(1)).await.unwrap();
    // Five appends of two: five segments, offsets 0-1, 2-3, ... 8-9.
    for i in 0..5 {
        log.producer()
            .append(vec![
                rec(&format!("k{i}a"), "v"),
                rec(&format!("k{i}b"), "v"),
            ])
            .await
            .unwrap();
    }
    // No group has committed anything: nothing may go.
    assert_eq!(log.enforce_retention(Duration::ZERO).await.unwrap(), 0);
    let mut fast = log.consumer("fast").await.unwrap();
    fast.commit(&[(0, 8)]).await.unwrap();
    let mut slow = log.consumer("slow").await.unwrap();
    slow.commit(&[(0, 3)]).await.unwrap();
    // Too young to go.
    assert_eq!(
        log.enforce_retention(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    // Old enough: only whole segments below the slowest group's commit
    // (0-1; 2-3 holds offset 3, which the slow group still needs).
    assert_eq!(log.enforce_retention(Duration::ZERO).await.unwrap(), 2);
    // The slow group's member restarts (one member per group at a time)
    // and reads from the middle of a segment.
    drop(slow);
    let mut again = log.consumer("slow").await.unwrap();
    let rest = drain(again.as_mut(), 7).await;
    assert_eq!(rest.first().map(|c| c.offset), Some(3));
    assert_eq!(rest.len(), 7);
    again.commit(&[(0, 10)]).await.unwrap();
    assert_eq!(log.enforce_retention(Duration::ZERO).await.unwrap(), 6);
    // Offsets keep counting after a trim.
    let next = log.producer().append(vec![rec("new", "v")]).await.unwrap();
    assert_eq!(next[0].offset, 10);
}

#[tokio::test]
async fn embedded_reads_resume_inside_large_appends() {
    // One append larger than a segment, read in polls that end mid-segment,
    // with a restart in between: every record once, in order.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(1)).await.unwrap();
    let n = 10_000;
    let positions = log
        .producer()
        .append(
            (0..n)
                .map(|i| rec(&format!("k{i}"), &format!("v{i}")))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(positions.last().unwrap().offset, n as i64 - 1);
    let mut seen = Vec::new();
    {
        let mut consumer = log.consumer("g").await.unwrap();
        while seen.len() < 4_321 {
            let got = consumer
                .poll(4_321 - seen.len(), Duration::from_secs(5))
                .await
                .unwrap();
            assert!(!got.is_empty());
            seen.extend(got);
        }
        consumer.commit(&[(0, 4_321)]).await.unwrap();
    }
    let mut consumer = log.consumer("g").await.unwrap();
    seen.extend(drain(consumer.as_mut(), n - 4_321).await);
    let values: Vec<String> = seen
        .iter()
        .map(|c| String::from_utf8(c.value.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    assert_eq!(values, want);
    assert!(seen.iter().enumerate().all(|(i, c)| c.offset == i as i64));
    assert_eq!(
        seen[9_999].headers.to_vec(),
        vec![("batch_id".to_string(), "b1".to_string())]
    );
}

#[tokio::test]
async fn embedded_positions_hold_across_partitions_and_segments() {
    // Partitions that already hold records, and an append that fills
    // several segments in each: every position is where the record is
    // read back, whether appended at once or prepared first.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(3)).await.unwrap();
    let producer = log.producer();
    let batch = |from: usize, n: usize| -> Vec<Record> {
        (from..from + n)
            .map(|i| rec(&format!("k{i}"), &format!("v{i}")))
            .collect()
    };
    let mut written = BTreeMap::new();
    let mut note = |positions: Vec<spendstream_log::Position>, from: usize| {
        for (i, p) in positions.into_iter().enumerate() {
            assert!(
                written
                    .insert((p.partition, p.offset), format!("v{}", from + i))
                    .is_none()
            );
        }
    };
    note(producer.append(batch(0, 7)).await.unwrap(), 0);
    note(producer.append(batch(7, 20_000)).await.unwrap(), 7);
    let prepared = producer.prepare(batch(20_007, 9_000)).await.unwrap();
    assert_eq!(prepared.len(), 9_000);
    note(producer.append_prepared(prepared).await.unwrap(), 20_007);

    let mut consumer = log.consumer("g").await.unwrap();
    let read: BTreeMap<(u32, i64), String> = drain(consumer.as_mut(), written.len())
        .await
        .into_iter()
        .map(|c| {
            (
                (c.partition, c.offset),
                String::from_utf8(c.value.to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(read, written);

    // An append prepared for a log of other partitions is refused whole.
    let other_dir = tempfile::tempdir().unwrap();
    let other = EmbeddedLog::open(other_dir.path(), Some(2)).await.unwrap();
    let foreign = other.producer().prepare(batch(0, 3)).await.unwrap();
    let err = producer.append_prepared(foreign).await.unwrap_err();
    assert!(
        matches!(err, spendstream_log::Error::ForeignAppend),
        "{err}"
    );
}

#[tokio::test]
async fn embedded_segments_stay_under_their_byte_limit() {
    // 40 records of 1 MiB (the edge's largest) in one append and one
    // partition: more than one segment's 32 MiB, so two segments.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Some(1)).await.unwrap();
    let big = "x".repeat(1 << 20);
    let positions = log
        .producer()
        .append((0..40).map(|i| rec(&format!("k{i}"), &big)).collect())
        .await
        .unwrap();
    let offsets: Vec<i64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (0..40).collect::<Vec<i64>>());
    // The cap counts the records' bytes before compression (stored, these
    // compress to almost nothing): 40 MiB make two segments.
    let segments: i64 = rusqlite::Connection::open(dir.path().join("log.sqlite3"))
        .unwrap()
        .query_row("SELECT count(*) FROM segments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(segments, 2);
    let mut consumer = log.consumer("g").await.unwrap();
    let got = drain(consumer.as_mut(), 40).await;
    assert_eq!(got.len(), 40);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, c)| c.offset == i as i64 && c.value.len() == 1 << 20)
    );
}

#[tokio::test]
async fn embedded_log_of_an_older_release_is_moved_into_segments() {
    // A log as releases before segments wrote it: one row per record, with
    // a hole where retention deleted some.
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), Some(2)).await.unwrap();
        drop(log);
        let conn = rusqlite::Connection::open(dir.path().join("log.sqlite3")).unwrap();
        conn.execute_batch(
            "DROP TABLE segments;
             CREATE TABLE records (partition INTEGER NOT NULL, offset INTEGER NOT NULL,
                 key BLOB NOT NULL, value BLOB NOT NULL, headers TEXT, ts INTEGER NOT NULL,
                 PRIMARY KEY (partition, offset));
             UPDATE partitions SET next_offset = 6 WHERE partition = 0;
             UPDATE partitions SET next_offset = 2 WHERE partition = 1;",
        )
        .unwrap();
        let mut insert = conn
            .prepare("INSERT INTO records VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .unwrap();
        for (p, o, h) in [
            (0, 1, Some("batch_id\told\ntenant\tt1\n")),
            (0, 2, Some("batch_id\told\ntenant\tt1\n")),
            (0, 4, None),
            (0, 5, Some("batch_id\tother\n")),
            (1, 0, None),
            (1, 1, None),
        ] {
            insert
                .execute(rusqlite::params![
                    p,
                    o,
                    format!("k{p}{o}").into_bytes(),
                    format!("v{p}{o}").into_bytes(),
                    h,
                    7
                ])
                .unwrap();
        }
    }
    let log = EmbeddedLog::open(dir.path(), None).await.unwrap();
    let mut consumer = log.consumer("g").await.unwrap();
    type Read = (u32, i64, String, Vec<(String, String)>);
    let mut got: Vec<Read> = drain(consumer.as_mut(), 6)
        .await
        .into_iter()
        .map(|c| {
            (
                c.partition,
                c.offset,
                String::from_utf8(c.value.to_vec()).unwrap(),
                c.headers.to_vec(),
            )
        })
        .collect();
    got.sort();
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let old = h(&[("batch_id", "old"), ("tenant", "t1")]);
    assert_eq!(
        got,
        vec![
            (0, 1, "v01".into(), old.clone()),
            (0, 2, "v02".into(), old),
            (0, 4, "v04".into(), vec![]),
            (0, 5, "v05".into(), h(&[("batch_id", "other")])),
            (1, 0, "v10".into(), vec![]),
            (1, 1, "v11".into(), vec![]),
        ]
    );
    // New appends go on from the old ends, and the old table is gone.
    let next = log
        .producer()
        .append(vec![rec("k11", "new")])
        .await
        .unwrap();
    assert!(next[0].offset == 6 || next[0].offset == 2, "{next:?}");
    drop((consumer, log));
    let conn = rusqlite::Connection::open(dir.path().join("log.sqlite3")).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'records'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn embedded_survives_reopen_and_refuses_other_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), Some(4)).await.unwrap();
        log.producer()
            .append(vec![rec("a", "1"), rec("b", "2")])
            .await
            .unwrap();
    }
    let log = EmbeddedLog::open(dir.path(), None).await.unwrap();
    assert_eq!(log.partitions(), 4);
    assert_eq!(log.end_offsets().await.unwrap().iter().sum::<i64>(), 2);
    let err = EmbeddedLog::open(dir.path(), Some(8)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("has 4 partitions but 8 were requested"),
        "{err}"
    );
    assert!(spendstream_log::open("kafkaa://x").await.is_err());
    assert!(spendstream_log::open("embedded://").await.is_err());
    assert!(
        spendstream_log::open(&format!("embedded://{}?partitions=0", dir.path().display()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn embedded_identity_survives_reopen_and_a_wiped_log_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedLog::open(dir.path(), None).await.unwrap();
    let id = first.log_id().to_string();
    drop(first);
    let again = EmbeddedLog::open(dir.path(), None).await.unwrap();
    assert_eq!(again.log_id(), id);
    drop(again);
    std::fs::remove_dir_all(dir.path()).unwrap();
    let wiped = EmbeddedLog::open(dir.path(), None).await.unwrap();
    assert_ne!(wiped.log_id(), id);
}

#[tokio::test]
async fn a_second_embedded_consumer_of_a_group_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), None).await.unwrap();
    // Another process's handle on the same directory.
    let other = EmbeddedLog::open(dir.path(), None).await.unwrap();
    let first = log.consumer("processors").await.unwrap();
    let error = match other.consumer("processors").await {
        Ok(_) => panic!("two consumers of one group on one embedded log"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("another process is consuming group `processors`"),
        "{error}"
    );
    // Another group may read at the same time.
    let _audit = other.consumer("audit").await.unwrap();
    drop(first);
    other.consumer("processors").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_identity_is_shared_by_every_process_on_the_topics() {
    let kafka = TestKafka::start_mock(4).unwrap();
    let (a, b) = tokio::join!(kafka.open(), kafka.open());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.log_id(), b.log_id());
    let c = kafka.open().await.unwrap();
    assert_eq!(c.log_id(), a.log_id());
    // Another deployment (another prefix) is another log.
    let other = TestKafka::start_mock(4).unwrap();
    assert_ne!(other.open().await.unwrap().log_id(), a.log_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_topics_with_another_partition_count_are_refused_clearly() {
    // The operator made the topics with 2 partitions; the URL asks for 4.
    let kafka = TestKafka::start_mock(2).unwrap();
    let mut config = kafka.config();
    config.partitions = Some(4);
    let err = spendstream_log::kafka::KafkaLog::open(config)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has 2 partitions but 4 partitions were configured"),
        "{err}"
    );
    // Without a count, the topic's own is used.
    let mut config = kafka.config();
    config.partitions = None;
    let log = spendstream_log::kafka::KafkaLog::open(config)
        .await
        .unwrap();
    assert_eq!(log.partitions(), 2);
    // Replication is checked too (the mock made them with 3 replicas).
    let mut config = kafka.config();
    config.replication = Some(2);
    let err = spendstream_log::kafka::KafkaLog::open(config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("replication factor 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_full_producer_queue_fails_the_append_at_once() {
    let kafka = TestKafka::start_mock(4).unwrap();
    let mut config = kafka.config();
    config
        .client_options
        .push(("queue.buffering.max.messages".into(), "100".into()));
    let log = spendstream_log::kafka::KafkaLog::open(config)
        .await
        .unwrap();
    let producer = log.producer();
    let small: Vec<Record> = (0..50).map(|i| rec(&format!("s{i}"), "v")).collect();
    assert_eq!(producer.append(small).await.unwrap().len(), 50);
    let big: Vec<Record> = (0..1_000).map(|i| rec(&format!("b{i}"), "v")).collect();
    // Refused at once (QueueFull), not queued behind the delivery timeout.
    let err = producer.append(big).await.unwrap_err();
    assert!(matches!(err, spendstream_log::Error::QueueFull), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_member_learns_which_partitions_a_joiner_took() {
    let kafka = TestKafka::start_mock(4).unwrap();
    let log = kafka.open().await.unwrap();
    log.producer()
        .append((0..400).map(|i| rec(&format!("k{i}"), "v")).collect())
        .await
        .unwrap();
    let mut first = log.consumer("g").await.unwrap();
    let held = drain(first.as_mut(), 1).await;
    assert!(!held.is_empty());
    assert!(first.take_revoked().is_empty());

    // A second member joins; both keep polling until it owns something.
    let mut second = log.consumer("g").await.unwrap();
    let mut revoked = HashSet::new();
    let mut taken = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while taken.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the joiner never got a partition"
        );
        let got = first.poll(100, Duration::from_millis(100)).await.unwrap();
        revoked.extend(first.take_revoked());
        // After the revocation, the first member reads only what it kept.
        if !revoked.is_empty() {
            assert!(got.iter().all(|c| !revoked.contains(&c.partition)));
        }
        for c in second.poll(100, Duration::from_millis(100)).await.unwrap() {
            taken.insert(c.partition);
        }
    }
    assert!(
        taken.is_subset(&revoked),
        "the joiner reads {taken:?} but the first member was told only of {revoked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dead_letters_are_read_after_retention_deleted_the_topic_head() {
    // The mock cluster keeps about 5 MB per partition and deletes the oldest
    // record batches past that: retention in miniature. A tenant's letters
    // share one partition.
    let kafka = TestKafka::start_mock(4).unwrap();
    let mut config = kafka.config();
    // Fail in seconds, not after the 30 s default, if reading hangs.
    config.operation_timeout = Duration::from_secs(10);
    let log = spendstream_log::kafka::KafkaLog::open(config)
        .await
        .unwrap();
    let store = log.dead_letters();
    // Incompressible payloads (the producer compresses with zstd).
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let letters = 40;
    for batch in 0..letters / 4 {
        let put: Vec<DeadLetter> = (0..4)
            .map(|i| DeadLetter {
                tenant_id: Some("acme".into()),
                group: "g".into(),
                partition: 0,
                offset: batch * 4 + i,
                code: "invalid_envelope".into(),
                message: "junk".into(),
                payload: noise(200_000),
            })
            .collect();
        store.put(put).await.unwrap();
    }
    let listed = store
        .list(LetterScope::Tenant("acme"), 0, 1_000)
        .await
        .unwrap();
    let offsets: Vec<i64> = listed.iter().map(|l| l.letter.offset).collect();
    // The head is gone, the rest is there, in order, up to the last letter.
    assert!(
        !offsets.is_empty() && offsets.len() < letters as usize,
        "expected retention to have deleted some of {letters} letters: {offsets:?}"
    );
    let first = offsets[0];
    assert_eq!(offsets, (first..letters).collect::<Vec<_>>());
}

/// `closed` waits for every connection, also one a consumer still holds
/// after the log's own handles are gone; then the directory has no
/// write-ahead file left, so a copy of it is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_closed_waits_for_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let log = embedded(&dir).await;
    log.producer().append(vec![rec("k", "v")]).await.unwrap();
    let mut consumer = log.consumer("g").await.unwrap();
    assert_eq!(drain(consumer.as_mut(), 1).await.len(), 1);
    let mut closed = log.closed();
    drop(log);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut closed)
            .await
            .is_err(),
        "closed while a consumer still reads the log"
    );
    drop(consumer);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the log is not closed 10 s after its last connection was dropped");
    let open: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with("-wal") || name.ends_with("-shm"))
        .collect();
    assert!(open.is_empty(), "{open:?}");
}
