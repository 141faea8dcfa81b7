//! One sync cycle: observe the remote, build the snapshot if needed, move the link.
//!
//! [`Publisher`] ties a [`Cache`] (private git state) to a [`Root`] (what readers see). It is
//! driven by the daemon loop, one [`Publisher::cycle`] at a time, on a blocking thread; that
//! method's doc is the cycle, step by step.
//!
//! - `steps`: the steps that decide whether the cycle goes on, one method each, and what they
//!   share (the heartbeat watch, reconciling the link, the journal, GC).
//! - `build`: what a snapshot of a commit must hold, and building it.
//! - `verdict`: the operator's check on an installed snapshot, once per commit for the root.
//! - `signed`: `--verify-signatures`: only a commit signed by a trusted key is built.
//! - `live`: keeping the live snapshot what it should be (the periodic check, repairs).
//! - `versions`: a version on demand: a commit's snapshot built for a reader, the link unmoved.
//! - `sources`: the repositories followed: `--repo`, or several sources published as one
//!   snapshot, each under its name, and how such a snapshot is named.
//! - `several`: observing several sources in one poll, and what one that fails holds back.
//! - `types`: [`PublishError`], [`Outcome`] and the settings a publisher is opened with.

mod build;
mod live;
mod several;
mod signed;
mod sources;
mod steps;
mod types;
mod verdict;
mod versions;

pub(crate) use sources::{redactor, Source, SourceHealth};
use steps::Step;
pub(crate) use types::{Content, Gate, Outcome, PublishError, Settings};
pub(crate) use versions::VersionError;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::commit::CommitId;
use crate::git::redact::Redactor;
use crate::store::records::{PublisherRecord, Registration};
use crate::store::{Claim, Created, LockFault, LockWitness, Root, SourceRecord};
use sources::Followed;

/// How often the root's volume is asked for its free space, at most (for the metrics).
const VOLUME_EVERY: Duration = Duration::from_secs(30);

/// Publishes one repository, or several as one snapshot, into one root.
#[derive(Debug)]
pub struct Publisher {
    root: Root,
    /// What is followed, each with its cache: `--repo` alone, or every `--source`.
    sources: Vec<Followed>,
    /// Hides every source's secrets.
    redactor: Redactor,
    settings: Settings,
    claim: Claim,
    /// What this start created under the root, taken back if it never publishes anything.
    created: Created,
    /// When the live snapshot was last found intact (or repaired).
    last_verified: Option<Instant>,
    /// Where the last cycle spent its time.
    timings: Timings,
    /// This process's record under the root, for `dagsnap status`, and its heartbeat.
    registration: Registration,
    /// The root's source as this publisher follows it.
    source: SourceRecord,
    /// When this publisher started: a configuration that took the root over later is the one
    /// the root follows, and this publisher stands back.
    started_at: SystemTime,
    /// What this publisher saw of its peers' heartbeats and locks.
    witness: LockWitness,
    /// A peer whose locks do not reach this publisher, while that lasts.
    lock_fault: Option<LockFault>,
    gate: Gate,
    /// What the last cycle's check did (`accepted`, `rejected`, `timeout`, `abandoned`).
    last_check: Option<&'static str>,
    /// Why the last cycle refused a signature (`unsigned`, `unknown_key`, ...).
    last_signature_refusal: Option<&'static str>,
    /// The last remote commit found to change nothing published, and the live commit that
    /// holds the same: later polls that see both again need not look again, and it is
    /// journaled once.
    same: Option<(CommitId, CommitId)>,
    /// The live commit whose snapshot was found to hold what this publisher publishes.
    settled: Option<CommitId>,
    /// The root's volume: its size and free bytes, and when they were read.
    volume: Option<(crate::fsutil::Space, Instant)>,
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
    /// A fetch as git-sync counts them (`git_fetch_count_total`): a pack was received, or the
    /// remote moved to a commit the cache already holds (a move back), which git-sync fetches.
    pub fetched: bool,
}

