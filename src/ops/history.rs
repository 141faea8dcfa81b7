//! What operators do during an incident: see which snapshots are retained and what was
//! published when (`list`, `log`), point the link back at an earlier snapshot (`rollback`),
//! hold it there (`pin`, `unpin`), and have a commit the check rejected checked again
//! (`recheck`).
//!
//! The reading commands only read files that are replaced atomically, so they work while sync
//! loops run and on a read-only mount. The writing commands take the root's lock, the same one
//! sync loops take before they move the link, so an operator's action and a publisher's never
//! interleave.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::commit::CommitId;
use crate::store::records::{rfc3339, Cause, Pin, Publication};
use crate::store::{Author, Root, RootLock, StoreError};
use crate::text::escape;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("there is no snapshot {steps} step(s) back in what was live before{}; retained: {}. Name a commit instead", skipped.iter().map(|s| format!(" (skipped {s})")).collect::<String>(), if retained.is_empty() { "none".to_string() } else { retained.join(", ") })]
    NoEarlier {
        steps: usize,
        retained: Vec<String>,
        skipped: Vec<String>,
    },
    #[error("nothing is published under {root} yet; there is nothing to pin")]
    NothingPublished { root: String },
    #[error("commit {commit} was rejected by {by} at {checked_at} ({why}: {headline}); add --force to publish it anyway, or `dagsnap recheck {commit}` to have the sync loops check it again")]
    Rejected {
        commit: CommitId,
        by: &'static str,
        checked_at: String,
        why: String,
        headline: String,
    },
    #[error("commit {commit} was never verified by --verify-signatures, which this root's publishers require ({mode}); add --force to publish it anyway")]
    Unverified { commit: CommitId, mode: String },
    #[error("no commit was rejected by the check under this root; nothing to check again")]
    NothingRejected,
    #[error("the check has no verdict on a commit {wanted}...; `dagsnap list` marks rejected commits with R")]
    NoVerdict { wanted: String },
    #[error("{wanted} names several checked commits ({}); give more of the id", candidates.join(", "))]
    AmbiguousVerdict {
        wanted: String,
        candidates: Vec<String>,
    },
}

/// One retained snapshot, as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub commit: CommitId,
    pub short: String,
    pub subject: String,
    pub author: String,
    pub commit_date: Option<String>,
    /// When the link last moved to it; `None` if it was never live (built while pinned, or
    /// superseded).
    pub published_at: Option<String>,
    /// When the link last moved away from it; `None` if it is current or was never live.
    pub retired_at: Option<String>,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub current: bool,
    pub pinned: bool,
    /// Why the check rejected it, if it did (its newest verdict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// What of the commit it holds when not all of it (`subdir=dags`, `sparse=...`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub select: String,
    /// Its submodules: path, commit, URL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub submodules: Vec<crate::store::ModuleRecord>,
    /// For a snapshot of several sources, each one's commit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::store::SourceCommit>,
    #[serde(skip)]
    order: Option<SystemTime>,
}

/// Every retained snapshot, newest first (by when it was last live, or built).
pub fn list(root: &Root) -> Result<Vec<SnapshotInfo>, StoreError> {
    root.require_initialized()?;
    let current = root.current()?.map(|c| c.commit);
    let pinned = root.pinned()?.map(|p| p.commit);
    let history = root.records().link_history()?;
    let verdicts = root.records().verdicts();
    let mut snapshots = Vec::new();
    for commit in root.snapshot_commits()? {
        let manifest = root.manifest(&commit)?;
        let is_current = current.as_deref() == Some(commit.as_str());
        let published_at = history.published.get(&commit).copied();
        let retired_at = if is_current {
            None
        } else {
            history.retired.get(&commit).copied()
        };
        let order = if is_current {
            Some(SystemTime::now())
        } else {
            published_at.or(manifest.as_ref().map(|m| m.materialized_at))
        };
        snapshots.push(SnapshotInfo {
            short: commit[..12.min(commit.len())].to_string(),
            subject: manifest
                .as_ref()
                .map(|m| m.subject.clone())
                .unwrap_or_default(),
            author: manifest
                .as_ref()
                .map(|m| m.author.clone())
                .unwrap_or_default(),
            commit_date: manifest
                .as_ref()
                .map(|m| rfc3339::format(epoch(m.commit_time))),
            published_at: published_at.map(rfc3339::format),
            retired_at: retired_at.map(rfc3339::format),
            files: manifest.as_ref().map(|m| m.files),
            bytes: manifest.as_ref().map(|m| m.bytes),
            pinned: pinned.as_deref() == Some(commit.as_str()),
            rejected: verdicts
                .iter()
                .find(|v| v.commit == commit)
                .filter(|v| !v.accepted)
                .map(|v| format!("{}: {}", v.why(), v.headline())),
            select: manifest
                .as_ref()
                .map(|m| m.select.clone())
                .unwrap_or_default(),
            submodules: manifest
                .as_ref()
                .map(|m| m.modules.clone())
                .unwrap_or_default(),
            sources: manifest
                .as_ref()
                .map(|m| m.sources.clone())
                .unwrap_or_default(),
            current: is_current,
            commit,
            order,
        });
    }
    snapshots.sort_by(|a, b| b.order.cmp(&a.order).then_with(|| a.commit.cmp(&b.commit)));
    Ok(snapshots)
}

