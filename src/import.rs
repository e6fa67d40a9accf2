//! `spendstream import`: the bulk importer users run against an edge.
//!
//! Each file (any body format, gzipped or not) is decoded here with the
//! edge's own decoders and sent as NDJSON chunks of `--chunk-records`
//! entries, `--concurrency` at a time. A chunk's `Idempotency-Key` is made
//! of the file's content hash, the chunk size and the chunk's index, so a
//! chunk sent twice (a retry, or an import killed and run again) is stored
//! once: the edge answers the second time with the first answer. Which
//! chunks are done, and what they came to, is kept in a checkpoint next to
//! the file (`FILE.import.json`), written after every chunk; running the
//! same command again skips them. Rejected records go to
//! `FILE.rejects.ndjson` with the record as it was read.
//!
//! Failures a retry may fix (no connection, 408, 409 while the first
//! attempt of a chunk is still in flight, 429, 502, 503, 504, a body cut
//! off) are retried with exponential backoff, waiting what `Retry-After`
//! says when the edge says it; anything else stops the import, with the
//! checkpoint kept.

use anyhow::{Context, bail};
use backon::BackoffBuilder;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use spendstream_ingest::decode::{self, End, Format, Item};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to import and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub files: Vec<PathBuf>,
    /// The edge's base URL (`http://host:8080`).
    pub url: String,
    pub token: String,
    /// `None`: from each file's name, else its first bytes.
    pub format: Option<Format>,
    pub chunk_records: usize,
    pub concurrency: usize,
    /// Attempts after the first, per chunk.
    pub max_retries: usize,
    pub progress: ProgressMode,
    /// After sending, wait until reports count every batch sent (asking
    /// `GET /v1/batches/{id}` at `wait_url`), at most this long.
    pub wait: Option<Duration>,
    /// Where the batches are asked (a query node); the edge's URL unless
    /// given.
    pub wait_url: Option<String>,
}

/// How progress is shown on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A redrawn line on a terminal, plain lines otherwise.
    Auto,
    /// A line redrawn in place.
    Bar,
    /// A plain line every few seconds.
    Lines,
    None,
}

/// What an import came to, over all its files (resumed runs included).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Entries read from the files.
    pub read: u64,
    pub accepted: u64,
    pub rejected_by_code: BTreeMap<String, u64>,
    /// Rejections the edge counted but did not list (it lists at most
    /// `--max-rejected-listed` per request), so not in the rejects file.
    pub unlisted: u64,
    /// The batches the edge answered with, in chunk order.
    pub batches: Vec<String>,
    /// With `--wait`: how long until reports counted every batch.
    pub visible_after: Option<Duration>,
}

impl Summary {
    pub fn rejected(&self) -> u64 {
        self.rejected_by_code.values().sum()
    }

    fn add(&mut self, other: &Summary) {
        self.read += other.read;
        self.accepted += other.accepted;
        self.unlisted += other.unlisted;
        self.batches.extend(other.batches.iter().cloned());
        for (code, n) in &other.rejected_by_code {
            *self.rejected_by_code.entry(code.clone()).or_default() += n;
        }
    }
}

/// The format a file's name says (`.ndjson`, `.jsonl`, `.json`, `.csv`,
/// `.xml`, `.bai`/`.bai2`, `.ofx`/`.qfx`, each optionally `.gz`), else its
/// first bytes.
pub fn detect(path: &Path, head: &[u8]) -> Option<Format> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let by_name = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("ndjson" | "jsonl") => Some(Format::Ndjson),
        Some("json") => Some(Format::Json),
        Some("csv") => Some(Format::Csv),
        Some("xml" | "camt" | "camt053") => Some(Format::Camt053),
        Some("bai" | "bai2") => Some(Format::Bai2),
        Some("ofx" | "qfx") => Some(Format::Ofx),
        _ => None,
    };
    if by_name.is_some() {
        return by_name;
    }
    let text = String::from_utf8_lossy(head);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with("OFXHEADER") || text.contains("<OFX>") {
        Some(Format::Ofx)
    } else if text.starts_with('<') {
        Some(Format::Camt053)
    } else if text.starts_with("01,") {
        Some(Format::Bai2)
    } else if text.starts_with('[') {
        Some(Format::Json)
    } else if text.starts_with('{') {
        Some(Format::Ndjson)
    } else if !text.is_empty() {
        Some(Format::Csv)
    } else {
        None
    }
}

