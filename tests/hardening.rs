//! The delivery contract against hostile clients and operator mistakes:
//! slow and abusive clients over a real socket, bodies built to exhaust
//! memory, card numbers where none was looked for, a wiped, switched or
//! restored log under a kept lake, a second processor on one embedded log,
//! a lake commit that fails after it was written, and wrong configuration.

mod common;

use common::{Backend, Deadline};
use serde_json::Value;
use spendstream::{Roles, Running};
use spendstream_http::Role;
use spendstream_log::kafka::testing::TestKafka;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn up_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "up".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The status code of a raw HTTP/1.1 response, if one came.
fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// A client that sends a request head, then its body one byte every half
/// second (under the idle timeout, forever). Returns the status the server
/// answered, once the server has closed the connection.
async fn trickle_body(addr: String, token: String) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/expenses HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/x-ndjson\r\ncontent-length: 100000\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        while wr.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut response = Vec::new();
    let _ = rd.read_to_end(&mut response).await;
    writer.abort();
    status_of(&response)
}

/// A client that connects and sends `first` (maybe nothing), then waits.
/// Returns whether the server closed the connection.
async fn silent(addr: String, first: &'static [u8]) -> bool {
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(first).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.is_ok()
}

/// A client that sends its request head one byte every half second.
async fn trickle_head(addr: String) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        for b in b"POST /v1/expenses HTTP/1.1\r\nhost: slow\r\nx-padding: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut response = Vec::new();
    let _ = rd.read_to_end(&mut response).await;
    writer.abort();
    status_of(&response)
}

/// Every task of `set` as it ends, or how many still run at `deadline`.
async fn join_by<T: 'static>(
    set: &mut tokio::task::JoinSet<T>,
    deadline: tokio::time::Instant,
) -> Result<Vec<T>, usize> {
    let mut ended = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Err(_) => return Err(set.len()),
            Ok(None) => return Ok(ended),
            Ok(Some(result)) => ended.push(result.unwrap()),
        }
    }
}

/// 300 connections of one tenant trickling their bodies, 50 trickling
/// their request heads and 50 sending nothing (or only the first byte of an
/// HTTP/2 preface): another tenant is still served at once, and every slow
/// connection is answered (429 past the tenant's share, 408 when its body
/// times out) or cut off by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_neither_starve_other_tenants_nor_stay_connected() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::spawn(
        &up_args(
            dir.path(),
            &[
                "--body-idle-timeout-secs",
                "2",
                "--body-timeout-secs",
                "5",
                // The tricklers hold their slots until the total timeout
                // (the least rate, tested in ingest's API tests, would
                // free them earlier and let latecomers in).
                "--body-min-bytes-per-sec",
                "0",
                "--header-read-timeout-secs",
                "3",
            ],
        ),
        None,
    );
    common::wait_healthy(&mut server).await;
    let base = server.base.clone();
    let addr = base.trim_start_matches("http://").to_string();
    let slow_token = common::token("slowpoke", &[Role::Ingest]);
    let mut bodies = tokio::task::JoinSet::new();
    for _ in 0..300 {
        bodies.spawn(trickle_body(addr.clone(), slow_token.clone()));
    }
    let mut heads = tokio::task::JoinSet::new();
    for _ in 0..50 {
        heads.spawn(trickle_head(addr.clone()));
    }
    let mut silents = tokio::task::JoinSet::new();
    for i in 0..50 {
        silents.spawn(silent(addr.clone(), if i % 2 == 0 { b"" } else { b"P" }));
    }
    // The tenant's share is taken once everything past it was answered:
    // refused, or timed out (on a loaded machine the first slots time out
    // before the last slow clients connect, and latecomers take them).
    let mut poll = Deadline::new(Duration::from_secs(30), Duration::from_millis(100));
    loop {
        let mut answered = 0.0;
        for status in ["429", "408"] {
            answered += common::counter_sum(
                &base,
                "spendstream_http_requests_total",
                &[("status", status)],
            )
            .await;
        }
        if answered >= 268.0 {
            break;
        }
        poll.tick(format_args!(
            "{answered} of the slow requests refused or timed out"
        ))
        .await;
    }

    // Meanwhile another tenant's import goes through.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (body, _) = common::acme_records(0, 100);
    let resp = common::post_ndjson(&client, &base, body).await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());

    // Every slow connection ends, closed by the server. When some do not,
    // the message says which kind, for the next look at it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ended = (
        join_by(&mut bodies, deadline).await,
        // A head that never completes gets no answer, only the close.
        join_by(&mut heads, deadline).await,
        join_by(&mut silents, deadline).await,
    );
    let (Ok(bodies), Ok(_heads), Ok(silents)) = ended else {
        let [bodies, heads, silents] = [
            ended.0.as_ref().err(),
            ended.1.as_ref().err(),
            ended.2.as_ref().err(),
        ]
        .map(|open| open.copied().unwrap_or(0));
        panic!(
            "slow connections were left open: {bodies} of 300 trickled bodies, {heads} of 50 trickled heads, {silents} of 50 silent connections"
        );
    };
    assert!(
        silents.iter().all(|closed| *closed),
        "a silent connection ended in an error"
    );
    let mut statuses = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for status in bodies {
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(
        statuses.get(&Some(429)).copied().unwrap_or(0)
            + statuses.get(&Some(408)).copied().unwrap_or(0),
        300,
        "{statuses:?}"
    );
    // At least the tenant's 32 slots timed out (more if slots freed before
    // every slow client had connected).
    assert!(
        statuses.get(&Some(408)).copied().unwrap_or(0) >= 32,
        "{statuses:?}"
    );
    common::assert_documented(&base).await;
}

