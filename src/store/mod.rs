//! The published root: what readers see, and everything written under it.
//!
//! - [`root`]: [`Root`], the layout of a root and the only code that builds paths under it;
//!   adoption at start-up, installing snapshots, moving the link, pins and claims.
//! - [`records`]: the files dagsnap keeps beside the snapshots (journal, publication state,
//!   pin, source record, manifests), each read back as untrusted input.
//! - [`snapshot`]: turning a list of entries into a sealed, read-only directory.
//! - [`link`]: the atomic symlink swap.
//! - [`lock`]: advisory locks with a bounded wait.
//! - [`gc`]: which snapshots are kept, and deleting the rest safely.
//! - [`repair`]: replacing a damaged snapshot with a fresh build while readers are served.
//! - [`gitsync`]: git-sync's files in a root dagsnap takes over.
//! - [`volume`]: what the root's mount promises about locks.

pub mod gc;
pub mod gitsync;
pub mod link;
pub mod lock;
pub mod records;
pub mod repair;
mod root;
pub mod snapshot;
pub mod volume;

pub use root::*;
