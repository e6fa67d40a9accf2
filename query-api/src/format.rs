//! Answer formats chosen by `Accept`: JSON (each endpoint's own shape),
//! CSV, an Arrow IPC stream, Parquet.

use axum::http::{HeaderMap, header};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use spendstream_http::ApiError;

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
                    writer.write(batch).map_err(ApiError::internal)?;
                }
            }
            Format::ArrowStream => {
                let mut writer =
                    datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)
                        .map_err(ApiError::internal)?;
                for batch in batches {
                    writer.write(batch).map_err(ApiError::internal)?;
                }
                writer.finish().map_err(ApiError::internal)?;
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
        let mut offered: Vec<(u16, usize, &str)> = Vec::new();
        for (i, item) in accept.iter().flat_map(|v| v.split(',')).enumerate() {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let weight = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            if weight > 0.0 {
                offered.push(((weight * 1000.0) as u16, i, media));
            }
        }
        offered.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, media) in &offered {
            let format = match media.to_ascii_lowercase().as_str() {
                "application/json" | "application/*" | "*/*" => Format::Json,
                "text/csv" | "text/*" => Format::Csv,
                "application/vnd.apache.arrow.stream" => Format::ArrowStream,
                "application/vnd.apache.parquet" | "application/x-parquet" => Format::Parquet,
                _ => continue,
            };
            return Ok(format);
        }
        Err(ApiError::NotAcceptable(format!(
            "{}; available: application/json, text/csv, application/vnd.apache.arrow.stream, application/vnd.apache.parquet",
            accept.join(", ")
        )))
    }
}
