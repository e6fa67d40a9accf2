//! `spendstream import` against a real `spendstream up`: an import killed
//! midway and run again loses and duplicates nothing; rejects go to a file
//! and set the exit status; bank files are found by name; progress is a
//! redrawn line on a terminal (a pseudo-terminal made by `script`) and
//! plain lines elsewhere.

mod common;

use common::Deadline;
use serde_json::Value;
use spendstream_http::Role;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `spendstream up` on `dir/data`, healthy.
async fn up(dir: &Path) -> common::Server {
    let args: Vec<String> = [
        "up",
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--batch-max-wait-ms",
        "100",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut server = common::spawn(&args, None);
    common::wait_healthy(&mut server).await;
    server
}

/// `spendstream import FILES --url BASE` with an ingest token of `acme`.
fn import(base: &str, files: &[&Path]) -> Command {
    let mut cmd = common::command();
    cmd.arg("import")
        .args(files)
        .args(["--url", base])
        .env("SPENDSTREAM_TOKEN", common::token("acme", &[Role::Ingest]));
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn checkpoint(file: &Path) -> Option<Value> {
    let path = PathBuf::from(format!("{}.import.json", file.display()));
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_midway_and_run_again_sends_nothing_twice() {
    const N: usize = 1_000_000;
    const CHUNK: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path()).await;
    let (body, model) = common::acme_records(0, N);
    let file = dir.path().join("feed.ndjson.gz");
    std::fs::write(&file, common::gzip(body.as_bytes())).unwrap();
    drop(body);

    let mut first = import(&server.base, &[&file])
        .args(["--chunk-records", &CHUNK.to_string(), "--progress", "none"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Killed (SIGKILL: no chance to tidy up) once a fifth of it is in.
    let mut poll = Deadline::new(Duration::from_secs(300), Duration::from_millis(20));
    loop {
        let done = checkpoint(&file).map_or(0, |c| c["done"].as_array().unwrap().len());
        if done >= N / CHUNK as usize / 5 {
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "the import ended before it was killed"
        );
        poll.tick(format_args!("{done} chunks done")).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let mut cp = checkpoint(&file).unwrap();
    assert_eq!(cp["complete"], false);
    // The worst moment to die: the edge took a chunk, the checkpoint does not
    // know. Forget the last chunk the checkpoint counts, as if the kill came
    // just before it was written; the run below sends it again.
    let done = cp["done"].as_array_mut().unwrap();
    let last = done.pop().unwrap();
    let kept = done.len();
    cp["read"] = (cp["read"].as_u64().unwrap() - CHUNK).into();
    cp["accepted"] = (cp["accepted"].as_u64().unwrap() - CHUNK).into();
    std::fs::write(
        format!("{}.import.json", file.display()),
        serde_json::to_vec(&cp).unwrap(),
    )
    .unwrap();
    eprintln!("killed with {kept} chunks done; chunk {last} goes again");

    let out = run(import(&server.base, &[&file]).args([
        "--chunk-records",
        "50000",
        "--progress",
        "lines",
    ]));
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("{N} read, {N} accepted, 0 rejected")),
        "{}",
        stdout(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("resuming with the checkpoint's 2000 records a chunk"),
        "a resumed import keeps its chunk size, whatever the flag says"
    );
    // The reports hold every record once, and the lake holds no record
    // twice: a chunk sent again was answered from its idempotency key.
    let rows = common::settle_exactly(&server.base, &dir.path().join("data"), &model).await;
    if rows != N as i64 {
        let dup = common::sql(
            &server.base,
            &common::token("acme", &[Role::Read]),
            "SELECT MIN(CAST(SUBSTR(external_id, 2) AS BIGINT)) AS lo, MAX(CAST(SUBSTR(external_id, 2) AS BIGINT)) AS hi, COUNT(*) AS n FROM (SELECT external_id FROM expenses GROUP BY external_id HAVING COUNT(*) > 1) d",
        )
        .await;
        eprintln!("DEBUG duplicated: {dup}");
    }
    assert_eq!(rows, N as i64, "the lake holds a record twice");
    assert_eq!(checkpoint(&file).unwrap()["complete"], true);

    // Run again: nothing to send, the same summary.
    let out = run(&mut import(&server.base, &[&file]));
    assert!(out.status.success());
    assert!(
        stdout(&out).contains(&format!("{N} accepted")),
        "{}",
        stdout(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already imported"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_go_to_a_file_and_set_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path()).await;
    let (body, _) = common::acme_records(0, 10);
    let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
    lines[3] = "{not json".into();
    lines[7] = lines[7].replace("USD", "XXX");
    let file = dir.path().join("feed.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let out = run(import(&server.base, &[&file]).args(["--chunk-records", "4"]));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains("10 read, 8 accepted, 2 rejected"),
        "{summary}"
    );
    assert!(summary.contains("invalid_json: 1") && summary.contains("invalid_currency: 1"));
    let rejects: Vec<Value> =
        std::fs::read_to_string(dir.path().join("feed.ndjson.rejects.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(rejects.len(), 2);
    let by_index: std::collections::BTreeMap<u64, &Value> = rejects
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r))
        .collect();
    assert_eq!(by_index[&3]["error"], "invalid_json");
    assert_eq!(by_index[&3]["record"], "{not json");
    assert_eq!(by_index[&7]["error"], "invalid_currency");
    assert_eq!(by_index[&7]["record"], lines[7].as_str());

    // Run again with --allow-rejects: nothing is sent, and the exit is 0.
    let out = run(import(&server.base, &[&file]).arg("--allow-rejects"));
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("8 accepted, 2 rejected"));

    // A bad token stops the import with the edge's answer, exit 1.
    let other = dir.path().join("other.ndjson");
    std::fs::write(&other, &lines[0]).unwrap();
    let out = run(import(&server.base, &[&other]).env("SPENDSTREAM_TOKEN", "nope"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_files_are_imported_by_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path()).await;
    let samples = common::manifest_dir().join("samples");
    let mut files = Vec::new();
    for name in ["camt053.xml", "bai2.txt", "ofx1.ofx", "ofx2.ofx"] {
        let to = dir.path().join(name);
        std::fs::copy(samples.join(name), &to).unwrap();
        files.push(to);
    }
    // `bai2.txt` says nothing by its name: its first bytes do.
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = run(&mut import(&server.base, &paths));
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("imported 4 file(s): 15 read, 15 accepted, 0 rejected"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_a_redrawn_line_on_a_terminal_and_plain_lines_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path()).await;
    let (body, _) = common::acme_records(0, 20_000);
    let file = dir.path().join("feed.ndjson");
    std::fs::write(&file, body).unwrap();

    // Under a pseudo-terminal (`script` runs the command on one and copies
    // what it shows).
    let exe = env!("CARGO_BIN_EXE_spendstream");
    let inner = format!(
        "{exe} import {} --url {} --chunk-records 500 --concurrency 1",
        file.display(),
        server.base
    );
    let out = run(Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .env("SPENDSTREAM_TOKEN", common::token("acme", &[Role::Ingest]))
        .env("SPENDSTREAM_LOG_LEVEL", "warn"));
    assert!(out.status.success(), "{}", stdout(&out));
    let shown = stdout(&out);
    let redraws = shown.matches("\r\x1b[2K").count();
    assert!(redraws >= 2, "the line is redrawn in place: {shown:?}");
    for part in [
        "feed.ndjson: 100% 20000 records",
        "records/s",
        "done",
        "20000 accepted",
    ] {
        assert!(shown.contains(part), "{part:?} in {shown:?}");
    }
    assert!(!shown.contains("import: "), "no plain lines on a terminal");

    // Not on a terminal: plain lines, no control characters.
    std::fs::remove_file(format!("{}.import.json", file.display())).unwrap();
    let out = run(import(&server.base, &[&file]).args(["--chunk-records", "500"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("import: ") && err.contains("done"), "{err}");
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
}
