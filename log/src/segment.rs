//! The embedded log's on-disk unit: a segment, the records one append put
//! into one partition, stored as one row (as Kafka stores record batches).
//! One row per record cost an index entry and a statement per record; one
//! row per segment makes an append a few large writes.
//!
//! Layout (little-endian), version 1:
//!
//! ```text
//! u8 version = 1
//! u32 header sets, then each: u32 pairs, then each pair: bytes name, bytes value
//! u32 records, then each: u32 header set index, bytes key, bytes value
//! bytes = u32 length, then that many bytes
//! ```
//!
//! Records of one request share their headers, so a segment stores each
//! distinct header set once.
//!
//! Version 2, written since 0.1 (version 1 is still read):
//!
//! ```text
//! u8 version = 2
//! u32 length of the body
//! u32 CRC-32 of the body
//! the body (version 1 after its version byte), as one LZ4 block
//! ```
//!
//! The checksum catches damage that still decompresses (a changed byte of
//! a literal run), which would otherwise reach processors as other text.
//!
//! Compressed, a segment of JSON records is several times smaller: SQLite
//! writes it twice (its write-ahead file, then the database), and that
//! copying was the largest part of an append's cost, more than the
//! compression costs; reads load fewer pages (as Kafka compresses its
//! record batches).

use crate::{Error, Headers, Result};
use std::borrow::Cow;
use std::sync::Arc;

const VERSION: u8 = 1;
const COMPRESSED: u8 = 2;

/// Most records in one segment: a consumer reading from the middle of a
/// segment decodes it from its start, so segments stay small enough for
/// that to be cheap.
pub const MAX_RECORDS: usize = 4096;

/// Most bytes of records in one segment (each record may be up to the
/// edge's 1 MiB): far below SQLite's 1 GB value limit, and a read from the
/// middle of a segment loads at most this much.
pub const MAX_BYTES: usize = 32 << 20;
/// Builds one segment.
#[derive(Default)]
pub struct SegmentWriter {
    header_sets: Vec<Headers>,
    records: Vec<u8>,
    count: u32,
}

impl SegmentWriter {
    /// A writer with room for `bytes` of records, as [`SegmentWriter::size_of`]
    /// counts them: a segment then grows without copying what it holds.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            records: Vec::with_capacity(bytes.min(MAX_BYTES)),
            ..Self::default()
        }
    }

    /// The bytes a record of `key` and `value` takes in a segment.
    pub fn size_of(key: &[u8], value: &[u8]) -> usize {
        12 + key.len() + value.len()
    }

    pub fn push(&mut self, key: &[u8], value: &[u8], headers: &Headers) {
        // Records of one request arrive together: the last set is the
        // likely match, and a linear look is short.
        let index = match self
            .header_sets
            .iter()
            .rposition(|h| Arc::ptr_eq(h, headers) || **h == **headers)
        {
            Some(i) => i,
            None => {
                self.header_sets.push(headers.clone());
                self.header_sets.len() - 1
            }
        };
        self.records
            .extend_from_slice(&(index as u32).to_le_bytes());
        put_bytes(&mut self.records, key);
        put_bytes(&mut self.records, value);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether a record of `key` and `value` still fits (a first record
    /// always does).
    pub fn fits(&self, key: &[u8], value: &[u8]) -> bool {
        self.count == 0
            || (self.len() < MAX_RECORDS
                && self.records.len() + Self::size_of(key, value) <= MAX_BYTES)
    }

    /// The encoded segment, compressed (version 2).
    pub fn finish(self) -> Vec<u8> {
        let body = self.finish_uncompressed();
        let packed = lz4_flex::block::compress(&body[1..]);
        let mut out = Vec::with_capacity(9 + packed.len());
        out.push(COMPRESSED);
        out.extend_from_slice(&((body.len() - 1) as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body[1..]).to_le_bytes());
        out.extend_from_slice(&packed);
        out
    }

    /// The encoded segment in version 1.
    fn finish_uncompressed(self) -> Vec<u8> {
        let headers_len: usize = self
            .header_sets
            .iter()
            .flat_map(|h| h.iter())
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(
            1 + 8 + 4 * self.header_sets.len() + headers_len + self.records.len(),
        );
        out.push(VERSION);
        out.extend_from_slice(&(self.header_sets.len() as u32).to_le_bytes());
        for set in &self.header_sets {
            out.extend_from_slice(&(set.len() as u32).to_le_bytes());
            for (k, v) in set.iter() {
                put_bytes(&mut out, k.as_bytes());
                put_bytes(&mut out, v.as_bytes());
            }
        }
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.records);
        out
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A stored segment in the layout [`SegmentReader`] reads: version 1 as
/// it is, version 2 decompressed.
pub fn open(data: &[u8]) -> Result<Cow<'_, [u8]>> {
    if data.first() != Some(&COMPRESSED) {
        return Ok(Cow::Borrowed(data));
    }
    let mut cursor = Cursor(&data[1..]);
    let len = cursor.u32()? as usize;
    let crc = cursor.u32()?;
    // A segment's first record may be of any size the edge allows, so the
    // bound is what LZ4 can expand to (at most 255 bytes for each stored
    // byte): a larger length is damage, not a reason to allocate it.
    if len > cursor.0.len().saturating_mul(255).saturating_add(16) {
        return Err(corrupt(format!(
            "a body of {len} bytes cannot come from {} compressed",
            cursor.0.len()
        )));
    }
    let mut out = vec![0; 1 + len];
    out[0] = VERSION;
    let n = lz4_flex::block::decompress_into(cursor.0, &mut out[1..])
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    if n != len {
        return Err(corrupt(format!("{n} bytes decompressed, {len} stored")));
    }
    if crc32fast::hash(&out[1..]) != crc {
        return Err(corrupt("the body does not match its checksum".into()));
    }
    Ok(Cow::Owned(out))
}

/// One record read back from a segment.
pub struct SegmentRecord<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub headers: &'a Headers,
}