/// A format by name (`ndjson`, `json`, `csv`, `camt053`, `bai2`, `ofx`).
pub fn format_named(name: &str) -> Option<Format> {
    Format::ALL
        .into_iter()
        .find(|f| format!("{f:?}").eq_ignore_ascii_case(name))
}

/// Runs the import of every file in turn; the summary covers all of them.
pub async fn run(options: &Options) -> anyhow::Result<Summary> {
    if options.chunk_records == 0 || options.concurrency == 0 {
        bail!("--chunk-records and --concurrency must be at least 1");
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .build()
        .context("building the HTTP client")?;
    let mut total = Summary::default();
    for file in &options.files {
        let summary = import_file(&client, options, file)
            .await
            .with_context(|| format!("{}", file.display()))?;
        total.add(&summary);
    }
    if let Some(limit) = options.wait {
        let url = options.wait_url.as_deref().unwrap_or(&options.url);
        let started = Instant::now();
        wait_visible(
            &client,
            url,
            &options.token,
            &total.batches,
            limit,
            options.progress,
        )
        .await?;
        total.visible_after = Some(started.elapsed());
    }
    Ok(total)
}

/// Asks `GET /v1/batches/{id}` of each batch until every one is visible in
/// reports, or fails after `limit`.
async fn wait_visible(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    batches: &[String],
    limit: Duration,
    progress: ProgressMode,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut left: Vec<&String> = batches.iter().collect();
    let mut told = Instant::now();
    while !left.is_empty() {
        let mut still = Vec::new();
        let mut wait = Duration::from_millis(250);
        // Batches become visible about in the order they were sent: each
        // round asks until the first one not visible yet, so waiting costs
        // one request a round, not one per batch (the route shares the
        // tenant's query quota with its reports).
        let mut asking = true;
        for id in left {
            if !asking {
                still.push(id);
                continue;
            }
            let answer = client
                .get(format!("{}/v1/batches/{id}", url.trim_end_matches('/')))
                .bearer_auth(token)
                .send()
                .await;
            let visible = match answer {
                Ok(r) if r.status() == 200 => {
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    body["status"] == "visible"
                }
                Ok(r) if r.status() == 429 => {
                    if let Some(after) = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                    {
                        wait = Duration::from_secs(after.min(60));
                    }
                    false
                }
                Ok(r) if r.status() == 404 || r.status() == 401 || r.status() == 403 => {
                    bail!(
                        "--wait: batch {id}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                // Anything else may pass: ask again.
                _ => false,
            };
            if !visible {
                still.push(id);
                asking = false;
            }
        }
        left = still;
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "--wait: {} of {} batches were not visible in reports after {} s (the first: {})",
                left.len(),
                batches.len(),
                limit.as_secs(),
                left[0]
            );
        }
        if progress != ProgressMode::None && told.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "import: waiting for reports to count {} of {} batches",
                left.len(),
                batches.len()
            );
            told = Instant::now();
        }
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

/// Where a file's checkpoint and rejects go.
pub fn checkpoint_path(file: &Path) -> PathBuf {
    sibling(file, "import.json")
}

pub fn rejects_path(file: &Path) -> PathBuf {
    sibling(file, "rejects.ndjson")
}

fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    file.with_file_name(name)
}