pub fn render_list(snapshots: &[SnapshotInfo]) -> String {
    if snapshots.is_empty() {
        return "no snapshots retained\n".into();
    }
    let mut out = format!(
        "{:<3} {:<12} {:<20} {:<20} {:<20} {:>7} {:>10}  {}\n",
        "", "COMMIT", "COMMITTED", "PUBLISHED", "RETIRED", "FILES", "BYTES", "SUBJECT (AUTHOR)"
    );
    for s in snapshots {
        let marker = format!(
            "{}{}{}",
            if s.current { "*" } else { " " },
            if s.pinned { "P" } else { " " },
            if s.rejected.is_some() { "R" } else { " " }
        );
        out.push_str(&format!(
            "{:<3} {:<12} {:<20} {:<20} {:<20} {:>7} {:>10}  {} ({})\n",
            marker,
            s.short,
            short_time(s.commit_date.as_deref()),
            short_time(s.published_at.as_deref()),
            short_time(s.retired_at.as_deref()),
            s.files.map(|f| f.to_string()).unwrap_or_default(),
            s.bytes.map(|b| b.to_string()).unwrap_or_default(),
            escape(&s.subject),
            escape(&s.author)
        ));
        for module in &s.submodules {
            out.push_str(&format!(
                "{:<3} {:<12} submodule {} at {}\n",
                "",
                "",
                escape(&module.path),
                &module.commit[..12.min(module.commit.len())]
            ));
        }
        for source in &s.sources {
            out.push_str(&format!(
                "{:<3} {:<12} {}\n",
                "",
                "",
                escape(&source_line(source))
            ));
        }
    }
    out.push_str("* = current (what readers see), P = pinned, R = rejected by the check\n");
    out
}

/// One source of a snapshot of several: `dags at 1a2b3c4d5e6f: subject`, stale or not (to be
/// escaped: the subject is someone else's text).
pub fn source_line(source: &crate::store::SourceCommit) -> String {
    format!(
        "source {} at {}{}: {}",
        source.name,
        &source.commit[..12.min(source.commit.len())],
        if source.stale {
            " (stale: it failed, --allow-stale-source)"
        } else {
            ""
        },
        source.subject
    )
}

/// Journal entries, newest first: at most `limit`, or all of them for 0.
pub fn log(root: &Root, limit: usize) -> Result<Vec<Publication>, StoreError> {
    root.require_initialized()?;
    let mut entries = root.records().journal()?;
    entries.reverse();
    if limit > 0 {
        entries.truncate(limit);
    }
    Ok(entries)
}

