//! The steps of [`Publisher::cycle`] that decide whether the cycle goes on, one method each
//! (numbered as in that method's doc), and what they share: the heartbeat watch, reconciling
//! the link, the journal, git-sync's leftovers and garbage collection.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use super::build::Version;
use super::sources::Part;
use super::{Outcome, PublishError, Publisher};
use crate::commit::CommitId;
use crate::git::Observation;
use crate::store::snapshot::Stats;
use crate::store::{
    gc, Author, Cause, Current, Decision, GitSyncLive, Publication, RootLock, SourceRecord,
    StoreError, Verdict,
};

/// What the remote said (step 3), for the steps after it. For several sources, `commit`
/// names the set and `observation` spans every source's (asked at the earliest question,
/// answered by the last answer).
pub(super) struct Seen {
    pub commit: CommitId,
    pub observation: Observation,
    /// Each source's commit (one for `--repo`).
    pub parts: Vec<Part>,
}

/// A step either ends the cycle with its outcome, or hands the next steps what it found.
pub(super) enum Step<T> {
    Done(Box<Outcome>),
    Next(T),
}

impl Publisher {
    /// Step 3: ask the remote for the target commit (fetching it if it is new), or every
    /// source's remote for theirs, and look at the peers' heartbeats.
    pub(super) fn observe(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Seen, PublishError> {
        let fetching = Instant::now();
        let seen = if self.several() {
            self.observe_sources(progress, interrupt)
        } else {
            self.observe_repo(progress, interrupt)
        };
        self.timings.fetch = Some(fetching.elapsed());
        let seen = seen?;
        self.observe_locks();
        Ok(seen)
    }

    /// `--repo`'s commit.
    fn observe_repo(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Seen, PublishError> {
        let (observation, fetched) = self.sources[0].ask(&self.redactor, progress, interrupt)?;
        self.timings.fetched = fetched;
        Ok(Seen {
            commit: CommitId::from(observation.commit),
            parts: vec![Part::observed(0, &observation)],
            observation,
        })
    }

    /// Step 5: the link shows the commit's complete snapshot: make sure it holds what this
    /// publisher publishes, and tidy up after git-sync.
    pub(super) fn unchanged(
        &mut self,
        seen: &Seen,
        current: Option<&Current>,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Option<Outcome>, PublishError> {
        let Some(current) = current else {
            return Ok(None);
        };
        if current.commit == seen.commit && current.complete {
            self.refuse_if_locks_unreliable()?;
            self.settle_live(current, seen, progress, interrupt)?;
            self.retire_git_sync();
            return Ok(Some(Outcome::Unchanged {
                commit: seen.commit.clone(),
            }));
        }
        if !current.complete {
            tracing::warn!(commit = %current.commit, "the published snapshot is missing (deleted by hand?); republishing");
        }
        Ok(None)
    }

    /// Step 6: whether the commit changes nothing published (only paths outside `--subdir`),
    /// as found at an earlier poll (which an idle poll of a monorepo whose other folders move
    /// then costs nothing more) or now; else what a snapshot of it must hold.
    pub(super) fn same(
        &mut self,
        seen: &Seen,
        current: Option<&Current>,
    ) -> Result<Step<Version>, PublishError> {
        if let (Some((same, live)), Some(current)) = (&self.same, current) {
            if *same == seen.commit && *live == current.commit && current.complete {
                let live = live.clone();
                self.refuse_if_locks_unreliable()?;
                return Ok(Step::Done(Box::new(Outcome::Same {
                    commit: seen.commit.clone(),
                    live,
                })));
            }
        }
        // The store may have been deleted or damaged under a running loop: put it back.
        self.root.ensure_layout()?;
        let version = self.version(&seen.commit, &seen.parts)?;
        // Readers need not parse the same files again.
        if self.selects_part() && self.root.live_holds(&version.expected) {
            if let Some(live) = current.map(|c| c.commit.clone()) {
                self.refuse_if_locks_unreliable()?;
                self.journal_same(&seen.commit, &live, &seen.observation.ref_name)?;
                return Ok(Step::Done(Box::new(Outcome::Same {
                    commit: seen.commit.clone(),
                    live,
                })));
            }
        }
        Ok(Step::Next(version))
    }

    /// Step 8: unless the commit's trusted snapshot is installed, build and install it (one
    /// that is not trusted is moved aside first). What was built, if anything.
    pub(super) fn build_if_needed(
        &mut self,
        seen: &Seen,
        candidate: Version,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Option<Stats>, PublishError> {
        let commit = &seen.commit;
        if self.root.has_snapshot(commit) {
            if let Err(why) = self.root.check_snapshot(commit, Some(&candidate.expected)) {
                let lock = self.root.lock(self.settings.lock_timeout)?;
                self.root.set_aside(&lock, commit, &why)?;
                drop(lock);
                self.root.empty_trash(self.settings.retention.pending)?;
            }
        }
        let building = Instant::now();
        let built = if self.root.has_snapshot(commit) {
            None
        } else {
            Some(self.build(candidate, progress, interrupt)?)
        };
        self.timings.build = Some(building.elapsed());
        Ok(built)
    }

    /// Step 10: while an operator pins the link, keep following the remote (the snapshot is
    /// ready for when the pin is released) but leave the link alone. Checked again under the
    /// lock in step 13; this early look spares idle polls the lock.
    pub(super) fn pinned(&self, seen: &Seen, built: bool) -> Result<Option<Outcome>, PublishError> {
        match self.root.pinned()?.filter(|p| p.commit != seen.commit) {
            Some(pin) => {
                if built {
                    self.collect_garbage(self.root.lock(self.settings.lock_timeout)?);
                }
                Ok(Some(Outcome::Held {
                    commit: seen.commit.clone(),
                    pin,
                }))
            }
            None => Ok(None),
        }
    }

    /// Step 11: a root being taken over from git-sync: the link moves only once git-sync has
    /// left the root alone for `--adopt-after` (see `store::gitsync`).
    pub(super) fn deferred(&self, seen: &Seen, git_sync: Option<&GitSyncLive>) -> Option<Outcome> {
        let (git_sync, after) = (git_sync?, self.root.adopt_after()?);
        let quiet_for = git_sync.quiet_for();
        (quiet_for < after).then(|| Outcome::Deferred {
            commit: seen.commit.clone(),
            git_sync: git_sync.commit.clone(),
            quiet_for,
            resume_in: after - quiet_for,
        })
    }

    /// Step 12: at most one link move per `--min-publish-interval` (Airflow 2 reads through the
    /// link for each file: fewer swaps, fewer passes that straddle one). The newest commit goes
    /// live when the interval ends: the loop comes back then.
    pub(super) fn throttled(&self, seen: &Seen) -> Option<Outcome> {
        let interval = self.settings.min_publish_interval?;
        let since = self.root.since_link_moved().unwrap_or(Duration::MAX);
        (since < interval).then(|| Outcome::Throttled {
            commit: seen.commit.clone(),
            wait: interval - since,
        })
    }

    /// Step 13: under the root's lock, move the link unless that would move it backward (or a
    /// pin appeared, or the root follows another configuration now), then check the snapshot
    /// is still there and reconcile once more. The outcome, and the lock for step 14.
    pub(super) fn publish(
        &mut self,
        seen: Seen,
        built: Option<Stats>,
        git_sync: Option<&GitSyncLive>,
        started: Instant,
    ) -> Result<(Outcome, RootLock), PublishError> {
        let publishing = Instant::now();
        let lock = self.root.lock(self.settings.lock_timeout)?;
        self.timings.lock_wait = Some(publishing.elapsed());
        if let Some(follows) = self.claimed_by_another()? {
            return Ok((Outcome::StandingBack { follows }, lock));
        }
        // The root still follows the configuration this one replaces: take it over before the
        // link moves (its publishers stand back from then on), and give it back if the link
        // does not move after all.
        let replaced = self
            .root
            .records()
            .source()?
            .filter(|theirs| !theirs.same_as(&self.source));
        if let Some(theirs) = &replaced {
            self.root.records().take_over(&lock, &self.source)?;
            tracing::warn!(from = %theirs, to = %self.source, "this root follows this configuration from now on; publishers of the previous one stand back until they are stopped");
        }
        let Seen {
            commit,
            observation,
            ..
        } = seen;
        let publication = Publication {
            commit: commit.clone(),
            cause: Cause::Sync,
            observed_at: observation.observed_at,
            answered_at: Some(observation.answered_at),
            published_at: SystemTime::now(),
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
            repo: self.source.repo.clone(),
            ref_name: observation.ref_name,
            moved_link: true,
            reason: None,
        };
        let decided = self.root.publish_if_newer(&lock, &publication);
        if let (Some(theirs), false) =
            (&replaced, matches!(decided, Ok(Decision::Published { .. })))
        {
            self.root.records().put_back_source(&lock, theirs)?;
        }
        let outcome = match decided? {
            Decision::AlreadyCurrent => Outcome::Unchanged { commit },
            Decision::Superseded { newer } => Outcome::Superseded {
                commit,
                current: newer.commit,
            },
            Decision::Pinned { pin } => Outcome::Held { commit, pin },
            Decision::Published { previous } => {
                self.after_swap(&commit, &lock)?;
                if let Some(git_sync) = git_sync {
                    tracing::info!(git_sync_commit = %git_sync.commit, %commit, grace = %humantime::format_duration(self.settings.retention.grace), "took the link over from git-sync; its files are removed once the link has been dagsnap's for --grace with no write from git-sync");
                }
                Outcome::Published {
                    commit,
                    previous,
                    built,
                    elapsed: started.elapsed(),
                }
            }
        };
        self.timings.publish = Some(publishing.elapsed());
        Ok((outcome, lock))
    }

    /// The recorded rejection of `commit` by the configured check, if any.
    pub(super) fn known_rejection(&self, commit: &CommitId) -> Option<Verdict> {
        let check = self.gate.check.as_ref()?;
        let fingerprint = crate::store::records::verdicts::fingerprint(&check.command);
        self.root
            .records()
            .verdict(commit, &fingerprint)
            .filter(|v| !v.accepted)
    }

    /// Look at the peers' heartbeats once ([`crate::store::LockWitness`]); say so at ERROR when
    /// a peer's locks turn out invisible from here, and when that clears.
    pub(super) fn observe_locks(&mut self) {
        let me = format!("{} {}", crate::fsutil::hostname(), std::process::id());
        let observed =
            self.root
                .records()
                .observe_peers(&mut self.witness, self.registration.name(), &me);
        match (&self.lock_fault, &observed.fault) {
            (None, Some(peer)) => {
                tracing::error!(%peer, "locks on this volume do not reach another publisher of this root: its heartbeat advances while its lock is invisible from here. Not moving the link until this clears; mount the volume with working locks, or run a single publisher per root")
            }
            (Some(_), None) => tracing::info!(
                "locks reach every running publisher of this root again; moving the link again"
            ),
            _ => {}
        }
        self.registration.set_lock_fault(
            observed
                .fault
                .as_ref()
                .map(|peer| format!("locks do not reach publisher {peer}")),
            observed.suspects,
        );
        self.lock_fault = observed.fault;
    }

    pub(super) fn refuse_if_locks_unreliable(&self) -> Result<(), PublishError> {
        match &self.lock_fault {
            Some(peer) => Err(PublishError::LocksUnreliable {
                peer: peer.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The root follows another configuration now: a publisher of it took the root over (on a
    /// volume whose locks do not work, this publisher's claim did not keep it out).
    /// Step 2: the configuration the root follows, when another took it over after this
    /// publisher started (see `store::records::claims`). This publisher then stands back: it
    /// fetches, builds, moves, reconciles and collects nothing.
    pub(super) fn claimed_by_another(&self) -> Result<Option<SourceRecord>, PublishError> {
        Ok(self.root.records().source()?.filter(|theirs| {
            !theirs.same_as(&self.source)
                && theirs.claimed_at.is_some_and(|at| at >= self.started_at)
        }))
    }

    /// Step 4: put the link back on what the pin or the newest publication names, if it shows
    /// something else (`pin_only`: only on the pin).
    pub(super) fn reconcile(&mut self, pin_only: bool) -> Result<(), PublishError> {
        let Some(current) = self.root.current()? else {
            return Ok(());
        };
        let Some((desired, because)) = self.root.desired(&current.commit)? else {
            return Ok(());
        };
        if pin_only && because != crate::store::BY_PIN {
            return Ok(());
        }
        if desired == current.commit || !self.root.has_snapshot(&desired) {
            return Ok(());
        }
        if self.claimed_by_another()?.is_some() {
            return Ok(());
        }
        let lock = self.root.lock(self.settings.lock_timeout)?;
        self.reconcile_under(&lock)
    }

    pub(super) fn reconcile_under(&self, lock: &RootLock) -> Result<(), PublishError> {
        let who = Author {
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
            repo: self.source.repo.clone(),
            ref_name: self.source.ref_name.clone(),
        };
        if let Some((from, to, because)) = self.root.reconcile_link(lock, &who)? {
            tracing::warn!(%from, %to, because, "the link showed a commit that is neither pinned nor the newest publication (a publisher swapped late, or something else moved it); put it back");
        }
        Ok(())
    }

    /// Right after this publisher swapped the link to `commit`: the snapshot must still be
    /// there (on a volume without working locks, GC elsewhere may have retired it between our
    /// decision and our swap; it is in the trash, whole, and comes back), and what the link
    /// shows is reconciled once more (a newer publication or a pin may have appeared).
    pub(super) fn after_swap(
        &self,
        commit: &CommitId,
        lock: &RootLock,
    ) -> Result<(), PublishError> {
        if !self.root.has_snapshot(commit) {
            if self
                .root
                .restore_from_trash(commit, self.settings.retention.pending)
            {
                tracing::warn!(%commit, "the snapshot was retired by GC while this publisher linked it (locks on this volume may not work); brought it back");
            } else {
                return Err(StoreError::SnapshotGone {
                    commit: commit.clone(),
                }
                .into());
            }
        }
        self.reconcile_under(lock)
    }

    /// Remove git-sync's files from a root taken over from it, once nobody can need them
    /// ([`Root::remove_git_sync_leftovers`]). Looked at on idle polls too, without a write or a
    /// lock until something is due.
    pub(super) fn retire_git_sync(&self) {
        if self.root.adopt_after().is_none() || !crate::store::gitsync::present(self.root.path()) {
            return;
        }
        let removed = self
            .root
            .lock(self.settings.lock_timeout)
            .map_err(|e| e.to_string())
            .and_then(|lock| {
                self.root
                    .remove_git_sync_leftovers(&lock, self.settings.retention.grace)
                    .map_err(|e| e.to_string())
            });
        match removed {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => {
                let removed: Vec<String> =
                    removed.iter().map(|p| p.display().to_string()).collect();
                tracing::info!(removed = %removed.join(", "), "removed git-sync's files: the root is dagsnap's alone now");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove git-sync's files yet; trying again at the next poll")
            }
        }
    }

    /// Retire old snapshots while holding `lock`, then delete them after releasing it. A failed
    /// collection is logged, not returned: it does not undo what the cycle did.
    pub(super) fn collect_garbage(&self, lock: RootLock) {
        let collected = gc::collect(
            &self.root,
            &lock,
            &self.settings.retention,
            SystemTime::now(),
        );
        drop(lock);
        if let Err(e) =
            collected.and_then(|_| self.root.empty_trash(self.settings.retention.pending))
        {
            tracing::warn!(error = %e, "could not remove old snapshots; the next publish retries");
        }
    }

    /// A journal entry about `commit` that moves no link (a rejection, an unchanged subtree),
    /// written under the root's lock like every record.
    pub(super) fn journal(
        &self,
        commit: &CommitId,
        cause: Cause,
        ref_name: &str,
        reason: String,
    ) -> Result<(), PublishError> {
        let lock = self.root.lock(self.settings.lock_timeout)?;
        let now = SystemTime::now();
        self.root.records().record_publication(
            &lock,
            &Publication {
                commit: commit.clone(),
                cause,
                observed_at: now,
                answered_at: None,
                published_at: now,
                host: crate::fsutil::hostname(),
                pid: std::process::id(),
                repo: self.source.repo.clone(),
                ref_name: ref_name.to_string(),
                moved_link: false,
                reason: Some(reason),
            },
        )?;
        Ok(())
    }

    /// Remember, and journal once per commit, that `commit` changes nothing published and
    /// `live` stays.
    pub(super) fn journal_same(
        &mut self,
        commit: &CommitId,
        live: &CommitId,
        ref_name: &str,
    ) -> Result<(), PublishError> {
        self.same = Some((commit.clone(), live.clone()));
        // Said already by a peer, or by this publisher before a restart.
        let journaled = self.root.records().journal().unwrap_or_default();
        if journaled
            .iter()
            .rev()
            .take(20)
            .any(|e| e.cause == Cause::Unchanged && e.commit == commit)
        {
            return Ok(());
        }
        let (said, what) = if self.several() {
            (
                "the sources' new commits change nothing in what is published".to_string(),
                "what is published".to_string(),
            )
        } else {
            let subdir = self.sources[0]
                .source
                .content
                .subdir
                .as_deref()
                .map(crate::text::escape_bytes)
                .unwrap_or_default();
            (
                format!("the new commit changes nothing in --subdir {subdir}"),
                format!("{subdir}/"),
            )
        };
        tracing::info!(%commit, %live, "{said}; the link stays");
        self.journal(
            commit,
            Cause::Unchanged,
            ref_name,
            format!("{what} is the same as in {live}, which stays live"),
        )?;
        Ok(())
    }
}
