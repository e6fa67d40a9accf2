//! Transforms: validate again, enrich, drop what the lake already holds.

pub mod enrich;
pub mod replay;
pub mod validate;
