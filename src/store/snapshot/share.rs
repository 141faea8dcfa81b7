//! Sharing unchanged files with the previous snapshot by hard link, once checked intact.

use std::ffi::OsStr;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use gix::ObjectId;

use super::write::{split_path, Parents};
use super::{mtime_ns, Previous};
use crate::entries::{Entry, MODE_EXECUTABLE};
use crate::fsutil::{self, Dir, Kind};
use crate::text::escape_bytes;

/// What step 3 knows of the previous snapshot, shared by the workers: its entries by path and
/// by content, as sorted entry numbers (4 bytes an entry, where maps took 40).
pub(super) struct SharingIndex<'a> {
    pub(super) previous: Previous<'a>,
    /// In path order. The lists dagsnap writes are in that order already; one read back is not
    /// trusted to be.
    pub(super) by_path: Vec<u32>,
    /// The regular files, by blob and mode: same blob and mode under another path (a renamed
    /// directory, a copied file) is the same content too, so it can be shared as well.
    pub(super) by_content: Vec<u32>,
}

impl<'a> SharingIndex<'a> {
    pub(super) fn new(previous: Previous<'a>) -> SharingIndex<'a> {
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
    pub(super) fn at_path(&self, path: &[u8]) -> Option<&'a Entry> {
        let entries = &self.previous.entries.0;
        let at = self
            .by_path
            .binary_search_by(|n| entries[*n as usize].path.as_slice().cmp(path))
            .ok()?;
        Some(&entries[self.by_path[at] as usize])
    }

    /// A previous regular file with blob `id` and `mode`.
    pub(super) fn with_content(&self, id: ObjectId, mode: u32) -> Option<&'a Entry> {
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
pub(super) struct Sharing<'a, 'b> {
    pub(super) index: &'a SharingIndex<'a>,
    /// The previous snapshot's directory of the last file shared.
    pub(super) sources: Parents,
    /// The previous snapshot was found changed on disk; said once per build.
    pub(super) warned: &'b AtomicBool,
    /// The filesystem refuses hard links altogether.
    pub(super) disabled: &'b AtomicBool,
}

impl<'a> Sharing<'a, '_> {
    /// Hard-link `entry` from the previous snapshot to `leaf` in `into`; its size and
    /// modification time if that worked.
    pub(super) fn link(
        &mut self,
        entry: &Entry,
        into: &Dir,
        leaf: &OsStr,
    ) -> Option<(u64, Option<i64>)> {
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
    pub(super) fn intact_source(&mut self, old: &'a Entry) -> Option<(&Dir, &'a OsStr, i64)> {
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
        let dir = self.sources.current()?;
        Some((dir, leaf, mtime))
    }

    pub(super) fn changed<T>(&mut self, old: &Entry, what: &str) -> Option<T> {
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
pub(super) fn link_refused_everywhere(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EOPNOTSUPP) | Some(libc::EROFS)
    )
}