/// A 64 MiB body of invalid lines gets an answer of bounded size and the
/// process grows by much less than the body; a gzip bomb is refused with
/// 413 without inflating into memory either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_built_to_exhaust_memory_are_answered_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::spawn(
        &up_args(dir.path(), &["--max-decompressed-bytes", "134217728"]),
        None,
    );
    common::wait_healthy(&mut server).await;
    let pid = server.child.id();
    let before = common::peak_rss(pid);

    const BODY: usize = 64 << 20;
    const LINE: &[u8] = b"not json: an importer's broken export line\n";
    let (first, _) = common::acme_records(0, 1);
    let lines = (BODY - first.len()) / LINE.len();
    let chunk: bytes::Bytes = LINE.repeat((1 << 20) / LINE.len()).into();
    let per_chunk = (1 << 20) / LINE.len();
    let full_chunks = lines / per_chunk;
    let rest: bytes::Bytes = LINE.repeat(lines % per_chunk).into();
    let stream = futures::stream::iter(
        std::iter::once(bytes::Bytes::from(first))
            .chain(std::iter::repeat_n(chunk, full_chunks))
            .chain(std::iter::once(rest))
            .map(Ok::<_, std::io::Error>),
    );
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/expenses", server.base))
        .bearer_auth(common::token("acme", &[Role::Ingest]))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let text = resp.text().await.unwrap();
    assert!(
        text.len() < 1 << 20,
        "a {} byte answer to bad lines",
        text.len()
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected_total"], lines);
    assert_eq!(body["rejected_by_code"]["invalid_json"], lines);
    assert_eq!(body["rejected"].as_array().unwrap().len(), 1_000);
    assert_eq!(body["rejected_truncated"], true);
    let grown = common::peak_rss(pid).saturating_sub(before);
    assert!(
        grown < BODY as u64,
        "the process grew by {} MiB for a {} MiB body",
        grown >> 20,
        BODY >> 20
    );

    // 80 gzip members of 16 MiB of zeros each: 1.25 GiB inflated, past the
    // 128 MiB limit.
    let member = common::gzip(&vec![0u8; 16 << 20]);
    let bomb = member.repeat(80);
    let resp = client
        .post(format!("{}/v1/expenses", server.base))
        .bearer_auth(common::token("acme", &[Role::Ingest]))
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    let grown = common::peak_rss(pid).saturating_sub(before);
    assert!(
        grown < BODY as u64,
        "the process grew by {} MiB after a gzip bomb",
        grown >> 20
    );
    common::assert_documented(&server.base).await;
}

