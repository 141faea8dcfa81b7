//! One sync cycle: observe the remote, build the snapshot if needed, move the link.
//!
//! [`Publisher`] ties a [`Cache`] (private git state) to a [`Root`] (what readers see). It is
//! driven by the daemon loop, one [`Publisher::cycle`] at a time, on a blocking thread.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::fsutil::lock::LockError;
use crate::git::select::{self, Sparse};
use crate::git::submodules::{Expanded, Expander, Mode as SubmoduleMode};
use crate::git::{Cache, CommitInfo, Remote, SourceError};
use crate::store::gc;
use crate::store::records::{PublisherRecord, Registration};
use crate::store::repair::{self, RepairError};
use crate::store::snapshot::{self, Previous, Reuse, SnapshotError, Stats};
use crate::store::{
    Cause, Claim, Created, Current, Decision, Expected, Installed, LockFault, LockWitness,
    Manifest, ModuleRecord, Pin, Publication, Root, RootLock, SourceRecord, StoreError, Verdict,
};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Tree(#[from] crate::git::tree::TreeError),
    #[error(transparent)]
    Submodule(Box<crate::git::submodules::SubmoduleError>),
    #[error(transparent)]
    Select(#[from] crate::git::select::SelectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Repair(#[from] RepairError),
    /// A panic inside a cycle (a bug, in dagsnap or a library, most likely on damaged input).
    #[error("internal error: {0}")]
    Internal(String),
    /// A peer's heartbeat advances under a lock invisible from here.
    #[error("locks on this volume do not reach another publisher of this root ({peer}): its heartbeat advances while its lock is invisible from here, so one of us could move the link backward or delete what the other links. Not moving the link until this clears. Mount the volume with working locks (NFSv4, or NFSv3 with lockd; not `nolock` or `local_lock`), or run a single publisher per root")]
    LocksUnreliable { peer: String },
    #[error("cache directory {} is inside the root {}; readers would see git state. Put --cache-dir on local disk outside the root", cache.display(), root.display())]
    CacheInsideRoot {
        cache: std::path::PathBuf,
        root: std::path::PathBuf,
    },
}

impl From<crate::git::submodules::SubmoduleError> for PublishError {
    fn from(e: crate::git::submodules::SubmoduleError) -> Self {
        PublishError::Submodule(Box::new(e))
    }
}

impl PublishError {
    /// True for an error caused by an interrupt (signal or sync timeout) rather than a fault.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            PublishError::Source(SourceError::Cancelled)
                | PublishError::Snapshot(SnapshotError::Cancelled)
                | PublishError::Repair(RepairError::Snapshot(SnapshotError::Cancelled))
        )
    }

    /// True when another process holds this publisher's cache (the same configuration started
    /// twice on one host).
    pub fn is_cache_busy(&self) -> bool {
        matches!(self, PublishError::Source(SourceError::CacheInUse { .. }))
    }

    /// True when another publisher of the same root got in the way (its lock was held past
    /// `--lock-timeout`, or it deleted what we were about to link): not a fault, the next
    /// cycle simply tries again.
    pub fn is_contention(&self) -> bool {
        matches!(
            self,
            PublishError::Store(StoreError::Lock(LockError::Busy { .. }))
                | PublishError::Store(StoreError::SnapshotGone { .. })
        )
    }

    /// True when the private cache may be at fault, so that starting it over may help: the
    /// error is neither the remote's (it could not be reached, refused us, lacks the ref), nor
    /// the operator's (a wrong setting), nor the root's (a full volume), nor the repository's
    /// (a path git refuses). A pack that failed while being received is counted here too: a
    /// cache whose objects are damaged makes the received thin pack unresolvable. A ref that
    /// points at something other than a commit is counted as well, because damaged objects
    /// read as the wrong kind; if a fresh cache says the same, it is the ref.
    pub fn blames_cache(&self) -> bool {
        match self {
            PublishError::Snapshot(e) => e.blames_source(),
            PublishError::Tree(e) => e.blames_cache(),
            PublishError::Select(e) => e.blames_cache(),
            PublishError::Source(e) => e.blames_cache(),
            // A library that panics on what it read most likely read damaged objects.
            PublishError::Internal(_) => true,
            PublishError::Repair(RepairError::Snapshot(e)) => e.blames_source(),
            PublishError::Repair(RepairError::Store(_))
            // A submodule's cache is started over by the expander itself.
            | PublishError::Submodule(_)
            | PublishError::LocksUnreliable { .. }
            | PublishError::Store(_)
            | PublishError::CacheInsideRoot { .. } => false,
        }
    }
}

/// What a cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The link already shows the remote's commit; nothing was written.
    Unchanged { commit: String },
    /// The link now shows `commit`.
    Published {
        commit: String,
        previous: Option<String>,
        /// `None` when the snapshot already existed (built earlier or by another publisher).
        built: Option<Stats>,
        elapsed: Duration,
    },
    /// Another publisher had already published a newer observation; the link was left alone.
    Superseded { commit: String, current: String },
    /// The remote has `commit` but an operator pinned the link; it was left alone.
    Held { commit: String, pin: Pin },
    /// `commit` changes nothing this publisher publishes (only paths outside `--subdir`): the
    /// link stays on `live`, whose snapshot holds the same tree.
    Same { commit: String, live: String },
    /// `--check-command` rejected `commit` (now, or at an earlier poll: a commit is checked
    /// once); the link stays where it was.
    Rejected { commit: String, verdict: Verdict },
    /// The link moved less than `--min-publish-interval` ago: `commit`'s snapshot is ready and
    /// goes live after `wait`.
    Throttled { commit: String, wait: Duration },
    /// The link shows git-sync's worktree of `git_sync`, and git-sync wrote the root less than
    /// `--adopt-after` ago: `commit`'s snapshot is ready, the link is left to git-sync for now.
    Deferred {
        commit: String,
        git_sync: String,
        quiet_for: Duration,
    },
}

