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

impl ProcessorConfig {
    /// Checks the settings without touching anything; the error names the
    /// setting (by its command-line flag) and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        // The name goes into lake transaction ids, ClickHouse literals and
        // lock file names: keep it to characters safe in all of them.
        let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !(1..=128).contains(&self.group.len()) || !self.group.chars().all(safe) {
            return Err("--group must be 1 to 128 of A-Z a-z 0-9 . _ -".into());
        }
        if self.max_batch_records == 0 {
            return Err("--batch-max-records must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            group: "spendstream-processors".into(),
            max_batch_records: 50_000,
            max_batch_wait: Duration::from_millis(250),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_or_empty_settings_are_refused_by_name() {
        assert!(ProcessorConfig::default().validate().is_ok());
        let zero = ProcessorConfig {
            max_batch_records: 0,
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("--batch-max-records"));
        for group in ["", " ", "a?b", "g'1"] {
            let bad = ProcessorConfig {
                group: group.into(),
                ..Default::default()
            };
            assert!(bad.validate().unwrap_err().contains("--group"), "{group:?}");
        }
    }
}