/// Card numbers hide in fields the first PAN check did not read, and behind
/// a repeated key (parsers keep the last; the log keeps the raw text):
/// every one is refused and nothing of them reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_in_ids_and_metadata_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path()).await;
    let base = format!("http://{}", running.addr);
    let body = [
        r#"{"source":"s","external_id":"e1","related_external_id":"4111 1111 1111 1111","account_id":"a","transaction_date":"2026-01-02","amount":"1","currency":"USD"}"#,
        r#"{"source":"visa-4111111111111111","external_id":"e2","account_id":"a","transaction_date":"2026-01-02","amount":"1","currency":"USD"}"#,
        r#"{"source":"s","external_id":"e3","account_id":"a","transaction_date":"2026-01-02","amount":"1","currency":"USD","metadata":{"5500000000000004":"x"}}"#,
        r#"{"source":"s","external_id":"e4","account_id":"a","transaction_date":"2026-01-02","amount":"1","currency":"USD","memo":"4111 1111 1111 1111","memo":"lunch"}"#,
    ]
    .join("\n");
    let resp = common::post_ndjson(&reqwest::Client::new(), &base, body).await;
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(!spendstream_schemas::pan::contains_pan(&text), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["rejected_by_code"]["pan_detected"], 3, "{body}");
    assert_eq!(body["rejected_by_code"]["duplicate_field"], 1, "{body}");
    let log = running.log.as_ref().unwrap();
    assert_eq!(log.end_offsets().await.unwrap().iter().sum::<i64>(), 0);
    running.shutdown().await.unwrap();
}

type Model = std::collections::BTreeMap<String, i64>;

/// Ingests `n` records from `start`, amounts raised by `bump`, and waits
/// until the reports hold exactly `model` (and the lake no row twice).
async fn ingest_and_settle(
    running: &Running,
    dir: &Path,
    (start, n, bump): (usize, usize, i64),
    model: &mut Model,
) {
    let base = format!("http://{}", running.addr);
    model.extend(common::ingest_bumped(&base, start, n, bump).await);
    common::settle_exactly(&base, dir, model).await;
}

/// What a new log under a kept lake must get right: records of new
/// identities are written (their offsets, starting again at 0, are not
/// replays), and new versions of identities the lake already holds win
/// over the old ones (their versions rank above the old log's).
async fn a_new_log_under_a_kept_lake(first: &Backend, second: &Backend, wipe: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    let running = first.start(dir.path()).await;
    ingest_and_settle(&running, dir.path(), (0, 3_000, 0), &mut model).await;
    running.shutdown().await.unwrap();
    if wipe {
        std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    }
    let running = second.start(dir.path()).await;
    // New amounts for the identities the old log wrote last (at its highest
    // offsets): first in the new log, so at its lowest; then 500 new ones.
    ingest_and_settle(&running, dir.path(), (2_500, 500, 17), &mut model).await;
    ingest_and_settle(&running, dir.path(), (3_000, 500, 0), &mut model).await;
    running.shutdown().await.unwrap();
}

/// The embedded log is wiped (the lake kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_log_under_a_kept_lake_loses_nothing() {
    a_new_log_under_a_kept_lake(&Backend::Embedded, &Backend::Embedded, true).await;
}

/// The growth path: the same lake, first on the embedded log, then on Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_from_the_embedded_log_to_kafka_loses_nothing() {
    a_new_log_under_a_kept_lake(&Backend::Embedded, &Backend::kafka(), false).await;
}

