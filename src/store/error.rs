//! What can go wrong with a root, each said with what to do about it.

use std::path::PathBuf;

use super::link;
use super::STORE_DIR;
use crate::commit::CommitId;
use crate::fsutil::lock::LockError;
use crate::fsutil::IoError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("root {} is not a directory; point --root at a directory (it is created if missing)", path.display())]
    RootNotADirectory { path: PathBuf },
    #[error("root {} is not writable ({cause}); mount the volume read-write and make it writable for uid {uid}", path.display())]
    RootNotWritable {
        path: PathBuf,
        cause: String,
        uid: u32,
    },
    #[error("root {} holds entries dagsnap did not create ({}); point --root at an empty directory or move them away (dagsnap never deletes what it did not create)", root.display(), entries.join(", "))]
    ForeignContent { root: PathBuf, entries: Vec<String> },
    #[error("link {} points to {}, which is not a dagsnap snapshot; move the link away or choose another --link", link.display(), target.display())]
    ForeignLink { link: PathBuf, target: PathBuf },
    #[error("invalid --link '{given}': {reason}")]
    InvalidLink { given: String, reason: &'static str },
    #[error("{} is not a dagsnap root (no {STORE_DIR}/ inside); check --root", root.display())]
    NotARoot { root: PathBuf },
    #[error("{} is {what}, where dagsnap needs a real directory inside the root (a symlink could put what readers see outside it); move it away, or choose another --link", path.display())]
    NotARealDirectory { path: PathBuf, what: &'static str },
    #[error("snapshot {commit} cannot be trusted: {why}. Choose another snapshot; a sync loop rebuilds this one when it publishes the commit again")]
    Untrusted { commit: CommitId, why: String },
    #[error("no retained snapshot matches '{wanted}'; retained: {}. Choose one of these (a prefix of 4 or more digits is enough)", if retained.is_empty() { "none".to_string() } else { retained.join(", ") })]
    NotRetained {
        wanted: String,
        retained: Vec<String>,
    },
    #[error("'{wanted}' matches several snapshots ({}); give more digits", matches.join(", "))]
    Ambiguous {
        wanted: String,
        matches: Vec<String>,
    },
    #[error("root {} is read-only here ({cause}); list, log, status and verify work, but run this command where the volume is mounted read-write", root.display())]
    ReadOnly { root: PathBuf, cause: String },
    #[error("root {} is not writable by uid {uid} ({cause}); list, log, status and verify work, but run this command as the publishers' user (or one that may write there)", root.display())]
    NotWritableByUs {
        root: PathBuf,
        cause: String,
        uid: u32,
    },
    #[error("snapshot {commit} disappeared before it could be published (removed by GC or by hand); it is rebuilt on the next cycle")]
    SnapshotGone { commit: CommitId },
    #[error(transparent)]
    Link(#[from] link::ReadError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Io(#[from] IoError),
}