/// How a publisher behaves, beyond what to publish and where.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Longest wait for the root's lock before a cycle is skipped.
    pub lock_timeout: Duration,
    pub reuse: Reuse,
    pub retention: gc::Policy,
    /// How often the live snapshot is checked (and repaired if damaged); `None`: never.
    pub verify_period: Option<Duration>,
    /// The loop's `--period`, written into the heartbeat for peers.
    pub period: Duration,
    /// `--min-publish-interval`: no two link moves closer than this.
    pub min_publish_interval: Option<Duration>,
    /// `--build-jobs`: threads that write a snapshot.
    pub build_jobs: usize,
}

/// What of each commit is published: which part (`--subdir`, sparse patterns) and how its
/// submodules are.
#[derive(Debug, Clone)]
pub struct Content {
    pub submodules: SubmoduleMode,
    /// `--subdir`, normalized ([`crate::git::select::parse_subdir`]).
    pub subdir: Option<Vec<u8>>,
    pub sparse: Option<Sparse>,
}

impl Default for Content {
    fn default() -> Self {
        Content {
            submodules: SubmoduleMode::Recursive,
            subdir: None,
            sparse: None,
        }
    }
}

impl Content {
    /// The selection as manifests and the root's source record write it (`subdir=dags
    /// sparse=<fingerprint>`); empty for the whole tree.
    pub fn select_key(&self) -> String {
        let mut parts = Vec::new();
        if let Some(subdir) = &self.subdir {
            parts.push(format!("subdir={}", crate::text::escape_bytes(subdir)));
        }
        if let Some(sparse) = &self.sparse {
            parts.push(format!("sparse={}", sparse.fingerprint()));
        }
        parts.join(" ")
    }

    /// The selection and a submodules mode other than the default, as the root's source record
    /// writes it: publishers that would publish different trees must not share a root.
    pub fn source_key(&self) -> String {
        let mut key = self.select_key();
        if self.submodules != SubmoduleMode::Recursive {
            if !key.is_empty() {
                key.push(' ');
            }
            key.push_str(&format!("submodules={}", self.submodules.name()));
        }
        key
    }
}

/// What the publisher needs besides [`Settings`]: the operator's check, if any.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    pub check: Option<super::check::CheckCommand>,
}

/// Publishes one repository into one root.
#[derive(Debug)]
pub struct Publisher {
    root: Root,
    remote: Remote,
    cache: Cache,
    settings: Settings,
    claim: Claim,
    /// What this start created under the root, taken back if it never publishes anything.
    created: Created,
    /// When the live snapshot was last found intact (or repaired).
    last_verified: Option<Instant>,
    /// Where the last cycle spent its time.
    timings: Timings,
    /// The full ref the last cycle's observation matched (`refs/heads/main`).
    followed_ref: Option<String>,
    /// This process's record under the root, for `dagsnap status`, and its heartbeat.
    registration: Registration,
    /// The root's source as this publisher follows it.
    source: SourceRecord,
    /// What this publisher saw of its peers' heartbeats and locks.
    witness: LockWitness,
    /// A peer whose locks do not reach this publisher, while that lasts.
    lock_fault: Option<LockFault>,
    gate: Gate,
    /// What the last cycle's check did (`accepted`, `rejected`, `timeout`, `abandoned`).
    last_check: Option<&'static str>,
    content: Content,
    /// Fills in submodules; keeps their caches.
    expander: Expander,
    /// The last remote commit found to change nothing published, and the live commit that
    /// holds the same: later polls that see both again need not look again, and it is
    /// journaled once.
    same: Option<(String, String)>,
    /// The live commit whose snapshot was found to hold what this publisher publishes.
    settled: Option<String>,
}

/// Where a cycle spent its time, for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Asking the remote, and receiving a pack if there was one.
    pub fetch: Option<Duration>,
    /// Writing the snapshot (checking one that exists).
    pub build: Option<Duration>,
    /// Waiting for the lock, deciding and swapping the link, collecting garbage.
    pub publish: Option<Duration>,
    pub lock_wait: Option<Duration>,
    /// A pack was received.
    pub fetched: bool,
}

