//! CSV with a header row of record field names. Each row becomes a JSON
//! object of strings (empty cells are absent), validated like any record.
//!
//! Rows are read with `csv-core` into a buffer that never grows past the
//! per-record limit: a longer row (an unclosed quote, a huge cell) is read
//! through and rejected without being held.

use super::{End, Item, too_large};
use csv_core::{ReadRecordResult, Reader, ReaderBuilder};
use spendstream_schemas::record::FIELDS;
use spendstream_schemas::{ErrorCode, RecordError};
use std::io::BufRead;

/// Cells kept per row: more than any header of known field names can have.
const MAX_CELLS: usize = 64;

pub fn decode(
    mut reader: impl BufRead,
    max_record: usize,
    emit: &mut dyn FnMut(Item) -> bool,
) -> End {
    let mut rows = Rows::new(max_record);
    let names = match rows.next(&mut reader) {
        Err(e) => {
            return End::Unframable {
                code: "invalid_csv_header",
                message: format!("could not read the CSV header row: {e}"),
            };
        }
        Ok(None) => {
            return End::Unframable {
                code: "invalid_csv_header",
                message: "the CSV body has no header row".into(),
            };
        }
        Ok(Some(Row::TooLarge)) => {
            return End::Unframable {
                code: "invalid_csv_header",
                message: "the CSV header row is too long".into(),
            };
        }
        Ok(Some(Row::Cells(cells))) => match header(&cells) {
            Ok(names) => names,
            Err(message) => {
                return End::Unframable {
                    code: "invalid_csv_header",
                    message,
                };
            }
        },
    };
    let mut index = 0;
    loop {
        let item = match rows.next(&mut reader) {
            Err(e) => {
                return End::Malformed {
                    index,
                    message: format!("reading the body failed: {e}"),
                };
            }
            Ok(None) => return End::Complete,
            Ok(Some(Row::TooLarge)) => too_large(index, max_record),
            Ok(Some(Row::Cells(cells))) => row_to_item(index, &names, &cells),
        };
        index += 1;
        if !emit(item) {
            return End::Cancelled;
        }
    }
}

/// The field names of the header row.
fn header(cells: &[&[u8]]) -> Result<Vec<String>, String> {
    let mut names = Vec::with_capacity(cells.len());
    for cell in cells {
        let name = std::str::from_utf8(cell).unwrap_or("").trim();
        if !FIELDS.contains(&name) {
            return Err(format!(
                "the first row must be a header of record field names; `{}` is not one",
                spendstream_schemas::pan::mask_pans(name)
                    .chars()
                    .take(64)
                    .collect::<String>()
            ));
        }
        if !name.is_empty() && names.iter().any(|n| n == name) {
            return Err(format!("`{name}` appears twice in the CSV header"));
        }
        names.push(name.to_string());
    }
    if names.iter().all(String::is_empty) {
        return Err("the CSV body has no header row".into());
    }
    Ok(names)
}

enum Row<'a> {
    Cells(Vec<&'a [u8]>),
    TooLarge,
}

