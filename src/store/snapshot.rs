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

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gix::ObjectId;

pub use crate::entries::Blobs;
use crate::entries::{
    CopyError, Entries, Entry, MODE_EXECUTABLE, MODE_FILE, MODE_SUBMODULE, MODE_SYMLINK,
};
use crate::fsutil::{self, Dir, IoError, Kind};
use crate::text::escape_bytes;

/// Threads that write a snapshot unless told otherwise (`--build-jobs`). On a volume where each
/// create, link and chmod is a 1 ms round trip, 16 make a one-file update of 10,000 files 13x
/// faster than one thread (32: 19x); on local disk 16 are still faster than one, and 32 no
/// longer are (docs/benchmarks.md, "Network volumes").
pub const DEFAULT_BUILD_JOBS: usize = 16;

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
pub struct Previous<'a> {
    pub dir: &'a Dir,
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files, symlinks and submodule directories in the snapshot.
    pub files: u64,
    /// Bytes of content in the snapshot.
    pub bytes: u64,
    /// Files shared with the previous snapshot instead of written.
    pub reused: u64,
}

/// Materialize `entries` into the empty directory `dir` and seal it, with `jobs` threads.
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
#[allow(clippy::too_many_arguments)]
pub fn build(
    entries: Entries,
    blobs: &dyn Blobs,
    dir: &Dir,
    previous: Option<Previous<'_>>,
    reuse: Reuse,
    jobs: usize,
    progress: &gix::progress::tree::Root,
    interrupt: &AtomicBool,
) -> Result<Built, SnapshotError> {
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
    let parts = deal_by_directory(&entries, jobs);
    let done: Vec<Result<Written, SnapshotError>> = if parts.len() <= 1 {
        parts
            .into_iter()
            .map(|part| shared.write(part, blobs.fork()))
            .collect()
    } else {
        let readers: Vec<Box<dyn Blobs + Send>> = parts.iter().map(|_| blobs.fork()).collect();
        std::thread::scope(|scope| {
            let workers: Vec<_> = parts
                .into_iter()
                .zip(readers)
                .map(|(part, reader)| {
                    let shared = &shared;
                    scope.spawn(move || shared.write(part, reader))
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| {
                    // A panic in a worker is the cycle's panic (turned into an error there).
                    worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    };
    let mut reused = 0u64;
    let mut first_error = None;
    for result in done {
        match result {
            Ok(written) => {
                reused += written.reused;
                for (n, size, mtime) in written.sizes {
                    entries[n].size = size;
                    entries[n].mtime = mtime;
                }
            }
            Err(e) => {
                // A worker stopped by another's error reports Cancelled: keep the real one.
                if first_error.is_none() || matches!(first_error, Some(SnapshotError::Cancelled)) {
                    first_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
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

/// What every worker of step 3 shares.
struct Shared<'a> {
    dir: &'a Dir,
    entries: &'a [Entry],
    index: Option<&'a SharingIndex<'a>>,
    modes: Modes,
    interrupt: &'a AtomicBool,
    /// Another worker failed: stop.
    stop: AtomicBool,
    /// A changed file of the previous snapshot was reported (once per build).
    warned: AtomicBool,
    /// The filesystem refuses hard links altogether: every worker writes instead.
    links_refused: AtomicBool,
    files: &'a gix::progress::tree::Item,
    bytes: &'a gix::progress::tree::Item,
}

/// What one worker wrote: the size (and a file's modification time) of each of its entries,
/// and how many it shared.
struct Written {
    sizes: Vec<(usize, u64, Option<i128>)>,
    reused: u64,
}

impl Shared<'_> {
    /// Write the entries numbered `part`, reading blobs through `blobs`.
    fn write(
        &self,
        part: Vec<usize>,
        blobs: Box<dyn Blobs + Send>,
    ) -> Result<Written, SnapshotError> {
        let result = self.write_part(&part, &*blobs);
        if result.is_err() {
            self.stop.store(true, Ordering::Relaxed);
        }
        result
    }

    fn write_part(&self, part: &[usize], blobs: &dyn Blobs) -> Result<Written, SnapshotError> {
        let mut sharing = self.index.map(|index| Sharing {
            index,
            sources: Parents::default(),
            warned: &self.warned,
            disabled: &self.links_refused,
        });
        let mut written = Written {
            sizes: Vec::with_capacity(part.len()),
            reused: 0,
        };
        // Entries come a whole directory at a time: each is opened once.
        let mut parents = Parents::default();
        let mut buf = Vec::new();
        for (k, &n) in part.iter().enumerate() {
            if k % 64 == 0
                && (self.interrupt.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed))
            {
                return Err(SnapshotError::Cancelled);
            }
            let entry = &self.entries[n];
            let (parent, leaf) = split_path(&entry.path);
            let into = parents
                .open(self.dir, parent)
                .map_err(|e| write_error("open the directory of", &entry.path, e.source))?;
            let (size, mtime) = match entry.mode {
                MODE_FILE | MODE_EXECUTABLE => {
                    if let Some(shared) = sharing.as_mut().and_then(|s| s.link(entry, into, leaf)) {
                        written.reused += 1;
                        shared
                    } else {
                        let executable = entry.mode == MODE_EXECUTABLE;
                        let size = write_file(into, leaf, executable, self.modes, |file| {
                            blobs.copy(&entry.id, file, &mut buf)
                        })
                        .map_err(|e| match e {
                            CopyError::Read(cause) => SnapshotError::Object {
                                path: escape_bytes(&entry.path),
                                id: entry.id,
                                cause,
                            },
                            CopyError::Write(e) => write_error("write", &entry.path, e),
                        })?;
                        self.bytes.inc_by(size.0 as usize);
                        size
                    }
                }
                MODE_SYMLINK => {
                    read_blob(blobs, entry, &mut buf)?;
                    into.symlink(Path::new(OsStr::from_bytes(&buf)), leaf)
                        .map_err(|e| write_error("create symlink", &entry.path, e.source))?;
                    (buf.len() as u64, None)
                }
                // Created with the directories (step 2).
                MODE_SUBMODULE => (0, None),
                other => {
                    // Entry lists only hold the four modes above (the tree walk and the decoder
                    // make sure of it).
                    return Err(write_error(
                        "write",
                        &entry.path,
                        io::Error::other(format!("unknown mode {other:o}")),
                    ));
                }
            };
            written.sizes.push((n, size, mtime));
            self.files.inc();
        }
        Ok(written)
    }
}

/// A path's parent directory (empty at the top) and its last component.
fn split_path(path: &[u8]) -> (&[u8], &OsStr) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(slash) => (&path[..slash], OsStr::from_bytes(&path[slash + 1..])),
        None => (&[][..], OsStr::from_bytes(path)),
    }
}

/// The directory a worker writes in now, kept open while its entries come.
#[derive(Default)]
struct Parents {
    open: Option<(Vec<u8>, Dir)>,
}

impl Parents {
    /// The directory `relative` below `top`, opened without following a symlink on the way.
    fn open(&mut self, top: &Dir, relative: &[u8]) -> Result<&Dir, IoError> {
        if self.open.as_ref().is_none_or(|(at, _)| at != relative) {
            let dir = top.open_beneath(relative)?;
            self.open = Some((relative.to_vec(), dir));
        }
        match &self.open {
            Some((_, dir)) => Ok(dir),
            None => unreachable!("set above"),
        }
    }
}

/// The entries (by number) each worker writes: whole directories per worker, so that workers
/// do not queue on one directory's lock; the largest directories first, each to the worker
/// with the least to do. Submodule directories are made in step 2 and need no worker.
fn deal_by_directory(entries: &[Entry], jobs: usize) -> Vec<Vec<usize>> {
    let mut by_dir: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (n, entry) in entries.iter().enumerate() {
        let parent = match entry.path.iter().rposition(|b| *b == b'/') {
            Some(end) => &entry.path[..end],
            None => &[][..],
        };
        by_dir.entry(parent).or_default().push(n);
    }
    let mut groups: Vec<Vec<usize>> = by_dir.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let workers = jobs.min(groups.len()).max(1);
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); workers];
    for group in groups {
        if let Some(lightest) = parts.iter_mut().min_by_key(|p| p.len()) {
            lightest.extend(group);
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// Run `work` on each item of `items`, on up to `jobs` threads; the first error is returned.
fn in_parallel<T: Sync, E: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    if jobs <= 1 || items.len() <= 1 {
        return items.iter().try_for_each(work);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.min(items.len()))
            .map(|_| {
                scope.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= items.len() || failed.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if let Err(e) = work(&items[n]) {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<()>, E>>()
            .map(|_| ())
    })
}

/// Check, without reading any content, that `dir` still holds what `entries` describe: every
/// entry there with its type, read-only mode and size, every directory read-only, and nothing
/// else (a `__pycache__` written by a reader running as root, a file added by hand). Costs one
/// `lstat` per entry, made by `jobs` threads a directory each (on a network volume each is a
/// round trip). Returns a problem found.
pub fn quick_check(dir: &Path, entries: &Entries, jobs: usize) -> Result<(), String> {
    let mut expected: HashSet<&[u8]> = HashSet::new();
    for entry in &entries.0 {
        for (i, _) in entry.path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            expected.insert(&entry.path[..i]);
        }
        expected.insert(&entry.path);
    }
    let parts = deal_by_directory(&entries.0, jobs.max(1));
    in_parallel(&parts, jobs, |part| {
        part.iter()
            .try_for_each(|&n| check_entry(dir, &entries.0[n]))
    })?;
    for found in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let found = found.map_err(|e| e.to_string())?;
        let relative = found
            .path()
            .strip_prefix(dir)
            .unwrap_or(found.path())
            .as_os_str()
            .as_bytes();
        if !expected.contains(relative) {
            return Err(format!("'{}' is not in the commit", escape_bytes(relative)));
        }
        if found.file_type().is_dir() {
            let mode = found
                .metadata()
                .map(|m| m.permissions().mode() & 0o7777)
                .map_err(|e| e.to_string())?;
            if mode != fsutil::read_only_mode(true, false) {
                return Err(format!(
                    "directory '{}' has mode {mode:o}",
                    escape_bytes(relative)
                ));
            }
        }
    }
    Ok(())
}

/// Whether `entry` is in `dir` as recorded (type, read-only mode, size); the problem if not.
fn check_entry(dir: &Path, entry: &Entry) -> Result<(), String> {
    let shown = || escape_bytes(&entry.path);
    let meta = fs::symlink_metadata(dir.join(std::ffi::OsStr::from_bytes(&entry.path)))
        .map_err(|e| format!("'{}': {e}", shown()))?;
    let mode = meta.permissions().mode() & 0o7777;
    let problem = match entry.mode {
        MODE_SYMLINK if !meta.file_type().is_symlink() => Some("is not a symlink".into()),
        MODE_SYMLINK if meta.len() != entry.size => Some("has another target".into()),
        MODE_SUBMODULE if !meta.is_dir() => Some("is not a directory".into()),
        MODE_FILE | MODE_EXECUTABLE if !meta.is_file() => Some("is not a regular file".into()),
        MODE_FILE | MODE_EXECUTABLE if meta.len() != entry.size => {
            Some(format!("has {} bytes, not {}", meta.len(), entry.size))
        }
        MODE_FILE | MODE_EXECUTABLE
            if mode != fsutil::read_only_mode(false, entry.mode == MODE_EXECUTABLE) =>
        {
            Some(format!("has mode {mode:o}"))
        }
        MODE_FILE | MODE_EXECUTABLE
            if entry.mtime.is_some_and(|recorded| {
                use std::os::unix::fs::MetadataExt;
                recorded != mtime_ns(meta.mtime(), meta.mtime_nsec())
            }) =>
        {
            Some("was modified after it was written (its modification time changed)".into())
        }
        _ => None,
    };
    match problem {
        Some(problem) => Err(format!("'{}' {problem}", shown())),
        None => Ok(()),
    }
}

/// Step 1.
fn check_lengths(dir: &Path, entries: &[Entry]) -> Result<(), SnapshotError> {
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

fn read_blob(blobs: &dyn Blobs, entry: &Entry, buf: &mut Vec<u8>) -> Result<(), SnapshotError> {
    blobs
        .read(&entry.id, buf)
        .map_err(|cause| SnapshotError::Object {
            path: escape_bytes(&entry.path),
            id: entry.id,
            cause,
        })
}

fn write_error(action: &'static str, path: &[u8], source: io::Error) -> SnapshotError {
    SnapshotError::Write {
        action,
        path: escape_bytes(path),
        hint: fsutil::hint(&source),
        source,
    }
}

/// How the process's umask affects the modes dagsnap creates.
#[derive(Debug, Clone, Copy)]
struct Modes {
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

/// Create `name` in `dir` read-only with what `fill` writes as its content; returns `fill`'s
/// size and the file's modification time once written (recorded in the entry list: a file
/// edited in place later has another one, even when given back its size and mode).
fn write_file(
    dir: &Dir,
    name: &OsStr,
    executable: bool,
    modes: Modes,
    fill: impl FnOnce(&mut fs::File) -> Result<u64, CopyError>,
) -> Result<(u64, Option<i128>), CopyError> {
    let mode = fsutil::read_only_mode(false, executable);
    // O_CREAT with a read-only mode still gives a writable descriptor: permissions are checked
    // when an existing file is opened, not when it is created.
    let mut file = dir
        .create_new(name, mode)
        .map_err(|e| CopyError::Write(e.source))?;
    let size = fill(&mut file)?;
    if modes.need_chmod {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(CopyError::Write)?;
    }
    let mtime = file.metadata().ok().map(|meta| {
        use std::os::unix::fs::MetadataExt;
        mtime_ns(meta.mtime(), meta.mtime_nsec())
    });
    Ok((size, mtime))
}

/// A modification time in nanoseconds since the epoch, as entry lists record it.
fn mtime_ns(seconds: i64, nanoseconds: i64) -> i128 {
    i128::from(seconds) * 1_000_000_000 + i128::from(nanoseconds)
}

/// What step 3 knows of the previous snapshot, shared by the workers: its entries by path and
/// by content, as sorted entry numbers (4 bytes an entry, where maps took 40).
struct SharingIndex<'a> {
    previous: Previous<'a>,
    /// In path order. The lists dagsnap writes are in that order already; one read back is not
    /// trusted to be.
    by_path: Vec<u32>,
    /// The regular files, by blob and mode: same blob and mode under another path (a renamed
    /// directory, a copied file) is the same content too, so it can be shared as well.
    by_content: Vec<u32>,
}

impl<'a> SharingIndex<'a> {
    fn new(previous: Previous<'a>) -> SharingIndex<'a> {
        let entries = &previous.entries.0;
        let mut by_path: Vec<u32> = (0..entries.len() as u32).collect();
        by_path.sort_by(|a, b| entries[*a as usize].path.cmp(&entries[*b as usize].path));
        let mut by_content: Vec<u32> = (0..entries.len() as u32)
            .filter(|n| entries[*n as usize].is_regular_file())
            .collect();
        by_content.sort_by_key(|n| (entries[*n as usize].id, entries[*n as usize].mode));
        SharingIndex {
            previous,
            by_path,
            by_content,
        }
    }

    /// The previous entry at `path`.
    fn at_path(&self, path: &[u8]) -> Option<&'a Entry> {
        let entries = &self.previous.entries.0;
        let at = self
            .by_path
            .binary_search_by(|n| entries[*n as usize].path.as_slice().cmp(path))
            .ok()?;
        Some(&entries[self.by_path[at] as usize])
    }

    /// A previous regular file with blob `id` and `mode`.
    fn with_content(&self, id: ObjectId, mode: u32) -> Option<&'a Entry> {
        let entries = &self.previous.entries.0;
        let at = self
            .by_content
            .binary_search_by_key(&(id, mode), |n| {
                (entries[*n as usize].id, entries[*n as usize].mode)
            })
            .ok()?;
        Some(&entries[self.by_content[at] as usize])
    }
}

/// One worker's sharing of unchanged files with the previous snapshot.
struct Sharing<'a, 'b> {
    index: &'a SharingIndex<'a>,
    /// The previous snapshot's directory of the last file shared.
    sources: Parents,
    /// The previous snapshot was found changed on disk; said once per build.
    warned: &'b AtomicBool,
    /// The filesystem refuses hard links altogether.
    disabled: &'b AtomicBool,
}

impl<'a> Sharing<'a, '_> {
    /// Hard-link `entry` from the previous snapshot to `leaf` in `into`; its size and
    /// modification time if that worked.
    fn link(&mut self, entry: &Entry, into: &Dir, leaf: &OsStr) -> Option<(u64, Option<i128>)> {
        if self.disabled.load(Ordering::Relaxed) {
            return None;
        }
        let index = self.index;
        let old: &'a Entry = match index.at_path(&entry.path) {
            Some(old) if old.mode == entry.mode && old.id == entry.id => old,
            _ => index.with_content(entry.id, entry.mode)?,
        };
        let (source_dir, source_leaf, mtime) = self.intact_source(old)?;
        match source_dir.hard_link_to(source_leaf, into, leaf) {
            Ok(()) => Some((old.size, Some(mtime))),
            Err(e) if link_refused_everywhere(&e.source) => {
                if !self.disabled.swap(true, Ordering::Relaxed) {
                    tracing::info!(error = %e, "cannot hard-link into the new snapshot; writing every file instead");
                }
                None
            }
            // This one file cannot be shared (a link-count limit, a race): write it.
            Err(e) => {
                tracing::debug!(path = %into.join(leaf).display(), error = %e, "writing instead of linking");
                None
            }
        }
    }

    /// Where `old` is in the previous snapshot (its directory, opened without following a
    /// symlink on the way, and its name), and its modification time, if the file there is
    /// still what was recorded: a regular file, read-only, of the recorded size and (when
    /// recorded) modification time.
    fn intact_source(&mut self, old: &'a Entry) -> Option<(&Dir, &'a OsStr, i128)> {
        let (parent, leaf) = split_path(&old.path);
        let previous = self.index.previous.dir;
        // Every directory on the way must be a real one: a symlink planted in place of one would
        // make the link share a file from anywhere.
        let stat = match self.sources.open(previous, parent) {
            Ok(dir) => match dir.stat(leaf) {
                Ok(Some(stat)) => stat,
                // Deleted by hand: nothing to share, nothing to warn about beyond verify's.
                _ => return None,
            },
            Err(e) if fsutil::is_not_a_directory(&e) => {
                return self.changed(old, "a directory on its path is not a directory")
            }
            Err(_) => return None,
        };
        let wanted = fsutil::read_only_mode(false, old.mode == MODE_EXECUTABLE);
        let mode = stat.st_mode & 0o7777;
        if Kind::of_stat(&stat) != Kind::File {
            return self.changed(old, "it is no longer a regular file");
        }
        if mode != wanted {
            return self.changed(old, &format!("its mode is {mode:o}, not {wanted:o}"));
        }
        if stat.st_size as u64 != old.size {
            return self.changed(
                old,
                &format!(
                    "it has {} bytes, not the {} recorded",
                    stat.st_size, old.size
                ),
            );
        }
        let mtime = mtime_ns(stat.st_mtime, stat.st_mtime_nsec);
        if old.mtime.is_some_and(|recorded| recorded != mtime) {
            return self.changed(
                old,
                "it was modified after it was written (its modification time changed)",
            );
        }
        let dir = self.sources.open.as_ref().map(|(_, dir)| dir)?;
        Some((dir, leaf, mtime))
    }

    fn changed<T>(&mut self, old: &Entry, what: &str) -> Option<T> {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                snapshot = %self.index.previous.dir.path().display(),
                path = %escape_bytes(&old.path),
                what,
                "a file of the previous snapshot was changed on disk after it was published; writing such files from git instead of sharing them (`dagsnap verify` lists the damage)"
            );
        }
        None
    }
}

