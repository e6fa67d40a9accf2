//! Sinks: where processed records go. Each is idempotent under replay.

pub mod dead_letter;
pub mod lake;
