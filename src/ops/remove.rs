//! `dagsnap remove`: the supported way to delete a snapshot, or a whole root.
//!
//! Snapshots and their directories are read-only (`0555`), so `rm -rf` fails for anyone but
//! root; this restores write permission on what it deletes, and nothing else, and refuses to
//! delete what readers are being served.

use std::path::PathBuf;
use std::time::Duration;

use crate::commit::CommitId;
use crate::store::{Root, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{commit} is live (the link points at it); roll back or wait for the next publish, then remove it")]
    Live { commit: CommitId },
    #[error("{commit} is pinned; `dagsnap unpin` first")]
    Pinned { commit: CommitId },
    #[error("sync loops of {root} are running; stop them first (dagsnap never pulls a root from under its publishers)")]
    PublishersRunning { root: String },
}

/// Delete the retained snapshots `wanted` (full ids or prefixes): never the live or the pinned
/// one. Returns the commits removed.
pub fn snapshots(
    root: &Root,
    wanted: &[String],
    lock_timeout: Duration,
) -> Result<Vec<CommitId>, RemoveError> {
    root.require_writable()?;
    let lock = root.lock(lock_timeout)?;
    let live = root.current()?.map(|c| c.commit);
    let pinned = root.pinned()?.map(|p| p.commit);
    let mut doomed = Vec::new();
    for wanted in wanted {
        let commit = root.resolve_commit(wanted)?;
        if live.as_ref() == Some(&commit) {
            return Err(RemoveError::Live { commit });
        }
        if pinned.as_ref() == Some(&commit) {
            return Err(RemoveError::Pinned { commit });
        }
        doomed.push(commit);
    }
    for commit in &doomed {
        root.move_snapshot_to_trash(&lock, commit)?;
    }
    drop(lock);
    root.empty_trash(std::time::Duration::ZERO)?;
    Ok(doomed)
}

/// Delete everything dagsnap made in the root (see [`Root::remove_everything`]), refusing
/// while any of its publishers runs.
pub fn everything(root: &Root, lock_timeout: Duration) -> Result<Vec<PathBuf>, RemoveError> {
    root.require_writable()?;
    if root.records().publishers_running()? {
        return Err(RemoveError::PublishersRunning {
            root: root.path().display().to_string(),
        });
    }
    let lock = root.lock(lock_timeout)?;
    Ok(root.remove_everything(lock)?)
}