impl Publisher {
    /// Adopt the root, register as one of its publishers, and open the private cache. Every
    /// problem found here is one the operator has to fix (wrong path, foreign files, another
    /// repository already published here, cache shared by mistake), so it is returned for a
    /// clear exit rather than retried.
    pub fn open(
        root: Root,
        remote: Remote,
        cache_dir: &Path,
        settings: Settings,
        content: Content,
    ) -> Result<Publisher, PublishError> {
        refuse_cache_inside_root(cache_dir, root.path())?;
        let created = root.adopt()?;
        let opened = (|| {
            let source = SourceRecord {
                repo: remote.display_url(),
                ref_name: remote.target.to_string(),
                select: content.source_key(),
            };
            let claim = root.records().claim(&source, settings.lock_timeout)?;
            root.record_link()?;
            let cache = Cache::open(cache_dir, &remote, root.path())?;
            let now = SystemTime::now();
            let registration = root.records().register(PublisherRecord {
                host: crate::fsutil::hostname(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                repo: source.repo.clone(),
                ref_name: source.ref_name.clone(),
                started_at: now,
                last_cycle_at: now,
                last_success_at: None,
                consecutive_failures: 0,
                last_error: None,
                beat: 0,
                stopped_at: None,
                period_ms: u64::try_from(settings.period.as_millis()).ok(),
                lock_fault: None,
                suspects: Vec::new(),
            })?;
            Ok::<_, PublishError>((claim, cache, registration, source))
        })();
        match opened {
            Ok((claim, cache, registration, source)) => Ok(Publisher {
                expander: Expander::new(content.submodules, cache_dir, root.path()),
                root,
                remote,
                cache,
                settings,
                claim,
                created,
                last_verified: None,
                timings: Timings::default(),
                followed_ref: None,
                registration,
                source,
                witness: LockWitness::default(),
                lock_fault: None,
                gate: Gate::default(),
                last_check: None,
                content,
                same: None,
                settled: None,
            }),
            Err(e) => {
                root.undo_first_start(&created);
                Err(e)
            }
        }
    }

    /// The publisher failed for good without ever publishing: take back what its start
    /// created (the root, its store, the private cache), unless another publisher uses the
    /// root meanwhile or something was published. A first try with a wrong URL or token leaves
    /// nothing behind.
    pub fn abandon_first_start(self) {
        let Publisher {
            root,
            cache,
            claim,
            created,
            ..
        } = self;
        // Our own claim must not count as a running publisher.
        drop(claim);
        if root.current().ok().flatten().is_some()
            || root.records().publishers_running().unwrap_or(true)
        {
            return;
        }
        let mut removed = root.undo_first_start(&created);
        if let Some(dir) = cache.remove_if_created() {
            removed.push(dir);
        }
        if !removed.is_empty() {
            let removed: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
            tracing::info!(removed = %removed.join(", "), "nothing was published; removed what this first start created");
        }
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Where the last cycle spent its time.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// The full ref the last cycle followed (`refs/heads/main` for `--ref main` or HEAD).
    pub fn followed_ref(&self) -> Option<String> {
        self.followed_ref.clone()
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// A peer whose locks do not reach this publisher, while that lasts.
    pub fn lock_fault(&self) -> Option<&LockFault> {
        self.lock_fault.as_ref()
    }

    /// Check every new commit with the operator's check before the link moves to it.
    pub fn with_gate(mut self, gate: Gate) -> Publisher {
        self.gate = gate;
        self
    }

    /// What the last cycle's check did, if it ran one (taken: reported once).
    pub fn take_check_result(&mut self) -> Option<&'static str> {
        self.last_check.take()
    }

    /// Run one cycle. A failure at any step leaves the link where it was.
    ///
    /// 0. If the cache directory is gone (or its lock file replaced), start it over. A failure
    ///    that may be the cache's fault ([`PublishError::blames_cache`]) starts it over too and
    ///    runs the cycle once more, so damage to the cache never outlives a cycle and is never
    ///    reported as the operator's mistake.
    /// 1. Ask the remote for the target commit, fetching it into the cache if it is new. Look
    ///    at the peers' heartbeats: while a peer's locks are invisible from here, build, but
    ///    move nothing and fail the cycle, saying why ([`Publisher::observe_locks`]).
    /// 2. Reconcile: if the link shows something other than the pin or the newest publication
    ///    names, put it back ([`Root::reconcile_link`]). If it then shows the target commit's
    ///    complete snapshot: done, nothing written.
    /// 3. Unless the snapshot exists already, build it in a staging directory and install it.
    ///    An interrupt here abandons the staging directory (deleted on the way out). A commit
    ///    the check rejected earlier (a verdict in the root) is not built: the cycle ends with
    ///    [`Outcome::Rejected`]. With `--check-command`, check the installed snapshot before
    ///    anything can link it ([`Publisher::check`]): once per commit and check command for
    ///    the whole root (a peer checking it is waited for), the verdict recorded in the root;
    ///    a rejection journals the commit and ends the cycle. An interrupted check is
    ///    abandoned, not recorded.
    /// 4. Under the root's lock, move the link unless another publisher already published a
    ///    newer observation of the remote (never backward), or the root now follows another
    ///    configuration; then check that the snapshot is still there (GC elsewhere may have
    ///    retired it on a volume without working locks: it is brought back) and reconcile again;
    ///    then retire old snapshots ([`gc::collect`]); they are deleted after the lock is
    ///    released.
    /// 5. Every `--verify-period`, check the live snapshot and repair it if it was changed on
    ///    disk ([`Publisher::check_live`]).
    pub fn cycle(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Outcome, PublishError> {
        let started = Instant::now();
        self.timings = Timings::default();
        if !self.cache.is_intact() {
            tracing::warn!(cache = %self.cache.dir().display(), "the cache directory was deleted or replaced (a cleaner of temporary files?); re-creating it");
            self.cache.recreate()?;
        }
        let outcome = match self.guarded_cycle(progress, interrupt, started) {
            Err(e) if e.blames_cache() && !interrupt.load(Ordering::Relaxed) => {
                // What reading a damaged cache says (an object "is a tag, not a commit") would
                // mislead: say what is done, and keep the details for the debug log. If a fresh
                // cache fails the same way, that error is reported as it is.
                let error = self.remote.redactor().redact(&crate::git::error_chain(&e));
                tracing::warn!(cache = %self.cache.dir().display(), "the cache could not be read or extended as expected (its objects may be damaged); re-creating it and trying again");
                tracing::debug!(%error, "what the damaged cache said");
                self.cache.recreate()?;
                self.guarded_cycle(progress, interrupt, started)
            }
            other => other,
        };
        match &outcome {
            Ok(_) => self.registration.update(true, None),
            Err(e) if e.is_cancelled() || e.is_contention() => {}
            Err(e) => {
                let error = self.remote.redactor().redact(&crate::git::error_chain(e));
                self.registration.update(false, Some(error));
            }
        }
        let outcome = outcome?;
        if let Outcome::Published { built: Some(_), .. } = &outcome {
            // Just written and sealed by this cycle: nothing to check it against yet.
            self.last_verified = Some(Instant::now());
        }
        self.check_live(progress, interrupt);
        Ok(outcome)
    }

    /// Step 5: when `--verify-period` has passed since the last check, check the live snapshot
    /// cheaply against its entry list ([`snapshot::quick_check`]: types, modes and sizes, no
    /// content read), and repair it if it is damaged ([`repair::repair`]: rebuilt from the
    /// cache, fetching the commit if the cache let it go, and the link swapped to the rebuilt
    /// copy). A repair that was interrupted is finished at once. A failed repair is logged and
    /// tried again at the next cycle; it does not fail the sync.
    fn check_live(&mut self, progress: &gix::progress::tree::Root, interrupt: &AtomicBool) {
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
                let error = self.remote.redactor().redact(&crate::git::error_chain(&e));
                tracing::error!(commit = %current.commit, %error, "could not repair the live snapshot; trying again at the next cycle");
            }
        }
    }

    fn repair_if_damaged(
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
        let id = gix::ObjectId::from_hex(current.commit.as_bytes()).map_err(|e| {
            SourceError::Object {
                commit: gix::ObjectId::null(gix::hash::Kind::Sha1),
                cause: e.to_string(),
            }
        })?;
        self.cache
            .fetch_commit(&self.remote, id, progress, interrupt)?;
        let info = self.cache.commit_info(id)?;
        let expected = self.expected(&info)?;
        let manifest = match self.root.manifest(&current.commit)? {
            Some(manifest) => manifest,
            None => manifest_for(info.clone(), Stats::default()),
        };
        let expanded = self.entries_of(&info, &expected, progress, interrupt)?;
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
            repair::finish(
                &self.root,
                &current.commit,
                &entries,
                &blobs,
                &manifest,
                self.settings.lock_timeout,
                self.settings.build_jobs,
                progress,
                interrupt,
            )?;
        } else {
            self.rebuild(
                &current.commit,
                entries,
                &blobs,
                &manifest,
                problem,
                progress,
                interrupt,
            )?;
        }
        tracing::info!(commit = %current.commit, "repaired the live snapshot; readers are served the rebuilt copy");
        Ok(())
    }