/// Copies a stopped server's log directory. Shutdown returns only once
/// nothing holds the embedded log: SQLite has folded its write-ahead file
/// into the database and removed it, so the copy is whole.
fn copy_dir(from: &Path, to: &Path) {
    let open: Vec<_> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with("-wal") || name.ends_with("-shm"))
        .collect();
    assert!(
        open.is_empty(),
        "the log is still open after shutdown: {open:?}"
    );
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A log restored from an older copy keeps its identity but ends before
/// what the lake holds of it: the processors refuse to start, with one line
/// that says so, instead of skipping its new records as replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_restored_from_an_older_copy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    let running = common::start(dir.path()).await;
    ingest_and_settle(&running, dir.path(), (0, 500, 0), &mut model).await;
    running.shutdown().await.unwrap();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("log"), backup.path());
    let running = common::start(dir.path()).await;
    ingest_and_settle(&running, dir.path(), (500, 2_000, 0), &mut model).await;
    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    copy_dir(backup.path(), &dir.path().join("log"));
    let error = match spendstream::start(common::settings(dir.path())).await {
        Ok(_) => panic!("started on a log behind the lake"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("the lake holds offsets up to"), "{error}");
    assert!(!error.contains('\n'), "{error}");
}

/// The same on Kafka: the lake says it holds offsets the topics never had
/// (the topics were recreated under the same identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_log_behind_the_lake_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = TestKafka::start_mock(4).unwrap();
    let log = kafka.open().await.unwrap();
    let backend = Backend::Kafka(kafka);
    let settings = backend.settings(dir.path());
    let lake = spendstream_lake::Lake::open(&settings.lake_url)
        .await
        .unwrap();
    let app_id = spendstream_processors::transform::replay::app_id(
        &settings.processor.group,
        spendstream_log::Log::log_id(&log),
        2,
    );
    lake.commit_once(
        &[spendstream_lake::AppTxn {
            app_id,
            version: 10_000,
        }],
        |_| spendstream_schemas::to_record_batch::<String>(&[]),
    )
    .await
    .unwrap();
    let error = match spendstream::start(settings).await {
        Ok(_) => panic!("started on a log behind the lake"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("up to 10000 of partition 2") && error.contains("ends at offset 0"),
        "{error}"
    );
}

/// A Kafka group whose committed offsets are past the topic's end (the topic
/// was recreated, the group's offsets kept) is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_group_committed_past_the_log_end_is_refused() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let dir = tempfile::tempdir().unwrap();
    let kafka = TestKafka::start_mock(4).unwrap();
    let config = kafka.config();
    let committer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", config.group_id("test-group"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(&config.raw_topic(), 1, rdkafka::Offset::Offset(500))
        .unwrap();
    committer.commit(&offsets, CommitMode::Sync).unwrap();
    drop(committer);
    let backend = Backend::Kafka(kafka);
    let error = match spendstream::start(backend.settings(dir.path())).await {
        Ok(_) => panic!("started with a group committed past the log end"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("has committed offset 500 of partition 1"),
        "{error}"
    );
}

/// Two processors on one embedded data directory would each consume every
/// partition; the second is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_processor_on_one_embedded_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = common::start(dir.path()).await;
    let mut second = common::settings(dir.path());
    second.roles = Roles::PROCESS;
    let error = match spendstream::start(second).await {
        Ok(_) => panic!("a second processor started on the same embedded log"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("another process is consuming"), "{error}");
    first.shutdown().await.unwrap();
    // Once the first is gone, a processor starts again.
    let mut again = common::settings(dir.path());
    again.roles = Roles::PROCESS;
    spendstream::start(again)
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}

/// Lake commits that fail after their commit file was written (a post-commit
/// hook, a lost response) are retried; the retry finds the commit and
/// writes nothing: every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_commits_failing_after_they_were_written_are_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path()).await;
    running.lake.as_ref().unwrap().fail_after_next_commits(3);
    let mut model = Model::new();
    ingest_and_settle(&running, dir.path(), (0, 6_000, 0), &mut model).await;
    running.shutdown().await.unwrap();
}

