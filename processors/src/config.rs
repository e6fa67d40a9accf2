//! Processor settings.

use serde::Deserialize;
use std::time::Duration;

/// How a processor reads and batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Consumer group name; also the prefix of the lake's application
    /// transaction ids, so two groups would each write every record.
    pub group: String,
    /// Most records in one lake commit.
    pub max_batch_records: usize,
    /// Longest time a batch stays open once its first record arrived.
    #[serde(with = "millis")]
    pub max_batch_wait: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            group: "spendstream-processors".into(),
            max_batch_records: 50_000,
            max_batch_wait: Duration::from_secs(1),
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
