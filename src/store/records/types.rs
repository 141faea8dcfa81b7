//! The records dagsnap keeps next to the snapshots, as JSON: why the link moved and when
//! (`Publication`, in `publications/` and `journal.jsonl`), what a snapshot holds (`Manifest`),
//! which repository and ref the root follows (`SourceRecord`), and the operator's pin (`Pin`).
//! Field names are part of the on-disk format and of `--json` output: change them only with a
//! migration.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Check;
use crate::commit::CommitId;

/// What happened, in a journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// The sync loop followed the remote.
    Sync,
    /// An operator pointed the link at an earlier snapshot (and pinned it).
    Rollback,
    /// An operator pinned a snapshot (moving the link to it if it was not live).
    Pin,
    /// An operator released the pin.
    Unpin,
    /// A damaged snapshot was rebuilt and the link swapped to the rebuilt copy (same commit).
    Repair,
    /// A publisher put the link back on what the pin or the newest publication names (another
    /// publisher had swapped late, or something else moved the link).
    Reconcile,
    /// `--check-command` rejected the commit; the link stayed where it was.
    Rejected,
    /// An operator had the verdicts on the commit forgotten (`dagsnap recheck`).
    Recheck,
    /// The remote's new commit changes nothing that is published (only paths outside
    /// `--subdir`); the link stayed on the snapshot that holds the same tree.
    Unchanged,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Sync => "sync",
            Cause::Rollback => "rollback",
            Cause::Pin => "pin",
            Cause::Unpin => "unpin",
            Cause::Repair => "repair",
            Cause::Reconcile => "reconcile",
            Cause::Rejected => "rejected",
            Cause::Recheck => "recheck",
            Cause::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One journal entry: what the link was pointed at (or pinned, or unpinned), when, by whom and
/// why. `publications/` holds one file per entry that moved the link; `journal.jsonl` holds them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub commit: CommitId,
    pub cause: Cause,
    /// When the publisher asked the remote for the state that produced this publication.
    #[serde(with = "rfc3339")]
    pub observed_at: SystemTime,
    /// When the remote's answer was in (records before 0.5 have none: `observed_at` then).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::publishers::optional_time"
    )]
    pub answered_at: Option<SystemTime>,
    #[serde(with = "rfc3339")]
    pub published_at: SystemTime,
    pub host: String,
    pub pid: u32,
    /// Repository URL, credentials redacted.
    pub repo: String,
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// Whether the link moved to `commit` with this entry.
    #[serde(default = "yes")]
    pub moved_link: bool,
    /// The operator's reason (`--reason`), for rollback, pin and unpin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn yes() -> bool {
    true
}

/// Who writes a journal entry: a publisher (its host and process, and what it follows) or an
/// operator at a keyboard.
#[derive(Debug, Clone)]
pub(crate) struct Author {
    pub host: String,
    pub pid: u32,
    /// Repository URL, credentials redacted.
    pub repo: String,
    pub ref_name: String,
}

impl Author {
    /// An entry by this author about `commit`, observed and written now.
    pub(crate) fn entry(
        &self,
        commit: CommitId,
        cause: Cause,
        moved_link: bool,
        reason: Option<String>,
    ) -> Publication {
        let now = SystemTime::now();
        Publication {
            commit,
            cause,
            observed_at: now,
            answered_at: None,
            published_at: now,
            host: self.host.clone(),
            pid: self.pid,
            repo: self.repo.clone(),
            ref_name: self.ref_name.clone(),
            moved_link,
            reason,
        }
    }
}

impl Publication {
    /// Operators' entries (rollback, pin, unpin) say nothing about the remote, but they end the
    /// ordering of observations made before them: a loop that polled before an `unpin` must not
    /// win over it, and a record from a clock that ran ahead must not outlive an operator's
    /// reset. Such entries carry the time of the action as their observation time.
    pub fn resets_ordering(&self) -> bool {
        matches!(self.cause, Cause::Rollback | Cause::Pin | Cause::Unpin)
    }

    /// Whether the state this publication saw may be as recent as the one `later` saw: unless
    /// `later`'s question was sent after this one's answer came, the two answers cannot be
    /// ordered (a question sent later can be answered from an older state), and the link must
    /// not move from this one to `later`'s commit on the strength of the clock alone.
    pub fn may_be_as_recent_as(&self, later: &Publication) -> bool {
        self.answered_at.unwrap_or(self.observed_at) >= later.observed_at
    }
}

/// Its commit is checked as it is read ([`CommitId`]); nothing else can be inconsistent.
impl Check for Publication {}