/// Reads rows one at a time into bounded buffers.
struct Rows {
    csv: Reader,
    max: usize,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl Rows {
    fn new(max: usize) -> Self {
        Self {
            csv: ReaderBuilder::new().build(),
            max,
            out: vec![0; max.clamp(1, 64 * 1024)],
            ends: vec![0; 16],
        }
    }

    /// The next non-blank row, `None` at the end of the body.
    fn next(&mut self, reader: &mut impl BufRead) -> std::io::Result<Option<Row<'_>>> {
        loop {
            let (mut out_len, mut ends_len, mut over) = (0, 0, false);
            loop {
                let input = reader.fill_buf()?;
                let (result, read, written, ended) = self.csv.read_record(
                    input,
                    &mut self.out[out_len..],
                    &mut self.ends[ends_len..],
                );
                reader.consume(read);
                out_len += written;
                ends_len += ended;
                match result {
                    ReadRecordResult::InputEmpty => {}
                    ReadRecordResult::OutputFull if self.out.len() < self.max => {
                        let grown = (self.out.len() * 2).min(self.max);
                        self.out.resize(grown, 0);
                    }
                    ReadRecordResult::OutputEndsFull if self.ends.len() < MAX_CELLS => {
                        let grown = self.ends.len() * 2;
                        self.ends.resize(grown, 0);
                    }
                    // Past a limit: read the row through, keeping nothing.
                    ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {
                        over = true;
                        out_len = 0;
                        ends_len = 0;
                    }
                    ReadRecordResult::Record => break,
                    ReadRecordResult::End => return Ok(None),
                }
            }
            if over {
                return Ok(Some(Row::TooLarge));
            }
            // A blank line is one empty cell: not a row.
            if ends_len == 1 && self.ends[0] == 0 {
                continue;
            }
            let out = &self.out[..out_len];
            let mut start = 0;
            let cells = self.ends[..ends_len]
                .iter()
                .map(|&end| {
                    let cell = &out[start..end];
                    start = end;
                    cell
                })
                .collect();
            return Ok(Some(Row::Cells(cells)));
        }
    }
}

fn row_to_item(index: usize, names: &[String], row: &[&[u8]]) -> Item {
    if row.len() != names.len() {
        return Item::Reject {
            index,
            error: RecordError::new(
                ErrorCode::InvalidField,
                None,
                format!(
                    "row has {} cells, the header has {}",
                    row.len(),
                    names.len()
                ),
            ),
        };
    }
    let mut object = serde_json::Map::with_capacity(names.len());
    for (name, cell) in names.iter().zip(row) {
        let Ok(text) = std::str::from_utf8(cell) else {
            return Item::Reject {
                index,
                error: RecordError::new(
                    ErrorCode::InvalidField,
                    None,
                    format!("`{name}` is not UTF-8"),
                ),
            };
        };
        if !text.is_empty() {
            object.insert(name.clone(), serde_json::Value::String(text.to_string()));
        }
    }
    Item::Record {
        index,
        json: serde_json::Value::Object(object).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{End, Format, Item, collect};

    #[test]
    fn rows_become_objects_of_strings() {
        let body = "source,external_id,amount,currency,memo\nvisa,1,12.30,USD,\"a, b\"\n\nvisa,2,1,JPY,\nvisa,3\n";
        let (items, end) = collect(Format::Csv, body.as_bytes());
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 3);
        let Item::Record { json, .. } = &items[0] else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["amount"], "12.30");
        assert_eq!(v["memo"], "a, b");
        let Item::Record { json, .. } = &items[1] else {
            panic!()
        };
        assert!(!json.contains("memo"));
        assert!(matches!(&items[2], Item::Reject { index: 2, .. }));
    }

    #[test]
    fn header_is_required_and_may_carry_a_bom_and_crlf() {
        assert!(matches!(
            collect(Format::Csv, b"visa,1,12.30,USD\n").1,
            End::Unframable {
                code: "invalid_csv_header",
                ..
            }
        ));
        assert!(matches!(
            collect(Format::Csv, b"").1,
            End::Unframable { .. }
        ));
        assert!(matches!(
            collect(Format::Csv, b"memo,source,memo\na,b,c\n").1,
            End::Unframable {
                code: "invalid_csv_header",
                ..
            }
        ));
        let (items, end) = collect(
            Format::Csv,
            b"\xef\xbb\xbfsource , external_id\r\nvisa,1\r\n",
        );
        assert_eq!(end, End::Complete);
        assert!(
            matches!(&items[..], [Item::Record { json, .. }] if json.contains("\"external_id\":\"1\""))
        );
    }

    #[test]
    fn a_row_of_endless_cells_is_rejected_not_kept() {
        let body = format!("source,memo\nvisa,a\n{}\nvisa,b\n", ",".repeat(100_000));
        let (items, end) = collect(Format::Csv, body.as_bytes());
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 3);
        assert!(matches!(
            &items[1],
            Item::Reject { index: 1, error } if error.code == spendstream_schemas::ErrorCode::RecordTooLarge
        ));
    }
}