/// What is known of a file's import, kept next to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// SHA-256 of the file's bytes as stored (gzipped or not).
    sha256: String,
    format: String,
    chunk_records: usize,
    /// Chunks the edge answered, by index.
    done: BTreeSet<u64>,
    /// Entries of the done chunks.
    read: u64,
    accepted: u64,
    rejected_by_code: BTreeMap<String, u64>,
    unlisted: u64,
    /// The batch of each done chunk that sent records.
    #[serde(default)]
    batches: Vec<String>,
    /// Every chunk is done.
    complete: bool,
}

impl Checkpoint {
    fn summary(&self) -> Summary {
        Summary {
            read: self.read,
            accepted: self.accepted,
            rejected_by_code: self.rejected_by_code.clone(),
            unlisted: self.unlisted,
            batches: self.batches.clone(),
            visible_after: None,
        }
    }

    /// Written to a temporary file and renamed over the old one, so a kill
    /// leaves either checkpoint whole.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// The hex SHA-256 of a file.
fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A file as the decoders read it (gunzipped when it starts like gzip),
/// and a counter of the file's bytes read so far.
fn open(path: &Path) -> anyhow::Result<(Box<dyn BufRead + Send>, Arc<AtomicU64>)> {
    let counted = Arc::new(AtomicU64::new(0));
    let file = std::fs::File::open(path)?;
    let mut raw = BufReader::with_capacity(
        1 << 16,
        Counted {
            inner: file,
            count: counted.clone(),
        },
    );
    let gzip = raw.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn BufRead + Send> = if gzip {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(raw),
        ))
    } else {
        Box::new(raw)
    };
    Ok((reader, counted))
}

struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// One chunk of a file: consecutive entries, the records among them with
/// their index in the file, and the entries the decoder already refused.
#[derive(Debug)]
struct Chunk {
    index: u64,
    entries: u64,
    records: Vec<(u64, String)>,
    local_rejects: Vec<RejectLine>,
}

/// A line of the rejects file.
#[derive(Debug, Serialize, Deserialize)]
struct RejectLine {
    chunk: u64,
    /// The entry's position in the file, from 0.
    index: u64,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    message: String,
    /// The record as it was read (its NDJSON line, or the object a CSV row
    /// or bank-file entry became); absent when it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<String>,
}

/// What the edge made of a chunk.
struct Answer {
    chunk: Chunk,
    /// The batch its records went in, when any were sent.
    batch_id: Option<String>,
    accepted: u64,
    rejects: Vec<RejectLine>,
    by_code: BTreeMap<String, u64>,
    unlisted: u64,
}