/// What a snapshot holds, written next to the store as `manifests/<sha>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub commit: CommitId,
    pub tree: String,
    pub subject: String,
    pub author: String,
    /// Committer date, seconds since the epoch.
    pub commit_time: i64,
    pub files: u64,
    pub bytes: u64,
    #[serde(with = "rfc3339")]
    pub materialized_at: SystemTime,
    pub materialized_by: String,
    /// Which directory dagsnap built for this snapshot (absent in manifests of dagsnap before
    /// 0.2): one that appears under the snapshot's name by any other means is another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<DirIdentity>,
    /// What of the commit the snapshot holds when not all of it (`subdir=dags`,
    /// `sparse=<fingerprint of the patterns>`); `tree` is then the tree at `--subdir`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub select: String,
    /// How its submodules were published (`recursive`, `shallow`, `off`), when it has any.
    /// Empty in snapshots without submodules, and in those of dagsnap before 0.3, which
    /// published every submodule as an empty directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub submodules: String,
    /// The submodules checked out in it, nested ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ModuleRecord>,
    /// A snapshot of several repositories (`--source NAME=URL`): each one's commit, published
    /// under `NAME/`. Its `commit` is then no git commit but the identity of this set
    /// (`daemon::publish::sources`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceCommit>,
}

/// One repository of a snapshot of several (`--source`), as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCommit {
    /// The source's name: its files are under `NAME/` in the snapshot.
    pub name: String,
    /// Repository URL, credentials redacted.
    pub repo: String,
    /// The full ref its commit was found at.
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub commit: CommitId,
    /// The tree published under `NAME/` (the one at its subdir, when it has one).
    pub tree: String,
    pub subject: String,
    /// Committer date, seconds since the epoch.
    pub commit_time: i64,
    /// What of its commits is published when not all (as [`Manifest::select`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub select: String,
    /// The source failed when this snapshot was built, and `--allow-stale-source` let the
    /// commit published before stand in for its current one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// What the snapshot of a commit must hold to be the one a publisher would build now: the same
/// tree, selected the same way, with submodules published the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The tree published: the commit's, or the one at `--subdir`.
    pub tree: String,
    /// As [`Manifest::select`].
    pub select: String,
    /// `off`, `shallow` or `recursive`.
    pub submodules: &'static str,
}

impl Expected {
    /// Why `manifest` describes another snapshot, if it does. `entries` (the snapshot's entry
    /// list) is read only to tell whether a snapshot of an older dagsnap has submodules.
    pub fn matches(
        &self,
        manifest: &Manifest,
        entries: impl FnOnce() -> Option<crate::entries::Entries>,
    ) -> Result<(), String> {
        if manifest.tree != self.tree {
            return Err(format!(
                "its manifest records tree {}, not the tree {} this publisher publishes",
                manifest.tree, self.tree
            ));
        }
        if manifest.select != self.select {
            let shown = |s: &str| {
                if s.is_empty() {
                    "the whole tree".to_string()
                } else {
                    s.to_string()
                }
            };
            return Err(format!(
                "it holds {}, not {}",
                shown(&manifest.select),
                shown(&self.select)
            ));
        }
        let built = if manifest.submodules.is_empty() {
            "off"
        } else {
            manifest.submodules.as_str()
        };
        if built != self.submodules {
            let has_submodules = !manifest.submodules.is_empty()
                || entries()
                    .is_some_and(|e| e.0.iter().any(|x| x.mode == crate::entries::MODE_SUBMODULE));
            if has_submodules {
                return Err(format!(
                    "its submodules were published with --submodules {built}, not {}",
                    self.submodules
                ));
            }
        }
        Ok(())
    }
}

/// One submodule of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// Its path in the snapshot (not valid UTF-8: lossily converted; for people only).
    pub path: String,
    pub commit: CommitId,
    /// Where it was fetched from, credentials masked.
    pub url: String,
}

/// A directory, told apart from any other that takes its name later: its inode number and its
/// modification time to the nanosecond. A rename keeps both; a directory made in its place gets
/// a new modification time, even when the filesystem hands it the freed inode number again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirIdentity {
    pub inode: u64,
    pub mtime_ns: i128,
}

impl DirIdentity {
    pub fn of(stat: &nix::sys::stat::FileStat) -> DirIdentity {
        DirIdentity {
            inode: stat.st_ino,
            mtime_ns: i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec),
        }
    }
}

impl Check for Manifest {
    fn check(&self) -> Result<(), String> {
        if !["", "off", "shallow", "recursive"].contains(&self.submodules.as_str()) {
            return Err(format!("unknown submodules mode '{}'", self.submodules));
        }
        Ok(())
    }
}

/// The repository and ref a root publishes, recorded by the first publisher so that a
/// publisher started with another configuration refuses instead of fighting over the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Repository URL, credentials redacted.
    pub repo: String,
    /// `--ref` as given, or `HEAD` when unset.
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// What of each commit is published when not all of it (`--subdir`, sparse patterns), as
    /// in [`Manifest::select`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub select: String,
    /// When this configuration took the root over from another (its first publish): a
    /// publisher of another configuration started before that stands back.
    #[serde(
        default,
        with = "super::publishers::optional_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub claimed_at: Option<SystemTime>,
}

