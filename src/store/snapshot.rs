//! Turning a list of entries into a complete, durable, read-only directory.
//!
//! This module writes into a directory it is given (a private staging directory) and knows
//! nothing of links, locks or where snapshots live: [`crate::store::Root`] names the directory
//! and renames it into place once [`build`] has returned. It knows nothing of git either: the
//! content of each entry comes from a [`Blobs`] source, and the entries were checked against
//! git's path rules by whoever listed them.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gix::ObjectId;

pub use crate::entries::Blobs;
use crate::entries::{Entries, Entry, MODE_EXECUTABLE, MODE_FILE, MODE_SUBMODULE, MODE_SYMLINK};
use crate::fsutil::{self, IoError};
use crate::text::escape_bytes;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files, symlinks and submodule directories in the snapshot.
    pub files: u64,
    /// Bytes of content in the snapshot.
    pub bytes: u64,
    /// Files shared with the previous snapshot instead of written.
    pub reused: u64,
}

/// Materialize `entries` into the empty directory `dir` and seal it.
///
/// 1. Check that every path fits: no name longer than `NAME_MAX` and no path longer than
///    `PATH_MAX` once placed under `dir`. The error names the path, where a system call would
///    only say ENAMETOOLONG.
/// 2. For each entry, in git's order (a directory's parents always come first), create the
///    directories it needs, then:
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
///    - a symlink is created with the blob's content as its target, as git does;
///    - a submodule is an empty directory, as git leaves it without `--recurse-submodules`.
/// 3. Make every directory read-only (`0555`), deepest first so that each is still writable
///    while its children are made. Readers can no longer write `__pycache__` or add files.
/// 4. `syncfs` the filesystem so that data and metadata are on stable storage before the caller
///    renames `dir` into the store: after a power cut a published snapshot is complete.
///
/// If `interrupt` is raised, the build stops at its next check and returns `Cancelled`; the
/// caller's staging guard removes the directory. Errors name the path in the repository.
pub fn build(
    entries: Entries,
    blobs: &dyn Blobs,
    dir: &Path,
    previous: Option<Previous<'_>>,
    reuse: Reuse,
    progress: &gix::progress::tree::Root,
    interrupt: &AtomicBool,
) -> Result<Built, SnapshotError> {
    let started = Instant::now();
    let mut entries = entries.0;
    check_lengths(dir, &entries)?;

    let files = progress.add_child("write files");
    files.init(Some(entries.len()), gix::progress::count("files"));
    let bytes = progress.add_child("write");
    bytes.init(None, gix::progress::bytes());

    let modes = Modes::for_current_umask();
    let mut dirs = Directories::new(dir, modes);
    let mut sharing = match (previous, reuse) {
        (Some(previous), Reuse::HardLink) => Some(Sharing::new(previous)),
        _ => None,
    };
    let mut buf = Vec::new();
    let mut reused = 0u64;
    for (n, entry) in entries.iter_mut().enumerate() {
        if n % 256 == 0 && interrupt.load(Ordering::Relaxed) {
            return Err(SnapshotError::Cancelled);
        }
        let target = dir.join(std::ffi::OsStr::from_bytes(&entry.path));
        dirs.create_parents_of(&entry.path)?;
        match entry.mode {
            MODE_FILE | MODE_EXECUTABLE => {
                if let Some(size) = sharing.as_mut().and_then(|s| s.link(entry, &target)) {
                    entry.size = size;
                    reused += 1;
                } else {
                    read_blob(blobs, entry, &mut buf)?;
                    write_file(&target, &buf, entry.mode == MODE_EXECUTABLE, modes)
                        .map_err(|e| write_error("write", &entry.path, e))?;
                    entry.size = buf.len() as u64;
                    bytes.inc_by(buf.len());
                }
            }
            MODE_SYMLINK => {
                read_blob(blobs, entry, &mut buf)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&buf), &target)
                    .map_err(|e| write_error("create symlink", &entry.path, e))?;
                entry.size = buf.len() as u64;
            }
            MODE_SUBMODULE => {
                dirs.create(&entry.path)?;
                entry.size = 0;
            }
            other => {
                // Entry lists only hold the four modes above (the tree walk and the decoder
                // make sure of it).
                return Err(write_error(
                    "write",
                    &entry.path,
                    io::Error::other(format!("unknown mode {other:o}")),
                ));
            }
        }
        files.inc();
    }
    if interrupt.load(Ordering::Relaxed) {
        return Err(SnapshotError::Cancelled);
    }
    let written = Instant::now();
    dirs.seal_all()?;
    let sealed = Instant::now();
    fsutil::sync_filesystem(dir)?;

    tracing::debug!(
        write_ms = written.duration_since(started).as_millis() as u64,
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

/// Check, without reading any content, that `dir` still holds what `entries` describe: every
/// entry there with its type, read-only mode and size, every directory read-only, and nothing
/// else (a `__pycache__` written by a reader running as root, a file added by hand). Costs one
/// `lstat` per entry. Returns the first problem found.
pub fn quick_check(dir: &Path, entries: &Entries) -> Result<(), String> {
    let mut expected: HashSet<&[u8]> = HashSet::new();
    for entry in &entries.0 {
        for (i, _) in entry.path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            expected.insert(&entry.path[..i]);
        }
        expected.insert(&entry.path);
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
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(format!("'{}' {problem}", shown()));
        }
    }
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