async fn import_file(
    client: &reqwest::Client,
    options: &Options,
    path: &Path,
) -> anyhow::Result<Summary> {
    let display = path.display().to_string();
    let size = std::fs::metadata(path)
        .with_context(|| "reading the file")?
        .len();
    let sha256 = file_sha256(path).context("reading the file")?;
    // One import of a file at a time: two would write one checkpoint and
    // one rejects file. The lock goes with the process, a killed one too.
    let lock_path = sibling(path, "import.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another import of this file is running (it holds {})",
            lock_path.display()
        );
    }
    let format = match options.format {
        Some(f) => f,
        None => {
            let (mut reader, _) = open(path)?;
            let head = reader.fill_buf()?.to_vec();
            detect(path, &head).with_context(
                || "cannot tell the file's format from its name or first bytes; give --format",
            )?
        }
    };
    let checkpoint_file = checkpoint_path(path);
    let rejects_file = rejects_path(path);
    let mut checkpoint = match std::fs::read(&checkpoint_file) {
        Ok(bytes) => {
            let old: Checkpoint = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a checkpoint; delete it to start over",
                    checkpoint_file.display()
                )
            })?;
            if old.sha256 != sha256 {
                bail!(
                    "the file changed since {} was written; delete it (and {}) to import the new content",
                    checkpoint_file.display(),
                    rejects_file.display()
                );
            }
            let named = format!("{format:?}").to_ascii_lowercase();
            if old.format != named {
                bail!(
                    "{} was made for this file read as {}, not {named}: give --format {} to resume, or delete it (and {}) to start over",
                    checkpoint_file.display(),
                    old.format,
                    old.format,
                    rejects_file.display()
                );
            }
            if old.chunk_records != options.chunk_records {
                eprintln!(
                    "import: {display}: resuming with the checkpoint's {} records a chunk (its keys depend on it)",
                    old.chunk_records
                );
            }
            old
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Written before anything is sent: a run killed with its first
            // chunks in flight resumes them under the same keys.
            let new = Checkpoint {
                sha256: sha256.clone(),
                format: format!("{format:?}").to_ascii_lowercase(),
                chunk_records: options.chunk_records,
                ..Checkpoint::default()
            };
            new.save(&checkpoint_file)?;
            new
        }
        Err(e) => return Err(e).context(format!("reading {}", checkpoint_file.display())),
    };
    // Rejects of chunks the checkpoint does not count are dropped: their
    // chunks are sent again and answer again.
    keep_rejects_of(&rejects_file, &checkpoint.done)?;
    let mut rejects_out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&rejects_file)
            .with_context(|| format!("opening {}", rejects_file.display()))?,
    );
    if checkpoint.complete {
        eprintln!(
            "import: {display}: already imported (per {})",
            checkpoint_file.display()
        );
        return Ok(checkpoint.summary());
    }
    let resumed = checkpoint.done.len();
    let chunk_records = checkpoint.chunk_records;
    let key_prefix = format!(
        "import-{}-{}-{chunk_records}",
        &sha256[..32],
        checkpoint.format
    );

    let (reader, bytes_read) = open(path)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(options.concurrency);
    let done = checkpoint.done.clone();
    let decoder =
        tokio::task::spawn_blocking(move || split(format, reader, chunk_records as u64, &done, tx));
    let endpoint = format!("{}/v1/expenses", options.url.trim_end_matches('/'));
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let answers = chunks
        .map(|chunk| send(client, &endpoint, options, &key_prefix, chunk))
        .buffer_unordered(options.concurrency);
    let mut answers = std::pin::pin!(answers);

    let mut progress = Progress::new(options.progress, display.clone(), size, bytes_read);
    progress.resumed(resumed, &checkpoint);
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            answer = answers.next() => {
                let Some(answer) = answer else { break Ok(()) };
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(e) => break Err(e),
                };
                for line in answer.chunk.local_rejects.iter().chain(&answer.rejects) {
                    serde_json::to_writer(&mut rejects_out, line)?;
                    rejects_out.write_all(b"\n")?;
                }
                // The rejects are on disk before the checkpoint counts the
                // chunk: a kill in between sends the chunk again, and the
                // rejects of uncounted chunks are dropped on resume.
                rejects_out.flush()?;
                rejects_out.get_ref().sync_data()?;
                checkpoint.done.insert(answer.chunk.index);
                checkpoint.read += answer.chunk.entries;
                checkpoint.accepted += answer.accepted;
                checkpoint.unlisted += answer.unlisted;
                checkpoint.batches.extend(answer.batch_id.clone());
                for line in &answer.chunk.local_rejects {
                    *checkpoint.rejected_by_code.entry(line.error.clone()).or_default() += 1;
                }
                for (code, n) in &answer.by_code {
                    *checkpoint.rejected_by_code.entry(code.clone()).or_default() += n;
                }
                checkpoint.save(&checkpoint_file)?;
                progress.chunk_done(answer.chunk.entries);
                progress.draw(&checkpoint, false);
            }
            _ = ticker.tick() => progress.draw(&checkpoint, false),
        }
    };
    outcome?;
    decoder.await.context("the decoding thread")??;
    checkpoint.complete = true;
    checkpoint.save(&checkpoint_file)?;
    progress.draw(&checkpoint, true);
    drop(lock);
    Ok(checkpoint.summary())
}