impl Publisher {
    /// Adopt the root, register as one of its publishers, and open the private caches (one per
    /// source). Every problem found here is one the operator has to fix (wrong path, foreign
    /// files, another repository already published here, cache shared by mistake), so it is
    /// returned for a clear exit rather than retried.
    pub fn open(
        root: Root,
        sources: Vec<Source>,
        cache_dir: &Path,
        settings: Settings,
    ) -> Result<Publisher, PublishError> {
        refuse_cache_inside_root(cache_dir, root.path())?;
        let started_at = SystemTime::now();
        let created = root.adopt()?;
        let source = sources::record(&sources);
        let redactor = sources::redactor(&sources);
        let opened = (|| {
            let claim = root.records().claim(&source, settings.lock_timeout)?;
            root.record_link()?;
            let mut followed = Vec::with_capacity(sources.len());
            for one in sources {
                followed.push(Followed::open(one, cache_dir, root.path())?);
            }
            let now = SystemTime::now();
            let registration = root.records().register(PublisherRecord {
                host: crate::fsutil::hostname(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                repo: source.repo.clone(),
                ref_name: source.ref_name.clone(),
                started_at,
                last_cycle_at: now,
                last_success_at: None,
                consecutive_failures: 0,
                last_error: None,
                beat: 0,
                stopped_at: None,
                period_ms: u64::try_from(settings.period.as_millis()).ok(),
                lock_fault: None,
                suspects: Vec::new(),
                serves: Vec::new(),
            })?;
            Ok::<_, PublishError>((claim, followed, registration))
        })();
        match opened {
            Ok((claim, sources, registration)) => Ok(Publisher {
                root,
                sources,
                redactor,
                settings,
                claim,
                created,
                last_verified: None,
                timings: Timings::default(),
                registration,
                source,
                started_at,
                witness: LockWitness::default(),
                lock_fault: None,
                gate: Gate::default(),
                last_check: None,
                last_signature_refusal: None,
                same: None,
                settled: None,
                volume: None,
            }),
            Err(e) => {
                root.undo_first_start(&created);
                Err(e)
            }
        }
    }

    /// The publisher failed for good without ever publishing: take back what its start
    /// created (the root, its store, the private caches), unless another publisher uses the
    /// root meanwhile or something was published. A first try with a wrong URL or token leaves
    /// nothing behind.
    pub fn abandon_first_start(self) {
        let Publisher {
            root,
            sources,
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
        for followed in sources {
            if let Some(dir) = followed.cache.remove_if_created() {
                removed.push(dir);
            }
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

    /// The full ref the last cycle followed (`refs/heads/main` for `--ref main` or HEAD); for
    /// several sources, each as `NAME=REF`.
    pub fn followed_ref(&self) -> Option<String> {
        match self.sources.as_slice() {
            [one] if one.source.name.is_none() => one.followed_ref.clone(),
            several => {
                let refs: Vec<String> = several
                    .iter()
                    .filter_map(|f| Some(format!("{}={}", f.health.name, f.followed_ref.as_ref()?)))
                    .collect();
                (!refs.is_empty()).then(|| refs.join(" "))
            }
        }
    }

    /// The root's volume, as the last cycle found it.
    pub fn volume(&self) -> Option<crate::fsutil::Space> {
        self.volume.map(|(space, _)| space)
    }

    /// Hides the secrets of every source in what is printed.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// How each source fares, when there are several (empty for `--repo`).
    pub fn source_health(&self) -> Vec<SourceHealth> {
        if !self.several() {
            return Vec::new();
        }
        self.sources.iter().map(|f| f.health.clone()).collect()
    }

    /// Whether this publisher publishes several sources, each under its name.
    fn several(&self) -> bool {
        self.sources.iter().any(|f| f.source.name.is_some())
    }

    /// Say in this publisher's record where it answers HTTP (`POST /versions/<commit>`).
    pub fn announce(&mut self, urls: Vec<String>) {
        self.registration.set_serves(urls);
    }

    /// A peer whose locks do not reach this publisher, while that lasts.
    pub fn lock_fault(&self) -> Option<&LockFault> {
        self.lock_fault.as_ref()
    }

    /// Check every new commit with the operator's check before the link moves to it.
    pub fn with_gate(mut self, gate: Gate) -> Publisher {
        let mode = gate.signatures.as_ref().map(|policy| policy.mode.name());
        if let Err(e) = self.root.records().require_signatures(mode) {
            tracing::warn!(error = %e, "cannot record in the root whether signatures are required");
        }
        self.gate = gate;
        self
    }

    /// What the last cycle's check did, if it ran one (taken: reported once).
    pub fn take_check_result(&mut self) -> Option<&'static str> {
        self.last_check.take()
    }

    /// Run one cycle. A failure at any step leaves the link where it was; a step that ends the
    /// cycle early says why in its [`Outcome`]. The cycle is:
    ///
    /// 1. **Cache intact**: if the cache directory is gone (or its lock file replaced), start
    ///    it over.
    /// 2. **Standing back**: the root follows another configuration, started after this
    ///    publisher: this one moves nothing until it stops ([`Outcome::StandingBack`]).
    /// 3. **Observe**: ask the remote for the target commit, fetching it into the cache if it
    ///    is new (with several sources, every source's remote, in one poll: the set of their
    ///    commits names the snapshot, and a source that fails holds the set back unless
    ///    `--allow-stale-source` names it, `several`); look at the peers' heartbeats
    ///    ([`Publisher::observe_locks`]): while a peer's locks are invisible from here, the
    ///    cycle moves nothing and fails, saying why.
    /// 4. **Reconcile**: if the link shows something other than the pin or the newest
    ///    publication names, put it back ([`Root::reconcile_link`]).
    /// 5. **Unchanged**: the link shows the commit's complete snapshot: make sure it holds what
    ///    this publisher publishes, tidy up after git-sync; done ([`Outcome::Unchanged`]).
    /// 6. **Same**: the commit changes nothing published (only paths outside `--subdir`), as
    ///    found now or at an earlier poll: the link stays ([`Outcome::Same`]).
    /// 7. **Rejected**: the check rejected the commit at an earlier poll (a verdict in the
    ///    root), or, with `--verify-signatures`, its signature (or its tag's) does not verify
    ///    against the trusted keys (verified once per commit and key set, recorded as a verdict):
    ///    it is neither built nor checked ([`Outcome::Rejected`]).
    /// 8. **Build**: unless the commit's trusted snapshot is installed, build it in a staging
    ///    directory and install it (one that is not trusted is moved aside first). An
    ///    interrupt abandons the staging directory.
    /// 9. **Check**: with `--check-command`, check the installed snapshot before anything can
    ///    link it, once per commit and command for the whole root ([`Publisher::check`]); a
    ///    rejection is recorded and ends the cycle.
    /// 10. **Pinned**: an operator pins another snapshot: the link stays ([`Outcome::Held`]).
    /// 11. **Deferred to git-sync**: in a root taken over from git-sync that git-sync wrote
    ///     less than `--adopt-after` ago, the link stays git-sync's ([`Outcome::Deferred`]).
    /// 12. **Throttled**: the link moved less than `--min-publish-interval` ago: the snapshot
    ///     is ready and goes live when the interval ends ([`Outcome::Throttled`]).
    /// 13. **Publish under the lock**: move the link unless another publisher published a newer
    ///     observation of the remote (never backward), a pin appeared, or the root now follows
    ///     another configuration; then check that the snapshot is still there (GC elsewhere may
    ///     have retired it on a volume without working locks: it is brought back) and
    ///     reconcile once more.
    /// 14. **GC**: when the store changed, retire old snapshots under the lock, delete them
    ///     after it is released ([`gc::collect`]).
    /// 15. **Retry**: a failure in steps 3 to 14 that may be the cache's fault
    ///     ([`PublishError::blames_cache`]) starts the cache over and runs them once more, so
    ///     damage to the cache never outlives a cycle and is never reported as the operator's
    ///     mistake.
    /// 16. **Verify**: every `--verify-period`, check the live snapshot and repair it if it was
    ///     changed on disk ([`Publisher::check_live`]).
    pub fn cycle(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Outcome, PublishError> {
        let started = Instant::now();
        self.timings = Timings::default();
        // (1)
        for followed in &mut self.sources {
            if !followed.cache.is_intact() {
                tracing::warn!(cache = %followed.cache.dir().display(), "the cache directory was deleted or replaced (a cleaner of temporary files?); re-creating it");
                followed.cache.recreate()?;
            }
        }
        let outcome = match self.guarded_cycle(progress, interrupt, started) {
            // (15)
            Err(e) if e.blames_cache() && !interrupt.load(Ordering::Relaxed) => {
                // What reading a damaged cache says (an object "is a tag, not a commit") would
                // mislead: say what is done, and keep the details for the debug log. If a fresh
                // cache fails the same way, that error is reported as it is.
                let error = self.redactor.redact(&crate::git::error_chain(&e));
                // A source that failed names its cache; anything else may be any of them.
                let only = e.failed_source();
                for (index, followed) in self.sources.iter_mut().enumerate() {
                    if only.is_some_and(|only| only != index) {
                        continue;
                    }
                    tracing::warn!(cache = %followed.cache.dir().display(), "the cache could not be read or extended as expected (its objects may be damaged); re-creating it and trying again");
                    followed.cache.recreate()?;
                }
                tracing::debug!(%error, "what the damaged cache said");
                self.guarded_cycle(progress, interrupt, started)
            }
            other => other,
        };
        match &outcome {
            Ok(_) => self.registration.update(true, None),
            Err(e) if e.is_cancelled() || e.is_contention() => {}
            Err(e) => {
                let error = self.redactor.redact(&crate::git::error_chain(e));
                self.registration.update(false, Some(error));
            }
        }
        // For the metrics (a full volume fails builds, so failed cycles look too); on this
        // blocking thread, since a stalled network volume may not answer. At most every
        // VOLUME_EVERY, or after a build: on NFS each look is a round trip, and idle polls
        // should cost none.
        let built = matches!(outcome, Ok(Outcome::Published { built: Some(_), .. }));
        if built
            || self
                .volume
                .is_none_or(|(_, at)| at.elapsed() >= VOLUME_EVERY)
        {
            if let Some(space) = crate::fsutil::space(self.root.path()) {
                self.volume = Some((space, Instant::now()));
            }
        }
        let outcome = outcome?;
        if let Outcome::Published { built: Some(_), .. } = &outcome {
            // Just written and sealed by this cycle: nothing to check it against yet.
            self.last_verified = Some(Instant::now());
        }
        // (16)
        self.check_live(progress, interrupt);
        Ok(outcome)
    }

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

    /// Steps 2 to 14 of [`Publisher::cycle`], each a method of its own (`steps`).
    fn cycle_inner(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
        started: Instant,
    ) -> Result<Outcome, PublishError> {
        // (2)
        if let Some(follows) = self.claimed_by_another()? {
            return Ok(Outcome::StandingBack { follows });
        }
        // (3)
        let seen = self.observe(progress, interrupt)?;
        // (4) While locks do not work, only an operator's pin is restored: every publisher
        // puts the link on the same pinned commit, so they cannot fight over it.
        self.reconcile(self.lock_fault.is_some())?;
        let current = self.root.current()?;
        // (5)
        if let Some(outcome) = self.unchanged(&seen, current.as_ref(), progress, interrupt)? {
            return Ok(outcome);
        }
        // (6)
        let candidate = match self.same(&seen, current.as_ref())? {
            Step::Done(outcome) => return Ok(*outcome),
            Step::Next(candidate) => candidate,
        };
        // (7)
        if let Some(verdict) = self.known_rejection(&seen.commit) {
            self.refuse_if_locks_unreliable()?;
            return Ok(Outcome::Rejected {
                commit: seen.commit,
                verdict,
            });
        }
        if let Some(verdict) = self.unsigned(&seen)? {
            return Ok(Outcome::Rejected {
                commit: seen.commit,
                verdict,
            });
        }
        // (8)
        let built = self.build_if_needed(&seen, candidate, progress, interrupt)?;
        self.refuse_if_locks_unreliable()?;
        // (9)
        if let Some(verdict) = self.check(
            &seen.commit,
            &seen.observation.ref_name,
            current.as_ref(),
            interrupt,
        )? {
            return Ok(Outcome::Rejected {
                commit: seen.commit,
                verdict,
            });
        }
        // (10)
        if let Some(outcome) = self.pinned(&seen, built.is_some())? {
            return Ok(outcome);
        }
        // (11)
        let git_sync = self.root.git_sync_live();
        if let Some(outcome) = self.deferred(&seen, git_sync.as_ref()) {
            return Ok(outcome);
        }
        // (12)
        if let Some(outcome) = self.throttled(&seen) {
            return Ok(outcome);
        }
        // (13)
        let (outcome, lock) = self.publish(seen, built, git_sync.as_ref(), started)?;
        // (14) Retention changes when the store changes (the link moved, or a snapshot was
        // built).
        if built.is_some() || matches!(outcome, Outcome::Published { .. }) {
            self.collect_garbage(lock);
        }
        Ok(outcome)
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
