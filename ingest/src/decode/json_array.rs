//! A JSON array of records, read element by element. A single JSON object is
//! accepted as a one-record body.
//!
//! Elements are framed by a small scanner (brackets, strings and escapes),
//! not parsed: validation parses each record anyway, and framing alone can
//! skip an element of any size without holding it, which a JSON parser
//! reading a value cannot.

use super::{End, Item, too_large, utf8_record};
use std::io::BufRead;

pub fn decode(reader: impl BufRead, max_record: usize, emit: &mut dyn FnMut(Item) -> bool) -> End {
    let mut scan = Scanner {
        reader,
        max: max_record,
    };
    match run(&mut scan, emit) {
        Ok(end) => end,
        // Nothing framed yet: the body as a whole is not JSON.
        Err(e) if e.index == 0 => End::Unframable {
            code: "invalid_body",
            message: format!("the body is not valid JSON: {}", e.message),
        },
        Err(e) => End::Malformed {
            index: e.index,
            message: e.message,
        },
    }
}

/// Why framing stopped at `index` (turned into `End::Malformed`).
struct Broken {
    index: usize,
    message: String,
}

fn run(
    scan: &mut Scanner<impl BufRead>,
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<End, Broken> {
    let io = |index: usize| {
        move |e: std::io::Error| Broken {
            index,
            message: format!("reading the body failed: {e}"),
        }
    };
    match scan.peek_nonblank().map_err(io(0))? {
        None => Ok(End::Unframable {
            code: "empty_body",
            message: "the body is empty".into(),
        }),
        Some(b'{') => match scan.value().map_err(io(0))? {
            Value::Complete(text) if scan.peek_nonblank().map_err(io(1))?.is_none() => {
                Ok(if emit(utf8_record(0, text)) {
                    End::Complete
                } else {
                    End::Cancelled
                })
            }
            Value::TooLarge if scan.peek_nonblank().map_err(io(1))?.is_none() => {
                Ok(if emit(too_large(0, scan.max)) {
                    End::Complete
                } else {
                    End::Cancelled
                })
            }
            _ => Ok(End::Unframable {
                code: "invalid_body",
                message: "the body is not one JSON object (it breaks off, or more follows it)"
                    .into(),
            }),
        },
        Some(b'[') => {
            scan.bump();
            let mut index = 0;
            if scan.peek_nonblank().map_err(io(0))? == Some(b']') {
                scan.bump();
                return trailing(scan, 0);
            }
            loop {
                let item = match scan.value().map_err(io(index))? {
                    Value::Complete(text) if !text.is_empty() => utf8_record(index, text),
                    Value::TooLarge => too_large(index, scan.max),
                    Value::Complete(_) => return Err(broken(index, "a value is missing")),
                    Value::Cut => return Err(broken(index, "the body ends inside a record")),
                };
                index += 1;
                if !emit(item) {
                    return Ok(End::Cancelled);
                }
                match scan.peek_nonblank().map_err(io(index))? {
                    Some(b',') => scan.bump(),
                    Some(b']') => {
                        scan.bump();
                        return trailing(scan, index);
                    }
                    None => return Err(broken(index, "the body ends before the array is closed")),
                    Some(other) => {
                        return Err(broken(
                            index,
                            &format!("expected `,` or `]`, found `{}`", char::from(other)),
                        ));
                    }
                }
            }
        }
        Some(_) => Ok(End::Unframable {
            code: "invalid_body",
            message: "a JSON body must be an array of records (or one record object)".into(),
        }),
    }
}

fn broken(index: usize, what: &str) -> Broken {
    Broken {
        index,
        message: format!("the JSON array broke off: {what}"),
    }
}

/// After the closing `]`: only whitespace may follow.
fn trailing(scan: &mut Scanner<impl BufRead>, index: usize) -> Result<End, Broken> {
    match scan.peek_nonblank() {
        Ok(None) => Ok(End::Complete),
        Ok(Some(_)) => Err(broken(index, "something follows the closing `]`")),
        Err(e) => Err(Broken {
            index,
            message: format!("reading the body failed: {e}"),
        }),
    }
}

/// One framed value.
enum Value {
    /// Its text (empty when no value starts here).
    Complete(Vec<u8>),
    /// Larger than the limit; skipped.
    TooLarge,
    /// The body ended inside it.
    Cut,
}

struct Scanner<R> {
    reader: R,
    max: usize,
}

impl<R: BufRead> Scanner<R> {
    /// The next byte that is not JSON whitespace, left unread.
    fn peek_nonblank(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            match buf
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                Some(i) => {
                    let b = buf[i];
                    self.reader.consume(i);
                    return Ok(Some(b));
                }
                None => {
                    let n = buf.len();
                    self.reader.consume(n);
                }
            }
        }
    }

    /// Consumes the byte `peek_nonblank` returned.
    fn bump(&mut self) {
        self.reader.consume(1);
    }

    /// Frames the value starting at the next non-blank byte: an object or
    /// array up to its matching bracket, a string up to its closing quote,
    /// anything else up to the next delimiter or blank. Keeps at most `max`
    /// bytes of it.
    fn value(&mut self) -> std::io::Result<Value> {
        if self.peek_nonblank()?.is_none() {
            return Ok(Value::Cut);
        }
        let mut text = Vec::new();
        let mut over = false;
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        let mut started = false;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                // A bare scalar may end with the body; nothing else may.
                let done = started && depth == 0 && !in_string;
                return Ok(match (done, over) {
                    (true, false) => Value::Complete(text),
                    (true, true) => Value::TooLarge,
                    (false, _) => Value::Cut,
                });
            }
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    started = true;
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
                started = true;
            }
            let take = end.unwrap_or(buf.len());
            if !over {
                if text.len() + take > self.max {
                    over = true;
                    text = Vec::new();
                } else {
                    text.extend_from_slice(&buf[..take]);
                }
            }
            self.reader.consume(take);
            if end.is_some() {
                return Ok(if over {
                    Value::TooLarge
                } else {
                    Value::Complete(text)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{End, Format, Item, collect, collect_limited};

    #[test]
    fn array_elements_in_order() {
        let (items, end) = collect(Format::Json, b" [ {\"a\":1.50}, 5, {\"b\":[1,2]} ] ");
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[0], Item::Record { index: 0, json } if json == "{\"a\":1.50}"));
        assert!(matches!(&items[1], Item::Record { index: 1, json } if json == "5"));
        assert!(matches!(&items[2], Item::Record { index: 2, json } if json == "{\"b\":[1,2]}"));
    }

    #[test]
    fn strings_with_brackets_quotes_and_escapes_frame_whole() {
        let body = br#"[{"m":"a],\"}{[b","n":"\\"},"x\"]"]"#;
        let (items, end) = collect(Format::Json, body);
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[0], Item::Record { json, .. } if json == r#"{"m":"a],\"}{[b","n":"\\"}"#)
        );
        assert!(matches!(&items[1], Item::Record { json, .. } if json == r#""x\"]""#));
    }

    #[test]
    fn break_midway_keeps_what_came_before() {
        let (items, end) = collect(Format::Json, b"[{\"a\":1},{\"b\":2},{\"c\":");
        assert_eq!(items.len(), 2);
        assert!(matches!(end, End::Malformed { index: 2, .. }));
        let (items, end) = collect(Format::Json, b"[{\"a\":1},,{\"b\":2}]");
        assert_eq!(items.len(), 1);
        assert!(matches!(end, End::Malformed { index: 1, .. }));
        let (items, end) = collect(Format::Json, b"[{\"a\":1}] trailing");
        assert_eq!(items.len(), 1);
        assert!(matches!(end, End::Malformed { index: 1, .. }));
    }

    #[test]
    fn not_json_or_single_object() {
        assert!(matches!(
            collect(Format::Json, b"hello").1,
            End::Unframable { .. }
        ));
        assert!(matches!(
            collect(Format::Json, b"").1,
            End::Unframable {
                code: "empty_body",
                ..
            }
        ));
        let (items, end) = collect(Format::Json, b"{\"a\":1}");
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 1);
        assert!(matches!(
            collect(Format::Json, b"{\"a\":").1,
            End::Unframable { .. }
        ));
        assert!(matches!(
            collect(Format::Json, b"{\"a\":1} {\"b\":2}").1,
            End::Unframable { .. }
        ));
        let (items, end) = collect(Format::Json, b" [ ] ");
        assert_eq!((items.len(), end), (0, End::Complete));
    }

    #[test]
    fn an_oversized_single_object_is_one_rejected_record() {
        let body = format!("{{\"memo\":\"{}\"}}", "x".repeat(100));
        let (items, end) = collect_limited(Format::Json, body.as_bytes(), 50);
        assert_eq!(end, End::Complete);
        assert!(matches!(
            &items[..],
            [Item::Reject { index: 0, error }] if error.code == spendstream_schemas::ErrorCode::RecordTooLarge
        ));
    }
}
