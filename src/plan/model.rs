//! The table model, kept at this path: it lives in [`crate::model`], a room
//! below both `plan` and `ddl`.

pub use crate::model::*;