/// `sources_of` gives the sources of a snapshot of several (from its manifest, while it is
/// kept), shown under each entry.
pub fn render_log(
    entries: &[Publication],
    sources_of: &dyn Fn(&CommitId) -> Vec<crate::store::SourceCommit>,
) -> String {
    if entries.is_empty() {
        return "the journal is empty\n".into();
    }
    let mut out = String::new();
    for e in entries {
        let action = match (e.cause, e.moved_link) {
            (Cause::Pin, false)
            | (Cause::Unpin, _)
            | (Cause::Repair, _)
            | (Cause::Rejected, _)
            | (Cause::Recheck, _)
            | (Cause::Unchanged, _) => e.cause.to_string(),
            _ => format!("{} -> link", e.cause),
        };
        out.push_str(&format!(
            "{}  {:<15} {}  by {} pid {}{}\n",
            short_time(Some(&rfc3339::format(e.published_at))),
            action,
            &e.commit[..12.min(e.commit.len())],
            escape(&e.host),
            e.pid,
            e.reason
                .as_deref()
                .map(|r| format!(": {}", escape(r)))
                .unwrap_or_default()
        ));
        for source in sources_of(&e.commit) {
            out.push_str(&format!("{:<37}{}\n", "", escape(&source_line(&source))));
        }
    }
    out
}

/// Which snapshot `rollback` goes to.
#[derive(Debug, Clone)]
pub enum RollbackTarget {
    /// A full id or unambiguous prefix of a retained snapshot.
    Commit(String),
    /// The snapshot published this many publications before the current one.
    Steps(usize),
}

/// What a rollback or pin changed.
#[derive(Debug, Clone)]
pub struct Change {
    pub from: Option<CommitId>,
    pub to: CommitId,
    pub pin: Pin,
    /// Commits a rollback stepped over, and why.
    pub skipped: Vec<Skipped>,
}

/// A commit `rollback` did not go to although it was live earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub commit: CommitId,
    pub why: String,
}

/// Point the link at a retained snapshot and pin it there, recording who and why.
/// A commit the check rejected is refused unless `force`; going back by steps steps over it.
pub fn rollback(
    root: &Root,
    target: RollbackTarget,
    reason: Option<String>,
    force: bool,
    lock_timeout: Duration,
) -> Result<Change, HistoryError> {
    let (lock, current) = begin_change(root, lock_timeout)?;
    let (to, skipped) = match target {
        RollbackTarget::Commit(wanted) => (root.resolve_commit(&wanted)?, Vec::new()),
        RollbackTarget::Steps(steps) => earlier_publication(root, current.as_ref(), steps, force)?,
    };
    refuse_rejected(root, &to, force)?;
    let mut change = move_and_pin(root, &lock, current, to, Cause::Rollback, reason)?;
    change.skipped = skipped;
    Ok(change)
}

/// Pin `commit` (default: the current snapshot), moving the link to it if it is not live. A
/// commit the check rejected is refused unless `force`.
pub fn pin(
    root: &Root,
    commit: Option<&str>,
    reason: Option<String>,
    force: bool,
    lock_timeout: Duration,
) -> Result<Change, HistoryError> {
    let (lock, current) = begin_change(root, lock_timeout)?;
    let to = match commit {
        Some(wanted) => root.resolve_commit(wanted)?,
        None => current
            .clone()
            .ok_or_else(|| HistoryError::NothingPublished {
                root: root.path().display().to_string(),
            })?,
    };
    refuse_rejected(root, &to, force)?;
    move_and_pin(root, &lock, current, to, Cause::Pin, reason)
}

/// A commit whose newest verdict is a rejection goes live only by force; so does one that was
/// never verified, in a root whose publishers require signatures.
fn refuse_rejected(root: &Root, commit: &CommitId, force: bool) -> Result<(), HistoryError> {
    if let (Some(mode), false) = (root.records().unverified(commit), force) {
        return Err(HistoryError::Unverified {
            commit: commit.clone(),
            mode,
        });
    }
    match root.records().rejection(commit) {
        Some(verdict) if !force => Err(HistoryError::Rejected {
            commit: commit.clone(),
            by: if verdict.signature.is_some() {
                "--verify-signatures"
            } else {
                "the check"
            },
            checked_at: rfc3339::format(verdict.checked_at),
            why: verdict.why(),
            headline: verdict.headline(),
        }),
        _ => Ok(()),
    }
}