/// Records no tenant can be read from are dead-lettered and listed for the
/// operator tenant's admins only.
async fn letters_without_a_tenant_are_listed_for_operators(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = backend.settings(dir.path());
    settings.operator_tenant = Some("ops".into());
    let running = spendstream::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    running
        .log
        .clone()
        .unwrap()
        .producer()
        .append(vec![spendstream_log::Record {
            key: b"junk".to_vec(),
            value: b"\xffnot an envelope".to_vec(),
            headers: Default::default(),
        }])
        .await
        .unwrap();
    common::wait_processed(&running, 1).await;
    let client = reqwest::Client::new();
    let list = |tenant: &str| {
        client
            .get(format!("{base}/v1/dead-letters?unattributed=true"))
            .bearer_auth(common::token(tenant, &[Role::Admin]))
            .send()
    };
    assert_eq!(list("acme").await.unwrap().status(), 403);
    let body: Value = list("ops").await.unwrap().json().await.unwrap();
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{body}");
    assert_eq!(letters[0]["error"], "invalid_envelope");
    assert!(letters[0]["payload_base64"].is_string());
    common::assert_documented(&base).await;
    running.shutdown().await.unwrap();
}

crate::per_backend!(letters_without_a_tenant_are_listed_for_operators);

/// Runs the binary with `args` and returns its exit status and stderr.
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut cmd = common::command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wrong settings fail at once, before anything is opened, with one line
/// that names the setting and never prints a secret.
#[test]
fn wrong_settings_fail_fast_with_one_line_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (args, expect) in [
        (vec!["--batch-max-records", "0"], "--batch-max-records"),
        (vec!["--max-record-bytes", "0"], "--max-record-bytes"),
        (
            vec![
                "--max-record-bytes",
                "2048",
                "--max-decompressed-bytes",
                "1024",
            ],
            "--max-record-bytes",
        ),
        (
            vec!["--body-idle-timeout-secs", "0"],
            "--body-idle-timeout-secs",
        ),
        (
            vec!["--max-concurrent-requests-per-tenant", "999"],
            "--max-concurrent-requests-per-tenant",
        ),
        (vec!["--log", "embedded://"], "--log"),
        (vec!["--lake", "s4://bucket"], "--lake"),
        (vec!["--state", "redis://:hunter2@"], "--state"),
        (vec!["--state", "redis://:hunter2@127.0.0.1:1"], "--state"),
        (
            vec!["--log", "kafka://127.0.0.1:1", "--kafka-option", "acks=1"],
            "acks",
        ),
        (
            vec![
                "--log",
                "kafka://127.0.0.1:1?rdkafka.enable.auto.commit=true",
            ],
            "enable.auto.commit",
        ),
        (
            vec![
                "--log",
                "kafka://127.0.0.1:1",
                "--kafka-option",
                "message.timeout.ms=60000",
            ],
            "message.timeout.ms",
        ),
        (
            vec![
                "--log",
                "kafka://127.0.0.1:1?rdkafka.sasl.password=hunter2&colour=red",
            ],
            "colour",
        ),
    ] {
        let mut all = vec!["up", "--data-dir", data, "--listen", "127.0.0.1:0"];
        all.extend(&args);
        let (status, stderr) = run_cli(&all, &[]);
        assert!(!status.success(), "{args:?} started");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
    }
    // Nothing was created for any of them.
    assert!(!Path::new(data).join("log").exists());
}

/// Credentials in the log URL never reach the log lines of a running
/// process (the start-up line names the log it opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_url_is_logged_without_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = TestKafka::start_mock(4).unwrap();
    let url = format!("{}&rdkafka.sasl.password=hunter2", kafka.url());
    let args = up_args(dir.path(), &["--log", &url]);
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let file = stderr.reopen().unwrap();
    let (mut server, _) = common::spawn_with(&args, |cmd| {
        cmd.env("SPENDSTREAM_LOG_LEVEL", "info")
            .env("SPENDSTREAM_LOG_FORMAT", "text")
            .stderr(file);
    });
    common::wait_healthy(&mut server).await;
    drop(server);
    let logged = std::fs::read_to_string(stderr.path()).unwrap();
    assert!(logged.contains("Spendstream is listening"), "{logged}");
    assert!(logged.contains("sasl.password=***"), "{logged}");
    assert!(!logged.contains("hunter2"), "{logged}");
}

