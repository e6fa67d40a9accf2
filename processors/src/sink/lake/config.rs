//! Lake sink settings.

use serde::Deserialize;

/// Where the lake table lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeSinkConfig {
    /// Table URL: `file://./data/lake` (or `s3://bucket/prefix` once enabled).
    pub url: String,
}
