//! The `spendstream` binary's library half: wiring the services together so
//! that tests drive exactly what `main` runs.

pub mod app;
pub mod batches;
pub mod cli;
pub mod demo;
pub mod fx;
pub mod import;
pub mod jwks;
pub mod metrics;
pub mod reload;
pub mod revocations;
pub mod secret;
pub mod telemetry;

pub use app::{Roles, Running, Settings, start};

/// Tests of generated documentation: the table after `marker` in `doc`
/// (up to the first blank line) must be `expected`; on a change, paste
/// the table the failure prints.
#[cfg(test)]
pub(crate) fn assert_generated_table(path: &str, doc: &str, marker: &str, expected: &str) {
    let table = doc
        .split_once(marker)
        .and_then(|(_, rest)| rest.strip_prefix('\n')?.split_once("\n\n"))
        .map(|(table, _)| format!("{table}\n"))
        .unwrap_or_else(|| panic!("{path} has no line {marker}"));
    assert!(
        table == expected,
        "{path} differs from the code; its table should be:\n\n{expected}"
    );
}
