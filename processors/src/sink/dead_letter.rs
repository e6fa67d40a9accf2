//! The dead-letter sink: records that failed validation, with their original
//! bytes and reason, in the log backend's dead-letter store.

use crate::Result;
use spendstream_log::{DeadLetter, DeadLetterStore};
use std::sync::Arc;

/// Writes dead letters; the store keeps one per (group, partition, offset),
/// so a replay does not duplicate them.
#[derive(Clone)]
pub struct DeadLetterSink {
    store: Arc<dyn DeadLetterStore>,
}

impl DeadLetterSink {
    pub fn new(store: Arc<dyn DeadLetterStore>) -> Self {
        Self { store }
    }

    pub async fn write(&self, letters: Vec<DeadLetter>) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let n = letters.len();
        self.store.put(letters).await?;
        metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL.name).increment(n as u64);
        Ok(())
    }
}