/// Release the pin; sync loops publish the remote's latest commit at their next poll.
pub fn unpin(
    root: &Root,
    reason: Option<String>,
    lock_timeout: Duration,
) -> Result<Option<Pin>, HistoryError> {
    root.require_writable()?;
    let lock = root.lock(lock_timeout)?;
    let released = root.unpin(&lock)?;
    if let Some(pin) = &released {
        let entry = operator_entry(root, &pin.commit, Cause::Unpin, false, reason)?;
        root.records().record_publication(&lock, &entry)?;
    }
    Ok(released)
}

/// What `recheck` forgot.
#[derive(Debug, Clone)]
pub struct Rechecked {
    pub commit: CommitId,
    /// The verdicts forgotten, newest first.
    pub forgotten: Vec<crate::store::Verdict>,
}

/// Forget the check's verdicts on `commit` (a full id or unambiguous prefix; default: the
/// commit of the newest rejection), so that sync loops check it again at their next poll: after
/// a fix outside the repository (a missing package installed, a connection restored), or a
/// check that failed for a reason of its own.
pub fn recheck(
    root: &Root,
    commit: Option<&str>,
    reason: Option<String>,
    lock_timeout: Duration,
) -> Result<Rechecked, HistoryError> {
    root.require_writable()?;
    let verdicts = root.records().verdicts();
    let commit = match commit {
        Some(wanted) => resolve_checked(&verdicts, wanted)?,
        None => verdicts
            .iter()
            .find(|v| !v.accepted)
            .map(|v| v.commit.clone())
            .ok_or(HistoryError::NothingRejected)?,
    };
    let lock = root.lock(lock_timeout)?;
    let forgotten: Vec<_> = verdicts
        .into_iter()
        .filter(|v| v.commit == commit)
        .collect();
    root.records().forget_verdicts(&lock, &commit);
    let entry = operator_entry(root, &commit, Cause::Recheck, false, reason)?;
    root.records().record_publication(&lock, &entry)?;
    Ok(Rechecked { commit, forgotten })
}

/// The commit a verdict names by full id or unique prefix (a rejected commit's snapshot may be
/// gone, so the verdicts are what to look in).
fn resolve_checked(
    verdicts: &[crate::store::Verdict],
    wanted: &str,
) -> Result<CommitId, HistoryError> {
    let mut matches: Vec<&CommitId> = verdicts
        .iter()
        .map(|v| &v.commit)
        .filter(|c| c.starts_with(&wanted.to_ascii_lowercase()))
        .collect();
    matches.sort();
    matches.dedup();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(HistoryError::NoVerdict {
            wanted: wanted.to_string(),
        }),
        many => Err(HistoryError::AmbiguousVerdict {
            wanted: wanted.to_string(),
            candidates: many.iter().map(|c| c.to_string()).collect(),
        }),
    }
}

/// Every operator change starts alike: the root must be writable here, the lock is taken, and
/// what is live is read under it.
fn begin_change(
    root: &Root,
    lock_timeout: Duration,
) -> Result<(RootLock, Option<CommitId>), HistoryError> {
    root.require_writable()?;
    let lock = root.lock(lock_timeout)?;
    let current = root.current()?.map(|c| c.commit);
    Ok((lock, current))
}

