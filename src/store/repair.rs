//! Replacing a damaged snapshot with a fresh build of the same commit, while readers keep being
//! served a complete copy of it.
//!
//! The link names `snapshots/<commit>`, and that name is taken by the damaged directory. Linux
//! can exchange two directories atomically (`RENAME_EXCHANGE`), but NFS cannot, and a non-root
//! publisher cannot even move a read-only directory to another parent. So the fresh copy takes
//! a detour through `snapshots/.repair/<commit>` (same basename: the link still names the
//! commit), and every step is a `rename(2)` within one directory or an atomic link swap.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use crate::commit::CommitId;
use crate::entries::{Blobs, Entries};
use crate::store::snapshot::{self, Previous, Reuse, SnapshotError, Stats};
use crate::store::{Author, Cause, Manifest, Root, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// One repair of the snapshot of `commit`: where, with what settings, watched by whom.
#[derive(Clone, Copy)]
pub(crate) struct Repair<'a> {
    pub root: &'a Root,
    pub commit: &'a CommitId,
    /// The damaged snapshot's manifest (or what it should have been): the rebuilt copy gets it,
    /// with the counts and time of the rebuild.
    pub manifest: &'a Manifest,
    pub lock_timeout: Duration,
    pub jobs: usize,
    pub progress: &'a gix::progress::tree::Root,
    pub interrupt: &'a AtomicBool,
}

impl Repair<'_> {
    /// Rebuild the snapshot from `blobs` and put the rebuilt copy where the damaged one was,
    /// without a moment at which a reader resolving the link finds nothing or a partial tree.
    ///
    /// 1. Build a fresh copy of `entries` (the commit's tree, as git has it) in a staging
    ///    directory under `snapshots/.repair/`, writing every file from `blobs` (nothing is
    ///    shared with the damaged copy), and rename it to `snapshots/.repair/<commit>`.
    /// 2. Under the root's lock: if the link names the commit, swap it to the fresh copy, and
    ///    journal the repair as `who`'s, for `reason`. From here readers get intact files.
    /// 3. Under the lock: rename the damaged `snapshots/<commit>` to `snapshots/.retired-…`. A
    ///    reader that resolved the link to it keeps its files; GC deletes it after `--grace`.
    /// 4. Build `snapshots/<commit>` again by hard-linking every file of the fresh copy (no
    ///    content is written twice) and install it with a new manifest ([`Root::install`]).
    /// 5. Under the lock: if the link names the fresh copy, swap it back to `snapshots/<commit>`.
    /// 6. Retire the fresh copy's name; its files live on in `snapshots/<commit>`.
    ///
    /// A crash leaves the link on a complete copy of the commit: the damaged one (before 2), the
    /// fresh one (2 to 5), or the rebuilt one. [`Repair::finish`] does 3 to 6, and so completes
    /// an interrupted repair.
    pub(crate) fn run(
        &self,
        entries: Entries,
        blobs: &dyn Blobs,
        who: &Author,
        reason: String,
    ) -> Result<Stats, RepairError> {
        // (1)
        let fresh = self.build_fresh_copy(entries, blobs)?;
        // (2)
        self.move_readers_to_fresh_copy(who, reason)?;
        // (3) to (6)
        self.finish(&fresh.entries, blobs)?;
        Ok(fresh.stats)
    }

    /// Steps 3 to 6 of [`Repair::run`]: retire the damaged `snapshots/<commit>`, rebuild it from
    /// the fresh copy in `snapshots/.repair/<commit>` by hard links, swap the link back, retire
    /// the fresh copy's name. Also what completes a repair that was interrupted after step 2.
    pub(crate) fn finish(&self, entries: &Entries, blobs: &dyn Blobs) -> Result<(), RepairError> {
        let (root, commit) = (self.root, self.commit);
        // (3)
        {
            let lock = root.lock(self.lock_timeout)?;
            root.retire_snapshot(&lock, commit)?;
        }
        // (4)
        self.rebuild_from_fresh_copy(entries, blobs)?;
        // (5)
        {
            let lock = root.lock(self.lock_timeout)?;
            if root
                .current()?
                .is_some_and(|c| c.commit == commit && c.in_repair)
            {
                root.relink(&lock, commit, false)?;
            }
        }
        // (6)
        root.retire_fresh_copy(commit)?;
        Ok(())
    }

    /// Step 1: every file written from the blobs into `snapshots/.repair/<commit>`.
    fn build_fresh_copy(
        &self,
        entries: Entries,
        blobs: &dyn Blobs,
    ) -> Result<snapshot::Built, RepairError> {
        let staging = self.root.begin_repair_staging()?;
        let fresh = snapshot::build(
            entries,
            blobs,
            snapshot::Into {
                dir: staging.dir(),
                previous: None,
                reuse: Reuse::FullCopy,
                jobs: self.jobs,
            },
            self.progress,
            self.interrupt,
        )?;
        self.root.install_fresh_copy(staging, self.commit)?;
        Ok(fresh)
    }

    /// Step 2: the link to the fresh copy, journaled as a repair.
    fn move_readers_to_fresh_copy(&self, who: &Author, reason: String) -> Result<(), RepairError> {
        let lock = self.root.lock(self.lock_timeout)?;
        if !self.root.relink(&lock, self.commit, true)? {
            return Ok(());
        }
        let entry = who.entry(self.commit.clone(), Cause::Repair, false, Some(reason));
        self.root.records().record_publication(&lock, &entry)?;
        Ok(())
    }

    /// Step 4: `snapshots/<commit>` again, hard-linked from the fresh copy. Without the fresh
    /// copy (removed by hand), every file is written from the cache.
    fn rebuild_from_fresh_copy(
        &self,
        entries: &Entries,
        blobs: &dyn Blobs,
    ) -> Result<(), RepairError> {
        let root = self.root;
        let fresh_dir = root.open_fresh_copy(self.commit)?;
        let staging = root.begin_staging()?;
        let rebuilt = snapshot::build(
            entries.clone(),
            blobs,
            snapshot::Into {
                dir: staging.dir(),
                previous: fresh_dir.as_ref().map(|dir| Previous { dir, entries }),
                reuse: Reuse::HardLink,
                jobs: self.jobs,
            },
            self.progress,
            self.interrupt,
        )?;
        let mut manifest = self.manifest.clone();
        manifest.files = rebuilt.stats.files;
        manifest.bytes = rebuilt.stats.bytes;
        manifest.materialized_at = SystemTime::now();
        root.install(staging, &manifest, &rebuilt.entries)?;
        Ok(())
    }
}
