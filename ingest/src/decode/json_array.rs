//! A JSON array of records, read element by element. A single JSON object is
//! accepted as a one-record body.

use super::{End, Item};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::io::BufRead;

pub fn decode(mut reader: impl BufRead, emit: &mut dyn FnMut(Item) -> bool) -> End {
    // Peek at the first non-blank byte to tell an array from one object.
    let first = loop {
        match reader.fill_buf() {
            Ok([]) => {
                return End::Unframable {
                    code: "empty_body",
                    message: "the body is empty".into(),
                };
            }
            Ok(buf) => {
                let skip = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
                if skip < buf.len() {
                    let b = buf[skip];
                    reader.consume(skip);
                    break b;
                }
                let len = buf.len();
                reader.consume(len);
            }
            Err(e) => {
                return End::Malformed {
                    index: 0,
                    message: format!("reading the body failed: {e}"),
                };
            }
        }
    };
    match first {
        b'[' => decode_array(reader, emit),
        b'{' => {
            let mut de = serde_json::Deserializer::from_reader(reader);
            match <Box<RawValue> as serde::Deserialize>::deserialize(&mut de)
                .and_then(|v| de.end().map(|()| v))
            {
                Ok(raw) => {
                    if emit(Item::Record {
                        index: 0,
                        json: raw.get().to_string(),
                    }) {
                        End::Complete
                    } else {
                        End::Cancelled
                    }
                }
                Err(e) => End::Unframable {
                    code: "invalid_body",
                    message: format!("the body is not valid JSON: {e}"),
                },
            }
        }
        _ => End::Unframable {
            code: "invalid_body",
            message: "a JSON body must be an array of records (or one record object)".into(),
        },
    }
}

fn decode_array(reader: impl BufRead, emit: &mut dyn FnMut(Item) -> bool) -> End {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut state = ArrayState {
        emit,
        index: 0,
        cancelled: false,
    };
    let result = (&mut state).deserialize(&mut de).and_then(|()| de.end());
    if state.cancelled {
        return End::Cancelled;
    }
    match result {
        Ok(()) => End::Complete,
        Err(e) if state.index == 0 => End::Unframable {
            code: "invalid_body",
            message: format!("the body is not valid JSON: {e}"),
        },
        Err(e) => End::Malformed {
            index: state.index,
            message: format!("the JSON array broke off: {e}"),
        },
    }
}

struct ArrayState<'a> {
    emit: &'a mut dyn FnMut(Item) -> bool,
    index: usize,
    cancelled: bool,
}

impl<'de> DeserializeSeed<'de> for &mut ArrayState<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for &mut ArrayState<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            let item = Item::Record {
                index: self.index,
                json: raw.get().to_string(),
            };
            self.index += 1;
            if !(self.emit)(item) {
                self.cancelled = true;
                return Err(de::Error::custom("cancelled"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{End, Format, Item, collect};

    #[test]
    fn array_elements_in_order() {
        let (items, end) = collect(Format::Json, b" [ {\"a\":1.50}, 5, {\"b\":[1,2]} ] ");
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[0], Item::Record { index: 0, json } if json == "{\"a\":1.50}"));
        assert!(matches!(&items[1], Item::Record { index: 1, json } if json == "5"));
    }

    #[test]
    fn break_midway_keeps_what_came_before() {
        let (items, end) = collect(Format::Json, b"[{\"a\":1},{\"b\":2},{\"c\":");
        assert_eq!(items.len(), 2);
        assert!(matches!(end, End::Malformed { index: 2, .. }));
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
    }
}