    /// [`Publisher::cycle_inner`], with a panic turned into an error: the loop must outlive a
    /// bug that damaged input triggers, and whatever the panic left half-done is either in the
    /// private cache (started over) or a staging directory (removed by its guard).
    fn guarded_cycle(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
        started: Instant,
    ) -> Result<Outcome, PublishError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.cycle_inner(progress, interrupt, started)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(PublishError::Internal(what))
        })
    }

    fn cycle_inner(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
        started: Instant,
    ) -> Result<Outcome, PublishError> {
        let fetching = Instant::now();
        let observation = self.cache.update(&self.remote, progress, interrupt)?;
        self.timings.fetch = Some(fetching.elapsed());
        self.timings.fetched = observation.fetched;
        self.followed_ref = Some(observation.ref_name.clone());
        let commit = observation.commit.to_string();
        self.observe_locks();
        // While locks do not work, only an operator's pin is restored: every publisher puts
        // the link on the same pinned commit, so they cannot fight over it.
        self.reconcile(self.lock_fault.is_some())?;
        let current = self.root.current()?;
        if let Some(current) = &current {
            if current.commit == commit && current.complete {
                self.refuse_if_locks_unreliable()?;
                self.settle_live(current, observation.commit, progress, interrupt)?;
                self.retire_git_sync();
                return Ok(Outcome::Unchanged { commit });
            }
            if !current.complete {
                tracing::warn!(commit = %current.commit, "the published snapshot is missing (deleted by hand?); republishing");
            }
        }

        // Found at an earlier poll to change nothing published, with the same snapshot live:
        // an idle poll of a monorepo whose other folders move costs what any idle poll costs.
        if let (Some((same, live)), Some(current)) = (&self.same, &current) {
            if *same == commit && *live == current.commit && current.complete {
                let live = live.clone();
                self.refuse_if_locks_unreliable()?;
                return Ok(Outcome::Same { commit, live });
            }
        }

        // The store may have been deleted or damaged under a running loop: put it back.
        self.root.ensure_layout()?;
        let info = self.cache.commit_info(observation.commit)?;
        let expected = self.expected(&info)?;

        // A commit that changes nothing published (only paths outside --subdir) leaves the
        // link where it is: readers need not parse the same files again.
        if self.content.subdir.is_some() && self.root.live_holds(&expected) {
            if let Some(live) = current.as_ref().map(|c| c.commit.clone()) {
                self.refuse_if_locks_unreliable()?;
                self.journal_same(&commit, &live, &observation.ref_name)?;
                return Ok(Outcome::Same { commit, live });
            }
        }

        // A commit the check rejected is neither built nor checked again.
        if let Some(verdict) = self.known_rejection(&commit) {
            self.refuse_if_locks_unreliable()?;
            return Ok(Outcome::Rejected { commit, verdict });
        }

        if self.root.has_snapshot(&commit) {
            if let Err(why) = self.root.check_snapshot(&commit, Some(&expected)) {
                let lock = self.root.lock(self.settings.lock_timeout)?;
                self.root.set_aside(&lock, &commit, &why)?;
                drop(lock);
                self.root.empty_trash(self.settings.retention.pending)?;
            }
        }
        let building = Instant::now();
        let built = if self.root.has_snapshot(&commit) {
            None
        } else {
            Some(self.build(info, &expected, progress, interrupt)?)
        };
        self.timings.build = Some(building.elapsed());

        self.refuse_if_locks_unreliable()?;

        // The operator's check, on the complete snapshot, before anything can link it.
        if let Some(verdict) =
            self.check(&commit, &observation.ref_name, current.as_ref(), interrupt)?
        {
            return Ok(Outcome::Rejected { commit, verdict });
        }

        // While an operator pins the link, keep following the remote (the snapshot above is
        // ready for when the pin is released) but leave the link alone. Checked again under
        // the lock below; this early look spares idle polls the lock.
        if let Some(pin) = self.root.pinned()?.filter(|p| p.commit != commit) {
            if built.is_some() {
                self.collect_garbage(self.root.lock(self.settings.lock_timeout)?);
            }
            return Ok(Outcome::Held { commit, pin });
        }

        // A root being taken over from git-sync: move the link only once git-sync has left
        // the root alone for --adopt-after (see `store::gitsync`).
        let git_sync = self.root.git_sync_live();
        if let (Some(git_sync), Some(after)) = (&git_sync, self.root.adopt_after()) {
            let quiet_for = git_sync.quiet_for();
            if quiet_for < after {
                return Ok(Outcome::Deferred {
                    commit,
                    git_sync: git_sync.commit.clone(),
                    quiet_for,
                });
            }
        }

        // At most one link move per --min-publish-interval (Airflow 2 reads through the link
        // for each file: fewer swaps, fewer passes that straddle one). The newest commit goes
        // live when the interval ends: the loop comes back then.
        if let Some(interval) = self.settings.min_publish_interval {
            let since = self.root.since_link_moved().unwrap_or(Duration::MAX);
            if since < interval {
                return Ok(Outcome::Throttled {
                    commit,
                    wait: interval - since,
                });
            }
        }

        let publishing = Instant::now();
        let lock = self.root.lock(self.settings.lock_timeout)?;
        self.timings.lock_wait = Some(publishing.elapsed());
        self.refuse_if_claimed_by_another()?;
        let publication = Publication {
            commit: commit.clone(),
            cause: Cause::Sync,
            observed_at: observation.observed_at,
            published_at: SystemTime::now(),
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
            repo: self.remote.display_url(),
            ref_name: observation.ref_name.clone(),
            moved_link: true,
            reason: None,
        };
        let outcome = match self.root.publish_if_newer(&lock, &publication)? {
            Decision::AlreadyCurrent => Outcome::Unchanged { commit },
            Decision::Superseded { newer } => Outcome::Superseded {
                commit,
                current: newer.commit,
            },
            Decision::Pinned { pin } => Outcome::Held { commit, pin },
            Decision::Published { previous } => Outcome::Published {
                commit,
                previous,
                built,
                elapsed: started.elapsed(),
            },
        };
        if let Outcome::Published { commit, .. } = &outcome {
            self.after_swap(commit, &lock)?;
        }
        self.timings.publish = Some(publishing.elapsed());
        if let (Some(git_sync), Outcome::Published { .. }) = (&git_sync, &outcome) {
            tracing::info!(git_sync_commit = %git_sync.commit, commit = %commit_of_outcome(&outcome), grace = %humantime::format_duration(self.settings.retention.grace), "took the link over from git-sync; its files are removed once the link has been dagsnap's for --grace with no write from git-sync");
        }
        // Retention changes when the store changes (the link moved, or a snapshot was built).
        if built.is_some() || matches!(outcome, Outcome::Published { .. }) {
            self.collect_garbage(lock);
        }
        Ok(outcome)
    }

    /// The recorded rejection of `commit` by the configured check, if any.
    fn known_rejection(&self, commit: &str) -> Option<Verdict> {
        let check = self.gate.check.as_ref()?;
        let fingerprint = crate::store::records::verdicts::fingerprint(&check.command);
        self.root
            .records()
            .verdict(commit, &fingerprint)
            .filter(|v| !v.accepted)
    }

    /// Step 3b: run the operator's check on the installed snapshot of `commit`, once per
    /// commit and check command for the whole root: a recorded verdict is used as is, and a
    /// publisher that finds another running the check waits for its verdict (at most the check's
    /// timeout) instead of running it again. Returns the rejection, if it was rejected. A check
    /// the cycle's interrupt stops is abandoned: no verdict, the cycle ends as cancelled.
    fn check(
        &mut self,
        commit: &str,
        ref_name: &str,
        current: Option<&Current>,
        interrupt: &AtomicBool,
    ) -> Result<Option<Verdict>, PublishError> {
        use super::check::{self, CheckEnv, Ended};
        let Some(command) = self.gate.check.clone() else {
            return Ok(None);
        };
        let fingerprint = crate::store::records::verdicts::fingerprint(&command.command);
        let waiting_since = Instant::now();
        let claim = loop {
            if let Some(verdict) = self.root.records().verdict(commit, &fingerprint) {
                return Ok((!verdict.accepted).then_some(verdict));
            }
            if let Some(claim) = self.root.records().claim_check(commit, &fingerprint)? {
                // Another publisher may have finished between our look and our claim.
                if let Some(verdict) = self.root.records().verdict(commit, &fingerprint) {
                    return Ok((!verdict.accepted).then_some(verdict));
                }
                break claim;
            }
            if interrupt.load(Ordering::Relaxed) {
                return Err(SnapshotError::Cancelled.into());
            }
            if waiting_since.elapsed() < Duration::from_millis(200) {
                tracing::info!(%commit, "another publisher of this root is checking this commit; waiting for its verdict instead of checking it again");
            }
            if waiting_since.elapsed() > command.timeout + Duration::from_secs(5) {
                return Err(StoreError::Lock(LockError::Busy {
                    path: self.root.snapshot_path(commit),
                    waited: waiting_since.elapsed(),
                    holder: Some("another publisher checking this commit".into()),
                })
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let env = CheckEnv {
            commit,
            previous: current.map(|c| c.commit.as_str()),
            ref_name,
        };
        tracing::info!(%commit, check = %crate::text::escape(&command.command), "checking the new snapshot before it goes live");
        let ran = check::run(&command, &self.root.snapshot_path(commit), &env, interrupt);
        let mut verdict = Verdict {
            commit: commit.to_string(),
            fingerprint,
            accepted: false,
            exit_code: None,
            signal: None,
            timed_out: false,
            not_started: None,
            duration_ms: ran.duration.as_millis() as u64,
            output: ran.output,
            output_dropped: ran.output_dropped,
            checked_at: SystemTime::now(),
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
        };
        let result = match ran.ended {
            Ended::Abandoned => {
                tracing::info!(%commit, "the check was stopped with the cycle; it runs again next time");
                self.last_check = Some("abandoned");
                return Err(SnapshotError::Cancelled.into());
            }
            Ended::Exited { code, signal } => {
                verdict.accepted = code == Some(0);
                verdict.exit_code = code;
                verdict.signal = signal;
                if verdict.accepted {
                    "accepted"
                } else {
                    "rejected"
                }
            }
            Ended::TimedOut => {
                verdict.timed_out = true;
                "timeout"
            }
            Ended::NotStarted(reason) => {
                verdict.not_started = Some(reason);
                "rejected"
            }
        };
        self.root.records().record_verdict(&verdict)?;
        drop(claim);
        self.last_check = Some(result);
        if verdict.accepted {
            tracing::info!(%commit, duration_ms = verdict.duration_ms, "the check accepted the new snapshot");
            return Ok(None);
        }
        self.journal(
            commit,
            Cause::Rejected,
            ref_name,
            format!("{}: {}", verdict.why(), verdict.headline()),
        )?;
        Ok(Some(verdict))
    }

    /// Look at the peers' heartbeats once ([`crate::store::LockWitness`]); say so at ERROR when
    /// a peer's locks turn out invisible from here, and when that clears.
    fn observe_locks(&mut self) {
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

    fn refuse_if_locks_unreliable(&self) -> Result<(), PublishError> {
        match &self.lock_fault {
            Some(peer) => Err(PublishError::LocksUnreliable {
                peer: peer.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The root follows another configuration now: a publisher of it took the root over (on a
    /// volume whose locks do not work, this publisher's claim did not keep it out).
    fn refuse_if_claimed_by_another(&self) -> Result<(), PublishError> {
        match self.root.records().source()? {
            Some(theirs) if !theirs.same_as(&self.source) => Err(StoreError::SourceMismatch {
                root: self.root.path().to_path_buf(),
                theirs: Box::new(theirs),
                ours: Box::new(self.source.clone()),
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// Step 2: put the link back on what the pin or the newest publication names, if it shows
    /// something else (`pin_only`: only on the pin).
    fn reconcile(&mut self, pin_only: bool) -> Result<(), PublishError> {
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
        self.refuse_if_claimed_by_another()?;
        let lock = self.root.lock(self.settings.lock_timeout)?;
        self.reconcile_under(&lock)
    }

    fn reconcile_under(&self, lock: &RootLock) -> Result<(), PublishError> {
        let who = Publication {
            commit: String::new(),
            cause: Cause::Reconcile,
            observed_at: SystemTime::now(),
            published_at: SystemTime::now(),
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
            repo: self.remote.display_url(),
            ref_name: self.source.ref_name.clone(),
            moved_link: true,
            reason: None,
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
    fn after_swap(&self, commit: &str, lock: &RootLock) -> Result<(), PublishError> {
        if !self.root.has_snapshot(commit) {
            if self
                .root
                .restore_from_trash(commit, self.settings.retention.pending)
            {
                tracing::warn!(%commit, "the snapshot was retired by GC while this publisher linked it (locks on this volume may not work); brought it back");
            } else {
                return Err(StoreError::SnapshotGone {
                    commit: commit.to_string(),
                }
                .into());
            }
        }
        self.reconcile_under(lock)
    }

    /// Remove git-sync's files from a root taken over from it, once nobody can need them
    /// ([`Root::remove_git_sync_leftovers`]). Looked at on idle polls too, without a write or a
    /// lock until something is due.
    fn retire_git_sync(&self) {
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
    fn collect_garbage(&self, lock: RootLock) {
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

    /// What a snapshot of the commit `info` describes must hold, as this publisher publishes
    /// it: the tree at `--subdir` (or the commit's), the selection, the submodules mode.
    fn expected(&self, info: &CommitInfo) -> Result<Expected, PublishError> {
        let tree = match &self.content.subdir {
            Some(subdir) => select::subtree(&self.cache.repo(), info.tree_id, subdir)?,
            None => info.tree_id,
        };
        Ok(Expected {
            tree: tree.to_string(),
            select: self.content.select_key(),
            submodules: self.content.submodules.name(),
        })
    }

    /// Make sure the live snapshot of the remote's commit holds what this publisher publishes,
    /// rebuilding it if it does not: a root whose commit stays while the settings change (a new
    /// `--subdir`, sparse patterns or `--submodules`; a snapshot of dagsnap before 0.3, which
    /// published submodules as empty directories). The rebuild is a repair ([`repair::repair`]):
    /// readers are moved to the new copy atomically. Looked at once per process and commit, so
    /// idle polls cost nothing more.
    fn settle_live(
        &mut self,
        current: &Current,
        id: gix::ObjectId,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<(), PublishError> {
        if self.settled.as_deref() == Some(current.commit.as_str()) {
            return Ok(());
        }
        let info = self.cache.commit_info(id)?;
        let expected = self.expected(&info)?;
        let why = match self.root.manifest(&current.commit)? {
            Some(manifest) => expected
                .matches(&manifest, || {
                    self.root.entries(&current.commit).ok().flatten()
                })
                .err(),
            // No manifest: for the periodic check of the live snapshot to deal with.
            None => None,
        };
        if let Some(why) = why {
            tracing::info!(commit = %current.commit, %why, "the live snapshot was published with other settings; rebuilding it with this publisher's and swapping the link to the new copy");
            let expanded = self.entries_of(&info, &expected, progress, interrupt)?;
            let manifest = content_manifest(info, &expected, &expanded, Stats::default());
            self.rebuild(
                &current.commit,
                expanded.entries,
                &expanded.blobs,
                &manifest,
                format!("published with other settings: {why}"),
                progress,
                interrupt,
            )?;
        }
        self.settled = Some(current.commit.clone());
        Ok(())
    }

    /// Rebuild the snapshot of `commit` and move readers to the new copy ([`repair::repair`]),
    /// journaled as this publisher's repair for `reason`.
    #[allow(clippy::too_many_arguments)]
    fn rebuild(
        &self,
        commit: &str,
        entries: crate::entries::Entries,
        blobs: &dyn crate::entries::Blobs,
        manifest: &Manifest,
        reason: String,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<(), PublishError> {
        let who = repair::Repairer {
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
            repo: self.remote.display_url(),
            ref_name: self.remote.target.to_string(),
            reason,
        };
        let repaired = repair::repair(
            &self.root,
            commit,
            entries,
            blobs,
            manifest,
            &who,
            self.settings.lock_timeout,
            self.settings.build_jobs,
            progress,
            interrupt,
        );
        crate::git::pages::give_back();
        repaired?;
        Ok(())
    }

    /// A journal entry about `commit` that moves no link (a rejection, an unchanged subtree),
    /// written under the root's lock like every record.
    fn journal(
        &self,
        commit: &str,
        cause: Cause,
        ref_name: &str,
        reason: String,
    ) -> Result<(), PublishError> {
        let lock = self.root.lock(self.settings.lock_timeout)?;
        let now = SystemTime::now();
        self.root.records().record_publication(
            &lock,
            &Publication {
                commit: commit.to_string(),
                cause,
                observed_at: now,
                published_at: now,
                host: crate::fsutil::hostname(),
                pid: std::process::id(),
                repo: self.remote.display_url(),
                ref_name: ref_name.to_string(),
                moved_link: false,
                reason: Some(reason),
            },
        )?;
        Ok(())
    }

    /// Remember, and journal once per commit, that `commit` changes nothing published and
    /// `live` stays.
    fn journal_same(
        &mut self,
        commit: &str,
        live: &str,
        ref_name: &str,
    ) -> Result<(), PublishError> {
        self.same = Some((commit.to_string(), live.to_string()));
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
        let subdir = self
            .content
            .subdir
            .as_deref()
            .map(crate::text::escape_bytes)
            .unwrap_or_default();
        tracing::info!(%commit, %live, "the new commit changes nothing in --subdir {subdir}; the link stays");
        self.journal(
            commit,
            Cause::Unchanged,
            ref_name,
            format!("{subdir}/ is the same as in {live}, which stays live"),
        )?;
        Ok(())
    }

    /// The entries of the commit `info` describes as this publisher publishes them (the part
    /// `--subdir` and the sparse patterns select, submodules filled in), and where their
    /// content comes from.
    fn entries_of(
        &mut self,
        info: &CommitInfo,
        expected: &Expected,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Expanded, PublishError> {
        let repo = self.cache.repo();
        let tree =
            gix::ObjectId::from_hex(expected.tree.as_bytes()).map_err(|e| SourceError::Object {
                commit: info.tree_id,
                cause: e.to_string(),
            })?;
        let entries = crate::git::tree::entries(&repo, tree)?;
        let prefix = self.content.subdir.clone().unwrap_or_default();
        let entries = match &self.content.sparse {
            Some(sparse) => sparse.filter(entries, &prefix)?,
            None => entries,
        };
        let gitmodules =
            crate::git::submodules::gitmodules_of_tree(&repo, info.tree_id).map_err(|cause| {
                crate::git::submodules::SubmoduleError::Gitmodules {
                    within: String::new(),
                    cause,
                }
            })?;
        let lookup_prefix = if prefix.is_empty() {
            prefix
        } else {
            [prefix.as_slice(), b"/"].concat()
        };
        Ok(self.expander.expand(
            &self.remote,
            repo,
            entries,
            gitmodules,
            &lookup_prefix,
            progress,
            interrupt,
        )?)
    }

    fn build(
        &mut self,
        info: CommitInfo,
        expected: &Expected,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Stats, PublishError> {
        // Unchanged files are shared with the snapshot readers see now, if it is intact.
        let current = self.root.current()?.filter(|c| c.complete);
        let previous_entries = match &current {
            Some(current) => self.root.entries(&current.commit).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot share files of the current snapshot; writing all files");
                None
            }),
            None => None,
        };
        let previous_dir = match &current {
            Some(current) => self.root.open_current(current).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot share files of the current snapshot; writing all files");
                None
            }),
            None => None,
        };
        let previous = previous_dir
            .as_ref()
            .zip(previous_entries.as_ref())
            .map(|(dir, entries)| Previous { dir, entries });

        let expanded = self.entries_of(&info, expected, progress, interrupt)?;
        let staging = self.root.begin_staging()?;
        // The manifest first: building consumes the entries.
        let mut manifest = content_manifest(info, expected, &expanded, Stats::default());
        let built = snapshot::build(
            expanded.entries,
            &expanded.blobs,
            staging.dir(),
            previous,
            self.settings.reuse,
            self.settings.build_jobs,
            progress,
            interrupt,
        );
        // What the build mapped and allocated would otherwise stay with an idle loop.
        crate::git::pages::give_back();
        let built = built?;
        if interrupt.load(Ordering::Relaxed) {
            return Err(SnapshotError::Cancelled.into());
        }
        manifest.files = built.stats.files;
        manifest.bytes = built.stats.bytes;
        if self.root.install(staging, &manifest, &built.entries)? == Installed::AlreadyThere {
            tracing::debug!(commit = %manifest.commit, "another publisher installed this commit first; discarded our copy");
        }
        Ok(built.stats)
    }
}

/// The manifest of a snapshot of `info`'s commit holding what `expected` and `expanded` say.
fn content_manifest(
    info: CommitInfo,
    expected: &Expected,
    expanded: &Expanded,
    stats: Stats,
) -> Manifest {
    let has_submodules = expanded
        .entries
        .0
        .iter()
        .any(|e| e.mode == crate::entries::MODE_SUBMODULE);
    Manifest {
        tree: expected.tree.clone(),
        select: expected.select.clone(),
        submodules: if has_submodules {
            expected.submodules.to_string()
        } else {
            String::new()
        },
        modules: module_records(&expanded.modules),
        ..manifest_for(info, stats)
    }
}

fn module_records(modules: &[crate::git::submodules::Module]) -> Vec<ModuleRecord> {
    modules
        .iter()
        .map(|m| ModuleRecord {
            path: String::from_utf8_lossy(&m.path).into_owned(),
            commit: m.commit.to_string(),
            url: m.url.clone(),
        })
        .collect()
}

fn commit_of_outcome(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Unchanged { commit }
        | Outcome::Published { commit, .. }
        | Outcome::Superseded { commit, .. }
        | Outcome::Held { commit, .. }
        | Outcome::Throttled { commit, .. }
        | Outcome::Rejected { commit, .. }
        | Outcome::Same { commit, .. }
        | Outcome::Deferred { commit, .. } => commit,
    }
}

/// The manifest of a snapshot of the commit `info` describes, built here and now.
fn manifest_for(info: CommitInfo, stats: Stats) -> Manifest {
    Manifest {
        commit: info.commit,
        tree: info.tree,
        subject: info.subject,
        author: info.author,
        commit_time: info.commit_time,
        files: stats.files,
        bytes: stats.bytes,
        materialized_at: SystemTime::now(),
        materialized_by: format!("{} pid {}", crate::fsutil::hostname(), std::process::id()),
        dir: None,
        select: String::new(),
        submodules: String::new(),
        modules: Vec::new(),
    }
}

/// The cache holds a `.git`-like repository and a lock file: both must stay where readers
/// cannot see them.
fn refuse_cache_inside_root(cache: &Path, root: &Path) -> Result<(), PublishError> {
    let absolute = |p: &Path| -> std::path::PathBuf {
        // The cache may not exist yet: resolve its nearest existing ancestor.
        let mut existing = p.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (
                existing.file_name().map(|n| n.to_owned()),
                existing.parent(),
            ) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut resolved = existing.canonicalize().unwrap_or(existing);
        resolved.extend(rest.iter().rev());
        resolved
    };
    let (cache_abs, root_abs) = (absolute(cache), absolute(root));
    if cache_abs.starts_with(&root_abs) {
        return Err(PublishError::CacheInsideRoot {
            cache: cache.to_path_buf(),
            root: root.to_path_buf(),
        });
    }
    Ok(())
}
