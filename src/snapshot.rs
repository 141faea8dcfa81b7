//! Turning one commit's tree into a complete, durable, read-only directory.
//!
//! This module writes into a directory it is given (a private staging directory) and knows
//! nothing of links, locks or where snapshots live; [`crate::store`] names the directory and
//! renames it into place once [`build`] has returned.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gix::ObjectId;

use crate::fsutil::{self, IoError};
use crate::source::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read tree {tree} from the cache: {cause}")]
    Tree { tree: ObjectId, cause: String },
    #[error("cannot write the files of tree {tree} into {}: {cause}", dir.display())]
    Checkout {
        tree: ObjectId,
        dir: std::path::PathBuf,
        cause: String,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("interrupted")]
    Cancelled,
}

/// Size of a materialized snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Built {
    /// Files and symlinks written (directories not counted).
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Materialize `tree` into the empty directory `dir` and seal it.
///
/// 1. Build an in-memory index from the tree (nothing is written to disk for it: no index file,
///    no `.git`). gix validates every path on the way, so a tree entry named `.git` or one that
///    climbs out with `..` is rejected rather than written.
/// 2. Check the index out into `dir` with gix's worktree checkout. Content is written exactly as
///    git stores it: no line-ending conversion and no filter drivers, so a file's bytes always
///    hash to the blob id recorded in git (which is what makes `verify` and reuse exact).
///    Executable bits and symlinks are kept as git records them.
/// 3. Make every file and directory read-only for everyone (`0444`, `0555` when executable or
///    a directory). Readers can no longer write `__pycache__` or edit files in place.
/// 4. `syncfs` the filesystem so that data and metadata are on stable storage before the
///    caller renames `dir` into the store: after a power cut a published snapshot is complete.
///
/// If `interrupt` is raised, the function stops at the next entry and returns `Cancelled`;
/// the caller removes the staging directory.
pub fn build(
    repo: &gix::Repository,
    tree: ObjectId,
    dir: &Path,
    progress: &gix::progress::tree::Root,
    interrupt: &AtomicBool,
) -> Result<Built, SnapshotError> {
    let started = Instant::now();
    let mut index = repo
        .index_from_tree(&tree)
        .map_err(|e| SnapshotError::Tree {
            tree,
            cause: error_chain(&e),
        })?;

    let filters = gix::filter::plumbing::Pipeline::new(
        Default::default(),
        repo.object_hash(),
        Default::default(),
    );
    let mut options = gix::worktree::state::checkout::Options::new(filters);
    options.destination_is_initially_empty = true;

    let files = progress.add_child("checkout files");
    files.init(Some(index.entries().len()), gix::progress::count("files"));
    let bytes = progress.add_child("write");
    bytes.init(None, gix::progress::bytes());

    let objects = repo
        .objects
        .clone()
        .into_arc()
        .map_err(|e| SnapshotError::Tree {
            tree,
            cause: error_chain(&e),
        })?;
    let checkout_error = |cause: String| SnapshotError::Checkout {
        tree,
        dir: dir.to_path_buf(),
        cause,
    };
    let outcome = gix::worktree::state::checkout(
        &mut index, dir, objects, &files, &bytes, interrupt, options,
    )
    .map_err(|e| {
        if interrupt.load(Ordering::Relaxed) {
            SnapshotError::Cancelled
        } else {
            checkout_error(error_chain(&e))
        }
    })?;
    if interrupt.load(Ordering::Relaxed) {
        return Err(SnapshotError::Cancelled);
    }
    if let Some(first) = outcome.errors.first() {
        return Err(checkout_error(format!(
            "{} entries failed, first {}: {}",
            outcome.errors.len(),
            first.path,
            error_chain(&first.error)
        )));
    }
    if let Some(first) = outcome.collisions.first() {
        return Err(checkout_error(format!(
            "{} paths collide (case-insensitive filesystem?), first {}",
            outcome.collisions.len(),
            first.path
        )));
    }

    let written = Instant::now();
    fsutil::make_tree_read_only(dir)?;
    let sealed = Instant::now();
    fsutil::sync_filesystem(dir)?;
    tracing::debug!(
        checkout_ms = written.duration_since(started).as_millis() as u64,
        read_only_ms = sealed.duration_since(written).as_millis() as u64,
        syncfs_ms = sealed.elapsed().as_millis() as u64,
        "snapshot built"
    );
    Ok(Built {
        files: index.entries().len() as u64,
        bytes: outcome.bytes_written,
    })
}
