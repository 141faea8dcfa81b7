//! The repositories a publisher follows: `--repo` alone, whose tree is the snapshot, or several
//! sources (`--source NAME=URL`), each published under `NAME/` of one snapshot, so that DAGs,
//! plugins and libraries always go live together.
//!
//! A snapshot of several sources has no git commit of its own. It is named by the SHA-1 of the
//! sorted lines `NAME COMMIT SELECT` of its sources: stable (the same commits give the same
//! name on every node), printable, and 40 hex digits like a commit id, so that everything keyed
//! by commit (snapshot directories, manifests, publications, verdicts, leases, pins, GC) works
//! unchanged. Its manifest lists each source's commit ([`SourceCommit`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use gix::ObjectId;

use super::types::Content;
use crate::commit::CommitId;
use crate::git::redact::Redactor;
use crate::git::submodules::Expander;
use crate::git::{Cache, CommitInfo, Observation, Remote, SourceError};
use crate::store::{SourceCommit, SourceRecord};

/// One repository to follow, as configured.
#[derive(Debug, Clone)]
pub struct Source {
    /// `None` for `--repo`: its tree is the snapshot. Otherwise the directory its tree is
    /// published in.
    pub name: Option<String>,
    pub remote: Remote,
    pub content: Content,
    /// `--allow-stale-source`: when it fails, its commit of the live snapshot stands in.
    pub allow_stale: bool,
}

impl Source {
    /// The source's private cache: `cache_dir` itself for `--repo`, `sources/NAME` in it for a
    /// named source.
    pub(crate) fn cache_dir(&self, cache_dir: &Path) -> PathBuf {
        match &self.name {
            None => cache_dir.to_path_buf(),
            Some(name) => cache_dir.join("sources").join(name),
        }
    }

    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("repo")
    }
}

/// A source with what a publisher keeps for it: its cache, its submodules' caches, and what
/// the last polls found.
#[derive(Debug)]
pub(super) struct Followed {
    pub source: Source,
    pub cache: Cache,
    pub expander: Expander,
    /// The commit the last observation found, to count fetches as git-sync does.
    pub last_seen: Option<ObjectId>,
    /// The full ref the last observation matched.
    pub followed_ref: Option<String>,
    pub health: SourceHealth,
}

/// How one source fares, for the metrics and `status`.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth {
    pub name: String,
    pub consecutive_failures: u64,
    pub last_success: Option<SystemTime>,
    /// The last failure, redacted, while the source fails.
    pub last_error: Option<String>,
}

impl Followed {
    pub(super) fn open(
        source: Source,
        cache_dir: &Path,
        root: &Path,
    ) -> Result<Followed, SourceError> {
        let dir = source.cache_dir(cache_dir);
        let cache = Cache::open(&dir, &source.remote, root)?;
        Ok(Followed {
            expander: Expander::new(source.content.submodules, &dir, root),
            health: SourceHealth {
                name: source.label().to_string(),
                ..SourceHealth::default()
            },
            source,
            cache,
            last_seen: None,
            followed_ref: None,
        })
    }

    /// Ask this source's remote for its commit, fetching it into the cache if it is new, and
    /// note how that went. With the observation, whether it counts as a fetch as git-sync
    /// counts them (a pack came, or the remote moved to a commit the cache holds).
    pub(super) fn ask(
        &mut self,
        redactor: &Redactor,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<(Observation, bool), SourceError> {
        match self.cache.update(&self.source.remote, progress, interrupt) {
            Ok(observation) => {
                let fetched = observation.fetched
                    || self
                        .last_seen
                        .is_some_and(|last| last != observation.commit);
                self.note(Ok(&observation));
                Ok((observation, fetched))
            }
            Err(SourceError::Cancelled) => Err(SourceError::Cancelled),
            Err(e) => {
                self.note(Err(redactor.redact(&crate::git::error_chain(&e))));
                Err(e)
            }
        }
    }

    /// Record the outcome of asking this source's remote.
    fn note(&mut self, result: Result<&Observation, String>) {
        match result {
            Ok(observation) => {
                self.last_seen = Some(observation.commit);
                self.followed_ref = Some(observation.ref_name.clone());
                self.health.consecutive_failures = 0;
                self.health.last_success = Some(SystemTime::now());
                self.health.last_error = None;
            }
            Err(error) => {
                self.health.consecutive_failures += 1;
                self.health.last_error = Some(error);
            }
        }
    }
}

/// One source's commit in what a cycle publishes.
#[derive(Debug, Clone)]
pub(super) struct Part {
    /// Which of the publisher's sources.
    pub index: usize,
    pub commit: ObjectId,
    pub ref_name: String,
    /// The annotated tag the ref points at, when it does.
    pub tag: Option<ObjectId>,
    /// A commit that stands in for a source's current one (it failed, and
    /// `--allow-stale-source` names it), or that a snapshot built that way lists.
    pub stale: Option<Stale>,
}

impl Part {
    /// The commit an observation of source `index` found.
    pub(super) fn observed(index: usize, observation: &Observation) -> Part {
        Part {
            index,
            commit: observation.commit,
            ref_name: observation.ref_name.clone(),
            tag: observation.tag,
            stale: None,
        }
    }

