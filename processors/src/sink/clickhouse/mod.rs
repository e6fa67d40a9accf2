//! The ClickHouse sink: enriched records into `expenses`, with the
//! migrations that make its tables and views.

pub mod config;
pub mod migrate;
pub mod sink;

#[cfg(test)]
mod integration_tests;

pub use config::ClickHouseConfig;
pub use migrate::{MigrationReport, migrate, status};
pub use sink::{ClickHouseSink, batch_rows};
