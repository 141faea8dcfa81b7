//! Turning one commit's tree into a complete, durable, read-only directory.
//!
//! This module writes into a directory it is given (a private staging directory) and knows
//! nothing of links, locks or where snapshots live; [`crate::store`] names the directory and
//! renames it into place once [`build`] has returned.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gix::ObjectId;

use crate::fsutil::{self, Context, IoError};
use crate::git::error_chain;
use crate::store::entries::{Entries, Entry, MODE_EXECUTABLE, MODE_SUBMODULE, MODE_SYMLINK};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read tree {tree} from the cache: {cause}")]
    Tree { tree: ObjectId, cause: String },
    #[error("cannot write the files of tree {tree} into {}: {cause}{hint}", dir.display())]
    Checkout {
        tree: ObjectId,
        dir: PathBuf,
        cause: String,
        /// What to do, when the cause is an errno an operator can act on.
        hint: &'static str,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("interrupted")]
    Cancelled,
}

/// An earlier snapshot on the same filesystem whose unchanged files can be shared.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    pub dir: &'a Path,
    pub entries: &'a Entries,
}

/// How unchanged files get into a new snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Hard-link them from the previous snapshot (the default).
    HardLink,
    /// Write every file anew.
    FullCopy,
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub stats: Stats,
    pub entries: Entries,
}

/// Size of a built snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Files, symlinks and submodule directories in the snapshot.
    pub files: u64,
    /// Bytes of content in the snapshot.
    pub bytes: u64,
    /// Files shared with the previous snapshot instead of written.
    pub reused: u64,
}

/// Materialize `tree` into the empty directory `dir` and seal it.
///
/// 1. Build an in-memory index from the tree (nothing is written for it: no index file, no
///    `.git`). gix validates every path on the way, so a tree entry named `.git` or one that
///    climbs out with `..` is rejected rather than written.
/// 2. If a `previous` snapshot is given, hard-link every regular file whose mode and blob id
///    it already holds: at the same path, or, for renamed and copied files, at any path.
///    Snapshots are immutable, so sharing an inode is sharing content that can never change. A
///    link that fails (another filesystem, a link-count limit, a file deleted by hand) falls back
///    to writing the file.
/// 3. Check the remaining entries out into `dir` with gix's worktree checkout. Content is written
///    exactly as git stores it: no line-ending conversion and no filter drivers, so a file's bytes
///    always hash to the blob id recorded in git (which is what makes reuse and `verify` exact).
///    Executable bits and symlinks are kept as git records them.
/// 4. Make every written file and every directory read-only for everyone (`0444`, or `0555` when
///    executable or a directory). Linked files already are. Readers can no longer write
///    `__pycache__` or edit files in place.
/// 5. `syncfs` the filesystem so that data and metadata are on stable storage before the caller
///    renames `dir` into the store: after a power cut a published snapshot is complete.
///
/// If `interrupt` is raised, the build stops at its next check and returns `Cancelled`; the
/// caller's staging guard removes the directory.
pub fn build(
    repo: &gix::Repository,
    tree: ObjectId,
    dir: &Path,
    previous: Option<Previous<'_>>,
    reuse: Reuse,
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
    let mut entries = Entries::from_index(&index).0;

    let mut dirs = DirTracker::new(dir);
    let reused = match (previous, reuse) {
        (Some(previous), Reuse::HardLink) => {
            link_unchanged(previous, dir, &mut entries, &mut dirs, interrupt)?
        }
        _ => vec![false; entries.len()],
    };
    if interrupt.load(Ordering::Relaxed) {
        return Err(SnapshotError::Cancelled);
    }
    index.remove_entries(|idx, _, _| reused[idx]);
    let linked = Instant::now();

    // gix refuses an index whose entries were all removed; everything was linked anyway.
    if !index.entries().is_empty() {
        checkout(repo, tree, &mut index, dir, progress, interrupt)?;
    }
    let written = Instant::now();

    for (entry, was_reused) in entries.iter_mut().zip(&reused) {
        if *was_reused {
            continue;
        }
        let path = dir.join(std::ffi::OsStr::from_bytes(&entry.path));
        dirs.note_parents_of(&path);
        seal_written(entry, &path, &mut dirs)?;
    }
    dirs.seal_all()?;
    let sealed = Instant::now();
    fsutil::sync_filesystem(dir)?;

    let reused_count = reused.iter().filter(|r| **r).count() as u64;
    tracing::debug!(
        link_ms = linked.duration_since(started).as_millis() as u64,
        checkout_ms = written.duration_since(linked).as_millis() as u64,
        read_only_ms = sealed.duration_since(written).as_millis() as u64,
        syncfs_ms = sealed.elapsed().as_millis() as u64,
        reused = reused_count,
        "snapshot built"
    );
    let entries = Entries(entries);
    Ok(Built {
        stats: Stats {
            files: entries.0.len() as u64,
            bytes: entries.total_size(),
            reused: reused_count,
        },
        entries,
    })
}

