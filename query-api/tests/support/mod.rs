//! Shared by the query tests (a folder, so Cargo does not build it as a
//! test of its own).

pub mod fixtures;
pub mod hostile;