/// Rewrites the rejects file with only the lines of `done` chunks.
fn keep_rejects_of(path: &Path, done: &BTreeSet<u64>) -> anyhow::Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context(format!("reading {}", path.display())),
    };
    // Line by line, as bytes: a run killed midway may have left half a
    // line (cut inside a character, even), which is dropped like any line
    // of a chunk not done.
    let tmp = path.with_extension("ndjson.tmp");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?,
    );
    for line in BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if serde_json::from_slice::<RejectLine>(&line).is_ok_and(|r| done.contains(&r.chunk)) {
            out.write_all(&line)?;
            out.write_all(b"\n")?;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Decodes the file into chunks of `chunk_records` entries and hands on
/// those not `done` (blocking; run off the async threads).
fn split(
    format: Format,
    reader: Box<dyn BufRead + Send>,
    chunk_records: u64,
    done: &BTreeSet<u64>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
) -> anyhow::Result<()> {
    let new_chunk = |index: u64| Chunk {
        index,
        entries: 0,
        records: Vec::new(),
        local_rejects: Vec::new(),
    };
    let mut chunk = new_chunk(0);
    let mut closed = false;
    let hand_on = |chunk: Chunk| -> bool {
        if done.contains(&chunk.index) {
            return true;
        }
        tx.blocking_send(chunk).is_ok()
    };
    let end = decode::decode(format, reader, 1 << 20, &mut |item| {
        let (index, line) = match item {
            Item::Record { index, json } => (index as u64, Ok(json)),
            Item::Reject { index, error } => (index as u64, Err(error)),
        };
        let chunk_index = index / chunk_records;
        if chunk_index != chunk.index {
            let full = std::mem::replace(&mut chunk, new_chunk(chunk_index));
            if !hand_on(full) {
                closed = true;
                return false;
            }
        }
        chunk.entries += 1;
        match line {
            // One record a line: a pretty-printed JSON element's line
            // breaks are whitespace. One that is not JSON (a raw line break
            // inside a string) is refused here, as the edge would, rather
            // than changed into one that is.
            Ok(json) if json.trim_end().contains(['\n', '\r']) => {
                match serde_json::from_str::<serde::de::IgnoredAny>(&json) {
                    Ok(_) => chunk
                        .records
                        .push((index, json.trim_end().replace(['\n', '\r'], " "))),
                    Err(e) => chunk.local_rejects.push(RejectLine {
                        chunk: chunk_index,
                        index,
                        error: "invalid_json".into(),
                        field: None,
                        message: format!("the record is not a JSON object: {e}"),
                        record: Some(json),
                    }),
                }
            }
            Ok(json) => chunk.records.push((index, json.trim_end().to_string())),
            Err(error) => chunk.local_rejects.push(RejectLine {
                chunk: chunk_index,
                index,
                error: error.code.as_str().to_string(),
                field: error.field.map(str::to_string),
                message: error.message,
                record: None,
            }),
        }
        true
    });
    if closed {
        return Ok(());
    }
    match end {
        End::Complete | End::Cancelled => {}
        End::Malformed { index, message } => {
            // The rest of the file is unreadable: one rejection says where.
            let index = index as u64;
            let chunk_index = index / chunk_records;
            if chunk_index != chunk.index {
                let full = std::mem::replace(&mut chunk, new_chunk(chunk_index));
                if !hand_on(full) {
                    return Ok(());
                }
            }
            chunk.entries += 1;
            chunk.local_rejects.push(RejectLine {
                chunk: chunk_index,
                index,
                error: "malformed_body".into(),
                field: None,
                message: format!("the file could not be read past this point: {message}"),
                record: None,
            });
        }
        End::Unframable { code, message } => bail!("{code}: {message}"),
    }
    if chunk.entries > 0 {
        hand_on(chunk);
    }
    Ok(())
}

/// Sends one chunk until the edge gives an answer that stands, retrying what
/// a retry may fix.
async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    options: &Options,
    key_prefix: &str,
    chunk: Chunk,
) -> anyhow::Result<Answer> {
    if chunk.records.is_empty() {
        return Ok(Answer {
            chunk,
            batch_id: None,
            accepted: 0,
            rejects: Vec::new(),
            by_code: BTreeMap::new(),
            unlisted: 0,
        });
    }
    let mut body = Vec::with_capacity(chunk.records.iter().map(|(_, r)| r.len() + 1).sum());
    for (_, record) in &chunk.records {
        body.extend_from_slice(record.as_bytes());
        body.push(b'\n');
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&body)?;
    let body = gz.finish()?;
    let key = format!("{key_prefix}-{}", chunk.index);
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .with_max_times(options.max_retries)
        .build();
    loop {
        let sent = client
            .post(endpoint)
            .bearer_auth(&options.token)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .header("idempotency-key", &key)
            .body(body.clone())
            .send()
            .await;
        let (why, retry_after) = match sent {
            Err(e) => (format!("{e}"), None),
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(300)));
                let answer: Value = match response.bytes().await {
                    Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    Err(e) => {
                        let why = format!("reading the answer to chunk {}: {e}", chunk.index);
                        match delays.next() {
                            Some(delay) => {
                                tokio::time::sleep(delay).await;
                                continue;
                            }
                            None => bail!("{why}"),
                        }
                    }
                };
                let code = answer["error"].as_str().unwrap_or("").to_string();
                match status {
                    202 | 422 if answer.get("batch_id").is_some() => {
                        return Ok(answered(chunk, &answer));
                    }
                    400 if code == "invalid_body" => {
                        // No line of the chunk is a JSON object: every
                        // record is rejected as the edge rejects such a line.
                        let message = answer["message"].as_str().unwrap_or("").to_string();
                        return Ok(all_rejected(chunk, "invalid_json", &message));
                    }
                    400 if code == "body_incomplete" => (format!("{status} {code}"), retry_after),
                    408 | 409 | 429 | 502 | 503 | 504 => (format!("{status} {code}"), retry_after),
                    _ => bail!(
                        "chunk {} was refused: {status} {}: {}",
                        chunk.index,
                        code,
                        answer["message"].as_str().unwrap_or("")
                    ),
                }
            }
        };
        let Some(backoff) = delays.next() else {
            bail!(
                "chunk {} failed after {} retries: {why}",
                chunk.index,
                options.max_retries
            );
        };
        tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
    }
}

