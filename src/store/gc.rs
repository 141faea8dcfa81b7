//! Retention: which snapshots to keep, and deleting the rest without pulling files from under
//! a reader.
//!
//! A snapshot is kept if any of these holds:
//! - the link points at it, or an operator pinned it, or a reader leased it (the Airflow bundle
//!   on a worker running a task of that commit, `records::leases`);
//! - it is among the `keep` most recently live snapshots besides the current and the pinned one
//!   (for rollback; snapshots that were never linked, such as those built while the root is
//!   pinned, do not count);
//! - it was active less than `grace` ago. "Active" means current, or built: a snapshot stops
//!   being active when the link moves away from it ("retired"), and one that was never linked
//!   counts from when it was built, so a publisher that just installed a snapshot and waits for
//!   the lock never loses it.
//!
//! The grace period is what keeps readers safe: a reader that resolved the link just before a
//! swap keeps reading the old snapshot, and an NFS client may keep serving the old link target
//! from its attribute cache for up to a minute (`actimeo`, 60 s by default). `grace` must exceed
//! both; the default is 10 minutes.
//!
//! Deletion is two-phase. Under the root's lock, doomed snapshots are renamed to
//! `snapshots/.trash-*` (one `rename(2)` each, so the lock is held for milliseconds, and no
//! publisher can decide to link a snapshot that is being deleted; within the directory, because
//! a non-root user cannot move a read-only directory to another parent). After the lock is released,
//! the trash is emptied; that may take long on NFS and blocks nobody. Symlinks are removed, never
//! followed, and write permission is restored only inside what is deleted.

use std::time::{Duration, SystemTime};

use crate::commit::CommitId;
use crate::store::{Root, RootLock, StoreError};

/// How much to keep.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub keep: usize,
    pub grace: Duration,
    /// Staging directories older than this belong to a publisher that died (on any host).
    pub staging_max_age: Duration,
    /// How long a publisher may take between deciding to link a snapshot and linking it (its
    /// lock timeout plus its sync timeout): a snapshot never linked is kept at least this long
    /// after it was built, and the trash keeps what GC retired this long before deleting it.
    pub pending: Duration,
}

/// What a collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub removed: Vec<CommitId>,
    pub kept: usize,
    pub staging_removed: usize,
    pub trash_emptied: usize,
}

/// The commits to remove, given what is on disk and in the journal.
pub fn plan(
    root: &Root,
    policy: &Policy,
    now: SystemTime,
) -> Result<(Vec<CommitId>, usize), StoreError> {
    let current = root.current()?.map(|c| c.commit);
    let pinned = root.pinned()?.map(|p| p.commit);
    let leased = root.records().leased(now);

    // When each commit was last active: retired by the next link move, or still live.
    let history = root.records().link_history()?;
    let last_active = |commit: &CommitId| -> Option<SystemTime> {
        history
            .published
            .contains_key(commit)
            .then(|| history.retired.get(commit).copied().unwrap_or(now))
    };

    // (commit, last active, was ever linked)
    let mut candidates: Vec<(CommitId, SystemTime, bool)> = Vec::new();
    for commit in root.snapshot_commits()? {
        let (active, linked) = match last_active(&commit) {
            Some(at) => (at, true),
            // Never linked (pre-built while pinned, superseded, or its entries were trimmed
            // from the journal): count from when it was built.
            None => (
                root.manifest(&commit)
                    .ok()
                    .flatten()
                    .map(|m| m.materialized_at)
                    .unwrap_or(now),
                false,
            ),
        };
        let active = if Some(&commit) == current.as_ref() {
            now
        } else {
            active
        };
        candidates.push((
            commit.clone(),
            active,
            linked || Some(&commit) == current.as_ref(),
        ));
    }
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));

    let mut doomed = Vec::new();
    let mut kept = 0;
    let mut rank = 0;
    for (commit, active, linked) in candidates {
        let protected = Some(&commit) == current.as_ref()
            || Some(&commit) == pinned.as_ref()
            || leased.contains(&commit);
        let age = now.duration_since(active).unwrap_or_default();
        // A snapshot never linked may be one a publisher is about to link.
        let recent = age < policy.grace || (!linked && age < policy.pending);
        // Rollback candidates are snapshots readers have seen; one that was never linked does
        // not take the place of one that was. The current and the pinned snapshot are kept
        // anyway and do not count: `--keep N` is N to go back to.
        let candidate = linked && !protected;
        let within_keep = candidate && rank < policy.keep;
        if candidate {
            rank += 1;
        }
        if protected || within_keep || recent {
            kept += 1;
        } else {
            doomed.push(commit);
        }
    }
    Ok((doomed, kept))
}