/// Errors after which no other link will succeed either.
fn link_refused_everywhere(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::EROFS)
    )
}

/// The directories of a snapshot being built: every one the entries need, by depth.
struct Directories<'a> {
    root: &'a Dir,
    /// `levels[d]`: the directories at depth `d + 1` (relative to `root`).
    levels: Vec<Vec<Vec<u8>>>,
    modes: Modes,
}

impl<'a> Directories<'a> {
    /// Every directory above an entry, and every submodule's.
    fn plan(root: &'a Dir, entries: &[Entry], modes: Modes) -> Directories<'a> {
        let mut all: HashSet<&[u8]> = HashSet::new();
        for entry in entries {
            for (i, _) in entry.path.iter().enumerate().filter(|(_, b)| **b == b'/') {
                all.insert(&entry.path[..i]);
            }
            if entry.mode == MODE_SUBMODULE {
                all.insert(&entry.path);
            }
        }
        let mut levels: Vec<Vec<Vec<u8>>> = Vec::new();
        for dir in all {
            let depth = dir.iter().filter(|b| **b == b'/').count();
            if levels.len() <= depth {
                levels.resize(depth + 1, Vec::new());
            }
            levels[depth].push(dir.to_vec());
        }
        for level in &mut levels {
            level.sort();
        }
        Directories {
            root,
            levels,
            modes,
        }
    }

    /// Create them, parents first: one depth at a time, each depth's in parallel.
    fn create_all(&self, jobs: usize, interrupt: &AtomicBool) -> Result<(), SnapshotError> {
        for level in &self.levels {
            if interrupt.load(Ordering::Relaxed) {
                return Err(SnapshotError::Cancelled);
            }
            in_parallel(level, jobs, |dir| self.create(dir))?;
        }
        Ok(())
    }

    /// Create the directory `path` (its parent exists).
    fn create(&self, path: &[u8]) -> Result<(), SnapshotError> {
        let (parent, leaf) = split_path(path);
        self.root
            .open_beneath(parent)
            .and_then(|parent| {
                parent.make_dir(leaf, 0o755)?;
                if self.modes.need_chmod {
                    parent.set_mode_of(leaf, 0o755)?;
                }
                Ok(())
            })
            .map_err(|e| write_error("create directory", path, e.source))
    }

    /// Make every directory read-only, deepest first (each depth in parallel), the root last.
    fn seal_all(&self, jobs: usize) -> Result<(), SnapshotError> {
        let seal = |dir: &Vec<u8>| {
            self.root
                .open_beneath(dir)
                .and_then(|d| d.set_mode(fsutil::read_only_mode(true, false)))
                .map_err(|e| write_error("make read-only", dir, e.source))
        };
        for level in self.levels.iter().rev() {
            in_parallel(level, jobs, seal)?;
        }
        seal(&Vec::new())
    }
}