/// A 202 or 422 answer to a chunk.
fn answered(chunk: Chunk, answer: &Value) -> Answer {
    let mut rejects = Vec::new();
    for listed in answer["rejected"].as_array().into_iter().flatten() {
        let Some(at) = listed["index"].as_u64() else {
            continue;
        };
        let Some((index, record)) = chunk.records.get(at as usize) else {
            continue;
        };
        rejects.push(RejectLine {
            chunk: chunk.index,
            index: *index,
            error: listed["error"].as_str().unwrap_or("").to_string(),
            field: listed["field"].as_str().map(str::to_string),
            message: listed["message"].as_str().unwrap_or("").to_string(),
            record: Some(record.clone()),
        });
    }
    let by_code: BTreeMap<String, u64> = answer["rejected_by_code"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(code, n)| (code.clone(), n.as_u64().unwrap_or(0)))
        .collect();
    let counted: u64 = by_code.values().sum();
    Answer {
        batch_id: answer["batch_id"].as_str().map(str::to_string),
        unlisted: counted.saturating_sub(rejects.len() as u64),
        accepted: answer["accepted"].as_u64().unwrap_or(0),
        chunk,
        rejects,
        by_code,
    }
}

fn all_rejected(chunk: Chunk, code: &str, message: &str) -> Answer {
    let rejects: Vec<RejectLine> = chunk
        .records
        .iter()
        .map(|(index, record)| RejectLine {
            chunk: chunk.index,
            index: *index,
            error: code.to_string(),
            field: None,
            message: message.to_string(),
            record: Some(record.clone()),
        })
        .collect();
    let by_code = BTreeMap::from([(code.to_string(), rejects.len() as u64)]);
    Answer {
        chunk,
        batch_id: None,
        accepted: 0,
        rejects,
        by_code,
        unlisted: 0,
    }
}