/// Create `path` read-only with `data` as its content.
fn write_file(path: &Path, data: &[u8], executable: bool, modes: Modes) -> io::Result<()> {
    let mode = fsutil::read_only_mode(false, executable);
    // O_CREAT with a read-only mode still gives a writable descriptor: permissions are checked
    // when an existing file is opened, not when it is created.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(data)?;
    if modes.need_chmod {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Step 2's sharing of unchanged files with the previous snapshot.
struct Sharing<'a> {
    previous: Previous<'a>,
    by_path: HashMap<&'a [u8], &'a Entry>,
    /// Same blob and mode under another path (a renamed directory, a copied file) is the same
    /// content too, so it can be shared as well.
    by_content: HashMap<(ObjectId, u32), &'a Entry>,
    /// Directories of the previous snapshot checked to be real directories (not symlinks).
    sound_dirs: HashSet<&'a [u8]>,
    /// The previous snapshot was found changed on disk; said once per build.
    warned: bool,
    /// The filesystem refuses hard links altogether.
    disabled: bool,
}

impl<'a> Sharing<'a> {
    fn new(previous: Previous<'a>) -> Sharing<'a> {
        Sharing {
            by_path: previous.entries.by_path(),
            by_content: previous
                .entries
                .0
                .iter()
                .filter(|e| e.is_regular_file())
                .map(|e| ((e.id, e.mode), e))
                .collect(),
            previous,
            sound_dirs: HashSet::new(),
            warned: false,
            disabled: false,
        }
    }

    /// Hard-link `entry` from the previous snapshot to `target`; its size if that worked.
    fn link(&mut self, entry: &Entry, target: &Path) -> Option<u64> {
        if self.disabled {
            return None;
        }
        let old: &'a Entry = match self.by_path.get(entry.path.as_slice()) {
            Some(old) if old.mode == entry.mode && old.id == entry.id => old,
            _ => self.by_content.get(&(entry.id, entry.mode))?,
        };
        let source = self.intact_source(old)?;
        match fs::hard_link(&source, target) {
            Ok(()) => Some(old.size),
            Err(e) if link_refused_everywhere(&e) => {
                tracing::info!(error = %e, "cannot hard-link into the new snapshot; writing every file instead");
                self.disabled = true;
                None
            }
            // This one file cannot be shared (a link-count limit, a race): write it.
            Err(e) => {
                tracing::debug!(path = %target.display(), error = %e, "writing instead of linking");
                None
            }
        }
    }

    /// The path of `old` in the previous snapshot, if the file there is still what was recorded.
    fn intact_source(&mut self, old: &'a Entry) -> Option<PathBuf> {
        let dir = self.previous.dir;
        // Every directory on the way must be a real one: a symlink planted in place of one would
        // make the link share a file from anywhere.
        for (i, _) in old.path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let parent = &old.path[..i];
            if self.sound_dirs.contains(parent) {
                continue;
            }
            match fs::symlink_metadata(dir.join(std::ffi::OsStr::from_bytes(parent))) {
                Ok(meta) if meta.is_dir() => {
                    self.sound_dirs.insert(parent);
                }
                Ok(_) => return self.changed(old, "a directory on its path is not a directory"),
                Err(_) => return None,
            }
        }
        let source = dir.join(std::ffi::OsStr::from_bytes(&old.path));
        let meta = match fs::symlink_metadata(&source) {
            Ok(meta) => meta,
            // Deleted by hand: nothing to share, nothing to warn about beyond what verify says.
            Err(_) => return None,
        };
        let wanted = fsutil::read_only_mode(false, old.mode == MODE_EXECUTABLE);
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_file() {
            return self.changed(old, "it is no longer a regular file");
        }
        if mode != wanted {
            return self.changed(old, &format!("its mode is {mode:o}, not {wanted:o}"));
        }
        if meta.len() != old.size {
            return self.changed(
                old,
                &format!("it has {} bytes, not the {} recorded", meta.len(), old.size),
            );
        }
        Some(source)
    }

    fn changed(&mut self, old: &Entry, what: &str) -> Option<PathBuf> {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                snapshot = %self.previous.dir.display(),
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

/// The directories of a snapshot being built: created on demand, and sealed read-only at the
/// end, deepest first.
struct Directories {
    root: PathBuf,
    /// Paths (relative to `root`) of every directory created, the root's being empty.
    known: HashSet<Vec<u8>>,
    modes: Modes,
}

impl Directories {
    fn new(root: &Path, modes: Modes) -> Directories {
        Directories {
            root: root.to_path_buf(),
            known: HashSet::from([Vec::new()]),
            modes,
        }
    }

    /// Create every missing directory above `path`.
    fn create_parents_of(&mut self, path: &[u8]) -> Result<(), SnapshotError> {
        let Some(end) = path.iter().rposition(|b| *b == b'/') else {
            return Ok(());
        };
        if self.known.contains(&path[..end]) {
            return Ok(());
        }
        for (i, _) in path[..=end].iter().enumerate().filter(|(_, b)| **b == b'/') {
            if !self.known.contains(&path[..i]) {
                self.create(&path[..i])?;
            }
        }
        Ok(())
    }

    /// Create the directory `path` (its parent exists).
    fn create(&mut self, path: &[u8]) -> Result<(), SnapshotError> {
        let full = self.root.join(std::ffi::OsStr::from_bytes(path));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&full)
            .and_then(|()| {
                if self.modes.need_chmod {
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o755))
                } else {
                    Ok(())
                }
            })
            .map_err(|e| write_error("create directory", path, e))?;
        self.known.insert(path.to_vec());
        Ok(())
    }

    fn seal_all(&self) -> Result<(), SnapshotError> {
        let mut dirs: Vec<&Vec<u8>> = self.known.iter().collect();
        // The root (empty path) last, every directory before its parent.
        let depth = |p: &[u8]| match p.is_empty() {
            true => 0,
            false => p.iter().filter(|b| **b == b'/').count() + 1,
        };
        dirs.sort_by_key(|d| std::cmp::Reverse(depth(d)));
        for dir in dirs {
            let full = self.root.join(std::ffi::OsStr::from_bytes(dir));
            fs::set_permissions(
                &full,
                fs::Permissions::from_mode(fsutil::read_only_mode(true, false)),
            )
            .map_err(|e| write_error("make read-only", dir, e))?;
        }
        Ok(())
    }
}
