//! Reading the table's data files one by one: what a reader that keeps its
//! own state of the table (the query service's current state) needs to load
//! only the files a new table version added.

use crate::{Error, Lake, Result};
use deltalake::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use deltalake::arrow::compute::{CastOptions, cast_with_options};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use spendstream_schemas::enriched::arrow_schema;
use std::sync::Arc;

/// One data file of a table state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFileRef {
    /// Relative to the table root, as the log names it: the file's identity.
    pub path: String,
    /// The value of the file's `tenant_id` partition.
    pub tenant: String,
    location: Path,
    deletion_vector: bool,
}

impl Lake {
    /// The table version readers see (as [`Lake::version`]) and the data
    /// files that state reads.
    pub async fn snapshot_files(&self) -> Result<(u64, Vec<DataFileRef>)> {
        let table = self.for_reading().await?;
        let version = table.version().unwrap_or_default();
        let files = table
            .snapshot()?
            .log_data()
            .iter()
            .map(|f| DataFileRef {
                path: f.path().into_owned(),
                tenant: f
                    .partition_values_map()
                    .get("tenant_id")
                    .cloned()
                    .flatten()
                    .unwrap_or_default(),
                location: f.object_store_path(),
                deletion_vector: f.deletion_vector_descriptor().is_some(),
            })
            .collect();
        Ok((version, files))
    }

    /// Whether a commit after version `from`, up to `to`, removed a data
    /// file as a change of data (a delete, an overwrite, a restore), as
    /// opposed to a compaction, which moves rows to new files
    /// (`dataChange: false`). A reader keeping the rows of the files it has
    /// read must then start over. A commit file that is gone (log cleanup)
    /// counts as such a removal: nothing says otherwise.
    pub async fn rows_removed_between(&self, from: u64, to: u64) -> Result<bool> {
        let table = self.for_reading().await?;
        let store = table.object_store();
        let mut commits = futures::stream::iter(from + 1..=to)
            .map(|version| {
                let store = store.clone();
                async move {
                    let path = Path::from(format!("_delta_log/{version:020}.json"));
                    match store.get(&path).await {
                        Ok(found) => Ok(Some(found.bytes().await?)),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffered(8);
        while let Some(commit) = commits
            .try_next()
            .await
            .map_err(deltalake::DeltaTableError::from)?
        {
            let Some(commit) = commit else {
                return Ok(true);
            };
            for line in commit.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let action: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                    deltalake::DeltaTableError::Generic(format!("a commit line is not JSON: {e}"))
                })?;
                if action["remove"]["dataChange"].as_bool() == Some(true) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The columns `columns` of the data file `file` (read whole), in that
    /// order, as the record contract's types, except that a text column
    /// other than the ids comes back as `Dictionary(Int32, Utf8)` when the
    /// file stores it as `Utf8` (a key a row, not the text: heaptrack of
    /// `up` found 160 MB of such text and its offsets decoded at the heap's
    /// peak, while the reports' state caught up), else plain. Each batch
    /// has its own schema. Partition columns are not stored in data files:
    /// take them from `file`.
    pub async fn read_columns(
        &self,
        file: &DataFileRef,
        columns: &[&str],
    ) -> Result<Vec<RecordBatch>> {
        if file.deletion_vector {
            // Rows a deletion vector hides would come back. Spendstream
            // never writes them; another writer might.
            return Err(deltalake::DeltaTableError::Generic(format!(
                "{} has a deletion vector, which this reader does not apply",
                file.path
            ))
            .into());
        }
        let table = self.for_reading().await?;
        let bytes = read_whole(table.object_store().as_ref(), &file.location).await?;
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_string()).collect();
        tokio::task::spawn_blocking(move || decode(bytes, &columns))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }
}

/// The whole object at `location` (data files: compaction and this reader
/// read them whole).
pub(crate) async fn read_whole(
    store: &dyn object_store::ObjectStore,
    location: &Path,
) -> Result<bytes::Bytes> {
    Ok(store
        .get(location)
        .await
        .map_err(deltalake::DeltaTableError::from)?
        .bytes()
        .await
        .map_err(deltalake::DeltaTableError::from)?)
}

/// The column `field` names in `batch`; nulls for a nullable column the
/// file was written without (a column added to the table after it).
pub(crate) fn column_or_nulls(batch: &RecordBatch, field: &Field) -> Option<ArrayRef> {
    match batch.column_by_name(field.name()) {
        Some(column) => Some(column.clone()),
        None if field.is_nullable() => Some(new_null_array(field.data_type(), batch.num_rows())),
        None => None,
    }
}

/// `columns` of the Parquet file `bytes`, cast to the contract's types,
/// repeated text kept as the file's dictionary (see [`kept_as_dictionary`]).
fn decode(bytes: bytes::Bytes, columns: &[String]) -> Result<Vec<RecordBatch>> {
    let contract = arrow_schema();
    let fields: Vec<Field> = columns
        .iter()
        .map(|name| {
            contract
                .field_with_name(name)
                .cloned()
                .map_err(|_| Error::SchemaMismatch(name.clone()))
        })
        .collect::<Result<_>>()?;
    let parquet = |e| Error::from(deltalake::DeltaTableError::from(e));
    let metadata = ArrowReaderMetadata::load(&bytes, Default::default()).map_err(parquet)?;
    let hinted: Vec<Field> = metadata
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let field = f.as_ref().clone();
            if kept_as_dictionary(&field) {
                field.with_data_type(text_dictionary())
            } else {
                field
            }
        })
        .collect();
    let metadata = ArrowReaderMetadata::try_new(
        metadata.metadata().clone(),
        ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(hinted))),
    )
    .map_err(parquet)?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, metadata);
    let mask =
        ProjectionMask::columns(builder.parquet_schema(), columns.iter().map(String::as_str));
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(deltalake::DeltaTableError::from)?;
    // A value that does not convert is an error, never a null.
    let strict = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let mut arrays = Vec::with_capacity(columns.len());
        let mut out_fields = Vec::with_capacity(columns.len());
        for field in &fields {
            let column = column_or_nulls(&batch, field)
                .ok_or_else(|| Error::SchemaMismatch(field.name().clone()))?;
            let column = if kept_as_dictionary(field) && *column.data_type() == text_dictionary() {
                column
            } else {
                cast_with_options(&column, field.data_type(), &strict)?
            };
            out_fields.push(field.clone().with_data_type(column.data_type().clone()));
            arrays.push(column);
        }
        out.push(RecordBatch::try_new(
            Arc::new(Schema::new(out_fields)),
            arrays,
        )?);
    }
    Ok(out)
}

/// Whether [`decode`] hands `field` over as the file's dictionary: text
/// that repeats across rows.
fn kept_as_dictionary(field: &Field) -> bool {
    *field.data_type() == DataType::Utf8 && !crate::UNIQUE_COLUMNS.contains(&field.name().as_str())
}

fn text_dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}