/// Progress on standard error.
struct Progress {
    bar: bool,
    off: bool,
    file: String,
    size: u64,
    bytes_read: Arc<AtomicU64>,
    started: Instant,
    last_line: Option<Instant>,
    /// Entries answered in this run (not counting resumed chunks).
    entries_now: u64,
}

impl Progress {
    fn new(mode: ProgressMode, file: String, size: u64, bytes_read: Arc<AtomicU64>) -> Self {
        let bar = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            _ => false,
        };
        Self {
            bar,
            off: mode == ProgressMode::None,
            file,
            size,
            bytes_read,
            started: Instant::now(),
            last_line: None,
            entries_now: 0,
        }
    }

    fn resumed(&self, chunks: usize, checkpoint: &Checkpoint) {
        if chunks > 0 && !self.off {
            eprintln!(
                "import: {}: resuming after {chunks} chunks done ({} entries, {} accepted)",
                self.file, checkpoint.read, checkpoint.accepted
            );
        }
    }

    fn chunk_done(&mut self, entries: u64) {
        self.entries_now += entries;
    }

    fn draw(&mut self, checkpoint: &Checkpoint, last: bool) {
        if self.off {
            return;
        }
        let now = Instant::now();
        if !self.bar
            && !last
            && self
                .last_line
                .is_some_and(|t| now - t < Duration::from_secs(5))
        {
            return;
        }
        self.last_line = Some(now);
        let elapsed = now - self.started;
        let read = self.bytes_read.load(Ordering::Relaxed).min(self.size);
        let fraction = if self.size == 0 {
            1.0
        } else {
            read as f64 / self.size as f64
        };
        let rate = self.entries_now as f64 / elapsed.as_secs_f64().max(0.001);
        let eta = if last {
            "done".to_string()
        } else if fraction > 0.0 && fraction < 1.0 && elapsed >= Duration::from_secs(2) {
            // The rate of the first moments says little of the rest.
            let left = elapsed.as_secs_f64() * (1.0 - fraction) / fraction;
            format!("ETA {}", seconds(left))
        } else {
            "ETA ?".to_string()
        };
        let rejected: u64 = checkpoint.rejected_by_code.values().sum();
        let line = format!(
            "{}: {:>3.0}% {} records, {} of {}, {:.0} records/s, {eta}, {} accepted, {} rejected",
            self.file,
            fraction * 100.0,
            checkpoint.read,
            bytes(read),
            bytes(self.size),
            rate,
            checkpoint.accepted,
            rejected,
        );
        let mut err = std::io::stderr().lock();
        if self.bar {
            let _ = write!(err, "\r\x1b[2K{line}");
            if last {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "import: {line}");
        }
        let _ = err.flush();
    }
}

