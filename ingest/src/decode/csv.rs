//! CSV with a header row of record field names. Each row becomes a JSON
//! object of strings (empty cells are absent), validated like any record.

use super::{End, Item};
use spendstream_schemas::record::FIELDS;
use spendstream_schemas::{ErrorCode, RecordError};
use std::io::BufRead;

pub fn decode(reader: impl BufRead, emit: &mut dyn FnMut(Item) -> bool) -> End {
    let mut csv = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(::csv::Trim::Headers)
        .from_reader(reader);
    let headers = match csv.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            return End::Unframable {
                code: "invalid_csv_header",
                message: format!("could not read the CSV header row: {e}"),
            };
        }
    };
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return End::Unframable {
            code: "invalid_csv_header",
            message: "the CSV body has no header row".into(),
        };
    }
    let mut names = Vec::with_capacity(headers.len());
    for h in headers.iter() {
        let name = std::str::from_utf8(h)
            .unwrap_or("")
            .trim_start_matches('\u{feff}');
        if !FIELDS.contains(&name) {
            return End::Unframable {
                code: "invalid_csv_header",
                message: format!(
                    "the first row must be a header of record field names; `{}` is not one",
                    name.chars().take(64).collect::<String>()
                ),
            };
        }
        names.push(name.to_string());
    }
    let mut row = ::csv::ByteRecord::new();
    let mut index = 0;
    loop {
        match csv.read_byte_record(&mut row) {
            Ok(false) => return End::Complete,
            Ok(true) => {
                let item = row_to_item(index, &names, &row);
                index += 1;
                if !emit(item) {
                    return End::Cancelled;
                }
            }
            Err(e) if e.is_io_error() => {
                return End::Malformed {
                    index,
                    message: format!("reading the body failed: {e}"),
                };
            }
            Err(e) => {
                let item = Item::Reject {
                    index,
                    error: RecordError::new(
                        ErrorCode::InvalidField,
                        None,
                        format!("bad CSV row: {e}"),
                    ),
                };
                index += 1;
                if !emit(item) {
                    return End::Cancelled;
                }
            }
        }
    }
}

fn row_to_item(index: usize, names: &[String], row: &::csv::ByteRecord) -> Item {
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
    for (name, cell) in names.iter().zip(row.iter()) {
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
        let body = "source,external_id,amount,currency,memo\nvisa,1,12.30,USD,\"a, b\"\nvisa,2,1,JPY,\nvisa,3\n";
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
    fn header_is_required() {
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
    }
}