/// Phase one, under the root's lock: move doomed snapshots and abandoned staging directories
/// into the trash. Call [`Root::empty_trash`] after releasing the lock.
pub fn collect(
    root: &Root,
    lock: &RootLock,
    policy: &Policy,
    now: SystemTime,
) -> Result<Report, StoreError> {
    // Damaged journal lines were warned about when read; this is where they go.
    root.records().clean_journal(lock)?;
    root.records().trim_publications(lock)?;
    root.records().remove_expired_leases(lock, now);
    root.records()
        .remove_unneeded_verdicts(lock, &|commit| root.has_snapshot(commit));
    root.records().remove_dead_publishers(lock);
    let (doomed, kept) = plan(root, policy, now)?;
    let mut removed = Vec::new();
    for commit in doomed {
        // Looked at again right before each move, not trusted from the plan: on a volume whose
        // locks do not work, another publisher may have linked, pinned or published it since.
        if named(root, &commit)? {
            continue;
        }
        root.move_snapshot_to_trash(lock, &commit)?;
        if named(root, &commit)? && root.restore_from_trash(&commit, policy.pending) {
            tracing::warn!(%commit, "a snapshot GC had just retired was linked meanwhile; it is back (locks on this volume may not work)");
            continue;
        }
        tracing::info!(%commit, "snapshot retired past the retention policy; deleting it");
        removed.push(commit);
    }
    for (retired, retired_at) in root.retired_dirs()? {
        if now.duration_since(retired_at).unwrap_or_default() > policy.grace {
            tracing::info!(path = %retired.path.display(), "deleting a copy retired by a repair");
            root.move_retired_to_trash(lock, &retired)?;
        }
    }
    let mut staging_removed = 0;
    for staging in root.staging_dirs()? {
        let age = staging
            .created()
            .and_then(|created| now.duration_since(created).ok())
            .unwrap_or_default();
        if age > policy.staging_max_age {
            tracing::info!(path = %staging.path.display(), age = %humantime::format_duration(Duration::from_secs(age.as_secs())), "removing an abandoned staging directory");
            root.move_staging_to_trash(lock, &staging)?;
            staging_removed += 1;
        }
    }
    Ok(Report {
        removed,
        kept,
        staging_removed,
        trash_emptied: 0,
    })
}

/// Whether the link, the pin or the newest publication names `commit` now.
fn named(root: &Root, commit: &CommitId) -> Result<bool, StoreError> {
    let current = root.current()?.map(|c| c.commit);
    let pinned = root.pinned()?.map(|p| p.commit);
    let latest = root.records().latest()?.map(|p| p.commit);
    Ok([current, pinned, latest]
        .iter()
        .any(|c| c.as_ref() == Some(commit)))
}

/// A whole collection: take the lock, collect, release it, empty the trash.
pub fn run(root: &Root, policy: &Policy, lock_timeout: Duration) -> Result<Report, StoreError> {
    let lock = root.lock(lock_timeout)?;
    let mut report = collect(root, &lock, policy, SystemTime::now())?;
    drop(lock);
    report.trash_emptied = root.empty_trash(policy.pending)?;
    Ok(report)
}
