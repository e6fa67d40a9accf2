//! A request body as the decoders read it: guarded by the idle and total
//! timeouts and the wire limit, gunzipped when it says so, capped after
//! decompression, and optionally hashed (the idempotency fingerprint is of
//! the decoded content, so the same payload gzipped twice, with two gzip
//! timestamps, is the same request). How reading ended is kept apart from
//! what the decoder made of the bytes, because the answer differs: a cut
//! or stalled transfer must never be stored as a key's final answer.

use crate::IngestConfig;
use crate::decode::Format;
use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use spendstream_http::ApiError;
use std::io::Read;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// How reading the body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to its end (or not read to its end by choice).
    Whole,
    /// Past the wire limit.
    TooLarge,
    /// Past the decompressed limit.
    TooLargeDecoded,
    /// Nothing arrived for the idle timeout, or it did not all arrive
    /// within the total timeout.
    TimedOut,
    /// The transfer broke (the client went away, a chunk was cut).
    Broken,
}

/// Where the body's reader records how it ended (the first ending wins).
#[derive(Debug, Clone, Default)]
pub struct BodyEndHandle(Arc<AtomicU8>);

impl BodyEndHandle {
    fn set(&self, end: BodyEnd) {
        let code = match end {
            BodyEnd::Whole => 0,
            BodyEnd::TooLarge => 1,
            BodyEnd::TimedOut => 2,
            BodyEnd::Broken => 3,
            BodyEnd::TooLargeDecoded => 4,
        };
        let _ = self
            .0
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn get(&self) -> BodyEnd {
        match self.0.load(Ordering::Acquire) {
            1 => BodyEnd::TooLarge,
            2 => BodyEnd::TimedOut,
            3 => BodyEnd::Broken,
            4 => BodyEnd::TooLargeDecoded,
            _ => BodyEnd::Whole,
        }
    }
}

/// The running hash of a body's decoded content.
#[derive(Clone)]
pub struct Fingerprint(Arc<Mutex<Sha256>>);

impl Fingerprint {
    fn new(format: Format) -> Self {
        let mut hasher = Sha256::new();
        // The format decides what the bytes mean: the same bytes as CSV and
        // as NDJSON are two requests.
        hasher.update(format!("{format:?}\n").as_bytes());
        Self(Arc::new(Mutex::new(hasher)))
    }

    fn update(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(bytes);
    }

    /// The hex digest of what was read so far.
    pub fn finish(&self) -> String {
        let digest = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How fast a body must arrive.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Longest pause between two pieces.
    idle: Duration,
    /// Longest transfer.
    total: Duration,
    /// Least average rate in bytes per second, checked once `idle` has
    /// passed (0: not checked): a client that trickles a byte now and then
    /// never pauses long enough for `idle`, but holds its slot all the same.
    min_rate: u64,
}

impl Pace {
    /// A sentence for the client saying what it was too slow for.
    fn describe(&self) -> String {
        format!(
            "nothing for {} s, under {} bytes/s on average, or not all within {} s",
            self.idle.as_secs(),
            self.min_rate,
            self.total.as_secs()
        )
    }
}

/// A request body not read yet, with its limits.
pub struct BodyReader {
    body: Body,
    gzip: bool,
    max_wire: u64,
    max_decoded: u64,
    pace: Pace,
    fingerprint: Option<Fingerprint>,
    /// Cancelled when the client went away: a body not in by then is
    /// broken.
    gone: Option<tokio_util::sync::CancellationToken>,
}

impl BodyReader {
    pub fn new(body: Body, gzip: bool, config: &IngestConfig) -> Self {
        Self {
            body,
            gzip,
            max_wire: config.max_body_bytes as u64,
            max_decoded: config.max_decompressed_bytes as u64,
            pace: Pace {
                idle: config.body_idle_timeout,
                total: config.body_timeout,
                min_rate: config.body_min_bytes_per_sec,
            },
            fingerprint: None,
            gone: None,
        }
    }

    /// Ends the body as broken when `gone` is cancelled (the request's
    /// own future was dropped) before all of it arrived.
    pub fn abandoned_with(mut self, gone: tokio_util::sync::CancellationToken) -> Self {
        self.gone = Some(gone);
        self
    }

    /// Hashes the decoded content as it is read; the handle gives the digest.
    pub fn hashed(mut self, format: Format) -> (Self, Fingerprint) {
        let fingerprint = Fingerprint::new(format);
        self.fingerprint = Some(fingerprint.clone());
        (self, fingerprint)
    }

    /// A blocking reader of the decoded content (read it off the async
    /// threads: its first read sets up the decompression, which reads the
    /// gzip header), and the handle that tells afterwards how reading ended.
    pub fn into_read(self) -> (impl Read + Send + 'static, BodyEndHandle) {
        let end = BodyEndHandle::default();
        let stream = Box::pin(guarded(
            self.body,
            self.max_wire,
            self.pace,
            end.clone(),
            self.gone.unwrap_or_default(),
        ));
        let read = Decoded {
            wire: Some((SyncIoBridge::new(StreamReader::new(stream)), self.gzip)),
            reader: None,
            left: self.max_decoded,
            read: 0,
            end: end.clone(),
            fingerprint: self.fingerprint,
        };
        (read, end)
    }

