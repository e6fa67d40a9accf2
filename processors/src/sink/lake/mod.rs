//! The lake sink: enriched records into the Delta table.

pub mod sink;

pub use sink::LakeSink;
