//! Answer formats chosen by `Accept`: JSON (each endpoint's own shape),
//! CSV, an Arrow IPC stream, Parquet.

use axum::http::{HeaderMap, header};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use spendstream_http::ApiError;
use std::sync::Arc;

/// `batch` with every text cell that a spreadsheet would run as a formula
/// (starting with `=`, `+`, `-`, `@`, tab or carriage return, and not a
/// number) prefixed with `'`, as OWASP advises for CSV exports: merchant
/// names and memos come from card feeds, not from the reader.
fn defuse_formulas(
    batch: &RecordBatch,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let risky =
        |s: &str| s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err();
    let columns = batch
        .columns()
        .iter()
        .map(
            |column| -> Result<ArrayRef, datafusion::arrow::error::ArrowError> {
                let text = match column.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                        datafusion::arrow::compute::cast(column, &DataType::Utf8)?
                    }
                    DataType::Dictionary(_, values)
                        if matches!(
                            values.as_ref(),
                            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                        ) =>
                    {
                        datafusion::arrow::compute::cast(column, &DataType::Utf8)?
                    }
                    _ => return Ok(column.clone()),
                };
                let Some(strings) = text.as_any().downcast_ref::<StringArray>() else {
                    return Ok(column.clone());
                };
                if !strings.iter().flatten().any(risky) {
                    return Ok(column.clone());
                }
                let defused: StringArray = strings
                    .iter()
                    .map(|v| {
                        v.map(|s| {
                            if risky(s) {
                                format!("'{s}")
                            } else {
                                s.to_string()
                            }
                        })
                    })
                    .collect();
                Ok(Arc::new(defused))
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
        .collect();
    RecordBatch::try_new(
        Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
        columns,
    )
}

/// The answer formats, chosen by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    ArrowStream,
    Parquet,
}

impl Format {
    /// `batches` in this format (not JSON: each endpoint shapes its own).
    pub fn encode(self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ApiError> {
        // An empty answer still says its columns (the CSV header line).
        let empty = [RecordBatch::new_empty(schema.clone())];
        let batches = if batches.is_empty() {
            &empty[..]
        } else {
            batches
        };
        // A column this format cannot hold (a list as CSV, an interval as
        // Parquet) is the query's choice, not a server fault.
        let cannot = |e: &dyn std::fmt::Display| ApiError::Unprocessable {
            code: "unsupported_result_type",
            message: format!("the result cannot be written as {}: {e}", self.media_type()),
        };
        let mut out = Vec::new();
        match self {
            Format::Json => {
                return Err(ApiError::internal("JSON is shaped by each endpoint"));
            }
            Format::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for batch in batches {
                    writer
                        .write(&defuse_formulas(batch).map_err(|e| cannot(&e))?)
                        .map_err(|e| cannot(&e))?;
                }
            }
            Format::ArrowStream => {
                let mut writer =
                    datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)
                        .map_err(|e| cannot(&e))?;
                for batch in batches {
                    writer.write(batch).map_err(|e| cannot(&e))?;
                }
                writer.finish().map_err(|e| cannot(&e))?;
            }
            Format::Parquet => {
                let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(
                    &mut out,
                    schema.clone(),
                    None,
                )
                .map_err(ApiError::internal)?;
                for batch in batches {
                    writer.write(batch).map_err(ApiError::internal)?;
                }
                writer.close().map_err(ApiError::internal)?;
            }
        }
        Ok(out)
    }

    /// The format of one exact media type.
    fn exact(media: &str) -> Option<Format> {
        match media {
            "application/json" => Some(Format::Json),
            "text/csv" => Some(Format::Csv),
            "application/vnd.apache.arrow.stream" => Some(Format::ArrowStream),
            "application/vnd.apache.parquet" | "application/x-parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::ArrowStream => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The first media type of `Accept` (by weight, then order) this
    /// service produces; JSON without `Accept` or for `*/*`.
    pub fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
        let accept: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if accept.is_empty() {
            return Ok(Format::Json);
        }
        // (weight in thousandths, position, media type); weights outside
        // 0..=1 make the item unreadable, so it is skipped.
        let mut offered: Vec<(u16, usize, String)> = Vec::new();
        for (i, item) in accept.iter().flat_map(|v| v.split(',')).enumerate() {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let weight = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| v.trim().parse::<f32>().ok())?
                })
                .next()
                .unwrap_or(1.0);
            if (0.0..=1.0).contains(&weight) {
                offered.push(((weight * 1000.0) as u16, i, media));
            }
        }
        let refused: Vec<Format> = offered
            .iter()
            .filter(|(w, _, _)| *w == 0)
            .filter_map(|(_, _, m)| Self::exact(m))
            .collect();
        offered.retain(|(w, _, _)| *w > 0);
        offered.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, media) in &offered {
            let candidates: Vec<Format> = match media.as_str() {
                "*/*" => vec![
                    Format::Json,
                    Format::Csv,
                    Format::ArrowStream,
                    Format::Parquet,
                ],
                "application/*" => vec![Format::Json, Format::ArrowStream, Format::Parquet],
                "text/*" => vec![Format::Csv],
                exact => Self::exact(exact).into_iter().collect(),
            };
            if let Some(format) = candidates.iter().find(|f| !refused.contains(f)) {
                return Ok(*format);
            }
        }
        Err(ApiError::NotAcceptable(format!(
            "{}; available: application/json, text/csv, application/vnd.apache.arrow.stream, application/vnd.apache.parquet",
            accept.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn pick(accept: &str) -> Result<Format, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        Format::negotiate(&headers)
    }

    #[test]
    fn accept_weights_wildcards_and_refusals() {
        assert_eq!(Format::negotiate(&HeaderMap::new()).unwrap(), Format::Json);
        assert_eq!(pick("text/csv").unwrap(), Format::Csv);
        assert_eq!(
            pick("application/json;q=0.5, text/csv").unwrap(),
            Format::Csv
        );
        assert_eq!(
            pick("text/csv;Q=0.1, application/vnd.apache.parquet").unwrap(),
            Format::Parquet
        );
        assert_eq!(pick("application/json;q=0, */*").unwrap(), Format::Csv);
        assert_eq!(
            pick("text/csv;q=2, application/json;q=0.1").unwrap(),
            Format::Json
        );
        assert!(pick("image/png").is_err());
        assert!(pick("text/csv;q=0").is_err());
    }

    #[test]
    fn csv_cells_that_would_be_formulas_are_defused() {
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("merchant", DataType::Utf8, true),
            Field::new("amount", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("=HYPERLINK(\"http://evil\")"),
                    Some("+1+2"),
                    Some("@SUM(A1)"),
                    Some("Blue Bottle"),
                    None,
                ])),
                Arc::new(StringArray::from(vec!["-42.10", "1", "-3", "0", "-1e3"])),
            ],
        )
        .unwrap();
        let out = String::from_utf8(Format::Csv.encode(&schema, &[batch]).unwrap()).unwrap();
        assert_eq!(
            out,
            "merchant,amount\n\"'=HYPERLINK(\"\"http://evil\"\")\",-42.10\n'+1+2,1\n'@SUM(A1),-3\nBlue Bottle,0\n,-1e3\n"
        );
    }

    #[test]
    fn an_empty_csv_answer_has_its_header() {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema =
            std::sync::Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let out = Format::Csv.encode(&schema, &[]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "n\n");
    }
}
