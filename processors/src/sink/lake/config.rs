//! Lake sink settings: the table's URL and options, checked without I/O and opened once
//! per process (the query API shares the handle).

use crate::Result;
use spendstream_lake::{Lake, LakeOptions};
use std::sync::Arc;

/// Where the lake table lives.
#[derive(Debug, Clone)]
pub struct LakeSinkConfig {
    /// Table URL: `file://./data/lake` or `s3://bucket/prefix`.
    pub url: String,
    /// Storage settings, read freshness, checkpoint interval.
    pub options: LakeOptions,
}

impl LakeSinkConfig {
    /// Checks the URL without touching anything.
    pub fn validate(&self) -> std::result::Result<(), String> {
        spendstream_lake::check_url(&self.url).map_err(|e| format!("--lake: {e}"))
    }

    /// Opens (creating if needed) the table.
    pub async fn open(&self) -> Result<Arc<Lake>> {
        Ok(Arc::new(
            Lake::open_with(&self.url, self.options.clone()).await?,
        ))
    }
}