fn seconds(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MIB {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// The summary printed at the end, on standard output.
pub fn describe(summary: &Summary, files: &[PathBuf]) -> String {
    let mut out = format!(
        "imported {} file(s): {} read, {} accepted, {} rejected",
        files.len(),
        summary.read,
        summary.accepted,
        summary.rejected()
    );
    for (code, n) in &summary.rejected_by_code {
        out.push_str(&format!("\n  {code}: {n}"));
    }
    if summary.rejected() > 0 {
        let rejects: Vec<String> = files
            .iter()
            .map(|f| rejects_path(f).display().to_string())
            .collect();
        out.push_str(&format!("\nrejected records: {}", rejects.join(", ")));
    }
    if let Some(after) = summary.visible_after {
        out.push_str(&format!(
            "\nreports count all {} batches ({:.1} s of waiting)",
            summary.batches.len(),
            after.as_secs_f64()
        ));
    }
    if summary.unlisted > 0 {
        out.push_str(&format!(
            "\n{} rejections were counted by the edge but not listed (it lists a limited number per request); use a smaller --chunk-records to have every one in the rejects file",
            summary.unlisted
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_names_then_first_bytes() {
        let p = Path::new;
        assert_eq!(detect(p("a.ndjson.gz"), b""), Some(Format::Ndjson));
        assert_eq!(detect(p("a.QFX"), b""), Some(Format::Ofx));
        assert_eq!(detect(p("a.bai2"), b""), Some(Format::Bai2));
        assert_eq!(detect(p("a.txt"), b"01,BANK,"), Some(Format::Bai2));
        assert_eq!(detect(p("a.dat"), b"OFXHEADER:100"), Some(Format::Ofx));
        assert_eq!(detect(p("a.dat"), b"<?xml version"), Some(Format::Camt053));
        assert_eq!(detect(p("a"), b"\xef\xbb\xbf [{"), Some(Format::Json));
        assert_eq!(detect(p("a"), b"{\"a\":1}"), Some(Format::Ndjson));
        assert_eq!(detect(p("a"), b"source,external_id"), Some(Format::Csv));
        assert_eq!(detect(p("a"), b""), None);
        assert_eq!(format_named("CAMT053"), Some(Format::Camt053));
        assert_eq!(format_named("xls"), None);
    }

    #[test]
    fn chunks_cover_every_entry_once_and_skip_done_ones() {
        let body: String = (0..10)
            .map(|i| {
                if i == 4 {
                    "not json\n".to_string()
                } else {
                    format!("{{\"i\":{i}}}\n")
                }
            })
            .collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let done = BTreeSet::from([1]);
        split(
            Format::Ndjson,
            Box::new(std::io::Cursor::new(body.into_bytes())),
            3,
            &done,
            tx,
        )
        .unwrap();
        let mut got = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            got.push(chunk);
        }
        let indices: Vec<u64> = got.iter().map(|c| c.index).collect();
        assert_eq!(indices, vec![0, 2, 3], "chunk 1 is done");
        assert_eq!(got[0].records.len(), 3);
        let entries: Vec<u64> = got[1].records.iter().map(|(i, _)| *i).collect();
        assert_eq!(entries, vec![6, 7, 8]);
        assert_eq!(got[2].records, vec![(9, "{\"i\":9}".to_string())]);
        // The bad line is in chunk 1, already done: not handed on again.
        assert!(got.iter().all(|c| c.local_rejects.is_empty()));
    }

    #[test]
    fn a_pretty_printed_json_element_is_one_ndjson_line() {
        let body = "[\n  {\n    \"a\": \"x y\",\r\n    \"b\": 1\n  },\n  {\"c\": 2}\n]\n";
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        split(
            Format::Json,
            Box::new(std::io::Cursor::new(body.as_bytes().to_vec())),
            10,
            &BTreeSet::new(),
            tx,
        )
        .unwrap();
        let chunk = rx.try_recv().unwrap();
        assert_eq!(chunk.records.len(), 2);
        for (_, line) in &chunk.records {
            assert!(!line.contains(['\n', '\r']), "{line:?}");
            serde_json::from_str::<Value>(line).unwrap();
        }
    }

    #[test]
    fn only_the_rejects_of_done_chunks_survive_a_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ndjson");
        let line = |chunk: u64| {
            serde_json::to_string(&RejectLine {
                chunk,
                index: chunk * 10,
                error: "invalid_json".into(),
                field: None,
                message: "m".into(),
                record: Some("x".into()),
            })
            .unwrap()
        };
        // The last line was cut inside a character by a kill.
        let mut text = format!("{}\n{}\n{}\n", line(0), line(3), line(1)).into_bytes();
        text.extend_from_slice(&line(1).as_bytes()[..10]);
        text.extend_from_slice(&[0xc3]);
        std::fs::write(&path, text).unwrap();
        keep_rejects_of(&path, &BTreeSet::from([0, 1])).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n{}\n", line(0), line(1))
        );
    }
}
