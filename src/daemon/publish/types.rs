//! What a cycle can end with ([`Outcome`], [`PublishError`]) and what a publisher is opened
//! with ([`Settings`], [`Content`], [`Gate`]).

use std::time::Duration;

use crate::commit::CommitId;
use crate::fsutil::lock::LockError;
use crate::git::select::Sparse;
use crate::git::submodules::Mode as SubmoduleMode;
use crate::git::SourceError;
use crate::store::gc;
use crate::store::repair::RepairError;
use crate::store::snapshot::{Reuse, SnapshotError, Stats};
use crate::store::SourceRecord;
use crate::store::{Pin, StoreError, Verdict};

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
    /// One of several sources could not be observed (`--source`): nothing that mixes in its
    /// stale commit is published unless `--allow-stale-source` names it.
    #[error("source '{name}': {error}. The live snapshot stays and the other sources are still followed; nothing is published until '{name}' answers again (--allow-stale-source {name} publishes the others with its commit of the live snapshot)")]
    SourceFailed {
        name: String,
        /// Which of the publisher's sources.
        index: usize,
        error: Box<PublishError>,
    },
    /// A snapshot of several sources whose sources cannot be told (its manifest is gone) or
    /// are not this publisher's.
    #[error("the snapshot {commit} cannot be built here: {why}. Roll back to another snapshot (dagsnap list), or let the loop publish the sources' current commits")]
    UnknownSources { commit: CommitId, why: String },
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
        if let PublishError::SourceFailed { error, .. } = self {
            return error.is_cancelled();
        }
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
        if let PublishError::SourceFailed { error, .. } = self {
            return error.is_contention();
        }
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
            PublishError::SourceFailed { error, .. } => error.blames_cache(),
            PublishError::Repair(RepairError::Store(_))
            // A submodule's cache is started over by the expander itself.
            | PublishError::Submodule(_)
            | PublishError::LocksUnreliable { .. }
            | PublishError::UnknownSources { .. }
            | PublishError::Store(_)
            | PublishError::CacheInsideRoot { .. } => false,
        }
    }
}

impl PublishError {
    /// The source whose failure this is, when one of several failed.
    pub(crate) fn failed_source(&self) -> Option<usize> {
        match self {
            PublishError::SourceFailed { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// What a cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The link already shows the remote's commit; nothing was written.
    Unchanged { commit: CommitId },
    /// The link now shows `commit`.
    Published {
        commit: CommitId,
        previous: Option<CommitId>,
        /// `None` when the snapshot already existed (built earlier or by another publisher).
        built: Option<Stats>,
        elapsed: Duration,
    },
    /// Another publisher had already published a newer observation; the link was left alone.
    Superseded { commit: CommitId, current: CommitId },
    /// The remote has `commit` but an operator pinned the link; it was left alone.
    Held { commit: CommitId, pin: Pin },
    /// `commit` changes nothing this publisher publishes (only paths outside `--subdir`): the
    /// link stays on `live`, whose snapshot holds the same tree.
    Same { commit: CommitId, live: CommitId },
    /// `--check-command` rejected `commit` (now, or at an earlier poll: a commit is checked
    /// once); the link stays where it was.
    Rejected { commit: CommitId, verdict: Verdict },
    /// The link moved less than `--min-publish-interval` ago: `commit`'s snapshot is ready and
    /// goes live after `wait`.
    Throttled { commit: CommitId, wait: Duration },
    /// The link shows git-sync's worktree of `git_sync`, and git-sync wrote the root less than
    /// `--adopt-after` ago: `commit`'s snapshot is ready, the link is left to git-sync for now.
    /// The root follows another configuration, started after this publisher (a rolling update
    /// that changed `--ref` or `--repo`): this publisher moves nothing until it stops.
    StandingBack { follows: SourceRecord },
    Deferred {
        commit: CommitId,
        git_sync: CommitId,
        quiet_for: Duration,
        /// When the link may move if git-sync stays quiet: `--adopt-after` less `quiet_for`.
        resume_in: Duration,
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
    pub check: Option<crate::daemon::check::CheckCommand>,
    /// `--verify-signatures` and the trusted keys.
    pub signatures: Option<crate::signatures::Policy>,
}