/// Reads a segment's records in order.
pub struct SegmentReader<'a> {
    rest: &'a [u8],
    header_sets: Vec<Headers>,
    remaining: u32,
}

impl<'a> SegmentReader<'a> {
    pub fn new(data: &'a [u8]) -> Result<Self> {
        let mut cursor = Cursor(data);
        let version = cursor.u8()?;
        if version != VERSION {
            return Err(corrupt(format!("unknown segment version {version}")));
        }
        let sets = cursor.u32()?;
        let mut header_sets = Vec::with_capacity(sets.min(1024) as usize);
        for _ in 0..sets {
            let pairs = cursor.u32()?;
            let mut set = Vec::with_capacity(pairs.min(64) as usize);
            for _ in 0..pairs {
                let k = cursor.text()?;
                let v = cursor.text()?;
                set.push((k, v));
            }
            header_sets.push(Arc::from(set));
        }
        let remaining = cursor.u32()?;
        Ok(Self {
            rest: cursor.0,
            header_sets,
            remaining,
        })
    }

    /// How many records are left to read.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// The next record, `None` at the end; an error when the bytes are not
    /// a whole segment.
    pub fn next_record(&mut self) -> Result<Option<SegmentRecord<'_>>> {
        if self.remaining == 0 {
            return if self.rest.is_empty() {
                Ok(None)
            } else {
                Err(corrupt("bytes after the last record".into()))
            };
        }
        let mut cursor = Cursor(self.rest);
        let index = cursor.u32()? as usize;
        let key = cursor.bytes()?;
        let value = cursor.bytes()?;
        let headers = self
            .header_sets
            .get(index)
            .ok_or_else(|| corrupt(format!("header set {index} does not exist")))?;
        self.rest = cursor.0;
        self.remaining -= 1;
        Ok(Some(SegmentRecord {
            key,
            value,
            headers,
        }))
    }
}

