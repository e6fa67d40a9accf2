//! Transforms: validate again, enrich (and convert to the base currency),
//! drop what the lake already holds.

pub mod enrich;
pub mod fx;
pub mod replay;
pub mod validate;