impl SourceRecord {
    /// Whether two records name the same repository and ref, however they were spelled:
    /// `refs/heads/main` is `main`, an unset ref is `HEAD`, and a local repository is the same
    /// as a plain path, a `file://` URL, or either with a trailing slash.
    pub fn same_as(&self, other: &SourceRecord) -> bool {
        self.follows(&other.repo, &other.ref_name) && self.select == other.select
    }

    /// Whether this record names repository `repo` and ref `ref_name`, spelled either way.
    pub fn follows(&self, repo: &str, ref_name: &str) -> bool {
        normalize_repo(&self.repo) == normalize_repo(repo)
            && normalize_ref(&self.ref_name) == normalize_ref(ref_name)
    }
}

fn normalize_ref(name: &str) -> &str {
    match name.trim() {
        "" => "HEAD",
        name => name.strip_prefix("refs/heads/").unwrap_or(name),
    }
}

fn normalize_repo(url: &str) -> String {
    let url = url.trim();
    let local = url.strip_prefix("file://").unwrap_or(url);
    if local.starts_with('/') {
        // A local path: no trailing slashes, no `.` components, no doubled slashes.
        let parts: Vec<&str> = local
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        return format!("/{}", parts.join("/"));
    }
    match url.split_once("://") {
        Some((scheme, rest)) => format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            rest.trim_end_matches('/')
        ),
        None => url.trim_end_matches('/').to_string(),
    }
}

impl Check for SourceRecord {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl std::fmt::Display for SourceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (ref {}", self.repo, self.ref_name)?;
        if !self.select.is_empty() {
            write!(f, ", {}", self.select)?;
        }
        f.write_str(")")
    }
}

/// An operator's instruction that sync loops must not move the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub commit: CommitId,
    #[serde(default)]
    pub reason: String,
    #[serde(with = "rfc3339")]
    pub pinned_at: SystemTime,
    pub pinned_by: String,
}

/// Its commit is checked as it is read ([`CommitId`]); nothing else can be inconsistent.
impl Check for Pin {}

/// RFC 3339 timestamps with nanoseconds in UTC, for the records under `.dagsnap/`.
pub mod rfc3339 {
    use std::time::SystemTime;

    pub fn format(time: SystemTime) -> String {
        humantime::format_rfc3339_nanos(time).to_string()
    }

    pub fn serialize<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*time))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_question_sent_after_the_others_answer_is_surely_newer() {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let seen = |asked: u64, answered: Option<u64>| Publication {
            commit: CommitId::parse(&"a".repeat(40)).unwrap(),
            cause: Cause::Sync,
            observed_at: at(asked),
            answered_at: answered.map(at),
            published_at: at(answered.unwrap_or(asked)),
            host: "h".into(),
            pid: 1,
            repo: "r".into(),
            ref_name: "main".into(),
            moved_link: true,
            reason: None,
        };
        // Asked at 100, answered at 105 (from the state of 104): a question sent at 101 may
        // have been answered from the state of 102, older.
        let first = seen(100, Some(105));
        assert!(first.may_be_as_recent_as(&seen(101, Some(103))));
        assert!(first.may_be_as_recent_as(&seen(105, Some(106))));
        assert!(!first.may_be_as_recent_as(&seen(106, Some(107))));
        // A record without an answer time (before 0.5, or an operator's) counts its question.
        assert!(!seen(100, None).may_be_as_recent_as(&seen(101, None)));
    }

    #[test]
    fn one_source_however_it_is_spelled() {
        let record = |repo: &str, r: &str| SourceRecord {
            repo: repo.into(),
            ref_name: r.into(),
            select: String::new(),
            claimed_at: None,
        };
        let base = record("/srv/dags", "main");
        for same in [
            record("file:///srv/dags", "refs/heads/main"),
            record("/srv/dags/", "main"),
            record("/srv/./dags", "main"),
        ] {
            assert!(base.same_as(&same), "{same}");
        }
        assert!(record("https://git.example/a.git", "HEAD")
            .same_as(&record("HTTPS://git.example/a.git/", "")));
        assert!(!base.same_as(&record("/srv/other", "main")));
        assert!(!base.same_as(&record("/srv/dags", "release")));
        assert!(!base.same_as(&record("/srv/dags", "refs/tags/main")));
        let subdir = SourceRecord {
            select: "subdir=dags".into(),
            ..record("/srv/dags", "main")
        };
        assert!(
            !base.same_as(&subdir),
            "another selection is another source"
        );
        assert!(subdir.follows("/srv/dags", "main"));
    }
}