/// `up` prints a bearer token only when it made a new secret (or on a
/// terminal), with the lifetime asked for; never on every start in a
/// container's logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_a_short_lived_token_only_with_a_new_secret() {
    let dir = tempfile::tempdir().unwrap();
    let args = up_args(dir.path(), &["--token-ttl-hours", "2"]);
    let without_secret = |cmd: &mut std::process::Command| {
        cmd.env_remove("SPENDSTREAM_JWT_SECRET");
    };
    let (server, printed) = common::spawn_with(&args, without_secret);
    let token = printed
        .iter()
        .find_map(|l| l.strip_prefix("export TOKEN="))
        .unwrap_or_else(|| panic!("no token printed on the first start: {printed:?}"))
        .to_string();
    drop(server);
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    let left = claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp();
    assert!((7_000..=7_300).contains(&left), "token valid for {left} s");
    let (_server, printed) = common::spawn_with(&args, without_secret);
    assert!(
        !printed.iter().any(|l| l.contains("TOKEN")),
        "a token on a restart: {printed:?}"
    );
}

/// The audit log: a line per rejected authentication (no token, a forged
/// one, an expired one), per refused role, and per admin action, each
/// with its reason, the request id and the remote address; never the
/// token or the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_logins_and_admin_actions_are_audited_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&log_path).unwrap();
    let args: Vec<String> = [
        "up",
        "--data-dir",
        &dir.path().join("data").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let (server, _) = common::spawn_with(&args, |cmd| {
        cmd.env("SPENDSTREAM_LOG_FORMAT", "json")
            .env("SPENDSTREAM_LOG_LEVEL", "warn,spendstream::audit=info")
            .stderr(stderr);
    });
    let client = reqwest::Client::new();
    let forged = {
        let keys = spendstream_http::JwtKeys::new(b"another-secret-another-secret-xx").unwrap();
        spendstream::secret::mint(&keys, "acme", &[Role::Admin], Duration::from_secs(60))
    };
    let expired = common::keys().sign(&spendstream_http::Claims {
        tenant: "acme".into(),
        roles: vec!["admin".into()],
        exp: chrono::Utc::now().timestamp() - 3600,
        ..Default::default()
    });
    let ingest_only = common::token("acme", &[Role::Ingest]);
    let admin = common::token("acme", &[Role::Admin]);
    let letters = format!("{}/v1/dead-letters", server.base);
    let send = |token: Option<&str>, id: &str| {
        let mut request = client.get(&letters).header("x-request-id", id);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(send(None, "audit-none").await.unwrap().status(), 401);
    assert_eq!(
        send(Some(&forged), "audit-forged").await.unwrap().status(),
        401
    );
    assert_eq!(
        send(Some(&expired), "audit-expired")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        send(Some(&ingest_only), "audit-role")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        send(Some(&admin), "audit-admin").await.unwrap().status(),
        200
    );

    let wanted = [
        ("audit-none", "authentication_rejected", "missing_token"),
        ("audit-forged", "authentication_rejected", "bad_signature"),
        ("audit-expired", "authentication_rejected", "token_expired"),
        ("audit-role", "authorization_rejected", "missing_role"),
        ("audit-admin", "admin_action", "ok"),
    ];
    let mut poll = Deadline::new(Duration::from_secs(30), Duration::from_millis(50));
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &Value| l["target"] == "spendstream::audit")
            .collect();
        if lines.len() >= wanted.len() {
            break (text, lines);
        }
        poll.tick(format!("audit lines so far: {lines:?}")).await;
    };
    let (text, lines) = lines;
    for (request_id, event, why) in wanted {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no audit line for {request_id}: {lines:?}"));
        assert_eq!(line["event"], event, "{line}");
        let reason = if event == "admin_action" {
            &line["outcome"]
        } else {
            &line["reason"]
        };
        assert_eq!(reason, why, "{line}");
        assert!(
            line["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        if event != "authentication_rejected" {
            assert_eq!(line["tenant"], "acme", "{line}");
        }
    }
    for secret in [&forged, &expired, &ingest_only, &admin] {
        assert!(!text.contains(secret.as_str()), "a token reached the log");
    }
    assert!(!text.contains(std::str::from_utf8(common::SECRET).unwrap()));
}

