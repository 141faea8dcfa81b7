//! The directories of a snapshot being built: made parents first, sealed deepest first.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::parallel::in_parallel;
use super::write::split_path;
use super::{write_error, Modes, SnapshotError};
use crate::entries::{Entry, MODE_SUBMODULE};
use crate::fsutil::{self, Dir};

/// The directories of a snapshot being built: every one the entries need, by depth.
pub(super) struct Directories<'a> {
    pub(super) root: &'a Dir,
    /// `levels[d]`: the directories at depth `d + 1` (relative to `root`).
    pub(super) levels: Vec<Vec<Vec<u8>>>,
    pub(super) modes: Modes,
}

impl<'a> Directories<'a> {
    /// Every directory above an entry, and every submodule's.
    pub(super) fn plan(root: &'a Dir, entries: &[Entry], modes: Modes) -> Directories<'a> {
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
    pub(super) fn create_all(
        &self,
        jobs: usize,
        interrupt: &AtomicBool,
    ) -> Result<(), SnapshotError> {
        for level in &self.levels {
            if interrupt.load(Ordering::Relaxed) {
                return Err(SnapshotError::Cancelled);
            }
            in_parallel(level, jobs, |dir| self.create(dir))?;
        }
        Ok(())
    }

    /// Create the directory `path` (its parent exists).
    pub(super) fn create(&self, path: &[u8]) -> Result<(), SnapshotError> {
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
    pub(super) fn seal_all(&self, jobs: usize) -> Result<(), SnapshotError> {
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