fn corrupt(what: String) -> Error {
    Error::CorruptSegment(what)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt(format!(
                "needs {n} more bytes, has {}",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("a header is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str) -> Headers {
        Arc::from(vec![
            ("batch_id".to_string(), id.to_string()),
            ("tenant".to_string(), "t1".to_string()),
        ])
    }

    #[test]
    fn records_come_back_in_order_with_their_own_headers() {
        let (a, b) = (headers("a"), headers("b"));
        let mut w = SegmentWriter::default();
        w.push(b"k1", b"v1", &a);
        w.push(b"", b"", &b);
        w.push(b"k3", b"v3", &a);
        assert_eq!(w.len(), 3);
        let stored = w.finish();
        let data = open(&stored).unwrap();
        let mut r = SegmentReader::new(&data).unwrap();
        assert_eq!(r.remaining(), 3);
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push((
                rec.key.to_vec(),
                rec.value.to_vec(),
                rec.headers[0].1.clone(),
            ));
        }
        assert_eq!(
            got,
            vec![
                (b"k1".to_vec(), b"v1".to_vec(), "a".to_string()),
                (vec![], vec![], "b".to_string()),
                (b"k3".to_vec(), b"v3".to_vec(), "a".to_string()),
            ]
        );
        // Two distinct header sets stored, not three.
        assert_eq!(SegmentReader::new(&data).unwrap().header_sets.len(), 2);
    }

    fn read_all(stored: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let data = open(stored)?;
        let mut r = SegmentReader::new(&data)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push((rec.key.to_vec(), rec.value.to_vec()));
        }
        Ok(out)
    }

    #[test]
    fn damaged_segments_are_errors_not_panics() {
        let mut w = SegmentWriter::default();
        w.push(b"key", b"value", &headers("a"));
        let compressed = w.finish();
        let mut w = SegmentWriter::default();
        w.push(b"key", b"value", &headers("a"));
        let uncompressed = w.finish_uncompressed();
        // Every truncation, and every single-byte change, fails cleanly or
        // reads something; none panics.
        for data in [compressed, uncompressed] {
            for cut in 0..data.len() {
                assert!(read_all(&data[..cut]).is_err(), "cut at {cut}");
                let mut flipped = data.clone();
                flipped[cut] ^= 0xff;
                let _ = read_all(&flipped);
            }
        }
        let mut w = SegmentWriter::default();
        w.push(b"key", b"value", &headers("a"));
        let mut extra = w.finish_uncompressed();
        extra.push(0);
        let mut r = SegmentReader::new(&extra).unwrap();
        assert!(r.next_record().unwrap().is_some());
        assert!(r.next_record().is_err());
        assert!(SegmentReader::new(&[3]).is_err());
        // A length no segment has is refused before anything is allocated.
        assert!(open(&[2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_err());
        // Compressed, no changed byte yields other records: the checksum
        // catches what still decompresses to something else (a bit LZ4
        // ignores, in the last token, changes nothing).
        let mut w = SegmentWriter::default();
        w.push(
            b"key",
            b"a value long enough to hold a literal run",
            &headers("a"),
        );
        let stored = w.finish();
        let records = read_all(&stored).unwrap();
        for at in 0..stored.len() {
            let mut flipped = stored.clone();
            flipped[at] ^= 0x01;
            if let Ok(read) = read_all(&flipped) {
                assert_eq!(read, records, "byte {at} changed");
            }
        }
    }

    /// Segments an older release wrote (version 1) read as before; new
    /// ones are compressed, and smaller when records repeat themselves.
    #[test]
    fn both_versions_read_the_same_records() {
        let fill = |w: &mut SegmentWriter| {
            for i in 0..200 {
                let value =
                    format!(r#"{{"v":1,"tenant_id":"acme","record":{{"external_id":"x{i}"}}}}"#);
                w.push(format!("k{i}").as_bytes(), value.as_bytes(), &headers("a"));
            }
        };
        let (mut old, mut new) = (SegmentWriter::default(), SegmentWriter::default());
        fill(&mut old);
        fill(&mut new);
        let (old, new) = (old.finish_uncompressed(), new.finish());
        assert_eq!((old[0], new[0]), (VERSION, COMPRESSED));
        assert!(
            new.len() * 3 < old.len(),
            "{} vs {} bytes",
            new.len(),
            old.len()
        );
        let records = read_all(&old).unwrap();
        assert_eq!(records.len(), 200);
        assert_eq!(read_all(&new).unwrap(), records);
    }
}