/// Where `rollback` goes without a commit: `steps` back through the commits that were live
/// before the current rollback chain started, never forward.
///
/// The journal's link moves, newest first, are split where the chain of operator moves
/// (rollbacks and pins that moved the link) ends: the history is the newest move the sync loops
/// made and everything live before it, each commit once. Rolling back from v4 gives v3; rolling
/// back again gives v2 (not v4, which the first rollback left); `--steps 2` from v4 gives v2.
/// A commit no longer retained, or whose snapshot cannot be trusted, is stepped over and named
/// in the result with the reason; it does not count as a step.
fn earlier_publication(
    root: &Root,
    current: Option<&CommitId>,
    steps: usize,
    force: bool,
) -> Result<(CommitId, Vec<Skipped>), HistoryError> {
    let steps = steps.max(1);
    let journal = root.records().journal()?;
    let moves: Vec<&Publication> = journal.iter().filter(|e| e.moved_link).collect();
    // The chain: the newest moves made by operators. What came before it is the history.
    let chain_start = moves
        .iter()
        .rposition(|e| e.cause == Cause::Sync)
        .unwrap_or(moves.len().saturating_sub(1));
    let mut history: Vec<&CommitId> = Vec::new();
    for entry in moves[..(chain_start + 1).min(moves.len())].iter().rev() {
        if !history.contains(&&entry.commit) {
            history.push(&entry.commit);
        }
    }
    // From where the link is in that history; from before its start if it is elsewhere.
    let position = current.and_then(|c| history.iter().position(|h| *h == c));
    let candidates = match position {
        Some(at) => &history[at + 1..],
        None => &history[..],
    };
    let retained = root.snapshot_commits()?;
    let mut skipped = Vec::new();
    let mut taken = 0;
    for commit in candidates.iter().filter(|c| Some(**c) != current) {
        let why = if !retained.iter().any(|r| r == commit) {
            Some("no longer retained".to_string())
        } else {
            root.check_snapshot(commit, None)
                .err()
                .map(|why| format!("cannot be trusted: {why}"))
                .or_else(|| {
                    let rejected = root.records().rejection(commit).filter(|_| !force)?;
                    Some(format!(
                        "rejected by the check ({}; --force goes to it)",
                        rejected.why()
                    ))
                })
        };
        if let Some(why) = why {
            skipped.push(Skipped {
                commit: (*commit).clone(),
                why,
            });
            continue;
        }
        taken += 1;
        if taken == steps {
            return Ok(((*commit).clone(), skipped));
        }
    }
    Err(HistoryError::NoEarlier {
        steps,
        skipped: skipped
            .iter()
            .map(|s| format!("{}: {}", s.commit.short(), s.why))
            .collect(),
        retained: list(root)?
            .iter()
            .filter(|s| !s.current)
            .map(|s| format!("{} {}", s.short, s.subject))
            .collect(),
    })
}

fn move_and_pin(
    root: &Root,
    lock: &RootLock,
    from: Option<CommitId>,
    to: CommitId,
    cause: Cause,
    reason: Option<String>,
) -> Result<Change, HistoryError> {
    let moves = from.as_ref() != Some(&to);
    if moves {
        // Readers would get whatever is under that name: only what dagsnap built goes live.
        root.check_snapshot(&to, None)
            .map_err(|why| StoreError::Untrusted {
                commit: to.clone(),
                why,
            })?;
    }
    let entry = operator_entry(root, &to, cause, moves, reason.clone())?;
    let pin = Pin {
        commit: to.clone(),
        reason: reason.unwrap_or_default(),
        pinned_at: entry.published_at,
        pinned_by: format!("{} pid {}", operator(), std::process::id()),
    };
    // Pin first: from this instant no sync loop moves the link, even one that already holds a
    // newer snapshot and waits for the lock we hold.
    root.records().set_pin(lock, &pin)?;
    if moves {
        root.publish(lock, &entry)?;
    } else {
        root.records().record_publication(lock, &entry)?;
    }
    Ok(Change {
        from,
        to,
        pin,
        skipped: Vec::new(),
    })
}

/// A journal entry for an operator's action. Its observation time is the time of the action:
/// observations of the remote made before it never win over it (a loop that polled before an
/// `unpin` waits for its next poll), and neither does a record from a clock that ran ahead. Once
/// the pin is released, any publisher that polls afterwards wins the never-backward comparison.
fn operator_entry(
    root: &Root,
    commit: &CommitId,
    cause: Cause,
    moved_link: bool,
    reason: Option<String>,
) -> Result<Publication, StoreError> {
    let source = root.records().source()?;
    let who = Author {
        host: format!("{}@{}", operator(), crate::fsutil::hostname()),
        pid: std::process::id(),
        repo: source.as_ref().map(|s| s.repo.clone()).unwrap_or_default(),
        ref_name: source.map(|s| s.ref_name).unwrap_or_default(),
    };
    Ok(who.entry(commit.clone(), cause, moved_link, reason))
}

/// Who is at the keyboard: `$USER`, else the uid.
fn operator() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()))
}

fn epoch(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64)
}

/// `2026-11-25T17:02:03` from an RFC 3339 time, for tables.
fn short_time(time: Option<&str>) -> String {
    time.map(|t| t.chars().take(19).collect())
        .unwrap_or_else(|| "-".into())
}
