//! Keeping the live snapshot what it should be: the periodic check (`--verify-period`) and
//! repairs, and rebuilding it when the settings change what it must hold.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::build::manifest_for;
use super::steps::Seen;
use super::{PublishError, Publisher};
use crate::commit::CommitId;
use crate::store::repair;
use crate::store::snapshot::{self, Stats};
use crate::store::{Author, Current, Manifest};

impl Publisher {
    /// Step 16: when `--verify-period` has passed since the last check, check the live snapshot
    /// cheaply against its entry list ([`snapshot::quick_check`]: types, modes and sizes, no
    /// content read), and repair it if it is damaged ([`repair::Repair::run`]: rebuilt from the
    /// cache, fetching the commit if the cache let it go, and the link swapped to the rebuilt
    /// copy). A repair that was interrupted is finished at once. A failed repair is logged and
    /// tried again at the next cycle; it does not fail the sync.
    pub(super) fn check_live(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) {
        let Some(period) = self.settings.verify_period else {
            return;
        };
        let Ok(Some(current)) = self.root.current() else {
            return;
        };
        let due = self.last_verified.is_none_or(|at| at.elapsed() >= period);
        if !current.complete || (!due && !current.in_repair) {
            return;
        }
        match self.repair_if_damaged(&current, progress, interrupt) {
            Ok(()) => self.last_verified = Some(Instant::now()),
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                let error = self.redactor.redact(&crate::git::error_chain(&e));
                tracing::error!(commit = %current.commit, %error, "could not repair the live snapshot; trying again at the next cycle");
            }
        }
    }

    pub(super) fn repair_if_damaged(
        &mut self,
        current: &Current,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<(), PublishError> {
        let recorded = self.root.entries(&current.commit)?;
        let problem = if current.in_repair {
            "a repair was interrupted".to_string()
        } else {
            match &recorded {
                Some(entries) => {
                    match snapshot::quick_check(&current.dir, entries, self.settings.build_jobs) {
                        Ok(()) => return Ok(()),
                        Err(problem) => problem,
                    }
                }
                None => {
                    tracing::debug!(commit = %current.commit, "the live snapshot has no entry list to check it against");
                    return Ok(());
                }
            }
        };
        tracing::warn!(commit = %current.commit, %problem, "the live snapshot is damaged; rebuilding it and swapping the link to the rebuilt copy");
        let version = self
            .version_of_snapshot(&current.commit, progress, interrupt)
            .map_err(|e| e.into_error(&current.commit))?;
        let expected = version.expected.clone();
        let manifest = match self.root.manifest(&current.commit)? {
            Some(manifest) => manifest,
            None => manifest_for(version.info.clone(), Stats::default()),
        };
        let expanded = self.entries_of(&version, progress, interrupt)?;
        let blobs = expanded.blobs;
        // What git says the snapshot holds, unless it was built with other settings than this
        // publisher's (a pinned snapshot from before a change of --subdir): then what was
        // recorded when it was built.
        let same_settings = expected.matches(&manifest, || recorded.clone()).is_ok();
        let entries = match (&recorded, same_settings) {
            (Some(recorded), false) => recorded.clone(),
            _ => expanded.entries,
        };
        if current.in_repair {
            let entries = recorded.unwrap_or(entries);
            self.repair_of(&current.commit, &manifest, progress, interrupt)
                .finish(&entries, &blobs)?;
        } else {
            let job = self.repair_of(&current.commit, &manifest, progress, interrupt);
            self.rebuild(&job, entries, &blobs, problem)?;
        }
        tracing::info!(commit = %current.commit, "repaired the live snapshot; readers are served the rebuilt copy");
        Ok(())
    }

    /// Make sure the live snapshot of the remote's commit holds what this publisher publishes,
    /// rebuilding it if it does not: a root whose commit stays while the settings change (a new
    /// `--subdir`, sparse patterns or `--submodules`; a snapshot of dagsnap before 0.3, which
    /// published submodules as empty directories). The rebuild is a repair ([`repair::Repair::run`]):
    /// readers are moved to the new copy atomically. Looked at once per process and commit, so
    /// idle polls cost nothing more.
    pub(super) fn settle_live(
        &mut self,
        current: &Current,
        seen: &Seen,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<(), PublishError> {
        // A snapshot of several sources is named by their commits and selections together:
        // the name it shows says it holds what this publisher publishes.
        if self.settled.as_ref() == Some(&current.commit) || self.several() {
            return Ok(());
        }
        let version = self.version(&seen.commit, &seen.parts)?;
        let why = match self.root.manifest(&current.commit)? {
            Some(manifest) => version
                .expected
                .matches(&manifest, || {
                    self.root.entries(&current.commit).ok().flatten()
                })
                .err(),
            // No manifest: for the periodic check of the live snapshot to deal with.
            None => None,
        };
        if let Some(why) = why {
            tracing::info!(commit = %current.commit, %why, "the live snapshot was published with other settings; rebuilding it with this publisher's and swapping the link to the new copy");
            let expanded = self.entries_of(&version, progress, interrupt)?;
            let manifest = self.manifest_of(&version, &expanded);
            let job = self.repair_of(&current.commit, &manifest, progress, interrupt);
            let reason = format!("published with other settings: {why}");
            self.rebuild(&job, expanded.entries, &expanded.blobs, reason)?;
        }
        self.settled = Some(current.commit.clone());
        Ok(())
    }

    /// A repair of the snapshot of `commit` with this publisher's settings.
    fn repair_of<'a>(
        &'a self,
        commit: &'a CommitId,
        manifest: &'a Manifest,
        progress: &'a gix::progress::tree::Root,
        interrupt: &'a AtomicBool,
    ) -> repair::Repair<'a> {
        repair::Repair {
            root: &self.root,
            commit,
            manifest,
            lock_timeout: self.settings.lock_timeout,
            jobs: self.settings.build_jobs,
            progress,
            interrupt,
        }
    }

    /// Rebuild a snapshot and move readers to the new copy ([`repair::Repair::run`]), journaled
    /// as this publisher's repair for `reason`.
    fn rebuild(
        &self,
        job: &repair::Repair<'_>,
        entries: crate::entries::Entries,
        blobs: &dyn crate::entries::Blobs,
        reason: String,
    ) -> Result<(), PublishError> {
        let who = Author {
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
            repo: self.source.repo.clone(),
            ref_name: self.source.ref_name.clone(),
        };
        let repaired = job.run(entries, blobs, &who, reason);
        crate::git::pages::give_back();
        repaired?;
        Ok(())
    }
}
