//! The `spendstream` binary's library half: wiring the services together so
//! that tests drive exactly what `main` runs.

pub mod app;
pub mod cli;
pub mod demo;
pub mod metrics;
pub mod secret;
pub mod telemetry;

pub use app::{Roles, Running, Settings, start};
