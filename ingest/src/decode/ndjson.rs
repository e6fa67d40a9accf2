//! Newline-delimited JSON: one record per line. A line that is not JSON is a
//! rejected record, not a failed body.

use super::{End, Item, too_large, utf8_record};
use std::io::BufRead;

/// Lines longer than `max_record` bytes are rejected without being buffered
/// whole.
pub fn decode(
    mut reader: impl BufRead,
    max_record: usize,
    emit: &mut dyn FnMut(Item) -> bool,
) -> End {
    let mut index = 0;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let (n, too_long) = match read_line_capped(&mut reader, &mut line, max_record) {
            Ok(v) => v,
            Err(e) => {
                return End::Malformed {
                    index,
                    message: format!("reading the body failed: {e}"),
                };
            }
        };
        if n == 0 {
            return End::Complete;
        }
        if !too_long && line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = if too_long {
            too_large(index, max_record)
        } else {
            utf8_record(index, std::mem::take(&mut line))
        };
        index += 1;
        if !emit(item) {
            return End::Cancelled;
        }
    }
}

/// Reads up to and including `\n`, keeping at most `max` bytes (the
/// line's start when it is longer). Returns bytes consumed and whether the
/// line was cut.
pub(super) fn read_line_capped(
    reader: &mut impl BufRead,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((consumed, too_long));
        }
        let (chunk, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let len = chunk.len();
        if too_long || out.len() + len > max {
            // The line's start is kept (up to `max`): a caller may want to
            // know what kind of line it was.
            let room = max.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..room.min(len)]);
            too_long = true;
        } else {
            out.extend_from_slice(chunk);
        }
        reader.consume(len);
        consumed += len;
        if done {
            return Ok((consumed, too_long));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Format, Item, collect};
    use super::*;

    #[test]
    fn lines_blank_lines_and_bad_lines() {
        let body = b"{\"a\":1}\n\n  \n{\"b\":2}\r\n\xff\xfe\n{\"c\":3}";
        let (items, end) = collect(Format::Ndjson, body);
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 4);
        assert!(matches!(&items[0], Item::Record { index: 0, json } if json == "{\"a\":1}\n"));
        assert!(matches!(&items[1], Item::Record { index: 1, .. }));
        assert!(matches!(&items[2], Item::Reject { index: 2, .. }));
        assert!(matches!(&items[3], Item::Record { index: 3, json } if json == "{\"c\":3}"));
    }

    #[test]
    fn overlong_line_is_rejected_not_buffered() {
        let mut body = vec![b'x'; (1 << 20) + 10];
        body.extend_from_slice(b"\n{\"ok\":1}\n");
        let (items, _) = collect(Format::Ndjson, &body);
        assert!(matches!(
            &items[0],
            Item::Reject { index: 0, error } if error.code == spendstream_schemas::ErrorCode::RecordTooLarge
        ));
        assert!(matches!(&items[1], Item::Record { index: 1, .. }));
    }
}
