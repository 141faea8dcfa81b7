//! The records dagsnap keeps next to the snapshots. Each file has one module that reads and
//! writes it; [`super::Root`] decides where the files live.

mod types;

pub use types::*;