/// Step 2: hard-link unchanged regular files from `previous`, recording their sizes.
/// Returns, per entry, whether it was linked.
fn link_unchanged(
    previous: Previous<'_>,
    dir: &Path,
    entries: &mut [Entry],
    dirs: &mut DirTracker,
    interrupt: &AtomicBool,
) -> Result<Vec<bool>, SnapshotError> {
    let by_path = previous.entries.by_path();
    // Same blob and mode under another path (a renamed directory, a copied file) is the same
    // content too, so it can be shared as well.
    let by_content: HashMap<(ObjectId, u32), &Entry> = previous
        .entries
        .0
        .iter()
        .filter(|e| e.is_regular_file())
        .map(|e| ((e.id, e.mode), e))
        .collect();
    let mut reused = vec![false; entries.len()];
    for (n, entry) in entries.iter_mut().enumerate() {
        if n % 1024 == 0 && interrupt.load(Ordering::Relaxed) {
            return Err(SnapshotError::Cancelled);
        }
        if !entry.is_regular_file() {
            continue;
        }
        let source = match by_path.get(entry.path.as_slice()) {
            Some(old) if old.mode == entry.mode && old.id == entry.id => *old,
            _ => match by_content.get(&(entry.id, entry.mode)) {
                Some(old) => *old,
                None => continue,
            },
        };
        let target = dir.join(std::ffi::OsStr::from_bytes(&entry.path));
        dirs.create_parents_of(&target)?;
        match fs::hard_link(
            previous.dir.join(std::ffi::OsStr::from_bytes(&source.path)),
            &target,
        ) {
            Ok(()) => {
                entry.size = source.size;
                reused[n] = true;
            }
            Err(e) if link_refused_everywhere(&e) => {
                tracing::info!(error = %e, "cannot hard-link into the new snapshot; writing every file instead");
                break;
            }
            // This one file cannot be shared (deleted by hand, link-count limit): write it.
            Err(e) => {
                tracing::debug!(path = %target.display(), error = %e, "writing instead of linking")
            }
        }
    }
    Ok(reused)
}

/// Errors after which no other link will succeed either.
fn link_refused_everywhere(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::EROFS)
    )
}

/// Step 3: gix's checkout of whatever is left in `index`.
fn checkout(
    repo: &gix::Repository,
    tree: ObjectId,
    index: &mut gix::index::File,
    dir: &Path,
    progress: &gix::progress::tree::Root,
    interrupt: &AtomicBool,
) -> Result<(), SnapshotError> {
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
    let failed = |cause: String, hint: &'static str| SnapshotError::Checkout {
        tree,
        dir: dir.to_path_buf(),
        cause,
        hint,
    };
    let outcome =
        gix::worktree::state::checkout(index, dir, objects, &files, &bytes, interrupt, options)
            .map_err(|e| {
                if interrupt.load(Ordering::Relaxed) {
                    SnapshotError::Cancelled
                } else {
                    failed(error_chain(&e), fsutil::hint_in_chain(&e))
                }
            })?;
    if interrupt.load(Ordering::Relaxed) {
        return Err(SnapshotError::Cancelled);
    }
    if let Some(first) = outcome.errors.first() {
        let cause = format!(
            "{} entries failed, first {}: {}",
            outcome.errors.len(),
            first.path,
            error_chain(&first.error)
        );
        return Err(failed(cause, fsutil::hint_in_chain(&first.error)));
    }
    if let Some(first) = outcome.collisions.first() {
        let cause = format!(
            "{} paths collide (case-insensitive filesystem?), first {}",
            outcome.collisions.len(),
            first.path
        );
        return Err(failed(cause, ""));
    }
    Ok(())
}

/// Step 4 for one written entry: record its size and make it read-only.
fn seal_written(entry: &mut Entry, path: &Path, dirs: &mut DirTracker) -> Result<(), IoError> {
    let meta = fs::symlink_metadata(path).at("inspect written file", path)?;
    entry.size = meta.len();
    match entry.mode {
        MODE_SYMLINK => {}
        MODE_SUBMODULE => {
            // Checked out as an empty directory, sealed with the others.
            entry.size = 0;
            dirs.note(path.to_path_buf());
        }
        mode => {
            let wanted = fsutil::read_only_mode(false, mode == MODE_EXECUTABLE);
            if meta.permissions().mode() & 0o7777 != wanted {
                fs::set_permissions(path, fs::Permissions::from_mode(wanted))
                    .at("make read-only", path)?;
            }
        }
    }
    Ok(())
}

/// The directories of a snapshot being built: created on demand while linking, and sealed
/// read-only at the end, deepest first so that each is still writable while its children are
/// changed.
struct DirTracker {
    root: PathBuf,
    known: HashSet<PathBuf>,
}

impl DirTracker {
    fn new(root: &Path) -> DirTracker {
        DirTracker {
            root: root.to_path_buf(),
            known: HashSet::from([root.to_path_buf()]),
        }
    }

    fn create_parents_of(&mut self, path: &Path) -> Result<(), IoError> {
        if let Some(parent) = path.parent() {
            if !self.known.contains(parent) {
                fs::create_dir_all(parent).at("create directory", parent)?;
                self.note_parents_of(path);
            }
        }
        Ok(())
    }

    fn note_parents_of(&mut self, path: &Path) {
        let mut current = path.parent();
        while let Some(dir) = current {
            if !dir.starts_with(&self.root) || !self.known.insert(dir.to_path_buf()) {
                break;
            }
            current = dir.parent();
        }
    }

    fn note(&mut self, dir: PathBuf) {
        self.known.insert(dir);
    }

    fn seal_all(&self) -> Result<(), IoError> {
        let mut dirs: Vec<&PathBuf> = self.known.iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            fs::set_permissions(
                dir,
                fs::Permissions::from_mode(fsutil::read_only_mode(true, false)),
            )
            .at("make read-only", dir)?;
        }
        Ok(())
    }
}