    /// Commit `commit` of source `index`, asked for by id (a repair, a reader's version).
    pub(super) fn by_id(index: usize, commit: ObjectId) -> Part {
        Part {
            index,
            commit,
            ref_name: String::new(),
            tag: None,
            stale: None,
        }
    }
}

/// A stale source's commit: what the manifest of `snapshot` says of it. Its files are that
/// snapshot's; they can stand in for a cache that lacks the commit only while `snapshot` is
/// live, since a build shares files with the live snapshot alone.
#[derive(Debug, Clone)]
pub(super) struct Stale {
    pub listed: SourceCommit,
    pub snapshot: CommitId,
}

/// The name of a snapshot of several sources: the SHA-1 of its sorted `NAME COMMIT SELECT`
/// lines. The selection is part of it: the same commits published another way are another
/// snapshot.
pub(super) fn composite_id(lines: &[(String, ObjectId, String)]) -> Result<CommitId, String> {
    let lines = lines
        .iter()
        .map(|(name, commit, select)| format!("{name} {commit} {select}"));
    sha1_of_sorted(lines).map(CommitId::from)
}

/// A tree id for several trees: the SHA-1 of their sorted `NAME TREE` lines.
pub(super) fn composite_tree(lines: &[(String, String)]) -> Result<String, String> {
    let lines = lines.iter().map(|(name, tree)| format!("{name} {tree}"));
    sha1_of_sorted(lines).map(|id| id.to_string())
}

/// The SHA-1 of `lines`, sorted, each ended by a newline: the same set, the same id.
fn sha1_of_sorted(lines: impl Iterator<Item = String>) -> Result<ObjectId, String> {
    let mut lines: Vec<String> = lines.collect();
    lines.sort();
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    for line in &lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    // SHA-1 collision detection fires only on crafted input, which names and commit ids are
    // not; should it fire, the set has no name and nothing is published.
    hasher
        .try_finalize()
        .map_err(|e| format!("cannot name the set of the sources' commits: {e}"))
}

/// What a composite's sources hold, combined into the commit information of the snapshot:
/// its subject and author are those of the source's newest commit, named.
pub(super) fn composite_info(
    id: &CommitId,
    tree: &str,
    parts: &[(String, CommitInfo)],
) -> CommitInfo {
    let newest = parts.iter().max_by_key(|(_, info)| info.commit_time);
    CommitInfo {
        commit: id.clone(),
        tree: tree.to_string(),
        tree_id: ObjectId::from_hex(tree.as_bytes())
            .unwrap_or_else(|_| ObjectId::null(gix::hash::Kind::Sha1)),
        subject: newest
            .map(|(name, info)| format!("{name}: {}", info.subject))
            .unwrap_or_default(),
        author: newest
            .map(|(_, info)| info.author.clone())
            .unwrap_or_default(),
        commit_time: newest.map_or(0, |(_, info)| info.commit_time),
    }
}

/// The sources as the root records the configuration it follows: one publisher's sources are
/// another's only if every name, repository, ref and selection is the same.
pub(super) fn record(sources: &[Source]) -> SourceRecord {
    match sources {
        [one] if one.name.is_none() => SourceRecord {
            repo: one.remote.display_url(),
            ref_name: one.remote.target.to_string(),
            select: one.content.source_key(),
            claimed_at: None,
        },
        _ => {
            let mut sorted: Vec<&Source> = sources.iter().collect();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            let each = |what: &dyn Fn(&Source) -> String| -> String {
                sorted
                    .iter()
                    .map(|s| format!("{}={}", s.label(), what(s)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let select = sorted
                .iter()
                .filter(|s| !s.content.source_key().is_empty())
                .map(|s| format!("{}:[{}]", s.label(), s.content.source_key()))
                .collect::<Vec<_>>()
                .join(" ");
            SourceRecord {
                repo: each(&|s| s.remote.display_url()),
                ref_name: each(&|s| s.remote.target.to_string()),
                select: format!("sources {select}").trim_end().to_string(),
                claimed_at: None,
            }
        }
    }
}

/// One redactor for the errors of every source.
pub(crate) fn redactor(sources: &[Source]) -> Redactor {
    match sources {
        [one] => one.remote.redactor().clone(),
        _ => Redactor::joined(
            &sources
                .iter()
                .map(|s| s.remote.redactor().clone())
                .collect::<Vec<_>>(),
        ),
    }
}

/// The manifest's line for one source.
pub(super) fn source_commit(
    source: &Source,
    part: &Part,
    info: &CommitInfo,
    tree: &str,
) -> SourceCommit {
    SourceCommit {
        name: source.label().to_string(),
        repo: source.remote.display_url(),
        ref_name: part.ref_name.clone(),
        commit: info.commit.clone(),
        tree: tree.to_string(),
        subject: info.subject.clone(),
        commit_time: info.commit_time,
        select: source.content.select_key(),
        stale: part.stale.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_composite_is_named_by_its_sources_whatever_their_order() {
        let a = ObjectId::from_hex(b"1111111111111111111111111111111111111111").unwrap();
        let b = ObjectId::from_hex(b"2222222222222222222222222222222222222222").unwrap();
        let one = composite_id(&[
            ("dags".into(), a, String::new()),
            ("lib".into(), b, String::new()),
        ])
        .unwrap();
        let two = composite_id(&[
            ("lib".into(), b, String::new()),
            ("dags".into(), a, String::new()),
        ])
        .unwrap();
        assert_eq!(one, two);
        let swapped = composite_id(&[
            ("dags".into(), b, String::new()),
            ("lib".into(), a, String::new()),
        ])
        .unwrap();
        assert_ne!(one, swapped);
        let selected = composite_id(&[
            ("dags".into(), a, "subdir=dags".into()),
            ("lib".into(), b, String::new()),
        ])
        .unwrap();
        assert_ne!(one, selected);
    }
}