/// `--tls-cert`/`--tls-key`: the HTTP listener speaks HTTPS only, and a
/// certificate renewed on disk is served within seconds, without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_renewed_on_disk_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    common::self_signed(&cert, &key, "first");
    let args: Vec<String> = vec![
        "up".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ];
    let (server, _) = common::spawn_with(&args, |_| {});
    let addr = server
        .base
        .strip_prefix("https://")
        .expect("the server says it serves HTTPS")
        .to_string();
    // A round trip with a client that checks the certificate generated
    // above (rcgen) for localhost.
    let first = common::cert_der(&cert);
    let (status, presented) = common::https_get(&addr, &[&cert], "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        presented == first,
        "the server presented another certificate"
    );
    let first_copy = dir.path().join("first-cert.pem");
    std::fs::copy(&cert, &first_copy).unwrap();
    // Plain HTTP on the same port gets no HTTP answer.
    let plain = reqwest::get(format!("http://{addr}/healthz")).await;
    assert!(plain.is_err(), "{plain:?}");

    // Renewed: written aside, then moved over the old files, as tools do.
    let (new_cert, new_key) = (
        dir.path().join("new-cert.pem"),
        dir.path().join("new-key.pem"),
    );
    common::self_signed(&new_cert, &new_key, "renewed");
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let renewed = common::cert_der(&cert);
    let mut poll = Deadline::new(Duration::from_secs(30), Duration::from_millis(250));
    loop {
        let trusted = [first_copy.as_path(), cert.as_path()];
        let (status, presented) = common::https_get(&addr, &trusted, "/healthz").await;
        if presented == renewed {
            assert_eq!(status, "HTTP/1.1 200 OK");
            break;
        }
        poll.tick("the renewed certificate to be served").await;
    }
}

/// The binary runs with glibc's malloc capped at two arenas and a fixed
/// mmap threshold (issue 13: the peak RSS of `up` under load), except
/// where the operator set their own value.
#[test]
fn the_binary_tunes_malloc_unless_the_operator_did() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "up".to_string(),
        "--data-dir".to_string(),
        dir.path().display().to_string(),
    ];
    let settings_of = |server: &common::Server| -> Vec<String> {
        let environ = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
        let mut found: Vec<String> = environ
            .split(|b| *b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .filter(|v| {
                v.starts_with("MALLOC_ARENA_MAX=") || v.starts_with("MALLOC_MMAP_THRESHOLD_=")
            })
            .map(str::to_string)
            .collect();
        found.sort();
        found
    };
    let server = common::spawn_with(&args, |cmd| {
        cmd.env_remove("MALLOC_ARENA_MAX")
            .env_remove("MALLOC_MMAP_THRESHOLD_");
    })
    .0;
    assert_eq!(
        settings_of(&server),
        ["MALLOC_ARENA_MAX=2", "MALLOC_MMAP_THRESHOLD_=16777216"]
    );
    drop(server);
    let server = common::spawn_with(&args, |cmd| {
        cmd.env("MALLOC_ARENA_MAX", "4")
            .env_remove("MALLOC_MMAP_THRESHOLD_");
    })
    .0;
    assert_eq!(
        settings_of(&server),
        ["MALLOC_ARENA_MAX=4", "MALLOC_MMAP_THRESHOLD_=16777216"]
    );
    drop(server);
    let server = common::spawn_with(&args, |cmd| {
        cmd.env_remove("MALLOC_ARENA_MAX")
            .env("MALLOC_MMAP_THRESHOLD_", "131072");
    })
    .0;
    assert_eq!(
        settings_of(&server),
        ["MALLOC_ARENA_MAX=2", "MALLOC_MMAP_THRESHOLD_=131072"]
    );
}
