//! The published root: what readers see, and everything written under it.
//!
//! - [`layout`]: [`Root`] and [`Store`]: where everything lies under a root (the whole tree is
//!   drawn there) and how it is reached: from the root's descriptor, never through a symlink.
//! - [`adopt`]: making a root ready at start-up, and taking one over from git-sync.
//! - [`lifecycle`]: a snapshot's life, staging → installed → live → out of service → trash →
//!   gone, its states numbered in that module's doc.
//! - [`link`]: the link: where it points, the atomic swap, and every decision to move it.
//! - [`records`]: the files dagsnap keeps beside the snapshots (journal, publications, pin,
//!   source record, publisher records, verdicts, leases), each read back as untrusted input.
//! - [`snapshot`]: turning a list of entries into a sealed, read-only directory.
//! - [`gc`]: which snapshots are kept, and deleting the rest safely.
//! - [`repair`]: replacing a damaged snapshot with a fresh build while readers are served.
//! - [`gitsync`]: git-sync's files in a root dagsnap takes over.
//! - [`volume`]: what the root's mount promises about locks.
//! - `error`: [`StoreError`], each error saying what to do.

mod adopt;
mod error;
pub mod gc;
pub(crate) mod gitsync;
mod layout;
mod lifecycle;
pub(crate) mod link;
pub(crate) mod records;
pub(crate) mod repair;
pub(crate) mod snapshot;
pub(crate) mod volume;

pub use error::StoreError;
pub use layout::Root;
pub use records::{rfc3339, Cause, Publication};

pub(crate) use adopt::{Created, GitSyncLive};
pub(crate) use layout::{RootLock, Store, MAX_CLOCK_SKEW, STORE_DIR};
pub(crate) use lifecycle::Installed;
pub(crate) use link::{Current, Decision, BY_PIN};
pub(crate) use records::{
    Author, CheckClaim, Claim, Expected, LockFault, LockWitness, Manifest, ModuleRecord, Pin,
    SignatureVerdict, SourceCommit, SourceRecord, Verdict,
};
