//! Turning a list of entries into a complete, durable, read-only directory.
//!
//! This module writes into a directory it is given (a private staging directory, open) and
//! knows nothing of links, locks or where snapshots live: [`crate::store::Root`] names the
//! directory and renames it into place once [`build`] has returned. It knows nothing of git
//! either: the content of each entry comes from a [`Blobs`] source, and the entries were checked
//! against git's path rules by whoever listed them.
//!
//! Everything is done relative to the staging directory's descriptor (and the previous
//! snapshot's, for sharing), each directory opened with no symlink followed on the way
//! ([`Dir::open_beneath`]): a directory replaced by a symlink while a build runs cannot send a
//! write, a link or a `chmod` anywhere else.

mod check;
mod dirs;
mod parallel;
mod share;
mod write;

pub(crate) use check::quick_check;
use dirs::Directories;
use share::SharingIndex;
use write::{write_all, Shared};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gix::ObjectId;

pub(crate) use crate::entries::Blobs;
use crate::entries::{Entries, Entry};
use crate::fsutil::{self, Dir, IoError};
use crate::text::escape_bytes;

/// Threads that write a snapshot unless told otherwise (`--build-jobs`). On a volume where each
/// create, link and chmod is a 1 ms round trip, 16 make a one-file update of 10,000 files 13x
/// faster than one thread (32: 19x); on local disk 16 are still faster than one, and 32 no
/// longer are (docs/benchmarks.md, "Network volumes").
pub(crate) const DEFAULT_BUILD_JOBS: usize = 16;

/// Linux's limit on a path handed to a system call, including the terminating NUL.
const PATH_MAX: usize = libc::PATH_MAX as usize;
/// The longest file name most Linux filesystems accept.
const NAME_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A blob could not be read: the source's fault (a damaged cache), not the repository's.
    #[error("cannot read '{path}' ({id}) from the cache: {cause}")]
    Object {
        path: String,
        id: ObjectId,
        cause: String,
    },
    #[error("cannot {action} '{path}' in the new snapshot: {source}{hint}")]
    Write {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("'{path}' is {length} bytes long, and {total} bytes once placed under {} (ENAMETOOLONG: the system's limit is {}); shorten the path in the repository, or use a shorter --root", dir.display(), PATH_MAX - 1)]
    PathTooLong {
        path: String,
        length: usize,
        total: usize,
        dir: PathBuf,
    },
    #[error("'{path}' has a name of {length} bytes (ENAMETOOLONG: Linux filesystems allow {NAME_MAX}); rename it in the repository")]
    NameTooLong { path: String, length: usize },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("interrupted")]
    Cancelled,
}

impl SnapshotError {
    /// True when the source of the content is at fault, so that a fresh copy of it may help.
    pub fn blames_source(&self) -> bool {
        matches!(self, SnapshotError::Object { .. })
    }
}

/// An earlier snapshot on the same filesystem whose unchanged files can be shared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Previous<'a> {
    pub dir: &'a Dir,
    pub entries: &'a Entries,
}

/// Where [`build`] writes, and how.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Into<'a> {
    /// The empty directory to build in (a staging directory).
    pub dir: &'a Dir,
    /// The snapshot whose unchanged files may be shared.
    pub previous: Option<Previous<'a>>,
    pub reuse: Reuse,
    /// Threads that write (`--build-jobs`).
    pub jobs: usize,
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
pub(crate) struct Built {
    pub stats: Stats,
    pub entries: Entries,
}

/// Size of a built snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files, symlinks and submodule directories in the snapshot.
    pub files: u64,
    /// Bytes of content in the snapshot.
    pub bytes: u64,
    /// Files shared with the previous snapshot instead of written.
    pub reused: u64,
}

