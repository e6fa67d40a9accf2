//! The lake sink: enriched records into the Delta table.

pub mod config;
pub mod sink;

#[cfg(test)]
mod integration_tests;

pub use config::LakeSinkConfig;
pub use sink::LakeSink;
