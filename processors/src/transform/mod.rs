//! Transforms: validate again, enrich, drop what the lake already holds.

pub mod dedupe;
pub mod enrich;
pub mod validate;
