//! Planning: what will be rewritten, read from the catalogs.

pub mod model;
