//! Step 3 of [`super::build`]: the workers that write entries, each in its own directories.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::parallel::deal_by_directory;
use super::share::{Sharing, SharingIndex};
use super::{mtime_ns, write_error, Blobs, Modes, SnapshotError};
use crate::entries::{CopyError, Entry, MODE_EXECUTABLE, MODE_FILE, MODE_SUBMODULE, MODE_SYMLINK};
use crate::fsutil::{self, Dir, IoError};
use crate::text::escape_bytes;

/// What every worker of step 3 shares.
pub(super) struct Shared<'a> {
    pub(super) dir: &'a Dir,
    pub(super) entries: &'a [Entry],
    pub(super) index: Option<&'a SharingIndex<'a>>,
    pub(super) modes: Modes,
    pub(super) interrupt: &'a AtomicBool,
    /// Another worker failed: stop.
    pub(super) stop: AtomicBool,
    /// A changed file of the previous snapshot was reported (once per build).
    pub(super) warned: AtomicBool,
    /// The filesystem refuses hard links altogether: every worker writes instead.
    pub(super) links_refused: AtomicBool,
    pub(super) files: &'a gix::progress::tree::Item,
    pub(super) bytes: &'a gix::progress::tree::Item,
}

/// What one worker wrote: the size (and a file's modification time) of each of its entries,
/// and how many it shared.
pub(super) struct Written {
    sizes: Vec<(usize, u64, Option<i64>)>,
    reused: u64,
}

impl Shared<'_> {
    /// Write the entries numbered `part`, reading blobs through `blobs`.
    pub(super) fn write(
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

    pub(super) fn write_part(
        &self,
        part: &[usize],
        blobs: &dyn Blobs,
    ) -> Result<Written, SnapshotError> {
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
pub(super) fn split_path(path: &[u8]) -> (&[u8], &OsStr) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(slash) => (&path[..slash], OsStr::from_bytes(&path[slash + 1..])),
        None => (&[][..], OsStr::from_bytes(path)),
    }
}

/// The directory a worker writes in now, kept open while its entries come.
#[derive(Default)]
pub(super) struct Parents {
    open: Option<(Vec<u8>, Dir)>,
}

impl Parents {
    /// The directory opened last.
    pub(super) fn current(&self) -> Option<&Dir> {
        self.open.as_ref().map(|(_, dir)| dir)
    }

    /// The directory `relative` below `top`, opened without following a symlink on the way.
    pub(super) fn open(&mut self, top: &Dir, relative: &[u8]) -> Result<&Dir, IoError> {
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

/// Create `name` in `dir` read-only with what `fill` writes as its content; returns `fill`'s
/// size and the file's modification time once written (recorded in the entry list: a file
/// edited in place later has another one, even when given back its size and mode).
pub(super) fn write_file(
    dir: &Dir,
    name: &OsStr,
    executable: bool,
    modes: Modes,
    fill: impl FnOnce(&mut fs::File) -> Result<u64, CopyError>,
) -> Result<(u64, Option<i64>), CopyError> {
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

pub(super) fn read_blob(
    blobs: &dyn Blobs,
    entry: &Entry,
    buf: &mut Vec<u8>,
) -> Result<(), SnapshotError> {
    blobs
        .read(&entry.id, buf)
        .map_err(|cause| SnapshotError::Object {
            path: escape_bytes(&entry.path),
            id: entry.id,
            cause,
        })
}

/// Run the workers over `shared.entries`, whole directories each; how many files were shared,
/// and each entry's size and modification time as written. The first error stops every worker
/// and is returned.
pub(super) fn write_all(
    shared: &Shared<'_>,
    blobs: &dyn Blobs,
    jobs: usize,
) -> Result<Reused, SnapshotError> {
    let parts = deal_by_directory(shared.entries, jobs);
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
                .map(|(part, reader)| scope.spawn(move || shared.write(part, reader)))
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
    let mut sizes = Vec::with_capacity(shared.entries.len());
    let mut first_error = None;
    for result in done {
        match result {
            Ok(written) => {
                reused += written.reused;
                sizes.extend(written.sizes);
            }
            Err(e) => {
                // A worker stopped by another's error reports Cancelled: keep the real one.
                if first_error.is_none() || matches!(first_error, Some(SnapshotError::Cancelled)) {
                    first_error = Some(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((reused, sizes)),
    }
}

/// Files shared, and each entry's (number, size, modification time).
pub(super) type Reused = (u64, Vec<(usize, u64, Option<i64>)>);