    /// Reads the whole body only to fingerprint it (a replayed request is
    /// compared with the stored one without being decoded or appended).
    pub async fn fingerprint(self, format: Format) -> Result<String, ApiError> {
        let (max_wire, max_decoded, pace) = (self.max_wire, self.max_decoded, self.pace);
        let (reader, fingerprint) = self.hashed(format);
        let (mut read, end) = reader.into_read();
        tokio::task::spawn_blocking(move || std::io::copy(&mut read, &mut std::io::sink()))
            .await
            .map_err(ApiError::internal)?
            .ok();
        match end.get() {
            BodyEnd::Whole => Ok(fingerprint.finish()),
            BodyEnd::TooLarge => Err(ApiError::PayloadTooLarge {
                limit: max_wire as usize,
            }),
            BodyEnd::TooLargeDecoded => Err(ApiError::PayloadTooLarge {
                limit: max_decoded as usize,
            }),
            BodyEnd::TimedOut => Err(ApiError::RequestTimeout {
                code: "body_timeout",
                message: format!("the body did not arrive in time ({})", pace.describe()),
            }),
            BodyEnd::Broken => Err(ApiError::bad_request(
                "body_incomplete",
                "the body did not arrive whole; send the whole request again",
            )),
        }
    }
}

/// The body's chunks, each within the idle timeout, all within the total
/// one, at the least average rate once the idle timeout has passed, no more
/// than `max_wire` bytes in all; the first failure ends the stream and is
/// recorded in `end`.
fn guarded(
    body: Body,
    max_wire: u64,
    pace: Pace,
    end: BodyEndHandle,
    gone: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    let start = Instant::now();
    let deadline = start + pace.total;
    futures::stream::unfold(Some((body.into_data_stream(), 0u64)), move |state| {
        let (end, gone) = (end.clone(), gone.clone());
        async move {
            let (mut chunks, seen) = state?;
            let now = Instant::now();
            // When the bytes so far stop meeting the least rate.
            let slow_at = match pace.min_rate {
                0 => deadline,
                rate => {
                    start
                        + pace
                            .idle
                            .max(Duration::from_secs_f64(seen as f64 / rate as f64))
                }
            };
            let until = (now + pace.idle).min(deadline).min(slow_at.max(now));
            let failed = |kind: BodyEnd, error: std::io::Error| {
                end.set(kind);
                Some((Err(error), None))
            };
            // Data first: bytes that reached the server before the client
            // went away are read; only a body with nothing more coming is
            // broken by it.
            let next = tokio::select! {
                biased;
                next = tokio::time::timeout_at(until, chunks.next()) => next,
                () = gone.cancelled() => {
                    return failed(
                        BodyEnd::Broken,
                        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the client went away"),
                    );
                }
            };
            match next {
                Err(_) => failed(
                    BodyEnd::TimedOut,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the body stopped arriving, or arrives too slowly",
                    ),
                ),
                Ok(None) => None,
                Ok(Some(Err(e))) => failed(BodyEnd::Broken, std::io::Error::other(e)),
                Ok(Some(Ok(chunk))) => {
                    let seen = seen + chunk.len() as u64;
                    if seen > max_wire {
                        return failed(
                            BodyEnd::TooLarge,
                            std::io::Error::other("request body too large"),
                        );
                    }
                    Some((Ok(chunk), Some((chunks, seen))))
                }
            }
        }
    })
}

/// The decoded content: capped at `left` bytes, hashed when asked.
struct Decoded<W> {
    /// The body as it comes off the wire (and whether it is gzip), until
    /// the first read sets up `reader` from it.
    wire: Option<(W, bool)>,
    reader: Option<Box<dyn Read + Send>>,
    left: u64,
    /// Bytes decoded so far, counted into the metrics once, on drop.
    read: u64,
    end: BodyEndHandle,
    fingerprint: Option<Fingerprint>,
}

impl<W> Drop for Decoded<W> {
    fn drop(&mut self) {
        metrics::counter!(crate::metrics::BODY_BYTES_TOTAL.name).increment(self.read);
    }
}

impl<W: Read + Send + 'static> Read for Decoded<W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some((bridge, gzip)) = self.wire.take() {
            self.reader = Some(if gzip {
                Box::new(flate2::read::MultiGzDecoder::new(bridge))
            } else {
                Box::new(bridge)
            });
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(0);
        };
        let n = reader.read(buf)?;
        if n as u64 > self.left {
            self.end.set(BodyEnd::TooLargeDecoded);
            return Err(std::io::Error::other("decompressed body too large"));
        }
        self.left -= n as u64;
        self.read += n as u64;
        if let Some(f) = &self.fingerprint {
            f.update(&buf[..n]);
        }
        Ok(n)
    }
}