/// Materialize `entries` into the empty directory `into.dir` and seal it, with `into.jobs`
/// threads.
///
/// 1. Check that every path fits: no name longer than `NAME_MAX` and no path longer than
///    `PATH_MAX` once placed under `dir`. The error names the path, where a system call would
///    only say ENAMETOOLONG.
/// 2. Create every directory the entries need (submodules included: each is a directory, as
///    git leaves it without `--recurse-submodules`, holding its files when they were filled
///    in), one depth at a time, the directories of a depth in parallel.
/// 3. Deal the entries to the workers by directory (the kernel serializes creates and links
///    within one directory, so workers in different directories do not wait for each other;
///    on a network volume each of those calls is a round trip), largest directories first to
///    the least loaded worker. Each worker, for each of its entries:
///    - a regular file whose mode and blob id the `previous` snapshot holds (at the same path,
///      or at any path, for renamed and copied files) is hard-linked from there, after checking
///      that the file there is still what was recorded (a regular file, read-only, of the
///      recorded size, reached through real directories). Snapshots are immutable, so sharing an
///      inode is sharing content that can never change; a file someone edited in place, or a
///      path through a planted symlink, is not shared but written from the source, with one
///      warning. A link the filesystem refuses (another filesystem, a link-count limit) falls
///      back to writing.
///    - any other regular file is written from its blob, created read-only (`0444`, `0555`
///      when executable) with `O_EXCL`. Content is written exactly as git stores it: no
///      line-ending conversion, no filter drivers, so a file always hashes to its blob id
///      (which is what makes reuse and `verify` exact).
///    - a symlink is created with the blob's content as its target, as git does.
///
///    The first error stops every worker; the build returns it.
/// 4. Make every directory read-only (`0555`), deepest first (each is still writable while its
///    children are made), the directories of a depth in parallel. Readers can no longer write
///    `__pycache__` or add files.
/// 5. `syncfs` the filesystem so that data and metadata are on stable storage before the caller
///    renames `dir` into the store: after a power cut a published snapshot is complete.
///
/// If `interrupt` is raised, the build stops at its next check and returns `Cancelled`; the
/// caller's staging guard removes the directory. Errors name the path in the repository.
pub(crate) fn build(
    entries: Entries,
    blobs: &dyn Blobs,
    into: Into<'_>,
    progress: &gix::progress::tree::Root,
    interrupt: &AtomicBool,
) -> Result<Built, SnapshotError> {
    let Into {
        dir,
        previous,
        reuse,
        jobs,
    } = into;
    let started = Instant::now();
    let mut entries = entries.0;
    let jobs = jobs.max(1);
    // 1.
    check_lengths(dir.path(), &entries)?;

    let files = progress.add_child("write files");
    files.init(Some(entries.len()), gix::progress::count("files"));
    let bytes = progress.add_child("write");
    bytes.init(None, gix::progress::bytes());

    // 2.
    let modes = Modes::for_current_umask();
    let dirs = Directories::plan(dir, &entries, modes);
    dirs.create_all(jobs, interrupt)?;
    let made_dirs = Instant::now();

    // 3.
    let index = match (previous, reuse) {
        (Some(previous), Reuse::HardLink) => Some(SharingIndex::new(previous)),
        _ => None,
    };
    let shared = Shared {
        dir,
        entries: &entries,
        index: index.as_ref(),
        modes,
        interrupt,
        stop: AtomicBool::new(false),
        warned: AtomicBool::new(false),
        links_refused: AtomicBool::new(false),
        files: &files,
        bytes: &bytes,
    };
    let (reused, sizes) = write_all(&shared, blobs, jobs)?;
    for (n, size, mtime) in sizes {
        entries[n].size = size;
        entries[n].mtime = mtime;
    }
    if interrupt.load(Ordering::Relaxed) {
        return Err(SnapshotError::Cancelled);
    }
    let written = Instant::now();
    // 4.
    dirs.seal_all(jobs)?;
    let sealed = Instant::now();
    // 5.
    dir.sync_filesystem()?;

    tracing::debug!(
        jobs,
        directories_ms = made_dirs.duration_since(started).as_millis() as u64,
        write_ms = written.duration_since(made_dirs).as_millis() as u64,
        read_only_ms = sealed.duration_since(written).as_millis() as u64,
        syncfs_ms = sealed.elapsed().as_millis() as u64,
        reused,
        "snapshot built"
    );
    let entries = Entries(entries);
    Ok(Built {
        stats: Stats {
            files: entries.0.len() as u64,
            bytes: entries.total_size(),
            reused,
        },
        entries,
    })
}

/// Step 1.
pub(super) fn check_lengths(dir: &Path, entries: &[Entry]) -> Result<(), SnapshotError> {
    let prefix = dir.as_os_str().len() + 1;
    for entry in entries {
        if let Some(name) = entry
            .path
            .split(|b| *b == b'/')
            .find(|c| c.len() > NAME_MAX)
        {
            return Err(SnapshotError::NameTooLong {
                path: escape_bytes(&entry.path),
                length: name.len(),
            });
        }
        if prefix + entry.path.len() >= PATH_MAX {
            return Err(SnapshotError::PathTooLong {
                path: escape_bytes(&entry.path),
                length: entry.path.len(),
                total: prefix + entry.path.len(),
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

pub(super) fn write_error(action: &'static str, path: &[u8], source: io::Error) -> SnapshotError {
    SnapshotError::Write {
        action,
        path: escape_bytes(path),
        hint: fsutil::hint(&source),
        source,
    }
}

/// How the process's umask affects the modes dagsnap creates.
#[derive(Debug, Clone, Copy)]
pub(super) struct Modes {
    /// The umask would take bits away from `0755`/`0555`/`0444`: set every mode explicitly.
    need_chmod: bool,
}

impl Modes {
    fn for_current_umask() -> Modes {
        // 022 and 002 leave 0755, 0555 and 0444 alone; anything else takes bits away.
        Modes {
            need_chmod: fsutil::umask() & 0o755 & !0o022 != 0,
        }
    }
}

/// A modification time in nanoseconds since the epoch, as entry lists record it: 64 bits hold
/// the years 1678 to 2261, and an entry list holds one per file (saturated beyond).
pub(super) fn mtime_ns(seconds: i64, nanoseconds: i64) -> i64 {
    seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(nanoseconds)
}
