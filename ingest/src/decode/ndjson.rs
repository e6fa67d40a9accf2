//! Newline-delimited JSON: one record per line. A line that is not JSON is a
//! rejected record, not a failed body.

use super::{End, Item};
use spendstream_schemas::{ErrorCode, RecordError};
use std::io::BufRead;

/// Longest line kept; longer ones are rejected without being buffered whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;

pub fn decode(mut reader: impl BufRead, emit: &mut dyn FnMut(Item) -> bool) -> End {
    let mut index = 0;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let (n, too_long) = match read_line_capped(&mut reader, &mut line) {
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
            Item::Reject {
                index,
                error: RecordError::new(
                    ErrorCode::InvalidJson,
                    None,
                    format!("line is longer than {MAX_LINE_BYTES} bytes"),
                ),
            }
        } else {
            match String::from_utf8(std::mem::take(&mut line)) {
                Ok(text) => Item::Record { index, json: text },
                Err(_) => Item::Reject {
                    index,
                    error: RecordError::new(ErrorCode::InvalidJson, None, "line is not UTF-8"),
                },
            }
        };
        index += 1;
        if !emit(item) {
            return End::Cancelled;
        }
    }
}

/// Reads up to and including `\n`, keeping at most `MAX_LINE_BYTES`. Returns
/// bytes consumed and whether the line was cut.
fn read_line_capped(
    reader: &mut impl BufRead,
    out: &mut Vec<u8>,
) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((consumed, too_long));
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let len = chunk.len();
        if out.len() + len > MAX_LINE_BYTES {
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
        let mut body = vec![b'x'; MAX_LINE_BYTES + 10];
        body.extend_from_slice(b"\n{\"ok\":1}\n");
        let (items, _) = collect(Format::Ndjson, &body);
        assert!(matches!(&items[0], Item::Reject { index: 0, .. }));
        assert!(matches!(&items[1], Item::Record { index: 1, .. }));
    }
}
